"""The container image's start command and environment, run as a process (no Docker engine
here): it must start on 0.0.0.0 with no configuration, and stay closed to unsigned callers."""

from __future__ import annotations

import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.children import ROOT
from tests.helpers.media import Video


def _image_environment() -> tuple[dict[str, str], list[str]]:
    """ENV and CMD of the Dockerfile's final stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in final.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
        elif line.startswith("CMD "):
            cmd = [str(part) for part in eval(line[4:])]  # the JSON-array form
    return env, cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mps-snapshot"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_image_start_command_serves_only_signed_callers(tmp_path: Path, videos: dict[str, Video]) -> None:
    image_env, cmd = _image_environment()
    assert cmd == ["mps-snapshot", "serve"]
    assert image_env["MPS_SNAPSHOT_LISTEN"].startswith("0.0.0.0:")
    port = _free_port()
    data = tmp_path / "data"
    data.mkdir()
    env = {k: v.replace("/data", str(data)) for k, v in image_env.items() if k != "PATH"}
    env["MPS_SNAPSHOT_LISTEN"] = f"0.0.0.0:{port}"
    env["MPS_SNAPSHOT_TARGET"] = f"127.0.0.1:{port}"
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while _cli(env, "health", "--timeout", "1").stdout.strip() != "SERVING":
            assert server.poll() is None, f"the image's command exited: {server.stderr.read() if server.stderr else ''}"
            assert time.monotonic() < deadline, "the image's command never became healthy"
            time.sleep(0.3)
        key_file = data / "access-key.json"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        # The CLI in the container signs with the key file the image names.
        video = videos["main"].path
        put = _cli(env, "put", str(video), "my-videos/in.mp4")
        assert put.returncode == 0, put.stderr
        shot = _cli(env, "snapshot", "my-videos/in.mp4", "--time", "1000", "--out", "my-shots/in.jpg")
        assert shot.returncode == 0, shot.stderr
        assert (data / "my-shots" / "in.jpg").stat().st_size > 0
        # Without the key: refused.
        unsigned = {k: v for k, v in env.items() if k != "MPS_SNAPSHOT_ACCESS_KEY_FILE"}
        refused = _cli(unsigned, "snapshot", "my-videos/in.mp4", "--time", "1000", "--out", "my-shots/no.jpg")
        assert refused.returncode != 0 and not (data / "my-shots" / "no.jpg").exists()
        assert re.search(r"Unauthenticated|InvalidAccessKeyId|MissingSignature|credentials", refused.stderr, re.I), (
            refused.stderr
        )
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            pytest.fail("the server did not stop on SIGTERM")
    assert server.returncode == 0
