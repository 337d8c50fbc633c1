"""The HTTP listener: one aiohttp application on ``http_listen`` in the gRPC server's process
and event loop, to which features mount their routes.

    listener = HttpListener("127.0.0.1:8080", shutdown_grace_s=10)
    listener.mount(mps_rpc.add_routes)            # one line per feature: "/" here
    listener.mount(lambda app: app.router.add_get("/metrics", metrics))
    port = await listener.start()
    ...
    await listener.stop()

Routes are mounted before ``start`` (aiohttp freezes the router then). A fallback handler,
if given, answers every path no mounted route matches (the MPS endpoint answers those in its
own error envelope).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

RouteAdder = Callable[[web.Application], object]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Request line and header limits: the MPS endpoint checks parameter sizes itself (to answer
#: in its envelope), so aiohttp's own limits sit above them.
MAX_LINE_BYTES = 128 * 1024
MAX_FIELD_BYTES = 16 * 1024


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"http_listen {address!r}: expected HOST:PORT (for example 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpListener:
    def __init__(
        self,
        address: str,
        *,
        shutdown_grace_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        client_max_size: int = 1024 * 1024,
    ) -> None:
        self.host, self.requested_port = split_address(address)
        self.app = web.Application(
            client_max_size=client_max_size,
            handler_args={"max_line_size": MAX_LINE_BYTES, "max_field_size": MAX_FIELD_BYTES},
        )
        self.ssl_context = ssl_context
        self.shutdown_grace_s = shutdown_grace_s
        self.port = 0
        self._fallback: Handler | None = None
        self._runner: web.AppRunner | None = None

    def mount(self, add_routes: RouteAdder) -> None:
        """Let a feature add its routes (``add_routes(app)``) to this listener."""
        add_routes(self.app)

    def fallback(self, handler: Handler) -> None:
        """Answer requests no mounted route matches with ``handler``."""
        self._fallback = handler

    async def start(self) -> int:
        if self._fallback is not None:
            self.app.router.add_route("*", "/{tail:.*}", self._fallback)
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=self.shutdown_grace_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let calls in progress finish (up to the grace time), close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def tls_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """Server-side TLS with the gRPC listener's certificate and key; with a client CA, clients
    must present a certificate it signed, as on the gRPC listener (the caller is still
    identified by its request signature)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
