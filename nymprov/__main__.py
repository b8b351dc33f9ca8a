"""``python -m nymprov``: the ``nym-provider`` command."""

import sys

from nymprov.cli.provider import main

sys.exit(main())
