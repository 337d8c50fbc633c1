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
echo "== buf lint";        .venv/bin/buf lint
echo "== buf breaking"
# protos/ against the previous commit (offline: buf clones the local repository). A clone with
# one commit, a shallow clone or a commit before protos/ existed has nothing to compare with.
if PREV="$(git rev-parse --verify -q 'HEAD~1^{commit}' 2>/dev/null)" && git cat-file -e "$PREV:protos" 2>/dev/null; then
    .venv/bin/buf breaking protos --against "$(git rev-parse --git-common-dir)#ref=$PREV,subdir=protos"
else
    echo "skipped: no previous commit with protos/ to compare with (single-commit or shallow clone)"
fi
echo "== pytest"
# PostgreSQL for the multi-replica tests: the machine's own, or a throwaway cluster.
eval "$(bash scripts/pg-test-cluster.sh start)"
trap 'bash scripts/pg-test-cluster.sh stop' EXIT
.venv/bin/pytest "$@"
