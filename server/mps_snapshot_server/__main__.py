"""``python -m mps_snapshot_server [serve options]``: the same as ``mps-snapshot serve``."""

from __future__ import annotations

import sys

from mps_snapshot_server.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
