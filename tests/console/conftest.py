"""The console's tests run on the engines ``CONNECTOR_E2E_ENGINES`` names (tests/engines.py)."""

from __future__ import annotations

from tests.engines import (  # noqa: F401  (the hook and the fixture)
    _state_on_engine,
    pytest_generate_tests,
)
