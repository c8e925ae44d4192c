"""Fixtures every suite may use: the real PostgreSQL server (Debian's package, started once)."""

from tests.e2e.postgres import postgres_server  # noqa: F401  (a session fixture)
from tests.stores import store_opener  # noqa: F401  (both engines, a parameter)
