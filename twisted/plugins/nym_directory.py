"""The ``twistd nym-directory`` plugin: a Nym network directory."""

from twisted.application.service import ServiceMaker

NymDirectory = ServiceMaker(
    "nym-directory",
    "nymprov.directory.tap",
    "A Nym network directory: signed node descriptors in, signed network documents out.",
    "nym-directory",
)
