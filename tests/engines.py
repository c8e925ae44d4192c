"""The storage engine of the daemons a test suite starts, as a parameter of the whole session:
``CONNECTOR_E2E_ENGINES`` (tests/stores.py ``e2e_engines``) names the engines, each test runs
on each (``state_engine``), and a test or module marked ``engines(...)`` on those, whatever
the variable says. On PostgreSQL every folder ``create_space`` makes gets a database of its
own.

A conftest takes both by importing them: ``pytest_generate_tests`` (the hook) and
``_state_on_engine`` (the autouse fixture); tests/e2e, tests/fuzz, tests/console and
tests/contract do (the last two for tests/conftest.py's ``managed_space``). The fixture sets
``harness.place_state`` for one module at a time (before the module's own fixtures: an
autouse fixture is set up first in its scope), so that no other module inherits it; a
session fixture that makes folders passes ``placer(...)`` to ``create_space`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests import harness
from tests.stores import e2e_engines, on_new_database


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "state_engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engines")
        metafunc.parametrize("state_engine", list(marker.args) if marker else e2e_engines(),
                             scope="session")


def placer(state_engine: str, request: pytest.FixtureRequest) -> Callable[[Path], None]:
    """Where a new folder's state goes on ``state_engine``."""
    if state_engine != "postgres":
        return harness.keep_sqlite
    return partial(on_new_database, request.getfixturevalue("postgres_server"))


@pytest.fixture(scope="module", autouse=True)
def _state_on_engine(state_engine: str, request: pytest.FixtureRequest) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "place_state", placer(state_engine, request))
        yield
