"""Server settings: defaults, then an optional TOML file, then MPS_SNAPSHOT_* environment
variables, then command-line flags (each overriding the one before)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "MPS_SNAPSHOT_"


@dataclass(frozen=True)
class StorageRoute:
    """Maps Location values (shell wildcards allowed) to a backend: ``kind`` "local" (the
    embedded folders) or "s3" (an S3-compatible endpoint; the fields below, see
    docs/storage.md). Routes with the same S3 settings share one connection pool."""

    location: str = "*"
    kind: str = "local"
    #: kind = "s3": the endpoint ("" is AWS S3 itself), its region and addressing style
    #: ("path": http://host/bucket/key, "virtual": http://bucket.host/key).
    endpoint_url: str = ""
    region: str = "us-east-1"
    addressing_style: str = "path"
    #: Credentials; when empty, the usual AWS sources (AWS_* environment variables, the
    #: shared credentials/config files with ``profile``, container or instance roles).
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    profile: str = ""
    #: RoleArn -> credentials profile ({"acs:ram::1:role/x" = "profile-name"} in TOML); an
    #: input/output RoleArn then selects that profile (it grants nothing by itself).
    profiles_by_role: tuple[tuple[str, str], ...] = ()
    #: Lifetime of the presigned GET URLs ffmpeg reads inputs through, in seconds.
    presign_expiry_s: int = 900
    #: Outputs at least this big are uploaded in parts of ``multipart_part_bytes``.
    multipart_threshold_bytes: int = 8 * 1024 * 1024
    multipart_part_bytes: int = 8 * 1024 * 1024
    #: Attempts per storage request (botocore "standard" retries: 5xx, SlowDown,
    #: throttling, connection errors and timeouts, exponential backoff with jitter).
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    #: Largest input object accepted, in bytes; 0 uses the server-wide ``max_input_bytes``.
    max_input_bytes: int = 0

    def __post_init__(self) -> None:
        if self.addressing_style not in ("path", "virtual"):
            raise ValueError(
                f'storage route {self.location!r}: addressing_style must be "path" or "virtual", '
                f"not {self.addressing_style!r}"
            )
        if isinstance(self.profiles_by_role, dict):  # from a TOML table
            object.__setattr__(self, "profiles_by_role", tuple(sorted(self.profiles_by_role.items())))


@dataclass(frozen=True)
class StatementConfig:
    """One policy statement: ``effect`` Allow or Deny, RAM ``actions`` and ``resources``
    (``pipeline/<id>``, ``bucket/<name>``), shell wildcards allowed."""

    effect: str = "Allow"
    actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class PrincipalConfig:
    """A caller: an access key (id + the hash `mps-snapshot hash-secret` prints) and/or the
    common name of its TLS client certificate, with its policy statements."""

    name: str = ""
    access_key_id: str = ""
    access_key_hash: str = ""
    #: A file holding the raw AccessKeySecret (and nothing else): needed for Alibaba Cloud
    #: V1/V3 signatures on the HTTP RPC endpoint, which use the secret itself as the HMAC key.
    #: access_key_hash is then derived from it if not given (docs/security.md).
    access_key_secret_file: str = ""
    cert_cn: str = ""
    statements: tuple[StatementConfig, ...] = ()


@dataclass(frozen=True)
class Settings:
    #: Address the gRPC server listens on (HOST:PORT; port 0 picks a free port).
    listen: str = "127.0.0.1:50051"
    #: Address of the HTTP listener (MPS's HTTP RPC protocol on ``/``, for Alibaba Cloud's
    #: SDKs and CLI, docs/mps-compatibility.md; Prometheus metrics on ``/metrics``; the web
    #: console on ``/console/``); empty: no HTTP listener.
    http_listen: str = ""
    #: Root of the embedded storage (one folder per bucket) and of the SQLite job store.
    data_dir: Path = Path("data")
    #: ffmpeg and ffprobe executables (names are looked up on PATH).
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    #: ffmpeg for decoding inputs in local storage ("": the same as ``ffmpeg``; "imageio": the
    #: static build of the imageio-ffmpeg package, which starts in 0.02 s instead of 0.12 s).
    #: Inputs read over HTTP always use ``ffmpeg``, whose reads are measured (storage.md).
    local_ffmpeg: str = ""
    #: Server limit for a synchronous snapshot, in seconds (MPS: 5 s).
    sync_timeout_s: float = 5.0
    #: Most ffmpeg/ffprobe processes running at once across all pipelines.
    max_ffmpeg_processes: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: Extra processes only synchronous snapshots may start when every shared one is busy
    #: (they also go ahead of queued async work), so a sync call is never starved.
    sync_reserved_processes: int = 1
    #: Wall-clock limit of one ffmpeg run in an asynchronous job, in seconds.
    ffmpeg_timeout_s: float = 300.0
    #: CPU-seconds and address-space limits of one ffmpeg process.
    ffmpeg_cpu_s: int = 600
    ffmpeg_memory_mb: int = 4096
    #: Memory the ffmpeg processes of one asynchronous job may use together, in MB: seek
    #: batches are sized from the measured memory per input to stay within it.
    job_memory_mb: int = 300
    #: Warm decoder workers (media.warm: PyAV processes that keep local inputs open and
    #: take common snapshots without starting ffmpeg); -1: one per shared process slot
    #: (max_ffmpeg_processes); 0: off, every capture runs ffmpeg.
    warm_workers: int = -1
    #: Requests one warm worker answers before it is replaced by a fresh one.
    warm_worker_requests: int = 500
    #: Largest snapshot image accepted from ffmpeg, in bytes.
    max_image_bytes: int = 32 * 1024 * 1024
    #: Largest input object accepted from S3-compatible storage, in bytes (100 GiB).
    max_input_bytes: int = 100 * 1024**3
    #: Largest sprite accepted, in pixels (width x height); JPEG also caps a side at 65,500.
    max_sprite_pixels: int = 128_000_000
    #: Most streams (video, audio, subtitle, data, attachment) an input may have; checked at probe.
    max_input_streams: int = 32
    #: Largest video picture an input may have, in pixels (width x height of its video stream).
    max_input_pixels: int = 8192 * 8192
    #: Longest input accepted, in seconds (its probed duration); 0 means no limit.
    max_duration_s: float = 0.0
    #: Probe results kept in memory (keyed by object version).
    probe_cache_entries: int = 512
    #: Expose gRPC server reflection.
    reflection: bool = True
    #: Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace_s: float = 10.0
    #: Defaults for pipelines created without explicit limits.
    pipeline_max_concurrent_jobs: int = 2
    pipeline_queue_capacity: int = 1000
    #: Times an async job is started before it is failed (a crash or restart mid-job counts).
    max_attempts: int = 3
    #: Completion notifications: delivery attempts, and the first retry delay (doubling).
    notify_attempts: int = 6
    notify_backoff_s: float = 0.5
    #: Callers and their policies ([[principals]] tables in the TOML file). None: no
    #: authentication, every caller allowed, and the server refuses non-loopback addresses
    #: unless ``allow_insecure`` is set.
    principals: tuple[PrincipalConfig, ...] = ()
    #: Serve on a non-loopback address without authentication (never in production).
    allow_insecure: bool = False
    #: With no principals configured: create an access key in this file (mode 0600) on first
    #: start, or read it, and admit only callers that present it (the container image sets
    #: it, so `docker run` is safe on 0.0.0.0 with no configuration). Empty: off.
    bootstrap_key_file: str = ""
    #: TLS: server certificate and key (PEM); with a client CA, clients must present a
    #: certificate signed by it (mutual TLS) and principals can be matched by its CN.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    #: Calls per second per principal (MPS: Submit 50/s, QuerySnapshotJobList 100/s,
    #: pipeline calls 100/s); 0 turns a limit off. The burst is one second's worth.
    rate_submit: float = 50.0
    rate_query: float = 100.0
    rate_pipeline: float = 100.0
    #: WatchSnapshotJob streams one principal may hold open at once.
    max_watch_streams: int = 64
    #: Calls in progress at once, server-wide; more get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1000
    #: Log level name.
    log_level: str = "INFO"
    #: Log lines: "text" (readable) or "json" (one object a line with request, job, pipeline,
    #: principal and trace ids; docs/operations.md).
    log_format: str = "text"
    #: Tracing: "none" (off), "otlp" (OTLP over gRPC to ``otlp_endpoint``, or the standard
    #: OTEL_EXPORTER_OTLP_* variables when empty) or "console" (spans printed to stderr).
    trace_exporter: str = "none"
    otlp_endpoint: str = ""
    #: Lifetime of the signed media URLs the console hands to the browser, in seconds.
    console_url_expiry_s: int = 600
    #: Health: seconds between checks that the job store can commit a write and the data
    #: disk has ``min_free_disk_mb`` free; NOT_SERVING while either fails.
    health_interval_s: float = 2.0
    min_free_disk_mb: int = 64
    #: On SIGTERM, seconds health reports NOT_SERVING (calls still served) before the port
    #: closes, so load balancers stop sending calls first.
    shutdown_notice_s: float = 2.0
    #: First delay before an async job that met a service fault (full disk, storage
    #: outage, ffmpeg killed by a limit) is run again; doubles per attempt, at most 60 s.
    fault_retry_backoff_s: float = 2.0
    #: HTTP/2 streams one connection may have open at once; 0 uses ``max_concurrent_rpcs``
    #: (a burst beyond the limit on a new connection is refused with UNAVAILABLE by gRPC).
    max_concurrent_streams: int = 0
    #: Several replicas: a PostgreSQL DSN (postgresql://user:password@host:5432/db) they share
    #: for jobs, pipelines, leases and limits. Empty: SQLite in the data folder, one process.
    database_url: str = field(default="", repr=False)
    #: PostgreSQL mode: how long a claimed job's lease lasts without renewal, in seconds
    #: (renewed every third of it); a replica that stops renewing loses its jobs after this.
    lease_s: float = 15.0
    #: PostgreSQL mode: jobs this replica runs at once (0: max_ffmpeg_processes).
    replica_jobs: int = 0
    #: Storage routes, tried in order (from the TOML file's [[storage]] tables).
    storage: tuple[StorageRoute, ...] = (StorageRoute(),)

    def __post_init__(self) -> None:
        # Every path setting is made absolute once, when the settings are made: ffmpeg runs
        # with its working directory in a private work folder, so a relative path handed to
        # it (the default ``data`` folder included) would name a file that does not exist there.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                object.__setattr__(self, f.name, value.expanduser().resolve())
            elif f.name.endswith("_file") and isinstance(value, str) and value:
                object.__setattr__(self, f.name, str(Path(value).expanduser().resolve()))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mps-snapshot.db"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / ".tmp"

    def resolved_ffmpeg(self) -> str:
        return shutil.which(self.ffmpeg) or self.ffmpeg

    def resolved_local_ffmpeg(self) -> str:
        if self.local_ffmpeg == "imageio":
            try:
                import imageio_ffmpeg  # type: ignore[import-not-found, import-untyped, unused-ignore]
            except ImportError:
                raise SystemExit(
                    "local_ffmpeg is 'imageio' but the imageio-ffmpeg package is not installed "
                    "(pip install 'mps-snapshot[static]')"
                ) from None
            return str(imageio_ffmpeg.get_ffmpeg_exe())
        if self.local_ffmpeg:
            return shutil.which(self.local_ffmpeg) or self.local_ffmpeg
        return self.resolved_ffmpeg()

    def resolved_warm_workers(self) -> int:
        if self.warm_workers < 0:
            return self.max_ffmpeg_processes
        return self.warm_workers

    def resolved_ffprobe(self) -> str:
        return shutil.which(self.ffprobe) or self.ffprobe


def _coerce(current: Any, raw: Any, name: str) -> Any:
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, got {raw!r}")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, Path):
        return Path(raw)
    return str(raw)


def load(config_file: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    env = dict(os.environ if env is None else env)
    settings = Settings()
    values: dict[str, Any] = {}
    path = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if path is not None:
        doc = tomllib.loads(path.read_text())
        for key, raw in doc.items():
            if key == "storage":
                values["storage"] = tuple(StorageRoute(**route) for route in raw)
            elif key == "principals":
                values["principals"] = tuple(_principal(p) for p in raw)
            elif key in {f.name for f in dataclasses.fields(Settings)}:
                values[key] = _coerce(getattr(settings, key), raw, key)
            else:
                raise ValueError(f"{path}: unknown setting {key!r}")
    for f in dataclasses.fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and f.name not in ("storage", "principals"):
            values[f.name] = _coerce(getattr(settings, f.name), raw, ENV_PREFIX + f.name.upper())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(settings, **values)


def _principal(raw: dict[str, Any]) -> PrincipalConfig:
    statements = tuple(
        StatementConfig(
            effect=st.get("effect", "Allow"),
            actions=tuple(st.get("actions", ())),
            resources=tuple(st.get("resources", ("*",))),
        )
        for st in raw.get("statements", ())
    )
    fields = {k: v for k, v in raw.items() if k != "statements"}
    return PrincipalConfig(**fields, statements=statements)
