#!/usr/bin/env bash
# Installs what mps-snapshot needs on a fresh Debian/Ubuntu machine, idempotently:
# ffmpeg + ffprobe from the distribution, and a virtualenv in .venv with the package.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus test, lint and code-generation tools
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "== installing ffmpeg (Debian package)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
EXTRA=""
if [ "${1:-}" = "--dev" ]; then EXTRA="[dev]"; fi
STAMP=".venv/.installed${EXTRA}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "== installing Python packages${EXTRA:+ (dev)}"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRA}"
    touch "$STAMP"
fi

if [ "${1:-}" = "--dev" ]; then
    # PostgreSQL binaries for the multi-replica tests: scripts/pg-test-cluster.sh starts a
    # throwaway cluster with them when no server answers on 127.0.0.1:5432.
    if command -v apt-get >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "== installing PostgreSQL (Debian package) for the multi-replica tests"
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi

    # The Node.js client (clients/node): npm packages from package-lock.json, only when the
    # lock file is newer than the last install (npm writes node_modules/.package-lock.json).
    if command -v npm >/dev/null; then
        if [ ! -f clients/node/node_modules/.package-lock.json ] \
            || [ clients/node/package-lock.json -nt clients/node/node_modules/.package-lock.json ]; then
            echo "== installing Node.js packages (clients/node)"
            (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
        fi
    else
        echo "== npm not found: the Node.js client test (tests/integration/test_node_client.py) will be skipped"
    fi

    # Headless Chromium (Debian's package) for the web console tests (tests/integration/test_console.py).
    if command -v apt-get >/dev/null && ! dpkg -s chromium >/dev/null 2>&1; then
        echo "== installing Chromium for the console tests (Debian package)"
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium fonts-dejavu-core >/dev/null
    fi

    # The Go client (clients/go): Debian's Go toolchain and gRPC/protobuf sources (GOPATH
    # mode, no module downloads). golang-github-golang-protobuf-1-5-dev replaces the 1-3
    # package, whose generated-code runtime panics with current protoc-gen-go output.
    GO_PACKAGES=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
        golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)
    if command -v apt-get >/dev/null && ! dpkg -s "${GO_PACKAGES[@]}" >/dev/null 2>&1; then
        echo "== installing Go, protoc and gRPC packages for clients/go (Debian packages)"
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${GO_PACKAGES[@]}" >/dev/null
    fi
fi
