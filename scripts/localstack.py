#!/usr/bin/env python3
"""Install, start and stop LocalStack on 127.0.0.1, without Docker: `qworker.localstack`'s CLI.

A thin wrapper for a source checkout (``make localstack``): it runs with any ``python3``, the
project's dependencies need not be installed (the launcher is stdlib-only). From an installed
qworker, ``python -m qworker.localstack`` is the same command::

    python3 scripts/localstack.py install
    python3 scripts/localstack.py start [--port N] [--data-dir D] [--fast]   # prints the endpoint
    python3 scripts/localstack.py stop [--pidfile P]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's qworker, installed or not

# install and start too: bench/benchlib.py loads this file by path and calls them.
from qworker.localstack import install, main, start  # noqa: E402 (after the path is set)

__all__ = ["install", "main", "start"]

if __name__ == "__main__":
    sys.exit(main(prog="scripts/localstack.py"))
