"""The audit trail in the real store, and ``connector audit`` on the database it leaves.

A participant folder is created for real (keys, did.json); steps are saved through the store
(SQLite, or PostgreSQL for the tests of each command: ``folder`` is parametrised by engine)
with ``StepAudit``; the database is then tampered with by hand (as an attacker with access
would: the append-only trigger dropped first) and ``connector audit verify`` must name the
broken entry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from connector import cli
from connector.adapters.storage.audit_file import AuditTables, open_tables
from connector.adapters.storage.engine import AnyStore, open_store, read_dsn
from connector.adapters.storage.schema import ENGINES
from connector.config import Settings, load_settings
from connector.console.facts import audit_state
from connector.core.audit import sign_checkpoint
from connector.core.errors import AuditError, AuthError, ConfigError
from connector.core.identity import document_keys, issue_token
from connector.core.negotiation import HistoryEntry, Negotiation, NegotiationState, Role
from connector.keys import load_any_signing_key
from connector.participant.init import init_folder
from connector.participant.keys import retire_signing_key, rotate_signing_key
from connector.service import audit
from connector.service.audit import AuditSettings, AuditTrail, StepAudit, audit_settings
from connector.service.auth import bind_body
from connector.service.store import Agreement, Outgoing
from tests.e2e.postgres import new_database
from tests.stores import use_postgres

PEER = "did:web:peer.example"


@dataclass
class Folder:
    settings: Settings
    store: AnyStore
    trail: AuditTrail

    @property
    def db(self) -> Path:
        return self.settings.database

    @property
    def engine(self) -> str:
        return "sqlite" if self.settings.postgres_dsn_file is None else "postgres"

    async def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run ``statements`` on the folder's database, as someone with access to it would;
        the rows of the last."""
        rows: list[tuple[Any, ...]] = []
        if self.settings.postgres_dsn_file is None:
            with sqlite3.connect(self.db) as conn:
                for sql in statements:
                    rows = conn.execute(sql).fetchall()
            return rows
        conn = await asyncpg.connect(read_dsn(self.settings.postgres_dsn_file))
        try:
            for sql in statements:
                rows = [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
        return rows


# The tests of one engine only (its own schema tricks; the other engine's are in
# tests/unit/test_store_engines.py).
SQLITE_ONLY = pytest.mark.parametrize("state_dsn", ["sqlite"], indirect=True)


@pytest.fixture(params=ENGINES)
def state_dsn(request: pytest.FixtureRequest) -> str | None:
    """The engine of ``folder``'s state: None for SQLite, else a new PostgreSQL database."""
    if request.param == "postgres":
        return asyncio.run(new_database(request.getfixturevalue("postgres_server")))
    return None


@pytest_asyncio.fixture
async def folder(state_dsn: str | None, tmp_path: Path) -> AsyncIterator[Folder]:
    init_folder(tmp_path / "acme", name="acme", url="https://127.0.0.1:18443")
    if state_dsn is not None:
        use_postgres(tmp_path / "acme", state_dsn)
    settings = load_settings(tmp_path / "acme")
    store = await open_store(settings, audit=StepAudit(clock=time.time))
    trail = AuditTrail(store, did=settings.did, kid=settings.signing_kid,
                       key=load_any_signing_key(settings.signing_key),
                       settings=AuditSettings(), clock=time.time)
    store.on_audit = trail.appended
    opened = Folder(settings, store, trail)
    yield opened
    await opened.store.close()  # the one in use: a test may have reopened it


def negotiation(pid: str, state: NegotiationState = NegotiationState.REQUESTED,
                steps: int = 1) -> Negotiation:
    history = [HistoryEntry(at=1.0, by="consumer", message="ContractRequestMessage",
                            state="REQUESTED")] * steps
    return Negotiation(id=pid, role=Role.PROVIDER, state=state, consumer_pid=f"c-{pid}",
                       provider_pid=pid, dataset_id="weather", offer={"@id": "o"},
                       counterparty_address="https://peer.example/dsp",
                       counterparty_id=PEER, created_at=1.0, updated_at=1.0, history=history)


async def some_steps(f: Folder, n: int = 12, prefix: str = "n") -> None:
    for i in range(n):
        await f.store.save_negotiation(negotiation(f"{prefix}{i}"), expect_new=True)
        if i % 4 == 3:
            await f.trail.checkpoint()


async def command(*argv: str) -> int:
    """``connector ARGV`` as from a shell (its own thread: the command runs its own loop)."""
    return await asyncio.to_thread(cli.main, list(argv))


async def verify(f: Folder, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = await command("audit", "verify", "--dir", str(f.settings.root), *args)
    return code, capsys.readouterr().out


async def on_tables(f: Folder, read: Callable[[AuditTables], Any]) -> Any:
    """``read`` on the folder's audit tables as ``connector audit`` opens them."""
    def run() -> Any:
        with open_tables(f.settings) as tables:
            return read(tables)

    return await asyncio.to_thread(run)


async def tamper(f: Folder, *statements: str) -> None:
    """Run ``statements`` on the audit tables, the append-only trigger dropped first."""
    on = " ON audit_entries" if f.engine == "postgres" else ""
    await f.sql(f"DROP TRIGGER IF EXISTS audit_entries_append_only{on}", *statements)


# -- what a step writes ---------------------------------------------------------------------------


async def test_a_step_writes_its_entries_and_the_inbound_message_s_evidence(
        folder: Folder) -> None:
    token = "header.payload.signature"
    audit.received(audit.Inbound(peer=PEER, token_id="jti-1", token=token, body=b'{"@type":'
                                 b'"ContractRequestMessage"}', bound=True))
    out = Outgoing(process_id="n1", url="https://peer.example/dsp/negotiations/c/agreement",
                   audience=PEER, body=b'{"@type":"ContractAgreementMessage"}')
    agreement = Agreement(id="a1", negotiation_id="n1", role="provider", dataset_id="weather",
                          assigner="did:web:acme", assignee=PEER, created_at=1.0,
                          body={"@id": "a1"}, policy_hash="f" * 64, policy_commit="abc")
    await folder.store.save_negotiation(negotiation("n1", NegotiationState.FINALIZED),
                                        outbox=[out], agreement=agreement, expect_new=True)
    (body, *refs), = await folder.sql("SELECT body, ref1, ref2 FROM audit_entries")
    evidence = {kind: content for kind, content in (await on_tables(
        folder, lambda t: t.read_evidence([1], ["f" * 64]))).values()}
    entry = json.loads(body)  # one entry for the step, its parts in sections
    assert entry["kind"] == "negotiation" and entry["data"]["state"] == "FINALIZED"
    assert entry["data"]["in"] == {
        "type": "ContractRequestMessage", "peer": PEER, "tokenId": "jti-1", "bound": True,
        "tokenDigest": hashlib.sha256(token.encode()).hexdigest(), "kept": True,
        "bodyDigest": hashlib.sha256(evidence["body"]).hexdigest()}
    assert entry["data"]["agreement"]["policyHash"] == "f" * 64
    assert entry["data"]["out"][0]["type"] == "ContractAgreementMessage"
    assert evidence["token"] == token.encode() and b"ContractRequestMessage" in evidence["body"]
    assert refs == ["n1", "a1"]
    # Once consumed, the same inbound message is not recorded again by a second step.
    await folder.store.save_negotiation(negotiation("n1", steps=2))
    (second,), = await folder.sql("SELECT body FROM audit_entries WHERE seq = 2")
    assert "in" not in json.loads(second)["data"]


async def test_concurrent_steps_make_one_valid_chain(folder: Folder,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.gather(*(folder.store.save_negotiation(negotiation(f"n{i}"), expect_new=True)
                           for i in range(50)),
                         *(folder.trail.append("reload", [f"r{i}"], {}) for i in range(10)))
    await folder.trail.checkpoint()
    code, out = await verify(folder, capsys)
    assert code == 0 and "60 entries" in out and "signed through entry 60" in out
    walked = await on_tables(folder, lambda t: [e.seq for e in t.iter_chain(chunk=7)])  # 9x7
    assert walked == list(range(1, 61))


@SQLITE_ONLY
async def test_a_failed_audit_write_refuses_the_step_and_leaves_the_chain_valid(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    await some_steps(folder, 4)
    # The audit table cannot be written (simulated: it is moved away under the store).
    with sqlite3.connect(folder.db) as conn:
        conn.execute("ALTER TABLE audit_entries RENAME TO audit_entries_away")
    with pytest.raises(AuditError) as info:
        await folder.store.save_negotiation(negotiation("refused"), expect_new=True)
    assert info.value.status == 503
    assert "the step and its audit entry could not be written" in info.value.message
    assert "no such table: audit_entries" in info.value.message
    assert await folder.store.get_negotiation("refused") is None  # the step did not happen
    with sqlite3.connect(folder.db) as conn:
        assert conn.execute("SELECT count(*) FROM negotiations WHERE id = 'refused'"
                            ).fetchone()[0] == 0
        conn.execute("ALTER TABLE audit_entries_away RENAME TO audit_entries")
    await folder.store.save_negotiation(negotiation("after"), expect_new=True)
    await folder.trail.checkpoint()
    code, out = await verify(folder, capsys)
    assert code == 0 and "5 entries" in out, out


@SQLITE_ONLY
async def test_an_entry_that_cannot_be_made_refuses_its_step_and_no_other(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite makes a step's entry when the group commit writes the step
    (``StepAudit.negotiation_later``): one that cannot be made there (the policy text an
    agreement names cannot be read) refuses its own step, not those committed with it."""
    def unreadable(policy_hash: str) -> bytes | None:
        raise OSError(f"policies/{policy_hash[:8]}.json: permission denied")

    await folder.store.close()
    folder.store = await open_store(folder.settings,
                                    audit=StepAudit(clock=time.time, policy_text=unreadable))
    agreement = Agreement(id="a1", negotiation_id="agreed", role="provider",
                          dataset_id="weather", assigner="did:web:acme", assignee=PEER,
                          created_at=1.0, body={"@id": "a1"}, policy_hash="f" * 64)
    results = await asyncio.gather(
        *(folder.store.save_negotiation(negotiation(f"n{i}"), expect_new=True)
          for i in range(4)),
        folder.store.save_negotiation(negotiation("agreed", NegotiationState.FINALIZED),
                                      agreement=agreement, expect_new=True),
        return_exceptions=True)
    assert results[:4] == [[], [], [], []]
    refused = results[4]
    assert isinstance(refused, AuditError) and refused.status == 503
    assert "permission denied" in refused.message
    assert await folder.store.get_negotiation("agreed") is None
    assert await folder.store.get_agreement("a1") is None
    assert [(await folder.store.get_negotiation(f"n{i}")) is not None
            for i in range(4)] == [True] * 4
    code, out = await verify(folder, capsys)
    assert code == 0 and "4 entries" in out, out


@SQLITE_ONLY
async def test_the_audit_table_is_append_only(folder: Folder) -> None:
    await some_steps(folder, 2)
    with sqlite3.connect(folder.db) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE audit_entries SET body = x'00' WHERE seq = 1")


# -- tampering, found by `connector audit verify` -----------------------------------------------

def _edited_body(engine: str) -> str:
    """Entry 6's body with one byte changed (a text function over the JSON's bytes)."""
    if engine == "postgres":
        return ("convert_to(replace(convert_from(body, 'UTF8'), 'REQUESTED', 'REQUESTEX'),"
                " 'UTF8')")
    return "replace(body, 'REQUESTED', 'REQUESTEX')"


TAMPERING: dict[str, tuple[Callable[[str], tuple[str, ...]], str]] = {
    "one byte changed": (lambda engine: (
        "INSERT INTO audit_entries (seq, digest, hash, body) SELECT 1000, digest, hash,"
        f" {_edited_body(engine)} FROM audit_entries WHERE seq = 6",
        "DELETE FROM audit_entries WHERE seq = 6",
        "UPDATE audit_entries SET seq = 6 WHERE seq = 1000"),
        "BROKEN at entry 6: entry 6: its content does not match its digest"),
    "one entry deleted": (lambda _engine: ("DELETE FROM audit_entries WHERE seq = 5",),
                          "BROKEN at entry 6: entry 6: expected entry 5 here"),
    "two entries reordered": (lambda _engine: (
        "UPDATE audit_entries SET seq = 1000 WHERE seq = 2",
        "UPDATE audit_entries SET seq = 2 WHERE seq = 3",
        "UPDATE audit_entries SET seq = 3 WHERE seq = 1000"),
        "BROKEN at entry 2: entry 2: its content names another position"),
    "tail truncated": (lambda _engine: ("DELETE FROM audit_entries WHERE seq > 9",),
                       "BROKEN at entry 12: entry 12, signed in a checkpoint, is missing"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
async def test_tampering_is_found_and_names_the_entry(
        folder: Folder, capsys: pytest.CaptureFixture[str], case: str) -> None:
    await some_steps(folder)
    assert (await verify(folder, capsys))[0] == 0
    statements, expected = TAMPERING[case]
    await tamper(folder, *statements(folder.engine))
    code, out = await verify(folder, capsys)
    assert code == 1 and expected in out, out


async def test_a_replaced_checkpoint_signature_is_found(
        folder: Folder, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    await some_steps(folder)
    init_folder(tmp_path / "mallory", name="mallory", url="https://127.0.0.1:18444")
    other = load_any_signing_key(load_settings(tmp_path / "mallory").signing_key)
    (seq, jws), = await folder.sql("SELECT seq, jws FROM audit_checkpoints WHERE seq = 8")
    (head,), = await folder.sql("SELECT hash FROM audit_entries WHERE seq = 8")
    forged = sign_checkpoint(other, kid=folder.settings.signing_kid, did=folder.settings.did,
                             seq=seq, head=head, now=1)
    await tamper(folder, f"UPDATE audit_checkpoints SET jws = '{jws.rsplit('.', 1)[0]}."
                         f"{forged.rsplit('.', 1)[1]}' WHERE seq = 8")
    code, out = await verify(folder, capsys)
    assert code == 1 and "BROKEN at entry 8: checkpoint at entry 8: signature invalid" in out


async def test_prune_keeps_the_chain_verifiable_from_a_signed_checkpoint(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    await some_steps(folder)
    root = str(folder.settings.root)
    assert await command("audit", "prune", "--before", "2999-01-01", "--dir", root) == 0
    assert "pruned 12 entries" in capsys.readouterr().out
    assert await on_tables(folder, lambda t: t.read_refs(["n3"])) == []  # pruned with it
    await some_steps(folder, 4, prefix="later")
    code, out = await verify(folder, capsys)
    assert code == 0 and "4 entries (13..16)" in out, out
    # Without the checkpoint it hangs from, the rest no longer verifies.
    await tamper(folder, "DELETE FROM audit_checkpoints WHERE seq = 12")
    code, out = await verify(folder, capsys)
    assert code == 1 and "no signed checkpoint at entry 12" in out, out


async def test_after_a_prune_of_every_entry_a_restarted_store_chains_on_from_the_checkpoint(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    await some_steps(folder)
    assert await command("audit", "prune", "--before", "2999-01-01", "--dir",
                         str(folder.settings.root)) == 0
    assert "pruned 12 entries" in capsys.readouterr().out
    await folder.store.close()  # a restart: the head is read back from the database
    folder.store = await open_store(folder.settings, audit=StepAudit(clock=time.time))
    folder.trail = AuditTrail(folder.store, did=folder.settings.did,
                              kid=folder.settings.signing_kid,
                              key=load_any_signing_key(folder.settings.signing_key),
                              settings=AuditSettings(), clock=time.time)
    folder.store.on_audit = folder.trail.appended
    await folder.trail.append("reload", ["acme"], {"what": "policies"})  # an event alone
    await some_steps(folder, 4, prefix="later")
    await folder.trail.append("reload", ["acme"], {"what": "policies"})
    code, out = await verify(folder, capsys)
    assert code == 0 and "6 entries (13..18)" in out, out


async def test_show_prints_one_process_s_entries_in_order(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    await some_steps(folder, 3)
    await folder.store.save_negotiation(negotiation("n1", NegotiationState.TERMINATED, 2))
    assert await command("audit", "show", "n1", "--dir", str(folder.settings.root)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == [2, 4]
    assert "TERMINATED" in lines[1]


# -- messages bound to their tokens --------------------------------------------------------------


def _token(body: bytes | None) -> str:
    digest = None if body is None else hashlib.sha256(body).hexdigest()
    return "Bearer " + issue_token(Ed25519PrivateKey.generate(), kid=PEER + "#k", issuer=PEER,
                                   audience="did:web:me", now=1, jti="j", ttl_s=60,
                                   body_digest=digest)


def test_a_body_digest_claim_binds_the_token_to_its_body() -> None:
    binding = bind_body(_token(b"{}"), b"{}", required=True)
    assert binding.bound and binding.token_id == "j" and binding.token
    with pytest.raises(AuthError, match="another message body"):
        bind_body(_token(b"{}"), b'{"x":1}', required=False)
    with pytest.raises(AuthError, match="no body_sha256 claim"):
        bind_body(_token(None), b"{}", required=True)
    unbound = bind_body(_token(None), b"{}", required=False)
    assert not unbound.bound and unbound.token is not None
    static = bind_body("Bearer not-a-jws", b"{}", required=False)
    assert not static.bound and static.token is None


def test_audit_settings_are_read_and_checked() -> None:
    assert audit_settings({}, "x") == AuditSettings()
    read = audit_settings({"audit": {"checkpoint_entries": 10, "checkpoint_seconds": 2}}, "x")
    assert (read.checkpoint_entries, read.checkpoint_seconds) == (10, 2.0)
    with pytest.raises(ConfigError, match="checkpoint_entries"):
        audit_settings({"audit": {"checkpoint_entries": 0}}, "x")


async def test_checkpoints_signed_before_a_rotation_verify_after_the_old_key_is_retired(
        folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder.settings.root
    old_kid = folder.settings.signing_kid

    def own_keys() -> dict[str, dict[str, object]]:
        settings = load_settings(root)
        return document_keys(json.loads((root / "did.json").read_text()), settings.did)

    await folder.trail.keys(own_keys(), old_kid)
    await some_steps(folder, 6)
    new_kid = rotate_signing_key(root, now=time.time())
    retire_signing_key(root, old_kid, now=time.time() + 100_000)
    assert old_kid not in own_keys()
    rotated = load_settings(root)
    folder.trail.reload_key(kid=new_kid, key=load_any_signing_key(rotated.signing_key))
    await folder.trail.keys(own_keys(), new_kid)  # what the daemon does when did.json changes
    await some_steps(folder, 3, prefix="after")
    await folder.trail.checkpoint()
    code, out = await verify(folder, capsys)
    assert code == 0 and "signed through entry 11" in out, out
    kids = {json.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))["kid"]
            for (jws,) in await folder.sql("SELECT jws FROM audit_checkpoints")}
    assert kids == {old_kid, new_kid}


async def test_denials_carry_their_reasons_and_revocations_are_recorded(
        folder: Folder) -> None:
    denied = HistoryEntry(at=2.0, by="policy", message="members-only denied for " + PEER,
                          state="REQUESTED", note="✗ membership eq active: found none\n"
                                                  "✓ purpose eq research: found research")
    record = negotiation("d1")
    record = replace(record, history=[*record.history, denied])
    await folder.store.save_negotiation(record, expect_new=True)
    agreement = Agreement(id="a9", negotiation_id="n9", role="provider", dataset_id="weather",
                          assigner="did:web:acme", assignee=PEER, created_at=1.0,
                          body={"@id": "a9"})
    await folder.store.save_agreement(replace(agreement, revoked="consent withdrawn"))
    bodies = [json.loads(b) for (b,) in await folder.sql(
        "SELECT body FROM audit_entries ORDER BY seq")]
    assert bodies[0]["data"]["denials"] == [{
        "decision": "members-only denied for " + PEER,
        "reasons": ["✗ membership eq active: found none",
                    "✓ purpose eq research: found research"]}]
    assert bodies[1]["kind"] == "revocation"
    assert bodies[1]["data"] == {"agreement": "a9", "reason": "consent withdrawn"}


async def test_the_console_s_audit_page_reads_the_trail_on_either_engine(
        folder: Folder) -> None:
    """The console's audit page (``console.facts.audit_state``): the trail verified and its
    newest entries, newest first, from the participant's database whatever its engine."""
    await some_steps(folder, 5)
    state = await asyncio.to_thread(audit_state, folder.settings)
    assert state.report.ok and state.report.entries == 5 and state.signed_through == 4
    assert [int(line.split()[0]) for line in state.newest] == [5, 4, 3, 2, 1]
