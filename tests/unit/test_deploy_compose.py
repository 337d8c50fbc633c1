"""docs/deploy.md's compose file names only settings the server knows and ports the image EXPOSEs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from mps_snapshot_server.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("# compose.yaml")]
    assert len(blocks) == 1, "docs/deploy.md has one ```yaml block starting with '# compose.yaml'"
    parsed = yaml.safe_load(blocks[0])
    assert isinstance(parsed, dict)
    return parsed


def _exposed_ports() -> set[int]:
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    return {int(p.split("/")[0]) for line in final.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}


def _our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = {name: s for name, s in compose["services"].items() if s.get("build") == "."}
    assert services, "the compose file builds the image (build: .)"
    return services


def test_compose_environment_names_known_settings() -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)} - {
        ENV_PREFIX + "STORAGE",
        ENV_PREFIX + "PRINCIPALS",
    }
    known.add(ENV_PREFIX + "CONFIG")
    for name, service in _our_services(_compose()).items():
        environment = service.get("environment", {})
        names = set(environment) if isinstance(environment, dict) else {e.split("=", 1)[0] for e in environment}
        assert names, name
        unknown = {n for n in names if n.startswith(ENV_PREFIX)} - known
        assert not unknown, f"{name}: settings the server does not know: {sorted(unknown)}"
        assert all(n.startswith(ENV_PREFIX) for n in names), f"{name}: {sorted(names)}"


def test_compose_ports_are_the_images_exposed_ports() -> None:
    exposed = _exposed_ports()
    for name, service in _our_services(_compose()).items():
        ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
        ports |= {int(str(p).split("/")[0]) for p in service.get("expose", [])}
        command = service.get("command", [])
        for flag in ("--listen", "--http-listen"):
            if flag in command:
                ports.add(int(command[command.index(flag) + 1].rsplit(":", 1)[1]))
        for key in ("MPS_SNAPSHOT_LISTEN", "MPS_SNAPSHOT_HTTP_LISTEN"):
            if service.get("environment", {}).get(key):
                ports.add(int(service["environment"][key].rsplit(":", 1)[1]))
        assert ports == exposed, f"{name}: ports {sorted(ports)}, the Dockerfile EXPOSEs {sorted(exposed)}"
