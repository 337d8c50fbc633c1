"""RAM-style authorization: deny by default, policies allow or deny actions on resources,
and an explicit deny beats any allow.

Actions are MPS's RAM actions (``mts:SubmitSnapshotJob``); resources are
``pipeline/<id>`` and ``bucket/<name>``. Both may use shell wildcards (``mts:*``,
``mts:Query*``, ``bucket/media-*``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fnmatch import fnmatchcase


class Effect(enum.StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


@dataclass(frozen=True)
class Statement:
    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...] = ("*",)

    def matches(self, action: str, resource: str) -> bool:
        return any(fnmatchcase(action, a) for a in self.actions) and any(
            fnmatchcase(resource, r) for r in self.resources
        )


def is_allowed(statements: tuple[Statement, ...], action: str, resources: tuple[str, ...]) -> bool:
    """True when every resource is allowed for the action and none is denied."""
    for resource in resources or ("*",):
        matched = [s for s in statements if s.matches(action, resource)]
        if any(s.effect is Effect.DENY for s in matched) or not matched:
            return False
    return True


#: Every action the service checks, by RPC.
ACTIONS = {
    "SubmitSnapshotJob": "mts:SubmitSnapshotJob",
    "QuerySnapshotJobList": "mts:QuerySnapshotJobList",
    "WatchSnapshotJob": "mts:QuerySnapshotJobList",
    "CancelSnapshotJob": "mts:CancelSnapshotJob",
    "AddPipeline": "mts:AddPipeline",
    "UpdatePipeline": "mts:UpdatePipeline",
    "QueryPipelineList": "mts:QueryPipelineList",
    "SearchPipeline": "mts:SearchPipeline",
    "DeletePipeline": "mts:DeletePipeline",
}

ALLOW_ALL = (Statement(Effect.ALLOW, ("*",), ("*",)),)
