"""The metrics' label vocabularies, the [metrics]/[health] settings and the outbox watch."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from connector.adapters.http.health import (
    Health,
    HealthDeps,
    OutboxWatch,
    certificate_not_after,
    probe_store,
)
from connector.adapters.http.metrics import (
    DSP_MESSAGE_TYPES,
    MAX_PEER_LABELS,
    Metrics,
    failing_constraint,
    finish_reason,
    message_type,
    refusal_reason,
)
from connector.adapters.storage.sqlite import SqliteStore, migrations
from connector.config import HealthSettings, load_settings
from connector.core.errors import ConfigError, PeerError
from connector.core.policy import Decision
from connector.core.policy.evaluate import ConstraintResult
from connector.participant.init import init_folder
from connector.registry.publisher import RegistryPublisher, Signer
from connector.service.store import OutboxItem
from tests.harness import free_port


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("POST", "/dsp/2025-1/negotiations/request", "ContractRequestMessage"),
    ("POST", "/negotiations/urn:uuid:1/agreement/verification/",
     "ContractAgreementVerificationMessage"),
    ("POST", "/edc/api/dsp/2025-1/negotiations/abc/events", "ContractNegotiationEventMessage"),
    ("GET", "/negotiations/abc", "ContractNegotiationRequest"),
    ("POST", "/transfers/xyz/completion", "TransferCompletionMessage"),
    ("GET", "/catalog/datasets/weather", "DatasetRequest"),
    ("POST", "/catalog/request", "CatalogRequestMessage"),
    ("POST", "/negotiations/abc/nonsense", "other"),
    ("DELETE", "/negotiations/request", "other"),
    ("GET", "/data", "other"),
])
def test_message_type_comes_from_the_binding_table(method: str, path: str, kind: str) -> None:
    assert message_type(method, path) == kind


def test_every_binding_row_is_reachable_from_a_concrete_path() -> None:
    for (method, template), kind in DSP_MESSAGE_TYPES.items():
        path = "/dsp/2025-1/" + template.replace("{pid}", "urn:uuid:42").replace("{id}", "d1")
        assert message_type(method, path) == kind


@pytest.mark.parametrize(("message", "reason"), [
    ("missing Authorization header", "missing"),
    ("token replayed (jti already used)", "replayed"),
    ("token expired", "expired"),
    ("signature invalid", "signature"),
    ("unknown key id 'did:web:evil.example#k'", "unknown_key"),
    ("malformed token: not a compact JWS", "malformed"),
    ("credential revoked: urn:cred:1", "revoked"),
    ("something new and unforeseen from did:web:x", "other"),
])
def test_refusal_reasons_are_a_closed_set(message: str, reason: str) -> None:
    assert refusal_reason(message) == reason


def test_finish_reason_keeps_known_codes_only() -> None:
    assert finish_reason(None) == "none"
    assert finish_reason("policy-denied: membership eq active failed") == "policy-denied"
    assert finish_reason("peer-invented-code-123: text") == "other"
    assert finish_reason("a free text reason with urn:uuid:1") == "other"


def _denial(operand: str) -> Decision:
    result = ConstraintResult(left_operand=operand, operator="eq", right_operand="x",
                              actual="y", satisfied=False, note="", blocking=True)
    return Decision(allowed=False, trace=(result,))


def test_failing_constraint_is_a_known_operand_or_other() -> None:
    assert failing_constraint(Decision(allowed=True, trace=())) == "none"
    assert failing_constraint(_denial("membership")) == "membership"
    assert failing_constraint(_denial("https://evil.example/operand/" + "x" * 50)) == "other"
    assert failing_constraint(Decision(allowed=False, trace=())) == "rule"


def test_peers_are_labelled_only_while_few_and_pinned() -> None:
    peers = ["did:web:a.example"]
    metrics = Metrics(peers=lambda: peers)
    assert metrics.peer_label("did:web:a.example") == "did:web:a.example"
    assert metrics.peer_label("did:web:stranger.example") == "other"
    assert metrics.peer_label(None) == "other"
    peers.extend(f"did:web:p{i}.example" for i in range(MAX_PEER_LABELS))
    assert metrics.peer_label("did:web:a.example") == "other"


def test_metered_send_counts_by_type_and_status() -> None:
    metrics = Metrics()
    item = OutboxItem(seq=1, process_id="p", url="https://peer/dsp/negotiations/p/termination",
                      audience="did:web:peer", body=b"{}")

    async def refused(_: OutboxItem) -> bytes:
        raise PeerError("nope", peer_status=400)

    async def accepted(_: OutboxItem) -> bytes:
        return b"{}"

    with pytest.raises(PeerError):
        asyncio.run(metrics.metered_send(refused)(item))
    asyncio.run(metrics.metered_send(accepted)(item))
    sample = metrics.registry.get_sample_value
    kind = "ContractNegotiationTerminationMessage"
    assert sample("connector_dsp_messages_sent_total", {"type": kind, "status": "400"}) == 1
    assert sample("connector_dsp_messages_sent_total", {"type": kind, "status": "2xx"}) == 1


def test_outbox_watch_ages_the_oldest_undelivered_message() -> None:
    now = [100.0]
    watch = OutboxWatch(clock=lambda: now[0])
    items = [OutboxItem(seq=i, process_id="p", url="u", audience="a", body=b"")
             for i in (1, 2)]

    async def down(_: OutboxItem) -> bytes:
        raise PeerError("connection refused")  # retryable: stays in the outbox

    async def up(_: OutboxItem) -> bytes:
        return b""

    for item in items:
        with pytest.raises(PeerError):
            asyncio.run(watch.wrap(down)(item))
        now[0] += 10
    assert watch.oldest_age() == 20.0 and watch.last_attempt == 110.0
    asyncio.run(watch.wrap(up)(items[0]))
    assert watch.oldest_age() == 10.0  # item 2: first tried at 110, now 120
    watch.settled(items[1])
    assert watch.oldest_age() == 0.0


def test_probe_store_never_creates_and_checks_the_schema(tmp_path: Path) -> None:
    latest = max(n for n, _ in migrations())
    assert probe_store(tmp_path / "absent.db", latest).problem is not None
    assert not (tmp_path / "absent.db").exists()

    async def migrate() -> None:
        store = await SqliteStore.open(tmp_path / "state.db")
        await store.close()

    asyncio.run(migrate())
    assert probe_store(tmp_path / "state.db", latest).problem is None
    behind = probe_store(tmp_path / "state.db", latest + 1).problem
    assert behind is not None and "schema" in behind


def _folder(tmp_path: Path, extra: str) -> Path:
    init_folder(tmp_path / "p", name="p", url="https://127.0.0.1:8443")
    with (tmp_path / "p" / "connector.toml").open("a") as f:
        f.write(extra)
    return tmp_path / "p"


def test_metrics_settings_default_and_switch_off(tmp_path: Path) -> None:
    plain = load_settings(_folder(tmp_path / "a", ""))
    assert plain.metrics_listen == ("127.0.0.1", 9464) and not plain.metrics_explicit
    off = load_settings(_folder(tmp_path / "b", "\n[metrics]\nenabled = false\n"))
    assert off.metrics_listen is None
    v6 = load_settings(_folder(tmp_path / "c", '\n[metrics]\nlisten = "[::1]:9000"\n'))
    assert v6.metrics_listen == ("::1", 9000) and v6.metrics_explicit
    health = load_settings(_folder(tmp_path / "d", "\n[health]\ndrain_s = 5\n"))
    assert health.health.drain_s == 5.0 and health.health.certificate_min_days == 1


@pytest.mark.parametrize("extra", [
    '\n[metrics]\nlisten = "9464"\n',
    '\n[metrics]\nlisten = "127.0.0.1:99999"\n',
    "\n[metrics]\nenabled = 1\n",
    "\n[health]\ndrain_s = -1\n",
    '\n[health]\noutbox_stuck_s = "long"\n',
])
def test_bad_metrics_or_health_settings_name_the_key(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_folder(tmp_path, extra))
    assert "[metrics]" in info.value.message or "[health]" in info.value.message


def test_publications_are_counted_by_registry_and_result(tmp_path: Path) -> None:
    settings = load_settings(_folder(tmp_path, ""))
    metrics = Metrics()
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there

    async def publish() -> dict[str, str | None]:
        async with aiohttp.ClientSession() as session:
            publisher = RegistryPublisher([url], Signer.from_settings(settings),
                                          session=lambda: session, catalog=lambda: {"@id": "c"},
                                          on_published=metrics.on_publication)
            return await publisher.publish_all()

    assert asyncio.run(publish()) == {url: None}
    sample = metrics.registry.get_sample_value
    assert sample("connector_registry_publications_total",
                  {"registry": url, "result": "failed"}) == 1


def _health(folder: Path, metrics: Metrics, days_left: float = 100,
            **settings: float) -> Health:
    """A Health of ``folder`` whose clock stands ``days_left`` before the certificate ends."""
    s = load_settings(folder)
    not_after = certificate_not_after(s.tls_cert.read_bytes())

    async def migrate() -> None:
        await (await SqliteStore.open(s.database)).close()

    asyncio.run(migrate())
    return Health(HealthDeps(
        database=s.database, schema_version=max(n for n, _ in migrations()),
        tls_cert=s.tls_cert, key_files=lambda: (s.signing_key, s.tls_key),
        settings=HealthSettings(**settings), outbox=OutboxWatch(), metrics=metrics,
        clock=lambda: not_after - days_left * 86_400))


def test_certificate_expiry_warns_first_then_fails_ready(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "")
    sample = None
    for days_left, ready, expiring in ((100, True, 0), (10, True, 1), (0.5, False, 1)):
        metrics = Metrics()
        health = _health(folder, metrics, days_left, certificate_min_days=1,
                         certificate_warn_days=14)
        asyncio.run(health.check())
        sample = metrics.registry.get_sample_value
        assert health.ready is ready, health.problems
        assert sample("connector_tls_certificate_expiring") == expiring
        assert sample("connector_ready") == (1 if ready else 0)
    assert sample is not None and sample("connector_health_check_ok",
                                         {"check": "certificate"}) == 0


def test_a_key_readable_by_others_fails_ready_without_naming_its_path(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "")
    health = _health(folder, Metrics())
    asyncio.run(health.check())
    assert health.ready
    key = load_settings(folder).signing_key
    key.chmod(0o644)
    asyncio.run(health.check())
    problem = health.problems["keys"]
    assert not health.ready and problem is not None and str(key.parent) not in problem


def test_an_outbox_waiting_without_attempts_is_stuck(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "")
    metrics = Metrics()
    health = _health(folder, metrics, outbox_stuck_s=0)
    asyncio.run(health.check())
    assert health.ready and metrics.registry.get_sample_value("connector_outbox_depth") == 0
    with sqlite3.connect(load_settings(folder).database) as db:
        db.execute("INSERT INTO outbox (process_id, url, audience, body, next_attempt)"
                   " VALUES ('p', 'https://peer/x', 'did:web:peer', x'', 0)")
    asyncio.run(health.check())  # waiting since now
    time.sleep(0.01)
    asyncio.run(health.check())  # ... and nothing attempted since
    assert not health.ready and "no delivery attempted" in str(health.problems["outbox"])
    assert metrics.registry.get_sample_value("connector_outbox_depth") == 1
