"""``python -m nymprov``: the ``nym-provider`` command."""

import sys

from nymprov.cli import main

sys.exit(main())
