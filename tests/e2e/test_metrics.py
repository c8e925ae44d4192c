"""Metrics as an operator sees them: a real Prometheus server scrapes two running daemons.

The consumer negotiates and pulls through ``connector`` commands; the counters are then read
back through Prometheus's query API, not from the exposition text. A second test reads the
exposition itself and looks for anything that must never be there: process ids, agreement
ids, tokens, the management secret, the paths of keys.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.core.binding import DSP_PATH
from tests.e2e.prometheus import running_prometheus
from tests.harness import Participant, create_space, free_port, start, stop
from tests.stores import StateDb

DATASET = "example-weather"
RECORDS = 10  # data/example.jsonl of a new folder


@dataclass
class Observed:
    provider: Participant
    consumer: Participant
    targets: dict[str, str]  # participant name -> "127.0.0.1:PORT" of its metrics listener

    def metrics(self, name: str) -> str:
        with urllib.request.urlopen(f"http://{self.targets[name]}/metrics", timeout=10) as r:
            return r.read().decode()


def with_metrics(participant: Participant, extra: str = "") -> str:
    """Give ``participant`` a metrics listener on a free port; returns host:port."""
    target = f"127.0.0.1:{free_port()}"
    with (participant.dir / "connector.toml").open("a") as f:
        f.write(f'\n[metrics]\nlisten = "{target}"\n{extra}')
    return target


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    provider, consumer = create_space(tmp_path_factory.mktemp("metrics"))
    targets = {p.name: with_metrics(p) for p in (provider, consumer)}
    start(provider)
    start(consumer)
    try:
        yield Observed(provider, consumer, targets)
    finally:
        stop(consumer)
        stop(provider)


def negotiate_and_pull(space: Observed, out: Path) -> str:
    """Catalogue, negotiation and pull through the consumer's CLI; the agreement id."""
    done = space.consumer.cli("negotiate", space.provider.url, DATASET)
    assert done.returncode == 0, done.stderr
    agreement = done.stdout.strip().split()[-1]
    done = space.consumer.cli("transfer", agreement, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == RECORDS
    return agreement


def dsp_post(space: Observed, path: str, authorization: str | None, *,
             base: str = DSP_PATH) -> int:
    """POST an empty JSON body to the provider's DSP ``path``; the HTTP status."""
    tls = ssl.create_default_context(cafile=str(space.provider.dir / "tls" / "cert.pem"))
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(space.provider.url + base + path, data=b"{}",
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_prometheus_reads_back_negotiation_transfer_and_refusal_counters(
        observed: Observed, tmp_path: Path) -> None:
    provider, consumer = "t0", "t1"  # job names, in the order of the targets
    with running_prometheus([observed.targets["provider"],
                             observed.targets["consumer"]]) as prom:
        prom.wait_for(f'up{{job="{provider}"}}', 1)
        prom.wait_for(f'up{{job="{consumer}"}}', 1)
        negotiate_and_pull(observed, tmp_path / "copy.jsonl")
        assert dsp_post(observed, "/negotiations/request", None) == 404
        assert dsp_post(observed, "/negotiations/request", "Bearer not.a.token") == 404
        assert dsp_post(observed, "/push/urn:uuid:0", "Bearer guess", base="") == 401

        def at_least(expr: str, value: float) -> None:
            prom.wait_for(expr, value)

        for job, role in ((provider, "provider"), (consumer, "consumer")):
            at_least(f'sum(connector_negotiations_started_total{{job="{job}",role="{role}"}})',
                     1)
            at_least(f'sum(connector_negotiations_finished_total{{job="{job}",role="{role}",'
                     f'state="FINALIZED",reason="none"}})', 1)
            at_least(f'sum(connector_transfers_finished_total{{job="{job}",role="{role}",'
                     f'state="COMPLETED"}})', 1)
            at_least(f'connector_ready{{job="{job}"}}', 1)
        at_least(f'connector_dataplane_records_total{{job="{provider}",direction="served"}}',
                 RECORDS)
        at_least(f'connector_dataplane_records_total{{job="{consumer}",direction="received"}}',
                 RECORDS)
        size = (tmp_path / "copy.jsonl").stat().st_size
        at_least(f'connector_dataplane_bytes_total{{job="{provider}",direction="served"}}',
                 size)
        at_least(f'connector_dsp_messages_received_total{{job="{provider}",'
                 f'type="ContractRequestMessage",status="201"}}', 1)
        at_least(f'connector_dsp_message_received_seconds_count{{job="{provider}",'
                 f'type="ContractAgreementVerificationMessage"}}', 1)
        at_least(f'connector_dsp_messages_sent_total{{job="{provider}",'
                 f'type="ContractAgreementMessage",status="2xx"}}', 1)
        at_least(f'connector_dsp_messages_sent_total{{job="{consumer}",'
                 f'type="TransferCompletionMessage",status="2xx"}}', 1)
        at_least(f'connector_policy_decisions_total{{job="{provider}",scope="negotiation",'
                 f'result="permit",constraint="none"}}', 1)
        at_least(f'connector_policy_decisions_total{{job="{provider}",scope="transfer",'
                 f'result="permit"}}', 1)
        at_least(f'connector_token_verifications_refused_total{{job="{provider}",'
                 f'reason="missing"}}', 1)
        at_least(f'connector_token_verifications_refused_total{{job="{provider}",'
                 f'reason="malformed"}}', 1)
        at_least(f'connector_token_verifications_refused_total{{job="{provider}",'
                 f'reason="push_token"}}', 1)
        at_least(f'connector_dsp_messages_received_total{{job="{provider}",'
                 f'type="ContractRequestMessage",status="404"}}', 2)
        at_least(f'sum(connector_storage_seconds_count{{job="{provider}",'
                 f'operation="save_negotiation"}})', 1)
        at_least(f'connector_tls_certificate_expiry_timestamp_seconds{{job="{provider}"}}',
                 1)
        assert prom.value(f'connector_outbox_depth{{job="{provider}"}}') is not None


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def secrets_of(folder: Path) -> set[str]:
    """Every id, token and key path a participant holds that must stay out of metrics."""
    settings = load_settings(folder)
    found = {settings.management_token(), str(settings.signing_key), str(settings.tls_key),
             str(folder / "keys"), settings.signing_key.name, settings.tls_key.name}
    with StateDb(folder) as db:
        for table in ("negotiations", "transfers", "agreements"):
            for ident, body in db.execute(f"SELECT id, body FROM {table}"):
                found.add(ident)
                doc = json.loads(body)
                found.update(s for s in _strings(doc) if s.startswith("urn:"))
                address = doc.get("dataAddress") or {}
                found.update(s for s in _strings(address) if len(s) >= 16)
    return {s for s in found if s}


def test_metrics_hold_no_process_id_token_or_key_path(observed: Observed,
                                                      tmp_path: Path) -> None:
    agreement = negotiate_and_pull(observed, tmp_path / "copy.jsonl")
    for participant in (observed.provider, observed.consumer):
        text = observed.metrics(participant.name)
        assert "connector_negotiations_finished_total" in text
        forbidden = secrets_of(participant.dir)
        assert agreement in forbidden and len(forbidden) > 10
        leaked = sorted(s for s in forbidden if s in text)
        assert leaked == [], f"{participant.name} exposes {leaked}"
        assert not re.search(r"urn:uuid|Bearer|eyJ", text)
        assert "keys/" not in text and str(participant.dir) not in text


def test_a_configured_metrics_port_that_is_taken_stops_the_start(tmp_path: Path) -> None:
    provider, _ = create_space(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (provider.dir / "connector.toml").open("a") as f:
            f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        with pytest.raises(RuntimeError, match="did not start"):
            start(provider)
    log = (provider.dir / "state" / "daemon.log").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in log
