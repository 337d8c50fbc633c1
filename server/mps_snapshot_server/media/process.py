"""Running ffmpeg and ffprobe as contained subprocesses.

Each run gets no shell, no stdin, a minimal environment (no credentials, no proxy
variables), its own process group, resource limits and a wall-clock limit; on timeout
or cancellation the whole group is killed and reaped, so no decoder outlives its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from mps_snapshot_server.domain.errors import DiskFull, ProcessKilled

_STDERR_KEEP = 64 * 1024
_STDOUT_MAX = 64 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-process bounds. Memory is address space (RLIMIT_AS), CPU is seconds (RLIMIT_CPU)."""

    wall_seconds: float
    #: From the settings ffmpeg_cpu_s and ffmpeg_memory_mb.
    cpu_seconds: int
    address_space_bytes: int
    file_size_bytes: int = 512 * 1024**2
    open_files: int = 256


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str


class ProcessTimeout(Exception):
    """The process ran past its wall-clock limit and was killed."""


class ContainmentUnavailable(RuntimeError):
    """setpriv or prlimit is missing: ffmpeg is never run without its limits (fail closed)."""


def _wrapper(limits: Limits) -> list[str]:
    # prlimit and setpriv come with util-linux on every Debian system (it is Essential).
    # setpriv's pdeathsig kills ffmpeg if the server dies without a chance to clean up
    # (SIGKILL); prlimit sets the rlimits without preexec_fn (unsafe with gRPC's threads).
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if not setpriv or not prlimit:
        raise ContainmentUnavailable(
            "setpriv and prlimit (util-linux) must be on PATH: ffmpeg and ffprobe are never run "
            "without a parent-death signal and resource limits"
        )
    return [
        setpriv,
        "--pdeathsig",
        "KILL",
        "--",
        prlimit,
        f"--as={limits.address_space_bytes}",
        f"--cpu={limits.cpu_seconds}",
        f"--fsize={limits.file_size_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def minimal_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


async def _read_capped(stream: asyncio.StreamReader, cap: int, keep_tail: bool) -> bytes:
    """Read a stream to its end, keeping at most ``cap`` bytes (head, or head+tail)."""
    head = bytearray()
    tail = bytearray()
    while chunk := await stream.read(65536):
        if len(head) < cap:
            take = cap - len(head)
            head += chunk[:take]
            chunk = chunk[take:]
        if chunk and keep_tail:
            tail += chunk
            del tail[:-cap]
    return bytes(head + (b"\n...\n" + tail if tail else b""))


async def run(argv: Sequence[str], *, limits: Limits, cwd: str | None = None, stderr_keep: int | None = None) -> Result:
    """Run ``argv`` to completion within ``limits``; kill its process group otherwise.
    ``stderr_keep``: bytes of the log kept at its head and at its tail (64 KiB each unless set)."""
    proc = await _start(argv, limits, cwd, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(
        _read_capped(proc.stdout, _STDOUT_MAX, keep_tail=False),
        _read_capped(proc.stderr, stderr_keep or _STDERR_KEEP, keep_tail=True),
    )
    try:
        async with asyncio.timeout(limits.wall_seconds):
            out, err = await readers
            code = await proc.wait()
    except TimeoutError:
        await _kill_group(proc)
        raise ProcessTimeout(f"killed after {limits.wall_seconds:g} s") from None
    except BaseException:
        await _kill_group(proc)
        raise
    return classify(Result(code, out, err.decode(errors="replace")))


async def start_worker(argv: Sequence[str], *, limits: Limits, cwd: str) -> asyncio.subprocess.Process:
    """A long-lived worker (media.warm) under the same containment as every ffmpeg run:
    pdeathsig, rlimits, its own session (``kill_group`` ends it whole), the minimal
    environment, a private folder; stdin and stdout are its request pipe, stderr is dropped.
    ``limits.wall_seconds`` does not apply: the caller bounds each request."""
    # Answers are one line each, and one may list thousands of frame times or keyframes.
    return await _start(
        argv, limits, cwd, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, line_limit=_STDOUT_MAX
    )


async def _start(
    argv: Sequence[str], limits: Limits, cwd: str | None, *, stdin: int, stderr: int, line_limit: int = 2**16
) -> asyncio.subprocess.Process:
    """The one place a process starts: the wrapper, the minimal environment, a new session."""
    return await asyncio.create_subprocess_exec(
        *_wrapper(limits),
        *argv,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env=minimal_env(),
        start_new_session=True,
        limit=line_limit,
    )


async def kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill a process started here and its whole group, and reap it."""
    await _kill_group(proc)


#: Signals that mean a limit ended the run, not the input: RLIMIT_CPU (SIGXCPU, then
#: SIGKILL at the hard limit) and the kernel's OOM killer (SIGKILL). Our own wall-clock
#: kill raises ProcessTimeout instead, so it never reaches this check.
_LIMIT_SIGNALS = frozenset({signal.SIGKILL, signal.SIGXCPU})
_DISK_FULL = "No space left on device"


def classify(result: Result) -> Result:
    """Tell the service's own faults from bad content before callers read the exit code:
    a run killed by a resource limit or one that hit a full disk raises a ServiceFault
    (retried for async jobs, UNAVAILABLE/INTERNAL for sync calls), so a healthy input is
    never reported as ResourceContentBad because of the server's state."""
    if result.returncode < 0 and -result.returncode in _LIMIT_SIGNALS:
        raise ProcessKilled(
            f"ffmpeg was killed by signal {-result.returncode} (a CPU-time limit or the kernel's out-of-memory "
            "killer): a fault of the server, not of the input; retry later.",
            retry_after=5.0,
        )
    if result.returncode != 0 and _DISK_FULL in result.stderr:
        raise DiskFull(
            "The server's work disk is full; this is not a fault of the input; retry later.", retry_after=5.0
        )
    return result


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    # Reap it even if we are being cancelled, or it lingers as a zombie.
    await asyncio.shield(proc.wait())
