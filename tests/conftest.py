"""Every management answer the test run causes is checked against the OpenAPI document.

Each daemon the tests start inherits ``CONNECTOR_CONTRACT_LOG`` and logs its management
answers there (adapters/http/openapi.py); when the run ends, every logged answer is checked
(tests/contract/check.py) and any mismatch fails the run. Also: the real PostgreSQL server
(Debian's package, started once) and the store opener for both engines (a parameter).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from connector.adapters.http.openapi import CONTRACT_LOG_ENV
from tests.contract.check import check_folder
from tests.e2e.postgres import postgres_server  # noqa: F401  (a session fixture)
from tests.engines import placer
from tests.managed_space import ManagedSpace
from tests.managed_space import managed_space as run_managed_space
from tests.stores import store_opener  # noqa: F401  (both engines, a parameter)

# Property tests assert behaviour, never speed: hypothesis's default 200 ms deadline per example
# turns a loaded machine into a failure (speed is measured under bench/).
settings.register_profile("connector", deadline=None)
settings.load_profile("connector")


@pytest.fixture(scope="session", autouse=True)
def management_contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    folder = tmp_path_factory.mktemp("contract-log")
    before = os.environ.get(CONTRACT_LOG_ENV)
    os.environ[CONTRACT_LOG_ENV] = str(folder)
    yield
    if before is None:
        os.environ.pop(CONTRACT_LOG_ENV, None)
    else:
        os.environ[CONTRACT_LOG_ENV] = before
    count, found = check_folder(folder)
    print(f"\nmanagement contract: {count} answers checked against the OpenAPI document")
    if found:
        shown = "\n".join(found[:30])
        pytest.fail(f"{len(found)} management answers do not match the OpenAPI document:\n{shown}")


@pytest.fixture(scope="session")
def managed_space(state_engine: str, request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedSpace]:
    """A provider, a consumer and a registry daemon (tests/managed_space.py), their state on
    ``state_engine`` (tests/engines.py: a conftest that uses this fixture takes its hooks)."""
    yield from run_managed_space(tmp_path_factory.mktemp(f"managed-{state_engine}"),
                                 place=placer(state_engine, request))
