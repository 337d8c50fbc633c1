"""The embedded storage: each bucket is a folder under the data root."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from mps_snapshot_server.domain.errors import DiskFull, ErrorCode, InvalidParameter, PermissionDenied, ResourceNotFound
from mps_snapshot_server.domain.keys import key_problem
from mps_snapshot_server.storage.base import InputHandle, ObjectInfo


class LocalStore:
    """Buckets as folders: ``ROOT/example-bucket/example/test.flv`` is bucket
    ``example-bucket``, key ``example/test.flv``. Output buckets are created on first
    write so MPS examples work unchanged; input buckets must exist."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Objects are written here first, then renamed into place, so a crash mid-write
        # leaves debris only here (swept at server start), never a partial file in a bucket.
        # A bucket name cannot start with ".", so this folder is never mistaken for one.
        self.uploads = self.root / ".uploads"
        self.uploads.mkdir(exist_ok=True)

    def sweep(self) -> None:
        """Remove what a crashed server left half-written (call before serving)."""
        shutil.rmtree(self.uploads, ignore_errors=True)
        self.uploads.mkdir()

    def path(self, bucket: str, key: str) -> Path:
        # Keys were validated already; this re-check is the last line of defence against
        # anything that would escape the bucket folder.
        problem = key_problem(key)
        if problem or "/" in bucket or bucket in ("", ".", ".."):
            raise InvalidParameter(
                f"Object key {key!r} is invalid: {problem or 'bad bucket'}.",
                code=ErrorCode.INVALID_PARAMETER_OBJECT_KEY_INVALID,
            )
        bucket_dir = self.root / bucket
        path = bucket_dir / key
        # No component may be a symbolic link, the bucket folder included: a link is
        # followed by every open and rename, so one planted in the data folder (or a
        # bucket folder that is one) would read or write outside it. The root itself
        # was resolved once at start. Comparing with the resolved path catches a link
        # anywhere along the existing part of the path.
        if os.path.realpath(path) != str(path):
            raise PermissionDenied(
                f"Bucket {bucket!r} or object {key!r} goes through a symbolic link in the embedded store; "
                "symbolic links are refused there (they could lead outside the data folder). Ask the operator "
                "to replace the link with a real folder.",
            )
        return path

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        path = self.path(bucket, key)
        try:
            st = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            if not (self.root / bucket).is_dir():
                raise ResourceNotFound(f"Bucket {bucket!r} does not exist.") from None
            raise ResourceNotFound(f"Object {key!r} does not exist in bucket {bucket!r}; upload it first.") from None
        if not path.is_file():
            raise ResourceNotFound(f"Object {key!r} in bucket {bucket!r} is not a file.")
        return ObjectInfo(size=st.st_size, version=f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}")

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        return InputHandle(url="file:" + str(self.path(bucket, key).resolve()), protocols=("file",))

    async def put_file(
        self, bucket: str, key: str, path: Path, content_type: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """``progress`` (called from a worker thread) gets the bytes copied after each chunk."""
        try:
            await asyncio.to_thread(self._put, self.path(bucket, key), path, progress, content_type)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # The server's disk, not the request: a service fault (retried for async jobs).
                raise DiskFull(
                    f"The embedded store's disk is full; {key!r} could not be written. This is not a fault "
                    "of the input; retry later.",
                    retry_after=5.0,
                ) from None
            raise

    def _put(
        self, dest: Path, src: Path, progress: Callable[[int], None] | None = None, content_type: str = ""
    ) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.uploads / f"{uuid.uuid4().hex}.part"
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                fout.flush()
                os.fsync(fout.fileno())
            if content_type:
                # A folder has no content type: it is kept in the file's user.mime_type
                # attribute (the name Apache and nginx modules read), where the filesystem
                # supports extended attributes.
                with contextlib.suppress(OSError):
                    os.setxattr(tmp, "user.mime_type", content_type.encode())
            # rename is atomic: readers see the old object or the whole new one.
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def delete(self, bucket: str, key: str) -> None:
        await asyncio.to_thread(self._delete, self.path(bucket, key), self.root / bucket)

    @staticmethod
    def _delete(path: Path, bucket_dir: Path) -> None:
        path.unlink(missing_ok=True)
        # Folders only exist here to hold keys: like an S3 prefix, one disappears with its last key.
        parent = path.parent
        while parent != bucket_dir and parent.is_relative_to(bucket_dir):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def close(self) -> None:
        return None

    def for_role(self, role_arn: str) -> LocalStore:
        # Folders on the server's disk have no credentials: RoleArn is only echoed.
        return self
