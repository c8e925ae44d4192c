"""Consent per data subject, between real daemons over HTTPS (docs/consent.md).

A hospital's provider offers patients' documents under ``consent eq care``; a care team
(pinned ``membership=care-team``) and an app (``membership=app``) pull them. Each test grants
through the provider's management API what it needs, pulls, and checks which subjects' records
arrived and what the provider's timeline counts, by reason class only.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from connector.client import Management
from connector.config import load_settings
from connector.core.errors import ConnectorError
from connector.core.messages import DataAddress
from tests.harness import (
    Participant,
    create_space,
    free_port,
    free_port_pair,
    new_participant,
    running,
    start,
    stop,
)
from tests.stores import StateDb

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Subjects of the small dataset, each named for what the register says about it.
SUBJECTS = ("pt-granted", "pt-team", "pt-other-purpose", "pt-other-consumer", "pt-nobody",
            "pt-expiring", "pt-withdrawn-early")
PER_SUBJECT = 5
# The archive: two subjects alternating, long enough to withdraw one half-way (~32 MB).
ARCHIVE_RECORDS = 160_000
# What may be in flight after the provider handed a chunk over: its socket send buffer
# (net.ipv4.tcp_wmem max, 4 MiB here), the TLS and transport buffers and one 1 MiB chunk, and
# our 16 KiB receive buffer. Measured: the last record of the withdrawn subject came 6.4 MB
# after the answer; a stream read only at start ends with that subject's records.
IN_FLIGHT = 12 * 1024 * 1024

POLICY = """\
description: Patients' documents, for care only, record by record under each patient's consent.
permission:
  - action: use
    constraints:
      - consent eq care
"""


@dataclass
class Hospital:
    provider: Participant
    care: Participant
    app: Participant
    metrics: str  # the provider's metrics listener, host:port


def _write_datasets(folder: Path) -> None:
    (folder / "policies" / "care-under-consent.yaml").write_text(POLICY)
    with (folder / "data" / "documents.jsonl").open("w") as f:
        for i in range(PER_SUBJECT):
            for subject in SUBJECTS:
                f.write(json.dumps({"patient": subject, "doc": i, "kind": "report"}) + "\n")
        f.write(json.dumps({"doc": 99, "kind": "unfiled"}) + "\n")  # no subject field
    with (folder / "data" / "archive.jsonl").open("w") as f:
        for i in range(ARCHIVE_RECORDS):
            subject = "pt-keeps" if i % 2 else "pt-leaves"
            f.write(f'{{"patient": "{subject}", "seq": {i}, "text": "{"x" * 160}"}}\n')
    for name in ("documents", "archive"):
        (folder / "datasets" / f"{name}.toml").write_text(
            f'id = "{name}"\ntitle = "Patients\' {name}"\npolicies = ["care-under-consent"]\n'
            'formats = ["HttpData-PULL", "HttpData-PUSH"]\n'
            f'subject_field = "patient"\n[source]\ntype = "jsonl"\npath = "data/{name}.jsonl"\n')


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    from connector.participant.trust import add_trusted_peer

    root = tmp_path_factory.mktemp("consent")
    provider, care = create_space(root, consumer_attrs={"membership": "care-team"})
    app = new_participant(root, "app", f"https://127.0.0.1:{free_port_pair()}")
    add_trusted_peer(provider.dir, app.dir, attributes={"membership": "app"}, tls_cert=None)
    add_trusted_peer(app.dir, provider.dir, attributes={}, tls_cert=None)
    _write_datasets(provider.dir)
    metrics = f"127.0.0.1:{free_port()}"
    with (provider.dir / "connector.toml").open("a") as f:
        f.write(f'\n[metrics]\nlisten = "{metrics}"\n')
    checked = provider.cli("policy", "check")
    assert checked.returncode == 0, checked.stderr
    with running([provider, care, app]):
        yield Hospital(provider, care, app, metrics)


def _did(p: Participant) -> str:
    return load_settings(p.dir).did


async def _api(p: Participant) -> Management:
    return Management(load_settings(p.dir))


async def _grant(hospital: Hospital, subject: str, consumer: str, purpose: str = "care",
                 until: datetime | None = None) -> None:
    until = until or datetime.now(UTC) + timedelta(days=30)
    m = await _api(hospital.provider)
    try:
        await m.call("POST", "/api/consents", {
            "subject": subject, "consumer": consumer, "purpose": purpose,
            "until": until.isoformat()})
    finally:
        await m.close()


async def _agreement(consumer: Participant, provider: Participant, dataset: str) -> str:
    m = await _api(consumer)
    try:
        record = await m.call("POST", "/api/negotiations?wait=30",
                              {"provider": provider.url, "datasetId": dataset})
        assert record["state"] == "FINALIZED", record
        return str(record["agreementId"])
    finally:
        await m.close()


async def _pull(consumer: Participant, provider: Participant, dataset: str = "documents"
                ) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """A whole pull through the consumer's daemon: the records, the provider's summary and
    the provider's transfer id."""
    agreement = await _agreement(consumer, provider, dataset)
    m = await _api(consumer)
    try:
        transfer = await m.call("POST", "/api/transfers?wait=30", {"agreementId": agreement})
        summary = await m.call("GET", f"/api/transfers/{transfer['id']}/summary")
        body = bytearray()
        async with aiohttp.ClientSession() as http, http.get(
                f"{load_settings(consumer.dir).management_url}/api/transfers/"
                f"{transfer['id']}/data", headers=_auth(consumer)) as resp:
            assert resp.status == 200
            body += await resp.read()
        return ([json.loads(line) for line in body.splitlines()], summary,
                str(transfer["providerPid"]))
    finally:
        await m.close()


def _auth(p: Participant) -> dict[str, str]:
    return {"Authorization": f"Bearer {load_settings(p.dir).management_token()}"}


def _subjects(records: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.get("patient", "")] = counts.get(record.get("patient", ""), 0) + 1
    return counts


def _account(provider: Participant, transfer: str) -> str:
    """The provider's consent line for ``transfer`` (``connector why``)."""
    shown = provider.cli("why", transfer)
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines() if "consent:" in line]
    assert lines, shown.stdout
    for subject in (*SUBJECTS, "pt-keeps", "pt-leaves"):
        assert subject not in shown.stdout, f"{subject} named in `connector why`"
    return lines[-1]


async def test_a_grant_serves_that_subjects_records_and_nobody_elses(
        hospital: Hospital) -> None:
    records, _, _ = await _pull(hospital.care, hospital.provider)
    assert "pt-granted" not in _subjects(records)  # deny by default: nothing granted yet
    await _grant(hospital, "pt-granted", _did(hospital.care))
    await _grant(hospital, "pt-team", "membership=care-team")  # a pinned attribute
    records, summary, transfer = await _pull(hospital.care, hospital.provider)
    assert _subjects(records) == {"pt-granted": PER_SUBJECT, "pt-team": PER_SUBJECT}
    assert summary["records"] == len(records)
    assert _account(hospital.provider, transfer).startswith(
        f"consent: {2 * PER_SUBJECT} records served, ")


async def test_a_push_goes_through_the_same_gate(hospital: Hospital, tmp_path: Path) -> None:
    await _grant(hospital, "pt-granted", _did(hospital.care))
    agreement = await _agreement(hospital.care, hospital.provider, "documents")
    out = tmp_path / "pushed.jsonl"
    pushed = hospital.care.cli("transfer", agreement, "--push", "--out", str(out))
    assert pushed.returncode == 0 and "verified" in pushed.stdout, pushed.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert _subjects(records).get("pt-granted") == PER_SUBJECT
    assert not {"pt-nobody", "pt-other-purpose", "pt-other-consumer"} & set(_subjects(records))


async def test_a_consumer_outside_the_consent_gets_none_of_it(hospital: Hospital) -> None:
    await _grant(hospital, "pt-other-consumer", _did(hospital.app))
    records, _, _ = await _pull(hospital.care, hospital.provider)
    assert "pt-other-consumer" not in _subjects(records)
    records, _, transfer = await _pull(hospital.app, hospital.provider)
    assert set(_subjects(records)) == {"pt-other-consumer"}  # the app has this one only
    assert "other consumer" in _account(hospital.provider, transfer)


async def test_a_purpose_outside_the_consent_serves_nothing(hospital: Hospital) -> None:
    await _grant(hospital, "pt-other-purpose", _did(hospital.care), purpose="research")
    records, _, transfer = await _pull(hospital.care, hospital.provider)
    assert "pt-other-purpose" not in _subjects(records)
    assert f"other purpose {PER_SUBJECT}" in _account(hospital.provider, transfer)


async def test_an_unknown_subject_and_a_record_without_one_are_withheld(
        hospital: Hospital) -> None:
    records, _, transfer = await _pull(hospital.care, hospital.provider)
    assert "pt-nobody" not in _subjects(records) and "" not in _subjects(records)
    account = _account(hospital.provider, transfer)
    assert "no subject field 1" in account and "no consent" in account


async def test_an_expired_consent_stops_serving(hospital: Hospital) -> None:
    until = datetime.now(UTC) + timedelta(seconds=3)
    await _grant(hospital, "pt-expiring", _did(hospital.care), until=until)
    records, _, _ = await _pull(hospital.care, hospital.provider)
    assert _subjects(records).get("pt-expiring") == PER_SUBJECT
    while datetime.now(UTC) <= until:  # wait for the instant, then pull
        time.sleep(0.2)
    records, _, transfer = await _pull(hospital.care, hospital.provider)
    assert "pt-expiring" not in _subjects(records)
    assert f"expired {PER_SUBJECT}" in _account(hospital.provider, transfer)


async def test_an_edit_by_hand_is_read_live(hospital: Hospital) -> None:
    path = hospital.provider.dir / "consents" / "pt-other-consumer.toml"
    assert path.exists()  # granted to the app by an earlier test, through the API
    with path.open("a") as f:  # as a `git pull` would bring it
        f.write(f'\n[[consent]]\nconsumer = "{_did(hospital.care)}"\npurpose = "care"\n'
                "until = 2099-01-01T00:00:00Z\n")
    deadline = time.monotonic() + 60
    while True:  # the daemon re-reads consents/ about every second
        records, _, _ = await _pull(hospital.care, hospital.provider)
        if "pt-other-consumer" in _subjects(records) or time.monotonic() > deadline:
            break
    assert _subjects(records).get("pt-other-consumer") == PER_SUBJECT


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    # Set before connecting: the window stays small, so little waits in our kernel.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return sock


async def test_a_withdrawal_mid_transfer_stops_that_subjects_records(
        hospital: Hospital) -> None:
    care_did = _did(hospital.care)
    await _grant(hospital, "pt-keeps", care_did)
    await _grant(hospital, "pt-leaves", care_did)
    agreement = await _agreement(hospital.care, hospital.provider, "archive")
    care, provider = await _api(hospital.care), await _api(hospital.provider)
    try:
        transfer = await care.call("POST", "/api/transfers?wait=30", {"agreementId": agreement})
        address = msgspec.convert(transfer["dataAddress"], DataAddress)
        body, acknowledged_at = bytearray(), None
        connector = aiohttp.TCPConnector(ssl=False, socket_factory=_small_receive_buffer)
        async with aiohttp.ClientSession(connector=connector) as http, http.get(
                str(address.url()), headers={"Authorization": address.authorization_header()},
                ) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(16 * 1024):
                body += chunk
                if acknowledged_at is None and len(body) > 2_000_000:
                    # The provider's stream is blocked on our window while we withdraw.
                    done = await provider.call("POST", "/api/consents/withdraw",
                                               {"subject": "pt-leaves"})
                    assert done["withdrawn"] == 1
                    acknowledged_at = len(body)
    finally:
        await care.close()
        await provider.close()
    assert acknowledged_at is not None
    lines = body.splitlines(keepends=True)
    leaves_at = [pos for pos, line in _positions(lines) if b'"pt-leaves"' in line]
    # The subject's records stop: none past what was already in flight at the answer ...
    assert leaves_at and leaves_at[-1] < acknowledged_at + IN_FLIGHT
    # ... while the stream goes on to its end with the other subject's records only.
    assert len(body) - leaves_at[-1] > 4 * 1024 * 1024
    keeps = sum(1 for line in lines if b'"pt-keeps"' in line)
    assert keeps == ARCHIVE_RECORDS // 2
    account = _account(hospital.provider, str(transfer["providerPid"]))
    withheld = int(re.search(r"withdrawn (\d+)", account).group(1))  # type: ignore[union-attr]
    assert len(leaves_at) + withheld == ARCHIVE_RECORDS // 2


def _positions(lines: list[bytes]) -> Iterator[tuple[int, bytes]]:
    at = 0
    for line in lines:
        yield at, line
        at += len(line)


async def test_bad_consent_input_is_a_4xx(hospital: Hospital) -> None:
    m = await _api(hospital.provider)
    good = {"subject": "p", "consumer": _did(hospital.care), "purpose": "care",
            "until": "2030-01-01T00:00:00Z"}
    try:
        for change, status in (({"until": "2030-13-01"}, 400),
                               ({"until": "2030-01-01T00:00:00"}, 400),
                               ({"until": "9999-12-31T23:59:59-01:00"}, 400),  # overflows
                               ({"purpose": "care and research"}, 400),
                               ({"consumer": "anyone"}, 400),
                               ({"subject": "../keys/signing-key"}, 400),
                               ({"subject": None}, 400)):
            with pytest.raises(ConnectorError) as refused:
                await m.call("POST", "/api/consents", {**good, **change})
            assert getattr(refused.value, "peer_status", None) == status, change
        with pytest.raises(ConnectorError) as refused:
            await m.call("POST", "/api/consents/withdraw", {"subject": "pt-never-granted"})
        assert getattr(refused.value, "peer_status", None) == 404
    finally:
        await m.close()


async def test_the_register_survives_a_restart_and_names_no_subject_in_logs(
        hospital: Hospital) -> None:
    await _grant(hospital, "pt-withdrawn-early", _did(hospital.care))
    withdrawn = hospital.provider.cli("consent", "withdraw", "pt-withdrawn-early")
    assert withdrawn.returncode == 0, withdrawn.stderr
    before = hospital.provider.cli("consent", "list", "--json")
    stop(hospital.provider)
    start(hospital.provider)
    after = hospital.provider.cli("consent", "list", "--json")
    assert after.returncode == 0 and json.loads(after.stdout) == json.loads(before.stdout)
    states = {(r["subject"], r["state"]) for r in json.loads(after.stdout)}
    assert ("pt-granted", "in force") in states and ("pt-withdrawn-early", "withdrawn") in states
    records, _, _ = await _pull(hospital.care, hospital.provider)
    assert _subjects(records).get("pt-granted") == PER_SUBJECT
    assert "pt-withdrawn-early" not in _subjects(records)
    # The metrics count by reason class ...
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{hospital.metrics}/metrics") as resp:
        exposition = await resp.text()
    withheld = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^connector_consent_withheld_records_total\{reason="([a-z ]+)"\} (\S+)$', exposition,
        re.MULTILINE)}
    assert withheld.get("withdrawn", 0) > 0 and withheld.get("no consent", 0) > 0, withheld
    # ... and no subject id is in them, in the log, or anywhere in the database (the audit
    # trail, the timelines).
    log = (hospital.provider.dir / "state" / "daemon.log").read_text()
    state = b"".join(p.read_bytes() for p in (hospital.provider.dir / "state").glob("*.db*"))
    with StateDb(hospital.provider.dir) as db:  # the files above hold it on SQLite
        state += db.text().encode("latin-1") if db.engine == "postgres" else b""
    assert b"records served" in state
    for subject in (*SUBJECTS, "pt-keeps", "pt-leaves", "pt-never-granted"):
        assert subject not in log and subject.encode() not in state
        assert subject not in exposition
