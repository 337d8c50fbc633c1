"""Rewrite the code -> status table in docs/errors.md from server/mps_snapshot_server/rpc/errors.py.

python scripts/gen_error_table.py          # rewrite
(tests/test_units.py fails when the page and the table differ)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mps_snapshot_server.rpc.errors import ERROR_TABLE, http_status_for  # noqa: E402

HEADER = "| MPS code | gRPC status | HTTP status | When |\n|---|---|---|---|\n"


def main() -> None:
    page = ROOT / "docs" / "errors.md"
    rows = "".join(
        f"| `{p}` | `{s.name}` | {http_status_for(p.removesuffix('.*'))} | {d} |\n" for p, s, d in ERROR_TABLE
    )
    text = page.read_text()
    text = re.sub(re.escape(HEADER) + r"(?:\|.*\n)+", lambda _: HEADER + rows, text, count=1)
    page.write_text(text)


if __name__ == "__main__":
    main()
