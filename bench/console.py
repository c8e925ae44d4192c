"""The console's server time per page with 10,000 negotiations stored (target: under 50 ms).

A consumer daemon is created as ``make demo`` does, its database filled beforehand with
NEGOTIATIONS finished negotiations (each with a four-line timeline and a policy trace; the
nine in ten that finalized with their agreement) and TRANSFERS transfers, then started. A
logged-in session asks each page REQUESTS times, one at a time; the value is the median of
the server's own time for the answer (the console's ``Server-Timing: app;dur=`` header:
routing, store reads, rendering), and its 95th percentile.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tests.console.browser_session import console_base, logged_in
from tests.harness import create_space, start, stop

from bench import emit, log
from connector.adapters.storage.sqlite import SqliteStore
from connector.config import load_settings
from connector.core.negotiation import Negotiation, NegotiationState
from connector.core.process import HistoryEntry, Role
from connector.core.transfer import Transfer, TransferState
from connector.service.store import Agreement

NEGOTIATIONS = 10_000
TRANSFERS = 1_000
REQUESTS, QUICK_REQUESTS = 50, 5
PAGES = ["/", "/negotiations", "/negotiations?state=TERMINATED", "/transfers",
         "/agreements", "/negotiations/{last}"]


def _negotiation(i: int, now: float) -> Negotiation:
    state = NegotiationState.TERMINATED if i % 10 == 0 else NegotiationState.FINALIZED
    history = [HistoryEntry(at=now + i + k / 10, by=by, message=message, state=s, note=note)
               for k, (by, message, s, note) in enumerate([
                   ("consumer", "ContractRequestMessage", "REQUESTED", ""),
                   ("policy", "decision", "REQUESTED",
                    "✓ permission[0] membership eq active: the consumer's membership is active"),
                   ("provider", "ContractAgreementMessage", "AGREED", ""),
                   ("provider", "ContractNegotiationEventMessage", state.value, "")])]
    return Negotiation(id=f"urn:uuid:bench-{i:06d}", role=Role.CONSUMER, state=state,
                       consumer_pid=f"urn:uuid:bench-{i:06d}", provider_pid=f"p-{i}",
                       dataset_id=f"dataset-{i % 50}", offer={"@id": "urn:offer:x"},
                       counterparty_address="https://127.0.0.1:1/dsp",
                       counterparty_id="did:web:provider", created_at=now + i,
                       updated_at=now + i + 1, history=history)


def _transfer(i: int, now: float) -> Transfer:
    return Transfer(id=f"urn:uuid:bench-t-{i:06d}", role=Role.CONSUMER,
                    state=TransferState.COMPLETED, consumer_pid=f"urn:uuid:bench-t-{i:06d}",
                    provider_pid=f"pt-{i}", agreement_id=f"urn:uuid:agreement-{i}",
                    format="HttpData-PULL", counterparty_address="https://127.0.0.1:1/dsp",
                    created_at=now + i, updated_at=now + i + 1)


async def _fill(database: Path) -> None:
    store = await SqliteStore.open(database)
    now = time.time() - NEGOTIATIONS - 10
    try:
        for i in range(NEGOTIATIONS):
            record = _negotiation(i, now)
            agreement = None
            if record.state is NegotiationState.FINALIZED:
                agreement = Agreement(
                    id=f"urn:uuid:agreement-{i}", negotiation_id=record.id, role="consumer",
                    dataset_id=record.dataset_id, assigner="did:web:provider",
                    assignee="did:web:consumer", created_at=record.updated_at,
                    body={"@id": f"urn:uuid:agreement-{i}", "permission": [{"constraint": [
                        {"leftOperand": "count", "operator": "lteq", "rightOperand": "100"}]}]})
            await store.save_negotiation(record, agreement=agreement, expect_new=True)
        for i in range(TRANSFERS):
            await store.save_transfer(_transfer(i, now), expect_new=True)
    finally:
        await store.close()


async def _measure(base: str, participant_dir: Path, requests: int) -> None:
    from tests.harness import Participant

    who = Participant("consumer", participant_dir, "")
    async with logged_in(who) as (http, _):
        for page in PAGES:
            path = page.format(last=f"urn:uuid:bench-{NEGOTIATIONS - 1:06d}")
            times = []
            for _ in range(requests):
                async with http.get(base + path) as resp:
                    await resp.read()
                    assert resp.status == 200, (path, resp.status)
                    times.append(float(resp.headers["Server-Timing"].split("dur=")[1]))
            name = page.strip("/").split("?")[0].replace("/{last}", "_detail") or "overview"
            name += "_filtered" if "?" in page else ""
            emit(f"console_{name.replace('/', '_')}_ms_p50_10k", statistics.median(times), "ms")
            emit(f"console_{name.replace('/', '_')}_ms_p95_10k",
                 sorted(times)[max(0, int(len(times) * 0.95) - 1)], "ms")


def run(quick: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        _provider, consumer = create_space(Path(tmp))
        log(f"console: storing {NEGOTIATIONS} negotiations and {TRANSFERS} transfers")
        asyncio.run(_fill(load_settings(consumer.dir).database))
        start(consumer)
        try:
            asyncio.run(_measure(console_base(consumer), consumer.dir,
                                 QUICK_REQUESTS if quick else REQUESTS))
        finally:
            stop(consumer)
