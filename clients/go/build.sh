#!/usr/bin/env bash
# Builds the Go client and its test binary (build/go/bin/mpsclient.test) with Debian's Go
# toolchain and Debian's gRPC/protobuf sources: GOPATH mode, no modules, no network.
# Needs: apt-get install golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
#        golang-google-protobuf-dev protobuf-compiler golang-github-golang-protobuf-1-5-dev
# (scripts/setup.sh --dev installs them). Repeated builds are served from build/go/cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
OUT="$ROOT/build/go"
GOCODE=/usr/share/gocode   # Debian's Go source packages (golang-*-dev)
if ! command -v go >/dev/null || [ ! -d "$GOCODE/src/google.golang.org/grpc" ]; then
    echo "clients/go/build.sh: Go or Debian's gRPC sources are missing; run scripts/setup.sh --dev" >&2
    exit 1
fi
bash clients/go/gen.sh
# The library's import path is mps-snapshot/mpsclient: link its folder into the GOPATH.
mkdir -p "$OUT/src/mps-snapshot" "$OUT/bin"
ln -sfn "$ROOT/clients/go/mpsclient" "$OUT/src/mps-snapshot/mpsclient"
export GO111MODULE=off GOPROXY=off GOFLAGS="" GOPATH="$OUT:$GOCODE" GOCACHE="$OUT/cache"
unformatted="$(gofmt -l clients/go/mpsclient)"
if [ -n "$unformatted" ]; then
    echo "clients/go/build.sh: not gofmt-formatted (run gofmt -w): $unformatted" >&2
    exit 1
fi
go vet mps-snapshot/mpsclient
go test -c -o "$OUT/bin/mpsclient.test" mps-snapshot/mpsclient
