"""The import direction of docs/architecture.md: each package imports only packages below
it (or itself), and the client imports nothing of the server."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "mps_snapshot_server"
CLIENT = ROOT / "client" / "mps_snapshot_client"

#: Floors, top down. A module may import its own package and any package on a lower floor.
FLOORS: dict[str, int] = {
    "__main__": 12,
    "cli": 11,
    "app": 10,
    "http": 9,
    "console": 8,
    "rpc": 8,
    "service": 7,
    "worker": 6,
    "media": 5,
    "observability": 4,
    "storage": 3,
    "security": 3,
    "store": 2,
    "domain": 1,
    "config": 1,
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _package(path: Path) -> str:
    rel = path.relative_to(SERVER)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_server_module_has_a_floor() -> None:
    packages = {_package(p) for p in SERVER.rglob("*.py")} - {"__init__"}
    assert packages <= set(FLOORS), packages - set(FLOORS)


def test_no_server_module_imports_upward() -> None:
    upward = []
    for path in sorted(SERVER.rglob("*.py")):
        source = _package(path)
        if source == "__init__":
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "mps_snapshot_server" or len(parts) < 2:
                continue
            target = parts[1]
            if target != source and FLOORS[target] >= FLOORS[source]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_the_client_imports_nothing_of_the_server() -> None:
    found = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sorted(CLIENT.rglob("*.py"))
        for n in _imports(p)
        if n.split(".")[0] == "mps_snapshot_server"
    ]
    assert found == []
