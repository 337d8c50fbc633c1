"""The CLI's progress: a live bar in a pseudo-terminal, plain lines when piped, for
``submit --wait``, ``watch`` and a large ``put``."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pty
import re
import signal
import sys
from pathlib import Path

import pytest

from mps_snapshot_client import SnapshotClient
from mps_snapshot_server.app import App
from tests.conftest import put
from tests.helpers.children import ROOT, run_child
from tests.helpers.media import Video

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def run_in_pty(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its stdout and stderr; its exit code and output."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    try:
        reader = asyncio.create_task(asyncio.to_thread(_read_all, master))
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            pytest.fail(f"{' '.join(args)} did not finish within {timeout} s")
        out = await asyncio.wait_for(reader, 10)
    finally:
        os.close(master)
    return code, out.decode(errors="replace")


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` zero bytes, fast to make, still copied byte for byte."""
    with open(path, "wb") as f:
        f.truncate(size)


def request_file(tmp_path: Path, bucket: str) -> Path:
    path = tmp_path / "request.json"
    path.write_text(
        json.dumps(
            {
                "Input": {"Bucket": bucket, "Location": "oss-cn-hangzhou", "Object": "p/in.mp4"},
                "SnapshotConfig": {
                    "OutputFile": {"Bucket": bucket, "Location": "oss-cn-hangzhou", "Object": "p/{Count}.jpg"},
                    "Interval": "1",
                    "Num": "6",
                },
            }
        )
    )
    return path


def cli(app: App, *args: str) -> list[str]:
    return [sys.executable, "-m", "mps_snapshot_client", *args, "--target", f"127.0.0.1:{app.port}"]


async def test_submit_wait_draws_a_bar_on_a_terminal(
    app: App, data_dir: Path, bucket: str, videos: dict[str, Video], tmp_path: Path
) -> None:
    put(data_dir, bucket, "p/in.mp4", videos["main"].path)
    code, out = await run_in_pty(cli(app, "submit", str(request_file(tmp_path, bucket)), "--wait"))
    assert code == 0, out
    assert ANSI.search(out), "no terminal control sequences: not drawn as a live bar"
    assert "━" in out  # rich's bar
    plain = ANSI.sub("", out)
    assert re.search(r"Success\s+━+\s+images 6/6", plain), plain
    assert '"State": "Success"' in plain and '"Count": 6' in plain


async def test_submit_wait_prints_plain_lines_when_piped(
    app: App, data_dir: Path, bucket: str, videos: dict[str, Video], tmp_path: Path
) -> None:
    put(data_dir, bucket, "p/in.mp4", videos["main"].path)
    code, out = await run_child(cli(app, "submit", str(request_file(tmp_path, bucket)), "--wait"), _env(), 60)
    assert code == 0, out
    assert "\x1b" not in out and "━" not in out
    lines = [line for line in out.splitlines() if line.startswith("job ")]
    assert lines, out
    counts = [int(m.group(1)) for line in lines if (m := re.search(r"images (\d+)/6", line))]
    assert counts == sorted(counts) and counts[-1] == 6
    assert re.fullmatch(r"job [0-9a-f]{32} Success  images 6/6  \d+\.\d s", lines[-1]), lines[-1]
    # One line per change: no line repeats the one before it.
    assert all(a.rsplit("  ", 1)[0] != b.rsplit("  ", 1)[0] for a, b in itertools.pairwise(lines))


async def test_watch_follows_a_running_job(app: App, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    put(data_dir, bucket, "p/in.mp4", videos["main"].path)
    async with SnapshotClient(f"127.0.0.1:{app.port}") as client:
        response = await client.submit(json.loads(request_file(Path(data_dir / bucket), bucket).read_text()))
    job_id = response.snapshot_job.id
    code, out = await run_in_pty(cli(app, "watch", job_id))
    assert code == 0, out
    assert re.search(r"Success\s+━+\s+images 6/6", ANSI.sub("", out))
    code, out = await run_child(cli(app, "watch", job_id), _env(), 30)
    assert code == 0 and f"job {job_id} Success  images 6/6" in out, out
    code, out = await run_child(cli(app, "watch", job_id, "--json"), _env(), 30)
    assert code == 0 and '"State": "Success"' in out and "job " not in out.splitlines()[0]


async def test_put_of_a_large_file_shows_bytes_copied(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    size = 20 * 1024 * 1024
    await asyncio.to_thread(_sparse, source, size)
    data = tmp_path / "data"
    code, out = await run_in_pty(
        [sys.executable, "-m", "mps_snapshot_server.cli", "put", str(source), "bulk/big.bin", "--data-dir", str(data)]
    )
    assert code == 0, out
    plain = ANSI.sub("", out)
    assert re.search(r"21\.0/21\.0 MB", plain), plain
    assert (data / "bulk" / "big.bin").stat().st_size == size
    code, out = await run_child(
        [sys.executable, "-m", "mps_snapshot_server.cli", "put", str(source), "bulk/big2.bin", "--data-dir", str(data)],
        _env(),
        60,
    )
    assert code == 0 and f"copied {size} of {size} bytes in" in out, out
    assert (data / "bulk" / "big2.bin").stat().st_size == size


async def test_submit_wait_prints_one_json_document_on_stdout(
    app: App, data_dir: Path, bucket: str, videos: dict[str, Video], tmp_path: Path
) -> None:
    """``submit - --wait``'s stdout is one JSON document, the final job (progress on stderr)."""
    put(data_dir, bucket, "p/in.mp4", videos["main"].path)
    proc = await asyncio.create_subprocess_exec(
        *cli(app, "submit", "-", "--wait"), cwd=ROOT, env=_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(request_file(tmp_path, bucket).read_bytes()), 60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["State"] == "Success" and doc["Count"] == 6
    assert b"job " in err
