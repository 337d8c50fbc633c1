#!/usr/bin/env bash
# Builds the Go client (clients/go/build.sh) and runs its tests against a server:
#   MPS_SNAPSHOT_TARGET=127.0.0.1:50051 MPS_TEST_BUCKET=my-videos MPS_TEST_OBJECT=clip.mp4 clients/go/run.sh
# Without those variables only the converter tests run. Extra arguments go to the test binary
# (e.g. -test.run TestSyncSnapshot).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash clients/go/build.sh
exec build/go/bin/mpsclient.test -test.v "$@"
