"""The audit trail between two real daemons: `connector audit verify|show|export|verify-bundle`
(verify and export on both storage engines).

Both sides export an evidence bundle for the same agreement; each verifies offline with nothing
but the file, and each fails once its policy text, a peer token or an entry is altered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.storage.audit_file import open_tables
from connector.adapters.storage.schema import ENGINES
from connector.client import Management
from connector.config import load_settings
from tests.e2e.conftest import Space
from tests.harness import create_space, running
from tests.stores import StateDb

pytestmark = pytest.mark.asyncio(loop_scope="session")


def verify_bundle(path: Path) -> subprocess.CompletedProcess[str]:
    """``connector audit verify-bundle FILE``, run where nothing but the file is given."""
    return subprocess.run([sys.executable, "-m", "connector.cli", "audit", "verify-bundle",
                           str(path)], capture_output=True, text=True, timeout=120,
                          cwd=path.parent)


def altered(bundle: dict[str, Any], path: Path, change: Any) -> Path:
    copy = json.loads(json.dumps(bundle))
    change(copy)
    path.write_text(json.dumps(copy))
    return path


def evidence_of(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(v for v in bundle["evidence"].values() if v["kind"] == kind)


def flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


async def _agreement_with_a_transfer(space: Space, apis: tuple[Management, Management]
                                     ) -> str:
    _, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    assert record["state"] == "FINALIZED", record
    transfer = await consumer.call("POST", "/api/transfers?wait=10",
                                   {"agreementId": record["agreementId"]})
    out = space.consumer.dir / "state" / "audit-received.jsonl"
    records, _ = await consumer.download(f"/api/transfers/{transfer['id']}/data", out)
    assert records == 10
    return str(record["agreementId"])


# Both engines, whatever CONNECTOR_E2E_ENGINES says: the audit commands read either.
@pytest.mark.engines(*ENGINES)
async def test_both_sides_export_bundles_that_verify_offline_and_catch_tampering(
        space: Space, apis: tuple[Management, Management], tmp_path: Path) -> None:
    agreement = await _agreement_with_a_transfer(space, apis)
    bundles = {}
    for side in (space.provider, space.consumer):
        verified = side.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "audit trail ok" in verified.stdout
        out = tmp_path / f"{side.name}.json"
        done = side.cli("audit", "export", agreement, "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        checked = verify_bundle(out)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "bundle ok" in checked.stdout and "(0 unbound)" in checked.stdout
        assert ": bound" in checked.stdout  # the peer's tokens signed the message bodies
        bundles[side.name] = json.loads(out.read_text())

    # The provider's bundle holds the policy text; the consumer's the agreement the
    # provider signed (its token over the ContractAgreementMessage).
    provider, consumer = bundles["provider"], bundles["consumer"]
    assert evidence_of(provider, "policy")
    steps = [json.loads(e["body"])["data"] for e in consumer["entries"] if e["body"]]
    received = [d["in"]["type"] for d in steps if "in" in d]
    assert "ContractAgreementMessage" in received
    assert any(isinstance(d.get("agreement"), dict) for d in steps)

    def policy(b: dict[str, Any]) -> None:
        text = evidence_of(b, "policy")
        text["content"] = base64.b64encode(
            base64.b64decode(text["content"]).replace(b"active", b"ACTIVE")).decode()

    def token(b: dict[str, Any]) -> None:
        held = evidence_of(b, "token")
        held["content"] = flip(held["content"])

    def entry(b: dict[str, Any]) -> None:
        first = next(e for e in b["entries"] if e["body"])
        first["body"] = first["body"].replace('"kind":', '"kind" :', 1)

    def document(b: dict[str, Any]) -> None:
        held = evidence_of(b, "did")
        held["content"] = base64.b64encode(base64.b64decode(held["content"]).replace(
            b'"kty":"OKP"', b'"kty":"OKP" ')).decode()

    for name, change, side, words in (
            ("did", document, consumer, "DID document does not match its digest"),
            ("policy", policy, provider, "policy text"),
            ("token", token, provider, "token"),
            ("token", token, consumer, "token"),
            ("entry", entry, consumer, "does not match its digest")):
        result = verify_bundle(altered(side, tmp_path / f"{name}.json", change))
        assert result.returncode == 1, (name, result.stdout)
        assert "bundle INVALID" in result.stdout and words in result.stdout, result.stdout


def _kinds(folder: Path) -> set[str]:
    """The kinds of entry in a participant's trail, on either engine (the audit commands'
    reader, which runs its own event loop: call it from a thread)."""
    with open_tables(load_settings(folder)) as tables:
        return {str(entry.decoded()["kind"]) for entry in tables.iter_chain()}


async def test_show_tells_an_agreement_s_story_in_order(
        space: Space, apis: tuple[Management, Management]) -> None:
    agreement = await _agreement_with_a_transfer(space, apis)
    shown = space.provider.cli("audit", "show", agreement)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    kinds = [line.split()[2] for line in lines]
    made = next(i for i, line in enumerate(lines) if f"agreement {agreement} (" in line)
    asked = next(i for i, line in enumerate(lines) if "received ContractRequestMessage" in line)
    assert asked <= made < kinds.index("data.access") < kinds.index("data.sent")
    assert "(bound)" in lines[asked]
    seqs = [int(line.split()[0]) for line in lines]
    assert seqs == sorted(seqs)
    # Catalogue answers: to whom, which offers (the management API fetched one per
    # negotiation), found by the peer's DID.
    consumer_did = load_settings(space.consumer.dir).did
    answers = space.provider.cli("audit", "show", consumer_did)
    assert answers.returncode == 0, answers.stderr
    assert "catalog" in answers.stdout and "urn:offer:example-weather" in answers.stdout
    # The daemon announced its keys (the key history) and what it started with.
    kinds = await asyncio.to_thread(_kinds, space.provider.dir)
    assert {"keys", "start", "catalog", "negotiation", "transfer", "data.access"} <= kinds
    # No record content, no token in the trail: the dataset's records never appear.
    sample = (space.provider.dir / "data" / "example.jsonl").read_text().splitlines()[0]
    assert sample not in shown.stdout


async def test_a_step_whose_entry_cannot_be_written_does_not_happen(tmp_path: Path) -> None:
    """The provider's audit table cannot be written (moved away under the running daemon, as
    a full or read-only store would refuse it): the consumer's request is refused with 503
    and nothing is stored; once the table is back, the consumer's retry goes through and the
    chain is intact."""
    provider, consumer = create_space(tmp_path)
    with running([provider, consumer]), StateDb(provider.dir) as db:
        api = Management(load_settings(consumer.dir))
        try:
            db.execute("ALTER TABLE audit_entries RENAME TO audit_entries_away")
            record = await api.call("POST", "/api/negotiations",
                                    {"provider": provider.url, "datasetId": "example-weather"})
            log = provider.dir / "state" / "daemon.log"
            # Poll for the 503 line itself: the catalogue answer's entry, written behind,
            # fails with the same words first and must not end the wait.
            refused = "-> 503 audit: refused: the step and its audit entry could not be written"
            for _ in range(400):
                if refused in log.read_text():
                    break
                await asyncio.sleep(0.05)
            text = log.read_text()
            assert refused in text, text[-2000:]
            assert db.execute("SELECT count(*) FROM negotiations") == [(0,)]
            db.execute("ALTER TABLE audit_entries_away RENAME TO audit_entries")
            done = await api.call("GET", f"/api/negotiations/{record['id']}?wait=20")
            assert done["state"] == "FINALIZED", done  # the outbox retried the 503
        finally:
            await api.close()
        verified = provider.cli("audit", "verify")
        assert verified.returncode == 0 and "audit trail ok" in verified.stdout, verified.stdout
