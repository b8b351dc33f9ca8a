"""What SIGHUP changes in a running provider, and what it cannot."""

import dataclasses

from twisted.logger import Logger

from nymprov.node.reload import changed_fields, log_not_reloaded
from nymprov.sphinx import encode_address
from nymprov.topology import provider_topology

log = Logger(namespace="nymprov.provider.reload")


def reload_provider(service, new):
    """
    Apply to the running ``service`` what can change of ``new`` (a
    :class:`nymprov.provider.config.ProviderConfig` read again): the
    topology, the invite codes and registration mode, the backend's options
    (if the backend can take them: the web proxy's allow-list). Open
    connections are untouched.

    :returns: ``(reloaded, not reloaded)``: lists of option names.
    """
    old = service.config
    fields = changed_fields(old, new)
    applied = []
    # The topology file is read again even under the same name: its
    # contents are what changes.
    if new.topology is not None or "topology" in fields or "first_layer" in fields:
        # Read first: a bad file leaves the running topology as it was.
        topology = provider_topology((encode_address(h, p) for h, p in new.first_layer), new.topology)
        service.static_topology.replace(topology)
        applied += [f for f in ("topology", "first_layer") if f in fields or (f == "topology" and new.topology)]
    api = getattr(service, "client_api", None)
    if api is not None:
        if "registration" in fields:
            api.registration.mode = new.registration
            applied.append("registration")
        if "invite_code" in fields:
            admin = getattr(service, "admin", None)
            if admin is not None:
                admin.set_config_invites(new.invite_code)
            else:
                api.registration.set_invite_codes(new.invite_code)
            applied.append("invite_code")
    if "backend_option" in fields and new.backend == old.backend and hasattr(service.backend, "reload"):
        from nymprov.plugins import find_maker, parse_backend_options

        options = parse_backend_options(find_maker(new.backend), new.backend_option)
        if not service.backend.reload(options):
            applied.append("backend_option")
    service.config = dataclasses.replace(old, **{f: getattr(new, f) for f in applied})
    stuck = log_not_reloaded(log, fields, applied)
    return applied, stuck
