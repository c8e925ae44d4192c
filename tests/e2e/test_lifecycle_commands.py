"""The lifecycle commands against real daemons: ``agreements``, ``revoke``, ``negotiation
terminate``, ``why`` with an agreement id, short ids, and ``--json`` on ``status`` and
``catalog``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from connector.client import Management
from connector.core.ids import short_id
from tests.e2e.conftest import Space
from tests.unit.test_cli import _on_a_terminal

pytestmark = pytest.mark.asyncio(loop_scope="session")
DATASET = "example-weather"


async def _until(m: Management, path: str, done: str, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, str] = await m.call("GET", path)
        if record["state"] == done or time.monotonic() > deadline:
            return record
        await asyncio.sleep(0.1)


def _json(done: object) -> object:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", "")
    return json.loads(done.stdout)


async def test_agreements_why_revoke_with_short_ids(space: Space, tmp_path: Path) -> None:
    consumer, provider = space.consumer, space.provider
    done = consumer.cli("negotiate", provider.url, DATASET)
    assert done.returncode == 0, done.stderr
    agreement = done.stdout.strip()
    out = tmp_path / "weather.jsonl"
    # The agreement by its short id, as the tables show it.
    pulled = consumer.cli("transfer", short_id(agreement), "--out", str(out))
    assert pulled.returncode == 0, pulled.stderr
    listed = {a["id"]: a for a in _json(provider.cli("agreements", "--json"))}  # type: ignore
    mine = listed[agreement]
    assert mine["uses"] == 1 and mine["revoked"] is None and mine["role"] == "provider"
    assert mine["assignee"] and mine["assigner"] and len(mine["transfers"]) == 1
    table = provider.cli("agreements")
    assert short_id(agreement) in table.stdout and "membership eq active" in table.stdout
    # `why` with an agreement: the negotiation's timeline, then the transfer's.
    why = consumer.cli("why", short_id(agreement))
    assert why.returncode == 0, why.stderr
    assert f"agreement {agreement}" in why.stdout and "in force" in why.stdout
    assert "negotiation " in why.stdout and "transfer " in why.stdout
    assert "-> FINALIZED" in why.stdout and "-> COMPLETED" in why.stdout
    # The provider withdraws it; the table and the JSON say so.
    revoked = provider.cli("revoke", short_id(agreement), "--reason", "contract ended")
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {agreement}" in revoked.stdout
    listed = {a["id"]: a for a in _json(provider.cli("agreements", "--json"))}  # type: ignore
    assert listed[agreement]["revoked"] == "contract ended"
    assert "contract ended" in provider.cli("agreements").stdout
    assert "revoked: contract ended" in provider.cli("why", agreement).stdout
    # A transfer under the revoked agreement ends at once, TERMINATED with the reason: the
    # provider refuses to open it; no advice to run again, nothing left STARTED.
    again = consumer.cli("transfer", short_id(agreement), "--out", str(tmp_path / "again"))
    assert again.returncode == 1
    assert "TERMINATED" in again.stderr and "revoked by the provider: contract ended" \
        in again.stderr, again.stderr
    assert "run the same command again" not in again.stderr
    states = [t["state"] for t in _json(consumer.cli("status", "--json"))["transfers"]
              if t["agreementId"] == agreement]  # type: ignore[index]
    assert "STARTED" not in states and "REQUESTED" not in states, states


async def test_negotiation_terminate(space: Space,
                                     apis: tuple[Management, Management]) -> None:
    provider_api, consumer_api = apis
    offered = await provider_api.call("POST", "/api/offers",
                                      {"consumer": space.consumer.url, "datasetId": DATASET})
    pid = offered["consumerPid"]
    assert (await _until(consumer_api, f"/api/negotiations/{pid}", "OFFERED"))["state"] \
        == "OFFERED"
    done = space.consumer.cli("negotiation", "terminate", short_id(pid), "--reason", "not now")
    assert done.returncode == 0, done.stderr
    assert "TERMINATED" in done.stdout
    record = await consumer_api.call("GET", f"/api/negotiations/{pid}")
    assert record["state"] == "TERMINATED"
    theirs = await _until(provider_api, f"/api/negotiations/{offered['id']}", "TERMINATED")
    assert theirs["state"] == "TERMINATED"


async def test_status_and_catalog_as_json(space: Space) -> None:
    status = _json(space.consumer.cli("status", "--json"))
    assert isinstance(status, dict)
    assert set(status) == {"daemon", "negotiations", "agreements", "transfers"}
    assert status["daemon"]["managementUrl"].startswith("http://127.0.0.1:")
    assert status["daemon"]["restartNeeded"] == []
    catalog = _json(space.consumer.cli("catalog", space.provider.url, "--json"))
    assert isinstance(catalog, dict)
    datasets = catalog["dataset"] if isinstance(catalog["dataset"], list) else [catalog["dataset"]]
    assert DATASET in {d["@id"] for d in datasets}
    table = space.consumer.cli("status")
    assert table.returncode == 0 and "urn:uuid:" not in table.stdout  # short ids
    # On an 80-column terminal every line of the tables fits (it was 130 wide).
    lines = _on_a_terminal(["status", "--dir", str(space.consumer.dir)], columns=80)
    assert any("negotiations" in line for line in lines), lines
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
