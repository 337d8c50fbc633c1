"""Output object names: MPS placeholders such as {Count} filled in for each image."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter

_PLACEHOLDER = re.compile(r"\{([A-Za-z]+)\}")
_INPUT_PARTS = ("ObjectPrefix", "FileName", "ExtName")
_WORKFLOW_ONLY = ("RunId", "MediaId")


@dataclass(frozen=True)
class OutputName:
    """A validated output key template (already URL-decoded)."""

    template: str

    @property
    def names(self) -> frozenset[str]:
        return frozenset(_PLACEHOLDER.findall(self.template))

    def render(self, *, input_key: str, count: int = 1, snapshot_time_ms: float = 0, tile_count: int = 1) -> str:
        folder, base = posixpath.split(input_key)
        stem, dot, ext = base.rpartition(".")
        if not dot:
            stem, ext = base, ""
        values = {
            "ObjectPrefix": f"{folder}/" if folder else "",
            "FileName": stem,
            "ExtName": ext,
            "Count": f"{count:05d}",
            "TileCount": f"{tile_count:05d}",
            "SnapshotTime": str(int(snapshot_time_ms)),
        }
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)

    def pattern(self, *, input_key: str) -> str:
        """The name with the input's parts filled in and per-image placeholders kept."""
        keep = ("Count", "TileCount", "SnapshotTime")
        parts = _PLACEHOLDER.split(self.template)
        out = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                out.append(part)
            elif part in keep:
                out.append("{" + part + "}")
            else:
                out.append(OutputName("{" + part + "}").render(input_key=input_key))
        return "".join(out)


def parse_output_name(template: str, field: str, allowed: frozenset[str]) -> OutputName:
    for name in _PLACEHOLDER.findall(template):
        if name in _WORKFLOW_ONLY:
            raise InvalidParameter.field(
                field,
                f"Placeholder {{{name}}} exists only in MPS media workflows; remove it.",
                code=ErrorCode.INVALID_PARAMETER_OBJECT_KEY_INVALID,
            )
        if name not in allowed:
            raise InvalidParameter.field(
                field,
                f"Unknown placeholder {{{name}}} in Object; use "
                + ", ".join("{" + a + "}" for a in sorted(allowed))
                + ".",
                code=ErrorCode.INVALID_PARAMETER_OBJECT_KEY_INVALID,
            )
    return OutputName(template)


OUTPUT_FILE_PLACEHOLDERS = frozenset({*_INPUT_PARTS, "Count", "SnapshotTime"})
TILE_FILE_PLACEHOLDERS = frozenset({*_INPUT_PARTS, "TileCount"})
ANIMATED_FILE_PLACEHOLDERS = frozenset(_INPUT_PARTS)
