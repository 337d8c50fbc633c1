"""Test helpers for the S3-compatible backend: a moto S3 server in its own process, a
byte-counting TCP proxy, and an HTTP proxy that injects storage faults on demand.

Everything listens on 127.0.0.1 only. The proxies run on the test's event loop (they are
asyncio servers); moto runs as a separate process, so its work never holds the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_RUNNING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


class MotoServer:
    """``moto_server -H 127.0.0.1 -p 0`` as a child process; the port is read from its log.

    moto checks neither signatures nor presigned-URL expiry, and keeps objects in memory
    (spilling big ones to temporary files).
    """

    def __init__(self, workdir: Path, *, part_min_size: int | None = None) -> None:
        self.workdir = workdir
        self.part_min_size = part_min_size
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "moto.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(self.workdir)
        if self.part_min_size is not None:
            env["S3_UPLOAD_PART_MIN_SIZE"] = str(self.part_min_size)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _RUNNING.search(log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not start: {log_path.read_text(errors='replace')[-2000:]}")

    def reset(self) -> None:
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class _Server:
    """An asyncio server on 127.0.0.1:0 that closes its open connections on ``close``."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # a peer went away, or the proxy is closing
        finally:
            self._tasks.discard(task)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")
_RANGE = re.compile(rb"\r\nRange: *(bytes=[0-9-]*)", re.IGNORECASE)


@dataclass
class Traffic:
    """What went through a CountingProxy since the last reset."""

    to_client: int = 0
    from_client: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    #: Bytes delivered on each connection, in the order the connections were opened.
    per_connection: list[int] = field(default_factory=list)


class CountingProxy(_Server):
    """A transparent TCP relay that counts the bytes the storage delivered to the client.

    What is counted is what a direct connection would have carried on the wire: the bytes
    the client read, plus what sat in its receive window when it hung up on an open-ended
    response. The proxy's own socket send buffer is kept small (``send_buffer``) so data
    queued here, which a direct connection would have left in the storage's send buffer,
    hardly counts. Request lines and Range headers are noted for reports.
    """

    def __init__(self, upstream_port: int, *, send_buffer: int = 16384) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.send_buffer = send_buffer
        self.traffic = Traffic()

    def reset(self) -> Traffic:
        old, self.traffic = self.traffic, Traffic()
        return old

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        traffic = self.traffic
        traffic.connections += 1
        index = len(traffic.per_connection)
        traffic.per_connection.append(0)
        sock = writer.get_extra_info("socket")
        if sock is not None and self.send_buffer:
            # A small send buffer here keeps the count close to what crossed the wire: what
            # the client's receive window accepted, not what queued in this proxy's kernel.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            writer.transport.set_write_buffer_limits(high=self.send_buffer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def client_to_upstream() -> None:
            while chunk := await reader.read(65536):
                traffic.from_client += len(chunk)
                for m in _REQUEST_LINE.finditer(chunk):
                    rng = _RANGE.search(chunk, m.end() - 2)
                    traffic.requests.append(
                        f"{m.group(1).decode()} {m.group(2).split(b'?')[0].decode()} "
                        f"{rng.group(1).decode() if rng else '(no range)'}"
                    )
                up_writer.write(chunk)
                await up_writer.drain()

        async def upstream_to_client() -> None:
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                traffic.to_client += len(chunk)
                traffic.per_connection[index] += len(chunk)
                await writer.drain()

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        try:
            # HTTP clients never half-close: the relay ends when either side hangs up.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _close(up_writer)


_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULT</RequestId></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>FAULT</RequestId></Error>"
)
_INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message><RequestId>FAULT</RequestId></Error>"
)

_ANSWERS = {
    "403": (b"403 Forbidden", _DENIED),
    "500": (b"500 Internal Server Error", _INTERNAL),
    "503": (b"503 Slow Down", _SLOWDOWN),
}


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``kind`` instead of forwarding them.

    kinds: ``403`` (AccessDenied), ``500`` (InternalError), ``503`` (SlowDown), ``reset`` (TCP reset after the
    request arrives), ``stall`` (say nothing for ``stall_s`` or until the client gives up),
    ``drop_response`` (forward the request, then reset instead of answering: the storage did
    the work but the client never hears of it).
    """

    kind: str
    times: int = 1
    methods: frozenset[str] | None = None
    query_contains: str | None = None
    stall_s: float = 60.0
    #: Matching requests to let through before the fault starts.
    after: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.query_contains is None or self.query_contains in target


class FaultProxy(_Server):
    """An HTTP/1.1 reverse proxy in front of the storage that injects faults on demand.

    Each forwarded request uses a fresh upstream connection with ``Connection: close``, and
    every response tells the client to close too, so request boundaries stay exact.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        #: (method, path without query, what happened) per request, in arrival order.
        self.log: list[tuple[str, str, str]] = []

    def inject(
        self,
        kind: str,
        times: int = 1,
        *,
        methods: set[str] | None = None,
        query_contains: str | None = None,
        stall_s: float = 60.0,
        after: int = 0,
    ) -> None:
        if kind not in ("403", "500", "503", "reset", "stall", "drop_response"):
            raise ValueError(kind)
        self.faults.append(Fault(kind, times, frozenset(methods) if methods else None, query_contains, stall_s, after))

    def clear(self) -> None:
        self.faults.clear()

    def faults_left(self) -> int:
        return sum(f.times for f in self.faults)

    def _take(self, method: str, target: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(method, target):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = [ln for ln in lines[1:] if ln]
            names = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in headers}
            if names.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await _read_body(reader, names)
            path = target.split("?", 1)[0]
            fault = self._take(method, target)
            action = fault.kind if fault else "forwarded"
            self.log.append((method, path, action))
            if fault is None or fault.kind == "drop_response":
                kept = [h for h in headers if h.split(":", 1)[0].strip().lower() not in ("connection", "expect")]
                request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
                if fault is None:
                    await self._forward(request, writer, method == "HEAD")
                    return
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                up_writer.write(request)
                await up_writer.drain()
                await up_reader.read()  # the storage finished the work ...
                await _close(up_writer)
                _abort(writer)  # ... and the client never hears of it
                return
            if fault.kind in _ANSWERS:
                status, payload = _ANSWERS[fault.kind]
                if method == "HEAD":
                    payload = b""
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
                )
                await writer.drain()
                return
            if fault.kind == "reset":
                _abort(writer)
                return
            # stall: say nothing until the client gives up or the stall ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.stall_s):
                    while await reader.read(65536):
                        pass
            _abort(writer)
            return

    async def _forward(self, request: bytes, writer: asyncio.StreamWriter, is_head: bool) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            up_writer.write(request)
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            lines = [ln for ln in head.decode("latin-1").split("\r\n") if ln]
            kept = [ln for ln in lines if ln.split(":", 1)[0].strip().lower() != "connection"]
            writer.write("\r\n".join([*kept, "Connection: close", "", ""]).encode("latin-1"))
            if not is_head:
                while chunk := await up_reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
        finally:
            await _close(up_writer)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    raw += trailer
                raw += b"\r\n"
                return bytes(raw)
            raw += await reader.readexactly(size + 2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""
