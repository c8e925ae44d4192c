"""Dependencies point down only: cli/daemon -> adapters -> service -> core.

The core imports no aiohttp, aiosqlite or asyncio (and no clock or uuid of its own); the
service layer imports no adapter. Checked on the source's import statements.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "connector"
FORBIDDEN = {
    "core": {"aiohttp", "aiosqlite", "asyncpg", "asyncio", "connector.service",
             "connector.adapters", "connector.daemon", "connector.cli", "connector.config",
             "connector.participant", "connector.keys", "uuid", "os", "time"},
    "service": {"aiohttp", "aiosqlite", "asyncpg", "connector.adapters", "connector.daemon",
                "connector.cli"},
    "adapters": {"connector.daemon", "connector.cli"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for name in _imports(path):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down(layer: str) -> None:
    assert _violations(layer) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import aiohttp\nfrom asyncio import sleep\n")
    assert _imports(bad) == {"aiohttp", "asyncio"}
