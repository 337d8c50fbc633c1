"""The container image's start command and environment, run as a process (no Docker engine
here): it must start on 0.0.0.0 with no configuration, and stay closed to unsigned callers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


@pytest.mark.parametrize("what", ["key-file", "data-dir"])
def test_image_start_command_unwritable_data_says_one_line(tmp_path: Path, what: str) -> None:
    """A data folder the server cannot write (a path below a regular file: unwritable even for
    root) ends start-up with one line naming the folder, the uid and the fix; no traceback."""
    image_env, cmd = _image_environment()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    data = blocker / "data"
    env = {k: v.replace("/data", str(data)) for k, v in image_env.items() if k != "PATH"}
    if what == "data-dir":  # the key file is writable; only the data folder is not
        (tmp_path / "keys").mkdir()
        env["MPS_SNAPSHOT_BOOTSTRAP_KEY_FILE"] = str(tmp_path / "keys" / "access-key.json")
    port = _free_port()
    env["MPS_SNAPSHOT_LISTEN"] = f"0.0.0.0:{port}"
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(data) in lines[0] and f"uid {os.getuid()}" in lines[0], lines[0]
    assert "chown" in lines[0] and "--user" in lines[0], lines[0]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_image_start_command_data_owned_by_another_user_says_one_line() -> None:
    """docker run -v "$PWD/data:/data" with a folder the image's user does not own: the
    server, run as an unprivileged uid, names the folder, its uid and the fix in one line."""
    image_env, cmd = _image_environment()
    base = Path(tempfile.mkdtemp(prefix="mps-unwritable-"))
    try:
        base.chmod(0o755)
        data = base / "data"
        data.mkdir(mode=0o755)  # owned by root: not writable for uid 65534
        env = {k: v.replace("/data", str(data)) for k, v in image_env.items() if k != "PATH"}
        env["MPS_SNAPSHOT_LISTEN"] = f"0.0.0.0:{_free_port()}"
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(base)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(data) in lines[0] and "uid 65534" in lines[0] and "access-key.json" in lines[0], lines[0]
    assert "chown -R 65534" in lines[0] and "docker run --user" in lines[0], lines[0]


def _exposed_ports() -> set[int]:
    text = (ROOT / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    return {int(p.split("/")[0]) for line in final.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}


def _get(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_image_start_command_serves_http_on_an_exposed_port(tmp_path: Path) -> None:
    """The image's HTTP listener (MPS HTTP RPC, /metrics, the console) is on 0.0.0.0 on a port
    the Dockerfile EXPOSEs, beside gRPC; unsigned RPC calls and the console need the key."""
    image_env, cmd = _image_environment()
    grpc_port = int(image_env["MPS_SNAPSHOT_LISTEN"].rsplit(":", 1)[1])
    host, _, http_port = image_env["MPS_SNAPSHOT_HTTP_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"
    assert {grpc_port, int(http_port)} <= _exposed_ports()
    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    env = {k: v.replace("/data", str(data)) for k, v in image_env.items() if k != "PATH"}
    env["MPS_SNAPSHOT_LISTEN"] = f"0.0.0.0:{_free_port()}"
    env["MPS_SNAPSHOT_HTTP_LISTEN"] = f"0.0.0.0:{port}"
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, f"the image's command exited: {server.stderr.read() if server.stderr else ''}"
            try:
                status, body = _get(f"{base}/metrics")
                break
            except OSError:
                assert time.monotonic() < deadline, "the image's HTTP listener never answered"
                time.sleep(0.3)
        assert status == 200 and "# TYPE" in body
        # An unsigned MPS RPC call is refused.
        status, body = _get(f"{base}/?Action=QuerySnapshotJobList&Version=2014-06-18&SnapshotJobIds=x", data=b"")
        assert status in (400, 401, 403), (status, body)
        assert "Signature" in body or "AccessKey" in body or "denied" in body.lower(), body
        # The console asks for credentials.
        status, _ = _get(f"{base}/console/")
        assert status == 401
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            pytest.fail("the server did not stop on SIGTERM")
    assert server.returncode == 0
