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
    """Maps Location values (shell wildcards allowed) to a backend. ``kind`` is "local"."""

    location: str = "*"
    kind: str = "local"


@dataclass(frozen=True)
class Settings:
    #: Address the gRPC server listens on (HOST:PORT; port 0 picks a free port).
    listen: str = "127.0.0.1:50051"
    #: Root of the embedded storage (one folder per bucket) and of the SQLite job store.
    data_dir: Path = Path("data")
    #: ffmpeg and ffprobe executables (names are looked up on PATH).
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    #: Server limit for a synchronous snapshot, in seconds (MPS: 5 s).
    sync_timeout_s: float = 5.0
    #: Most ffmpeg/ffprobe processes running at once across all pipelines.
    max_ffmpeg_processes: int = field(default_factory=lambda: os.cpu_count() or 2)
    #: Wall-clock limit of one ffmpeg run in an asynchronous job, in seconds.
    ffmpeg_timeout_s: float = 300.0
    #: CPU-seconds and address-space limits of one ffmpeg process.
    ffmpeg_cpu_s: int = 600
    ffmpeg_memory_mb: int = 4096
    #: Largest snapshot image accepted from ffmpeg, in bytes.
    max_image_bytes: int = 32 * 1024 * 1024
    #: Largest sprite accepted, in pixels (width x height); JPEG also caps a side at 65,500.
    max_sprite_pixels: int = 128_000_000
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
    #: Log level name.
    log_level: str = "INFO"
    #: Storage routes, tried in order (from the TOML file's [[storage]] tables).
    storage: tuple[StorageRoute, ...] = (StorageRoute(),)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mps-snapshot.db"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / ".tmp"

    def resolved_ffmpeg(self) -> str:
        return shutil.which(self.ffmpeg) or self.ffmpeg

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
            elif key in {f.name for f in dataclasses.fields(Settings)}:
                values[key] = _coerce(getattr(settings, key), raw, key)
            else:
                raise ValueError(f"{path}: unknown setting {key!r}")
    for f in dataclasses.fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and f.name != "storage":
            values[f.name] = _coerce(getattr(settings, f.name), raw, ENV_PREFIX + f.name.upper())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(settings, **values)
