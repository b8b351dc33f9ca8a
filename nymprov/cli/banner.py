"""The logo and command list that the node commands print, as the original's."""

# The original nym-provider's logo, line for line.
_LOGO = r"""
  _ __  _   _ _ __ ___
 | '_ \| | | | '_ \ _ \
 | | | | |_| | | | | | |
 |_| |_|\__, |_| |_| |_|
        |___/

({role})
"""


def logo(role):
    """:returns: the logo with ``role`` under it (``mixnet-provider``)."""
    return _LOGO.format(role=role)


def command_list(program, commands):
    """
    :param commands: ``(name, summary)`` pairs, in order.
    :returns: the usage line and the commands, in the original's layout.
    """
    lines = [f"Usage: {program} COMMAND [OPTIONS]", "", "Commands:", ""]
    lines += [f"    {name:<11} {summary}" for name, summary in commands]
    lines += ["", f'Run "{program} help <command>" for more info on a specific command.']
    return "\n".join(lines)


def banner(program, role, commands):
    """:returns: what ``program`` alone prints: usage, logo, commands."""
    usage_line, blank, *rest = command_list(program, commands).split("\n")
    return "\n".join([usage_line, blank, logo(role), "", *rest])
