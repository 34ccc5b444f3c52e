"""`python -m qworker` is the `qworker` command."""

import sys

from qworker.cli import main

sys.exit(main())
