"""Dependencies point down only, along the arrows of README.md's "Layout" section.

``ALLOWED`` is that one table: for each package or top-level module of ``src/connector``, the
others it may import. The test reads every import statement of the source and checks it
against the table; a module the table does not name fails, so a new one gets its row (and its
line in README.md) when it is added. On top of the arrows: the core imports no aiohttp,
aiosqlite or asyncio (and no clock, uuid or environment of its own); the service layer no
aiohttp or database driver; and no module imports a name starting with ``_`` from another.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "connector"

# Each unit -> the units it may import (its own modules and the package root always).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "signals": frozenset(),
    "logs": frozenset(),
    "terminal": frozenset({"core"}),
    "config": frozenset({"core", "logs"}),
    "keys": frozenset({"core"}),
    "service": frozenset({"core", "config"}),
    "participant": frozenset({"core", "config", "keys"}),
    "adapters": frozenset({"core", "config", "keys", "service", "logs"}),
    "registry": frozenset({"core", "config", "keys", "service", "adapters", "participant",
                           "signals", "logs"}),
    "console": frozenset({"core", "config", "keys", "service", "adapters", "participant",
                          "registry", "logs", "audit_tool"}),
    "client": frozenset({"core", "config", "service", "terminal"}),
    "authority": frozenset({"core", "keys", "participant"}),
    "demo": frozenset({"core", "participant", "registry"}),
    "daemon": frozenset({"core", "config", "keys", "service", "adapters", "participant",
                         "registry", "signals", "logs", "console"}),
    "audit_tool": frozenset({"core", "config", "keys", "participant", "adapters", "registry"}),
    "audit_commands": frozenset({"config", "audit_tool"}),
    "db_commands": frozenset({"core", "config", "adapters"}),
    "consent_commands": frozenset({"config", "client", "terminal"}),
    "cli": frozenset({"core", "config", "participant", "registry", "daemon", "client",
                      "authority", "audit_commands", "db_commands", "consent_commands",
                      "terminal"}),
}
# Third-party and standard-library modules a unit must not import.
FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {
    "core": frozenset({"aiohttp", "aiosqlite", "asyncpg", "asyncio", "uuid", "os", "time"}),
    "service": frozenset({"aiohttp", "aiosqlite", "asyncpg"}),
}


def _unit(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from connector import x``
    names ``connector.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "connector":
                # the package's metadata (``__version__``) is the root, not a unit
                names.update(f"connector.{alias.name}" for alias in node.names
                             if not _dunder(alias.name))
    return names


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def _arrow_violations(path: Path, src: Path = SRC) -> list[str]:
    unit = _unit(path, src)
    allowed = ALLOWED.get(unit)
    if allowed is None:
        return [f"{path.relative_to(src)}: unit {unit!r} has no row in ALLOWED"]
    bad = []
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "connector" and len(parts) > 1 and parts[1] not in {unit, *allowed}:
            bad.append(f"{path.relative_to(src)} imports {name}")
        if parts[0] in FORBIDDEN_LIBRARIES.get(unit, ()):
            bad.append(f"{path.relative_to(src)} imports {name}")
    return bad


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _private(name: str) -> bool:
    """``_name`` is private; a dunder (``__version__``) is the module's public metadata."""
    return name.startswith("_") and not _dunder(name)


def _private_imports(path: Path, src: Path = SRC) -> list[str]:
    """``from connector.x import _name`` and ``module._name`` of an imported connector module."""
    tree = ast.parse(path.read_text())
    bad: list[str] = []
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("connector"):
            for alias in node.names:
                if _private(alias.name):
                    bad.append(f"{path.relative_to(src)} imports {node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("connector"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            bad.append(f"{path.relative_to(src)} uses {node.value.id}.{node.attr}")
    return bad


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_imports_follow_the_arrows(unit: str) -> None:
    paths = [p for p in _sources() if _unit(p) == unit]
    assert paths, f"no module of unit {unit!r}: remove its row"
    assert [v for p in paths for v in _arrow_violations(p)] == []


def test_every_module_has_a_row() -> None:
    assert sorted({_unit(p) for p in _sources()} - set(ALLOWED)) == []


def test_no_module_imports_another_modules_private_names() -> None:
    assert [v for p in _sources() for v in _private_imports(p)] == []


def _readme_arrows() -> dict[str, frozenset[str]]:
    """The ``unit -> a, b`` lines of the code block in README.md's "Layout" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    arrows = {}
    for line in block.splitlines():
        match = re.match(r"^\s*([a-z_]+)/?\s+->\s*(.*?)\s*(?:#.*)?$", line)
        if match:
            targets = {t.strip().rstrip("/") for t in match.group(2).split(",")}
            arrows[match.group(1)] = frozenset(targets - {"(nothing)", ""})
    return arrows


def test_readme_draws_exactly_these_arrows() -> None:
    assert _readme_arrows() == ALLOWED


def test_the_checks_can_fail(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    bad = tmp_path / "core" / "m.py"
    bad.write_text("import aiohttp\nfrom asyncio import sleep\nfrom connector.service import x\n"
                   "from connector.keys import _secret\nimport connector.config as c\n"
                   "c._hidden\n")
    assert _imports(bad) >= {"aiohttp", "asyncio", "connector.service"}
    assert sorted(_arrow_violations(bad, tmp_path)) == [
        "core/m.py imports aiohttp", "core/m.py imports asyncio",
        "core/m.py imports connector.config", "core/m.py imports connector.keys",
        "core/m.py imports connector.service"]
    assert _private_imports(bad, tmp_path) == ["core/m.py imports connector.keys._secret",
                                               "core/m.py uses c._hidden"]
    stray = tmp_path / "newthing.py"
    stray.write_text("")
    assert _arrow_violations(stray, tmp_path) == [
        "newthing.py: unit 'newthing' has no row in ALLOWED"]
