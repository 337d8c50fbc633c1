#!/usr/bin/env bash
# Set up (first run only) and start the service on its embedded defaults:
# gRPC on 127.0.0.1:50051, buckets as folders under ./data, jobs in ./data/mps-snapshot.db.
# Extra arguments go to `mps-snapshot serve` (e.g. --listen 127.0.0.1:6000 --data-dir /srv/mps).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mps-snapshot serve "$@"
