"""``python -m server``: the same as ``mps-snapshot serve``."""

from __future__ import annotations

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
