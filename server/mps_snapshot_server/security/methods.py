"""Each RPC's policy, in one table: the RAM action it is authorized as, and the rate-limit
class it is counted in (MPS: Submit 50/s, QuerySnapshotJobList 100/s, pipeline calls 100/s).
The HTTP endpoint maps MPS's Action names onto these same methods."""

from __future__ import annotations

from typing import NamedTuple


class Method(NamedTuple):
    action: str
    limit: str


METHODS: dict[str, Method] = {
    "SubmitSnapshotJob": Method("mts:SubmitSnapshotJob", "submit"),
    "QuerySnapshotJobList": Method("mts:QuerySnapshotJobList", "query"),
    # Watching is reading a job: authorized and counted as QuerySnapshotJobList.
    "WatchSnapshotJob": Method("mts:QuerySnapshotJobList", "query"),
    # Cancelling changes a job (and removes its outputs): counted with Submit.
    "CancelSnapshotJob": Method("mts:CancelSnapshotJob", "submit"),
    "AddPipeline": Method("mts:AddPipeline", "pipeline"),
    "UpdatePipeline": Method("mts:UpdatePipeline", "pipeline"),
    "QueryPipelineList": Method("mts:QueryPipelineList", "pipeline"),
    "SearchPipeline": Method("mts:SearchPipeline", "pipeline"),
    "DeletePipeline": Method("mts:DeletePipeline", "pipeline"),
}


def limit_class(method: str) -> str:
    """The rate-limit class of ``method`` ("other" for a method not in the table)."""
    entry = METHODS.get(method)
    return entry.limit if entry is not None else "other"
