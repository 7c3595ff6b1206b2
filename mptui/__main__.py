"""``python -m mptui``: what torchrun runs in each worker (``torchrun ... -m mptui MODEL``)."""

import sys

from mptui.cli import main

sys.exit(main())
