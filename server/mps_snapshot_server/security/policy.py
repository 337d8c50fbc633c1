"""RAM-style authorization: deny by default, policies allow or deny actions on resources,
and an explicit deny beats any allow.

Actions are MPS's RAM actions (``mts:SubmitSnapshotJob``); resources are
``pipeline/<id>``, ``bucket/<name>`` and ``owner/<principal>``. Both may use shell
wildcards (``mts:*``, ``mts:Query*``, ``bucket/media-*``).

Buckets are checked with the access the call needs, as OSS separates ``oss:GetObject``
from ``oss:PutObject``: ``bucket/<name>:read`` (an input, or a job's outputs being looked
at) and ``bucket/<name>:write`` (outputs being written, a job being cancelled). A policy
resource without the suffix (``bucket/<name>``, ``bucket/media-*``, ``*``) grants or
denies both, so policies written before the distinction keep their meaning.
"""

from __future__ import annotations

import enum
import re
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
        if not any(fnmatchcase(action, a) for a in self.actions):
            return False
        names = (resource, resource.rpartition(":")[0]) if _ACCESS.search(resource) else (resource,)
        return any(fnmatchcase(name, r) for name in names for r in self.resources)


#: A bucket resource with the access it needs (bucket names cannot contain ":").
_ACCESS = re.compile(r"^bucket/[^:]*:(read|write)$")


def bucket(name: str, access: str) -> str:
    """The resource checked for ``access`` ("read" or "write") to bucket ``name``."""
    return f"bucket/{name}:{access}"


def is_allowed(statements: tuple[Statement, ...], action: str, resources: tuple[str, ...]) -> bool:
    """True when every resource is allowed for the action and none is denied."""
    for resource in resources or ("*",):
        matched = [s for s in statements if s.matches(action, resource)]
        if any(s.effect is Effect.DENY for s in matched) or not matched:
            return False
    return True


def may_ever(statements: tuple[Statement, ...], action: str) -> bool:
    """True when the action is allowed on some resource: some Allow names it and no Deny
    takes it away everywhere. Calls about things that may not exist (an unknown job id)
    check this first, so a caller without the action learns nothing about them."""
    if any(s.effect is Effect.DENY and "*" in s.resources and s.matches(action, "*") for s in statements):
        return False
    return any(s.effect is Effect.ALLOW and any(fnmatchcase(action, a) for a in s.actions) for s in statements)


#: What a server without principals admits: every action on every resource.
ALLOW_ALL = (Statement(Effect.ALLOW, ("*",), ("*",)),)
