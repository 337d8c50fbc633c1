"""A read-only web console at /console/: jobs, pipelines, a job's images, sprites and
WebVTT scrub preview. Server-rendered pages, one small script, no build chain.

Access: with principals configured, HTTP basic authentication with an access key (user:
AccessKeyId, password: AccessKeySecret) whose policies allow mts:QuerySnapshotJobList on
every pipeline; without principals, loopback peers only. Objects reach the browser through
short-lived signed URLs: a presigned URL from S3-compatible storage, or for the embedded
storage this console's own signed, expiring media route (with HTTP Range support, so the
video player can seek).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mps_snapshot_server.console import pages
from mps_snapshot_server.domain import sprites as sprite_rules
from mps_snapshot_server.domain import validation
from mps_snapshot_server.domain.errors import MpsError
from mps_snapshot_server.domain.models import Job, ObjectRef
from mps_snapshot_server.observability.metrics import Metrics
from mps_snapshot_server.security.authn import HEADER_AUTHORIZATION
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.service.pipelines import PipelineRegistry
from mps_snapshot_server.storage.base import ObjectStore, StoreWrapper
from mps_snapshot_server.storage.local import LocalStore
from mps_snapshot_server.storage.router import StorageRouter
from mps_snapshot_server.store.base import JobQuery

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 25
_REALM = 'Basic realm="mps-snapshot console", charset="UTF-8"'
# Pages load scripts and styles from here only; media may come from presigned S3 URLs.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; "
    "media-src 'self' http: https:; connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)

#: (waiting, running) jobs of a pipeline, from the scheduler.
PipelineLoad = Callable[[str], tuple[int, int]]


@dataclass
class Console:
    jobs: JobService
    pipelines: PipelineRegistry
    router: StorageRouter
    guard: Guard
    metrics: Metrics
    load: PipelineLoad
    url_expiry_s: int = 600
    #: Signs media URLs; new on each start, so URLs die with the process.
    secret: bytes = b""

    def __post_init__(self) -> None:
        if not self.secret:
            self.secret = secrets.token_bytes(32)

    # Signed media URLs

    def _signature(self, location: str, bucket: str, key: str, expires: int) -> str:
        message = f"{location}\n{bucket}\n{key}\n{expires}".encode()
        return base64.urlsafe_b64encode(hmac.new(self.secret, message, hashlib.sha256).digest()).decode().rstrip("=")

    async def media_url(self, ref: ObjectRef, key: str) -> str:
        """A URL the browser can fetch ``key`` in ``ref``'s bucket from, valid for a short time."""
        store = self.router.store_for(ref, "object")
        if isinstance(_unwrap(store), LocalStore):
            expires = int(time.time()) + self.url_expiry_s
            sig = self._signature(ref.location, ref.bucket, key, expires)
            query = urlencode({"l": ref.location, "b": ref.bucket, "k": key, "e": expires, "s": sig})
            return f"/console/media?{query}"
        # S3: the presigned GET the storage layer also gives ffmpeg.
        return (await store.input_handle(ref.bucket, key)).url

    def check_media(self, query: Any) -> tuple[LocalStore, str, str]:
        location, bucket, key = query.get("l", ""), query.get("b", ""), query.get("k", "")
        try:
            expires = int(query.get("e", "0"))
        except ValueError:
            expires = 0
        expected = self._signature(location, bucket, key, expires)
        if not hmac.compare_digest(expected, query.get("s", "")):
            raise web.HTTPForbidden(text="The media URL's signature does not match; reload the page.")
        if expires < time.time():
            raise web.HTTPForbidden(text="The media URL has expired; reload the page for a new one.")
        store = _unwrap(self.router.for_location(location, "location"))
        if not isinstance(store, LocalStore):
            raise web.HTTPNotFound()
        return store, bucket, key

    # Access

    def authenticate(self, request: web.Request) -> str:
        """The principal's name; raises 401/403 for callers the console must not serve."""
        authn = self.guard.authenticator
        if not authn.enabled:
            if not _is_loopback(request.remote):
                raise web.HTTPForbidden(
                    text="Without configured principals the console answers loopback clients only; "
                    "configure [[principals]] (docs/security.md) to reach it from elsewhere."
                )
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": _REALM}, text="Sign in with an access key.")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            principal = authn.authenticate({HEADER_AUTHORIZATION: f"Bearer {user}:{password}"}, "/console")
            self.guard.authorize(principal, "QuerySnapshotJobList", ("pipeline/*",))
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": _REALM}, text="Malformed credentials.") from None
        except MpsError as exc:
            if exc.code.startswith("Forbidden"):
                raise web.HTTPForbidden(text=exc.message) from None
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": _REALM}, text=exc.message) from None
        return principal.name


def _unwrap(store: ObjectStore) -> ObjectStore:
    """The backend under the observation (and, with replicas, fencing) wrappers."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    return store


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, console: Console) -> None:
    """Mount the console under /console/ on an aiohttp application."""

    def page(render: Callable[[web.Request], Awaitable[str]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            console.authenticate(request)
            body = await render(request)
            return web.Response(
                text=body,
                content_type="text/html",
                headers={
                    "Content-Security-Policy": _CSP,
                    "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer",
                },
            )

        return handler

    async def index(request: web.Request) -> web.StreamResponse:
        console.authenticate(request)
        raise web.HTTPFound("/console/jobs")

    async def jobs_page(request: web.Request) -> str:
        state = request.query.get("state", "")
        pipeline = request.query.get("pipeline", "")
        token = request.query.get("page", "")
        try:
            jobs, _, next_token = await console.jobs.query(
                [], flt=JobQuery(state=state, pipeline_id=pipeline), page_size=PAGE_SIZE, token=token
            )
        except MpsError as exc:
            raise web.HTTPBadRequest(text=exc.message) from None
        except ValueError:
            raise web.HTTPBadRequest(text="The page token is not valid; start again from the first page.") from None
        return pages.jobs_list(jobs, state, pipeline, next_token, [p.id for p in console.pipelines.all()])

    async def pipelines_page(request: web.Request) -> str:
        return pages.pipelines(console.pipelines.all(), console.load)

    async def job_page(request: web.Request) -> str:
        try:
            job = await console.jobs.get(request.match_info["job_id"])
        except MpsError as exc:
            raise web.HTTPNotFound(text=exc.message) from None
        return pages.job(job, await _job_media(console, job))

    async def media(request: web.Request) -> web.StreamResponse:
        store, bucket, key = console.check_media(request.query)
        try:
            path = store.path(bucket, key)
        except MpsError:
            raise web.HTTPNotFound() from None
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        if size < 0:
            raise web.HTTPNotFound(text="The object no longer exists.")
        try:
            wanted = request.http_range
        except ValueError:
            wanted = slice(None, None)
        start, stop, _ = wanted.indices(size)
        console.metrics.storage_read_bytes.labels("local").inc(max(0, stop - start))
        # FileResponse answers Range requests (206), which the video element needs to seek.
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    app.router.add_get("/console", index)
    app.router.add_get("/console/", index)
    app.router.add_get("/console/jobs", page(jobs_page))
    app.router.add_get("/console/jobs/{job_id}", page(job_page))
    app.router.add_get("/console/pipelines", page(pipelines_page))
    app.router.add_get("/console/media", media)
    app.router.add_static("/console/static/", STATIC, append_version=False)


async def _job_media(console: Console, job: Job) -> pages.JobMedia:
    """Signed URLs for everything the job page shows."""
    media = pages.JobMedia()
    try:
        valid = validation.validate(job.request)
    except MpsError:
        return media
    config = valid.config
    out = valid.output_file
    tile_ref = config.tile_output_file or out
    try:
        media.images = [await console.media_url(out, image.object) for image in job.images]
        media.sprites = [await console.media_url(tile_ref, sprite.object) for sprite in job.sprites]
        if job.web_vtt_object:
            vtt_ref = tile_ref if config.sub_out_is_spt_frag and job.sprites else out
            media.video = await console.media_url(valid.input, valid.input_key)
            media.vtt = await console.media_url(vtt_ref, job.web_vtt_object)
            # The track's cues name images relative to the track: map those names to URLs.
            for image, url in zip(job.images, media.images, strict=True):
                media.targets[sprite_rules.relative(job.web_vtt_object, image.object)] = url
            for sprite, url in zip(job.sprites, media.sprites, strict=True):
                media.targets[sprite_rules.relative(job.web_vtt_object, sprite.object)] = url
    except MpsError:
        pass  # a Location no longer configured: the page shows the job without pictures
    return media
