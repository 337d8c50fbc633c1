"""The README's walkthrough as a newcomer runs it: a fresh ``git clone`` of this repository
in a temporary folder, then the README's own commands, as written, from the clone's root,
with the default settings (relative ``./data``), and files asserted where the README says
they land. Only the port differs (``--listen``, since 50051 may be taken on a test
machine), and ``~`` is a temporary home holding ``~/Videos/holiday.mp4`` (real footage).

``bash scripts/serve.sh`` installs the clone's .venv the way a user's first run does
(measured about 50 s with pip's download cache warm); the commands are taken from
README.md itself, so the test follows the README.

Also here: the Dockerfile's start command, run as a process (no Docker engine on a test
machine) with the image's ENV, its data folder in a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import corpus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## From a fresh clone to a JPEG of your own video"


def readme_blocks() -> list[str]:
    """The ```bash blocks of the walkthrough section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end >= 0 else None]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def logical_lines(block: str) -> list[str]:
    """Lines with backslash continuations joined and trailing comments left to bash."""
    lines: list[str] = []
    pending = ""
    for raw in block.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [ln for ln in lines if ln.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_documents(text: str) -> list[Any]:
    """Every JSON document printed one after another (the CLI prints one per result)."""
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


@dataclass
class Walk:
    clone: Path
    home: Path
    env: dict[str, str]
    port: int
    server: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run README text with bash, from the clone's root, as a user's shell would."""
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""


def _clean_env(home: Path) -> dict[str, str]:
    # The user's environment, without settings a test run might carry (MPS_SNAPSHOT_*),
    # so the service starts on its defaults; pip keeps the real download cache.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPS_SNAPSHOT_") and k != "VIRTUAL_ENV"}
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env["HOME"] = str(home)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    base = tmp_path_factory.mktemp("readme")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    home = base / "home"
    (home / "Videos").mkdir(parents=True)
    (home / "Videos" / "holiday.mp4").write_bytes(corpus.cached_file(corpus.HOLIDAY).read_bytes())
    port = free_port()
    env = _clean_env(home)
    env["MPS_SNAPSHOT_TARGET"] = f"127.0.0.1:{port}"
    w = Walk(clone, home, env, port)
    try:
        yield w
    finally:
        if w.server is not None:
            _stop(w.server)


def _serve_line() -> str:
    first = logical_lines(readme_blocks()[0])
    line = next(ln for ln in first if "scripts/serve.sh" in ln)
    command = line.split("#", 1)[0].strip()
    assert command == "bash scripts/serve.sh &", f"the README starts the server with {command!r}"
    return command


def test_serve_sh_sets_up_and_serves_with_defaults(walk: Walk) -> None:
    """``bash scripts/serve.sh &`` from the fresh clone (first run: installs .venv), then
    ``.venv/bin/mps-snapshot health`` prints SERVING."""
    command = _serve_line().removesuffix("&").strip()
    walk.log = walk.clone.parent / "serve.log"
    started = time.monotonic()
    with walk.log.open("wb") as log:
        walk.server = subprocess.Popen(
            [*shlex.split(command), "--listen", f"127.0.0.1:{walk.port}"],
            cwd=walk.clone,
            env=walk.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    health = next(ln for ln in logical_lines(readme_blocks()[0]) if " health" in ln).split("#", 1)[0].strip()
    deadline = started + 240
    out = None
    while time.monotonic() < deadline:
        assert walk.server.poll() is None, f"serve.sh exited ({walk.server.returncode}):\n{walk.server_log()}"
        if (walk.clone / ".venv" / "bin" / "mps-snapshot").exists():
            out = walk.sh(health, timeout=30)
            if out.returncode == 0:
                break
        time.sleep(1)
    assert out is not None and out.returncode == 0, f"never healthy: {out}\n{walk.server_log()}"
    assert out.stdout.strip() == "SERVING"
    walk.results["ready_s"] = time.monotonic() - started
    # The relative default: jobs and buckets in the clone's ./data.
    assert (walk.clone / "data" / "mps-snapshot.db").exists(), sorted(p.name for p in walk.clone.iterdir())


def test_put_stores_the_video_where_the_readme_says(walk: Walk) -> None:
    put = next(ln for ln in logical_lines(readme_blocks()[0]) if " put " in ln)
    out = walk.sh(put)
    assert out.returncode == 0, out.stderr
    # "bucket my-videos is the folder data/my-videos, and the object key is the path below it"
    stored = walk.clone / "data" / "my-videos" / "2026" / "holiday.mp4"
    assert stored.read_bytes() == (walk.home / "Videos" / "holiday.mp4").read_bytes()


def test_snapshot_writes_the_file_the_readme_opens(walk: Walk) -> None:
    lines = logical_lines(readme_blocks()[0])
    snapshot = next(ln for ln in lines if " snapshot " in ln)
    opened = next(ln for ln in lines if ln.startswith("xdg-open"))
    claimed = shlex.split(opened.split("#", 1)[0])[1]
    out = walk.sh(snapshot)
    assert out.returncode == 0, f"{snapshot}\n{out.stderr}\n{walk.server_log()}"
    job = json_documents(out.stdout)[-1]
    assert job["State"] == "Success", job
    written = job["Images"][0]["Object"]
    path = walk.clone / claimed
    assert path.exists(), (
        f"the README opens {claimed}, but `{snapshot.split('--out')[1].strip()}` wrote my-shots/{written} "
        f"(Images[0].Object {written!r})"
    )
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "JPEG" and img.width == 640
    assert abs(job["Images"][0]["Time"] - 12500) <= 40, job["Images"][0]


def test_submit_req_json_then_query(walk: Walk) -> None:
    block = readme_blocks()[1]
    head, _, query_part = block.partition(".venv/bin/mps-snapshot query")
    out = walk.sh(head)
    assert out.returncode == 0, f"{out.stderr}\n{walk.server_log()}"
    response = json_documents(out.stdout)[-1]
    job = response["SnapshotJob"]
    assert job["State"] == "Success", job
    assert job["UserData"] == "testid-001"
    assert (walk.clone / "data" / "my-shots" / job["Images"][0]["Object"]).exists(), job["Images"]
    query = ".venv/bin/mps-snapshot query" + query_part.replace("<job id>", job["Id"])
    out = walk.sh(query)
    assert out.returncode == 0, out.stderr
    listed = json_documents(out.stdout)[-1]["SnapshotJobList"]
    assert [j["Id"] for j in listed] == [job["Id"]] and listed[0]["State"] == "Success"


def test_async_submit_wait_writes_ten_images(walk: Walk) -> None:
    block = readme_blocks()[2]
    out = walk.sh(block, timeout=180)
    assert out.returncode == 0, f"{out.stderr}\n{walk.server_log()}"
    final = json.loads(out.stdout)  # one document: the final job
    assert final["State"] == "Success", final
    # "ten images, one every 20 s, from 5 s on"
    assert final["Count"] == 10
    objects = [i["Object"] for i in final["Images"]]
    assert objects == [f"seq/{n:05d}.jpg" for n in range(1, 11)]
    for image, n in zip(final["Images"], range(10), strict=True):
        assert abs(image["Time"] - (5000 + 20000 * n)) <= 40, image
        assert (walk.clone / "data" / "my-shots" / image["Object"]).exists()


def _one_clear_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_put_of_a_missing_file_is_one_clear_line(walk: Walk) -> None:
    assert (walk.clone / ".venv" / "bin" / "mps-snapshot").exists(), "serve.sh did not set up .venv"
    line = _one_clear_line(walk.sh(".venv/bin/mps-snapshot put ~/Videos/missing.mp4 my-videos/2026/missing.mp4"))
    assert "missing.mp4" in line


def test_submit_of_malformed_json_is_one_clear_line(walk: Walk) -> None:
    assert (walk.clone / ".venv" / "bin" / "mps-snapshot").exists(), "serve.sh did not set up .venv"
    (walk.clone / "bad.json").write_text('{"Input": {"Bucket": "my-videos", "Object": "2026%2Fholiday.mp4"},\n')
    line = _one_clear_line(walk.sh(".venv/bin/mps-snapshot submit bad.json"))
    assert "JSON" in line or "json" in line, line


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile() -> tuple[dict[str, str], list[str], list[str]]:
    """The final stage's ENV (in order, $VAR expanded), CMD and HEALTHCHECK CMD."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    final = joined[joined.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    cmd: list[str] = []
    health: list[str] = []
    for line in final.splitlines():
        words = line.strip().split(None, 1)
        if not words:
            continue
        if words[0] == "ENV":
            for pair in shlex.split(words[1]):
                name, _, value = pair.partition("=")
                env[name] = value
        elif words[0] == "CMD":
            cmd = json.loads(words[1])
        elif words[0] == "HEALTHCHECK":
            health = json.loads(words[1].split(" CMD ", 1)[1])
    return env, cmd, health


def test_dockerfile_start_command_serves(walk: Walk, tmp_path: Path) -> None:
    """The image's CMD with the image's ENV, as a process: /opt/mps is the clone's .venv
    (the same package, installed by serve.sh above), /data a temporary folder, and the
    port a free one (host part kept). The image's own HEALTHCHECK must then pass."""
    venv = walk.clone / ".venv"
    assert (venv / "bin" / "mps-snapshot").exists(), "serve.sh did not set up .venv"
    image_env, cmd, health = dockerfile()
    assert cmd and health, "Dockerfile has no CMD or HEALTHCHECK CMD"
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env = dict(base, HOME=str(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    for name, value in image_env.items():
        value = value.replace("$PATH", env.get("PATH", "")).replace("/opt/mps", str(venv))
        if name == "MPS_SNAPSHOT_DATA_DIR":
            value = str(data)
        if name in ("MPS_SNAPSHOT_LISTEN", "MPS_SNAPSHOT_TARGET"):
            value = re.sub(r":\d+$", f":{port}", value)
        env[name] = value
    log = tmp_path / "docker-cmd.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        out = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"`{' '.join(cmd)}` with the image's ENV exited at once ({proc.returncode}): "
                    f"{log.read_text(errors='replace').strip()[-1500:]}"
                )
            out = subprocess.run(health, env=env, capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                break
            time.sleep(0.5)
        assert out is not None and out.returncode == 0, (out, log.read_text(errors="replace"))
        assert out.stdout.strip() == "SERVING"
    finally:
        _stop(proc)
