#!/usr/bin/env bash
# Set up (first run only) and run every check CI runs: generated code is current,
# lint, formatting, strict typing, then the test suite (real ffmpeg, real gRPC server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
echo "== generated code";  .venv/bin/python scripts/gen_protos.py --check
echo "== ruff";            .venv/bin/ruff check server client tests scripts bench
echo "== format";          .venv/bin/ruff format --check server client tests scripts bench
echo "== mypy";            .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
