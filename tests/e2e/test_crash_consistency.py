"""Crash consistency, short form: two daemons SIGKILLed three times (each at least once) under
concurrent negotiations and pulls, with delivered outbox rows written back after each kill.
``tests/crash/__init__.py`` defines "acknowledged" and what is expected of each process.

Replay a failure with the seed its message names:
``CRASH_SEED=N .venv/bin/python -m pytest tests/e2e/test_crash_consistency.py``.
The long form is ``make soak-crash``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.crash.run import CrashRun, Plan, seed_from_env

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_acknowledged_work_survives_sigkill_of_either_daemon(tmp_path: Path) -> None:
    seed = seed_from_env()
    print(f"CRASH_SEED={seed}")
    report = await CrashRun(Plan(seed=seed, concurrency=5, min_jobs=20, kills=3),
                            tmp_path).run()
    print(json.dumps(report.figures()))
    figures = report.figures()
    # The run did what it is for: both daemons killed, delivered messages sent again.
    assert figures["provider_kills"] >= 1 and figures["consumer_kills"] >= 1, report.explain()
    assert figures["rows_redelivered"] >= 2, report.explain()
    assert figures["copies_verified"] >= 10, report.explain()
    assert report.mismatches == [], report.explain()
    assert report.server_errors == [], report.explain()
