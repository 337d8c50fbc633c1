"""S3-compatible object storage (AWS S3, MinIO, Ceph, OSS's S3 API, ...) through aioboto3.

ffmpeg never sees credentials: it reads an input through a short-lived presigned GET URL,
with HTTP range requests, so a snapshot near the end of a 100 GB file reads the index and
one group of pictures, not the file (docs/performance.md, "Bytes read from object storage").
Outputs are uploaded whole (one PUT) or in parts; a multipart upload that fails is aborted,
so no partial object and no open upload is left behind.

Credentials and presigned URLs are never logged and never put in error messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from mps_snapshot_server.config import StorageRoute
from mps_snapshot_server.domain.errors import (
    InternalError,
    InvalidParameter,
    MpsError,
    PermissionDenied,
    ResourceNotFound,
    TransientError,
)
from mps_snapshot_server.storage.base import InputHandle, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
#: Time close() gives aborts still running in the background.
_ABORT_GRACE_S = 10.0

_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_BUSY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"})
#: Failures of the connection itself (after botocore's own retries).
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True)
class S3Options:
    """One S3 endpoint with one set of credentials: a storage route's S3 settings (each
    defined once, in config.StorageRoute; the route's Location aside) and the input size
    limit that applies. Equal options share one store."""

    route: StorageRoute
    max_input_bytes: int
    #: Where the store is used (the route patterns), for error messages only.
    label: str = field(default="", compare=False)

    @classmethod
    def from_route(cls, route: StorageRoute, default_max_input_bytes: int) -> S3Options:
        return cls(
            dataclasses.replace(route, location="*"),
            route.max_input_bytes or default_max_input_bytes,
            label=route.location,
        )

    @property
    def protocols(self) -> tuple[str, ...]:
        """What ffmpeg needs to read a presigned URL of this endpoint, and nothing more."""
        if self.route.endpoint_url.lower().startswith("http://"):
            return ("http", "tcp")
        return ("https", "tls", "tcp")


def quiet_sdk_loggers() -> None:
    """botocore logs signed requests at DEBUG; keep the SDK at INFO unless configured."""
    for name in ("botocore", "aiobotocore", "boto3", "aioboto3", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _md5_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class S3Store:
    """An ObjectStore on one S3-compatible endpoint: one aioboto3 session and client per
    credentials profile (normally exactly one), opened by ``open()``, closed by ``close()``."""

    def __init__(self, options: S3Options) -> None:
        self.options = options
        self._clients: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._aborts: set[asyncio.Task[None]] = set()
        self._default = _Bound(self, "")
        self._views: dict[str, _Bound] = {}

    # -- life cycle -------------------------------------------------------------------

    def _profiles(self) -> list[str]:
        """ "" is the route's own credentials; the others come from profiles_by_role."""
        return ["", *sorted({profile for _, profile in self.options.route.profiles_by_role})]

    async def open(self) -> None:
        """Create the sessions and clients and check that credentials can be found."""
        quiet_sdk_loggers()
        o = self.options
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": o.route.addressing_style},
            retries={"mode": "standard", "total_max_attempts": max(1, o.route.max_attempts)},
            connect_timeout=o.route.connect_timeout_s,
            read_timeout=o.route.read_timeout_s,
            # Only the checksums S3 requires: many S3-compatible stores reject the newer
            # aws-chunked trailing checksums. Uploads carry Content-MD5 instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            for profile in self._profiles():
                session = self._session(profile)
                credentials = session.get_credentials()
                if inspect.isawaitable(credentials):
                    credentials = await credentials
                if credentials is None:
                    raise ValueError(
                        f"storage route {self.options.label!r}: no S3 credentials found; set access_key_id and "
                        "secret_access_key, a profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                    )
                client = session.client(
                    "s3", endpoint_url=o.route.endpoint_url or None, region_name=o.route.region, config=config
                )
                self._clients[profile] = await self._stack.enter_async_context(client)
        except BaseException:
            await self._stack.aclose()
            self._clients.clear()
            raise

    def _session(self, profile: str) -> aioboto3.Session:
        o = self.options
        try:
            if profile:
                return aioboto3.Session(profile_name=profile, region_name=o.route.region)
            if o.route.access_key_id or o.route.secret_access_key:
                if not (o.route.access_key_id and o.route.secret_access_key):
                    raise ValueError(
                        f"storage route {self.options.label!r}: set both access_key_id and secret_access_key, "
                        "or neither"
                    )
                return aioboto3.Session(
                    aws_access_key_id=o.route.access_key_id,
                    aws_secret_access_key=o.route.secret_access_key,
                    aws_session_token=o.route.session_token or None,
                    region_name=o.route.region,
                )
            return aioboto3.Session(profile_name=o.route.profile or None, region_name=o.route.region)
        except BotoCoreError as exc:  # ProfileNotFound and friends: name the profile, not secrets
            raise ValueError(
                f"storage route {self.options.label!r}: {type(exc).__name__} for profile {profile or o.route.profile!r}"
            ) from None

    async def close(self) -> None:
        if self._aborts:
            await asyncio.wait(set(self._aborts), timeout=_ABORT_GRACE_S)
        await self._stack.aclose()
        self._clients.clear()

    async def idle(self) -> None:
        """Wait for aborts of cancelled uploads still running in the background."""
        while self._aborts:
            await asyncio.wait(set(self._aborts))

    def _client(self, profile: str) -> Any:
        try:
            return self._clients[profile]
        except KeyError:
            raise RuntimeError("S3Store used before open()") from None

    # -- RoleArn ------------------------------------------------------------------------

    def for_role(self, role_arn: str) -> ObjectStore:
        """The store as seen with the credentials profile ``role_arn`` selects.

        An empty RoleArn, or any RoleArn on a store without ``profiles_by_role``, uses the
        route's own credentials. A RoleArn the mapping does not name is refused.
        """
        if not role_arn or not self.options.route.profiles_by_role:
            return self
        profile = dict(self.options.route.profiles_by_role).get(role_arn)
        if profile is None:
            raise PermissionDenied(
                f"RoleArn {role_arn!r} is not configured for the storage of Location {self.options.label!r}; "
                "use one of the roles in its profiles_by_role, or no RoleArn."
            )
        # One view per profile, so callers keying caches by the store object (the probe
        # cache does) see the same object every time.
        return self._views.setdefault(profile, _Bound(self, profile))

    # -- ObjectStore ---------------------------------------------------------------------

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self._default.head(bucket, key)

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        return await self._default.input_handle(bucket, key)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        await self._default.put_file(bucket, key, path, content_type)

    async def delete(self, bucket: str, key: str) -> None:
        await self._default.delete(bucket, key)

    # -- errors -------------------------------------------------------------------------

    def _where(self) -> str:
        return f"the S3 storage of Location {self.options.label!r}" if self.options.label else "the S3 storage"

    def client_error(self, exc: ClientError, verb: str, bucket: str, key: str) -> MpsError:
        """An MPS error for a storage refusal: says what to fix, names no host, key id or URL.

        ``verb`` is what was asked: "read", "write" or "delete".
        """
        code, status = _error_code(exc), _status(exc)
        what = code or str(status)
        if status == 403 or code in _DENIED_CODES:
            return PermissionDenied(
                f"{self._where()} denied access ({what}) when asked to {verb} {key!r} in bucket {bucket!r}; "
                "give this server's credentials that permission, or check the credentials configured for "
                "this Location."
            )
        if code == "NoSuchUpload":  # the storage dropped our multipart upload midway
            return TransientError(f"{self._where()} lost the multipart upload of {key!r}; retry later.")
        if status == 404 or code in _MISSING_CODES:
            if code == "NoSuchBucket":
                return ResourceNotFound(f"Bucket {bucket!r} does not exist in {self._where()}; check Bucket.")
            return ResourceNotFound(f"Object {key!r} does not exist in bucket {bucket!r}; upload it first.")
        if status >= 500 or code in _BUSY_CODES:
            return TransientError(
                f"{self._where()} kept failing ({what}) after {self.options.route.max_attempts} attempts to "
                f"{verb} {key!r}; retry later."
            )
        return InternalError(f"{self._where()} refused to {verb} {key!r} in bucket {bucket!r} ({what}).")

    def transport_error(self, exc: BaseException, verb: str, key: str) -> MpsError:
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return PermissionDenied(f"No credentials are available for {self._where()}; configure them.")
        return TransientError(
            f"{self._where()} could not be reached ({type(exc).__name__}) after {self.options.route.max_attempts} "
            f"attempts to {verb} {key!r}; retry later."
        )

    # -- multipart housekeeping ------------------------------------------------------------

    def abort_later(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.abort(client, bucket, key, upload_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def abort(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload; botocore retries it. Never raises."""
        try:
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _error_code(exc) != "NoSuchUpload":  # gone already: aborted or completed
                log.warning(
                    "could not abort the multipart upload of %s/%s (%s); a lifecycle rule "
                    "AbortIncompleteMultipartUpload removes it later",
                    bucket,
                    key,
                    _error_code(exc) or _status(exc),
                )
        except Exception as exc:
            log.warning(
                "could not abort the multipart upload of %s/%s (%s); a lifecycle rule "
                "AbortIncompleteMultipartUpload removes it later",
                bucket,
                key,
                type(exc).__name__,
            )


class _Bound:
    """The store's operations with one credentials profile's client."""

    def __init__(self, store: S3Store, profile: str) -> None:
        self.store = store
        self.profile = profile

    @property
    def client(self) -> Any:
        return self.store._client(self.profile)

    def for_role(self, role_arn: str) -> ObjectStore:
        return self.store.for_role(role_arn)

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        client, store = self.client, self.store
        try:
            meta = await client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 and not await self._bucket_exists(bucket):
                raise ResourceNotFound(
                    f"Bucket {bucket!r} does not exist in {store._where()}; check Bucket and Location."
                ) from None
            if _status(exc) == 404:
                raise ResourceNotFound(
                    f"Object {key!r} does not exist in bucket {bucket!r}; upload it first, and check that "
                    "Object is URL-encoded exactly once."
                ) from None
            raise store.client_error(exc, "read", bucket, key) from None
        except _TRANSPORT_ERRORS as exc:
            raise store.transport_error(exc, "read", key) from None
        size = int(meta.get("ContentLength") or 0)
        limit = store.options.max_input_bytes
        if size > limit:
            raise InvalidParameter.field(
                "input.object",
                f"Object {key!r} is {size} bytes, more than this server accepts ({limit} bytes, setting "
                "max_input_bytes); submit a smaller file.",
            )
        version = meta.get("VersionId") or ""
        if not version or version == "null":
            version = f"{meta.get('ETag', '')}-{meta.get('LastModified', '')}-{size}"
        return ObjectInfo(size=size, version=str(version))

    async def _bucket_exists(self, bucket: str) -> bool:
        try:
            await self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            return _status(exc) != 404
        except _TRANSPORT_ERRORS:
            return True
        return True

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        url = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.store.options.route.presign_expiry_s
        )
        return InputHandle(url=url, protocols=self.store.options.protocols)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        store = self.store
        size = (await asyncio.to_thread(path.stat)).st_size
        try:
            if size < store.options.route.multipart_threshold_bytes:
                await self._put_single(bucket, key, path, content_type)
            else:
                await self._put_multipart(bucket, key, path, size, content_type)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise ResourceNotFound(
                    f"Output bucket {bucket!r} does not exist in {store._where()}; create it first "
                    "(S3-compatible buckets are not created on demand)."
                ) from None
            raise store.client_error(exc, "write", bucket, key) from None
        except _TRANSPORT_ERRORS as exc:
            raise store.transport_error(exc, "write", key) from None

    async def _put_single(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        await self.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ContentMD5=_md5_b64(hashlib.md5(data).digest()),
        )

    async def _put_multipart(self, bucket: str, key: str, path: Path, size: int, content_type: str) -> None:
        client, store = self.client, self.store
        part_size = max(store.options.route.multipart_part_bytes, math.ceil(size / MAX_PARTS))
        loop = asyncio.get_running_loop()
        started = loop.time()
        created = await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
        upload_id = created["UploadId"]
        try:
            if created.get("ResponseMetadata", {}).get("RetryAttempts"):
                await self._abort_lost_creates(bucket, key, upload_id, loop.time() - started)
            parts: list[dict[str, Any]] = []
            digests: list[bytes] = []
            offset = 0
            while offset < size:
                chunk = await asyncio.to_thread(_read_at, path, offset, min(part_size, size - offset))
                if not chunk:
                    raise OSError(f"{path.name} shrank while it was being uploaded")
                digest = hashlib.md5(chunk).digest()
                number = len(parts) + 1
                answer = await client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ContentMD5=_md5_b64(digest),
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                digests.append(digest)
                offset += len(chunk)
            await self._complete(bucket, key, upload_id, parts, digests)
        except asyncio.CancelledError:
            # The caller's deadline passed: do not hold it up, but leave no open upload.
            store.abort_later(client, bucket, key, upload_id)
            raise
        except BaseException:
            await store.abort(client, bucket, key, upload_id)
            raise

    async def _abort_lost_creates(self, bucket: str, key: str, upload_id: str, window_s: float) -> None:
        """CreateMultipartUpload was retried: an earlier attempt may have created an upload
        whose answer was lost. Abort uploads of this key begun while we were creating ours."""
        try:
            listing = await self.client.list_multipart_uploads(Bucket=bucket, Prefix=key)
        except (ClientError, *_TRANSPORT_ERRORS):
            return  # best effort; a lifecycle rule is the backstop
        uploads = [u for u in listing.get("Uploads", []) if u.get("Key") == key]
        ours = next((u for u in uploads if u.get("UploadId") == upload_id), None)
        if ours is None or "Initiated" not in ours:
            return
        earliest = ours["Initiated"] - datetime.timedelta(seconds=window_s + 2.0)
        for upload in uploads:
            if upload["UploadId"] != upload_id and earliest <= upload.get("Initiated", earliest) <= ours["Initiated"]:
                log.info("aborting a multipart upload of %s/%s whose creation answer was lost", bucket, key)
                await self.store.abort(self.client, bucket, key, upload["UploadId"])

    async def _complete(
        self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]], digests: Iterable[bytes]
    ) -> None:
        try:
            await self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except ClientError as exc:
            # A retried Complete whose first attempt succeeded but whose answer was lost finds
            # the upload gone: the object is there if its ETag is the one these parts make.
            if _error_code(exc) != "NoSuchUpload":
                raise
            digest_list = list(digests)
            expected = f'"{hashlib.md5(b"".join(digest_list)).hexdigest()}-{len(digest_list)}"'
            try:
                meta = await self.client.head_object(Bucket=bucket, Key=key)
            except ClientError:
                raise exc from None
            if meta.get("ETag") != expected:
                raise

    async def delete(self, bucket: str, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 or _error_code(exc) in _MISSING_CODES:
                return  # already gone, or its bucket is
            raise self.store.client_error(exc, "delete", bucket, key) from None
        except _TRANSPORT_ERRORS as exc:
            raise self.store.transport_error(exc, "delete", key) from None

    async def close(self) -> None:
        return None  # the store owns the clients


async def open_stores(stores: Iterable[object]) -> None:
    """Open every S3Store among ``stores`` (each once); close them all again on failure."""
    opened: list[S3Store] = []
    seen: set[int] = set()
    try:
        for store in stores:
            if isinstance(store, S3Store) and id(store) not in seen:
                seen.add(id(store))
                await store.open()
                opened.append(store)
    except BaseException:
        for store in opened:
            await store.close()
        raise
