"""What the worker needs from the layers above it, as protocols, so nothing here imports
upward: the composition root (app.py) passes the service's objects in."""

from __future__ import annotations

from typing import Protocol

from mps_snapshot_server.domain.models import Pipeline


class Pipelines(Protocol):
    """The pipeline registry (service/pipelines.py), read-only."""

    @property
    def default(self) -> Pipeline: ...

    def all(self) -> list[Pipeline]: ...

    def resolve(self, pipeline_id: str) -> Pipeline: ...

    async def refresh(self) -> None:
        """Re-read pipelines another replica changed (listeners are told)."""
        ...
