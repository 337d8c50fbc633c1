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
