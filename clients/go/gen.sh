#!/usr/bin/env bash
# Generates the Go code for protos/mps/snapshot/v1 into build/go/src/mps-snapshot/gen/mpssnapshotv1
# (the protos' go_package), with Debian's protoc, protoc-gen-go and protoc-gen-go-grpc.
# The generated code is not committed: build/ is ignored, and this script remakes it when a
# .proto is newer than the last run. Usage: clients/go/gen.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=build/go/src
STAMP=build/go/.generated
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
    if ! command -v "$tool" >/dev/null; then
        echo "clients/go/gen.sh: $tool is missing; install the Debian packages:" >&2
        echo "  apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc" >&2
        exit 1
    fi
done
if [ "${1:-}" != "--force" ] && [ -f "$STAMP" ] && [ -z "$(find protos -name '*.proto' -newer "$STAMP")" ]; then
    exit 0
fi
rm -rf "$OUT/mps-snapshot/gen"
mkdir -p "$OUT"
# protoc's own include folder (Debian: /usr/include) holds google/protobuf/timestamp.proto.
protoc -I protos -I /usr/include \
    --go_out="$OUT" --go-grpc_out="$OUT" \
    protos/mps/snapshot/v1/resources.proto \
    protos/mps/snapshot/v1/snapshot_service.proto \
    protos/mps/snapshot/v1/pipeline_service.proto
touch "$STAMP"
