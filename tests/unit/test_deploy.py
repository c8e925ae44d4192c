"""deploy/connector@.service: the hardening is there, and systemd accepts the unit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "connector@.service"


def _directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, per key in order (keys may repeat), sections ignored."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return _directives(UNIT.read_text())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ReadWritePaths", "/srv/connector/%i/state"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("Restart", "on-failure"),
        ("User", "connector"),
        ("UMask", "0077"),
        ("RestrictNamespaces", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("WorkingDirectory", "/srv/connector/%i"),
    ],
)
def test_hardening_directive(unit: dict[str, list[str]], key: str, value: str) -> None:
    assert value in unit.get(key, []), f"{key}={value} missing from {UNIT.name}"


def test_runs_the_instance_folder_with_an_absolute_path(unit: dict[str, list[str]]) -> None:
    (exec_start,) = unit["ExecStart"]
    binary, *args = exec_start.split()
    assert Path(binary).is_absolute()
    assert args == ["run", "/srv/connector/%i"]


def test_memory_is_capped(unit: dict[str, list[str]]) -> None:
    (limit,) = unit["MemoryMax"]
    assert limit.endswith(("M", "G")) and int(limit[:-1]) > 0


def test_only_state_is_writable(unit: dict[str, list[str]]) -> None:
    assert unit["ReadWritePaths"] == ["/srv/connector/%i/state"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (not a systemd host)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: check a copy that runs /bin/true instead.
    text = UNIT.read_text()
    lines = [
        "ExecStart=/bin/true run /srv/connector/%i" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    copy = tmp_path / "connector@test.service"
    copy.write_text("\n".join(lines) + "\n")
    result = subprocess.run(["systemd-analyze", "verify", str(copy)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connector@test.service" not in result.stderr, result.stderr
