"""The audit trail's service side: which events a step produces, and the signed checkpoints.

The store writes a step's audit entries in the transaction of the step itself (if they cannot
be written, the step does not happen); this module says what they are:

- ``StepAudit`` turns a persisted step (a negotiation or transfer record, the agreement it
  produced, the messages it queues, a revocation) into ``core.audit.Event`` values, plus the
  evidence kept beside the chain (the peer's signed token and the message body; the policy
  text of an agreement). The inbound DSP message a step answers is handed over by the DSP
  route through a context variable (``received``): the route knows the verified token, the
  store knows the step, and neither needs to change its signature for the other.
- ``AuditTrail`` appends events that are steps of their own (catalogue answers, data
  accesses, reloads, key announcements) and signs a checkpoint every ``entries`` entries or
  ``seconds`` seconds (``[audit]`` in connector.toml).

Nothing here holds record content, a data token or key material: entries name tokens by
``jti`` and SHA-256, bodies by SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgspec

from connector.core.audit import Event, canonical, sha256_hex, sign_checkpoint
from connector.core.errors import ConfigError
from connector.core.identity import SigningKey
from connector.core.negotiation import HistoryEntry, Negotiation
from connector.core.transfer import Transfer
from connector.service.store import Agreement, Outgoing

log = logging.getLogger("connector.audit")
# A checkpoint at least every 1000 entries or every 60 s (when anything was written): what an
# attacker could cut from the tail unnoticed, without a witness, is bounded by the two.
DEFAULT_CHECKPOINT_ENTRIES = 1000
DEFAULT_CHECKPOINT_SECONDS = 60.0
# Processes whose timeline length is remembered (to audit only the new steps of a record).
MAX_TRACKED_PROCESSES = 100_000
# Peers' DID documents whose encoding is remembered (one per peer in a small data space).
MAX_TRACKED_DOCUMENTS = 1_000
# A history line from the policy saying it refused: a denial, with its per-constraint reasons.
_DENIAL_WORDS = ("denied", "cannot evaluate")

Evidence = tuple[str, str, bytes]  # (digest, kind, content)
# Evidence kinds many entries share, written once (the others are kept with their entry).
SHARED_EVIDENCE = frozenset({"did", "policy"})


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]`` in connector.toml."""

    enabled: bool = True
    checkpoint_entries: int = DEFAULT_CHECKPOINT_ENTRIES
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    witness: bool = True  # send checkpoints to the [registry] urls


def audit_settings(extra: Mapping[str, Any], where: str) -> AuditSettings:
    """Read ``[audit]`` (from ``Settings.extra``); ConfigError names the key."""
    table = extra.get("audit", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [audit] must be a table")
    enabled, witness = table.get("enabled", True), table.get("witness", True)
    entries = table.get("checkpoint_entries", DEFAULT_CHECKPOINT_ENTRIES)
    seconds = table.get("checkpoint_seconds", DEFAULT_CHECKPOINT_SECONDS)
    if not isinstance(enabled, bool) or not isinstance(witness, bool):
        raise ConfigError(f"{where} [audit]: 'enabled' and 'witness' must be true or false")
    if not isinstance(entries, int) or isinstance(entries, bool) or entries < 1:
        raise ConfigError(f"{where} [audit]: key 'checkpoint_entries' must be an integer >= 1")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
        raise ConfigError(f"{where} [audit]: key 'checkpoint_seconds' must be a number > 0")
    return AuditSettings(enabled=enabled, checkpoint_entries=entries,
                         checkpoint_seconds=float(seconds), witness=witness)


@dataclass(slots=True)
class Inbound:
    """What the DSP route verified about the message being handled (``received``)."""

    peer: str
    token_id: str | None
    token: str | None
    body: bytes
    bound: bool  # the token carried the body digest claim (and it matched)
    document: Mapping[str, Any] | None = None  # the peer's DID document its token verified with
    used: bool = False
    # SHA-256 of ``body`` in hex when the route has it already (the body digest claim's
    # check computed it); computed here otherwise.
    body_digest: str | None = None

    def event_data(self) -> dict[str, Any]:
        return {"type": _message_type(self.body), "peer": self.peer, "tokenId": self.token_id,
                "tokenDigest": sha256_hex(self.token.encode()) if self.token else None,
                "bodyDigest": self.body_digest or sha256_hex(self.body),
                "bound": self.bound}


_inbound: ContextVar[Inbound | None] = ContextVar("audit_inbound", default=None)


def received(message: Inbound) -> None:
    """The DSP route: the verified message this request's steps answer (one entry, once)."""
    _inbound.set(message)


def _take_inbound() -> Inbound | None:
    message = _inbound.get()
    if message is None or message.used:
        return None
    message.used = True
    return message


@dataclass(slots=True)
class AuditBatch:
    """The events of one step and the evidence kept beside them, written with the step."""

    events: list[Event] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    on_commit: list[Callable[[], None]] = field(default_factory=list)  # once it is written

    def __bool__(self) -> bool:
        return bool(self.events)

    def stored(self) -> StoredBatch:
        """The batch as both stores write it (``audit_entries``, ``audit_shared``)."""
        own: list[Evidence] = []
        shared: list[Evidence] = []
        for e in self.evidence:
            (shared if e[1] in SHARED_EVIDENCE else own).append(e)
        return StoredBatch(refs=[_two_refs(event.refs) for event in self.events],
                           own=_evidence.encode(own) if own else None, shared=shared)


class StoredBatch(NamedTuple):
    """An ``AuditBatch`` in the columns of the audit tables."""

    refs: list[tuple[str | None, str | None]]  # per entry: the ids it concerns, ``ref1/2``
    own: bytes | None  # the step's own evidence, [[digest, kind, content], ...] as
    # MessagePack, in its first entry's ``evidence`` column (adapters/storage/audit_file.py)
    shared: list[Evidence]  # rows of ``audit_shared``, written once per digest


def _two_refs(refs: Sequence[str]) -> tuple[str | None, str | None]:
    """The first two distinct, non-empty ids of an entry."""
    first = None
    for ref in refs:
        if ref and first is None:
            first = ref
        elif ref and ref != first:
            return first, ref
    return first, None


_evidence = msgspec.msgpack.Encoder()


class StepAudit:
    """Derives a step's audit entry; the store calls it inside ``_transaction``'s callers.

    One entry per step: its state, the timeline lines it added, and in sections the inbound
    message it answers (``in``), the messages it queues (``out``), the agreement it made
    (``agreement``) and the policy's refusals (``denials``). Evidence already written once
    (a peer's DID document, a policy text) is not queued again while this process runs.
    """

    def __init__(self, *, clock: Callable[[], float],
                 policy_text: Callable[[str], bytes | None] = lambda _hash: None) -> None:
        self._clock = clock
        self._policy_text = policy_text  # the canonical policy document with that hash
        self._audited: dict[str, int] = {}  # process id -> history lines already audited
        self._documents: dict[int, tuple[Mapping[str, Any], str, bytes]] = {}
        self._kept: set[str] = set()  # digests of the shared evidence written so far

    def negotiation(self, record: Negotiation, outbox: Sequence[Outgoing],
                    agreement: Agreement | None) -> AuditBatch:
        """The step's entry; none for a step that adds nothing to the story (no timeline
        line, no message in or out, no agreement): in a negotiation that is only the consumer
        learning the provider's pid from the 201 to its request, a pid the next entry names.
        (A transfer's such steps, a data token refreshed, keep theirs.)"""
        return self.negotiation_later(record, outbox, agreement)()

    def negotiation_later(self, record: Negotiation, outbox: Sequence[Outgoing],
                          agreement: Agreement | None) -> Callable[[], AuditBatch]:
        """``negotiation``, made when called: what belongs to the request (the inbound
        message) and the time are taken now, the rest when the store writes the step. A
        store that writes steps together (SQLite's group commit) makes their entries one
        after the other, which in a busy daemon costs little more than half of making each
        between other requests' work, the CPU's caches staying warm (bench/README.md).
        Calls must come in the order of the steps (they track each process's timeline)."""
        return functools.partial(self._negotiation, record, outbox, agreement,
                                 _take_inbound(), self._clock())

    def _negotiation(self, record: Negotiation, outbox: Sequence[Outgoing],
                     agreement: Agreement | None, message: Inbound | None, at: float
                     ) -> AuditBatch:
        batch = AuditBatch()
        data = self._step(batch, record.id, record.role.value, record.state.value,
                          record.history, record.state.terminal, message, keep_evidence=True)
        if not (data["steps"] or "in" in data or outbox or agreement):
            return batch
        data["consumerPid"], data["providerPid"] = record.consumer_pid, record.provider_pid
        data["dataset"], data["peer"] = record.dataset_id, record.counterparty_id
        if agreement is None:
            refs: tuple[str, ...] = (record.id,)
        else:
            refs = (record.id, agreement.id)
            data["agreement"] = self._agreement(batch, agreement)
        self._outgoing(data, outbox)
        batch.events.append(Event("negotiation", at, refs, data))
        return batch

    def transfer(self, record: Transfer, outbox: Sequence[Outgoing]) -> AuditBatch:
        return self.transfer_later(record, outbox)()

    def transfer_later(self, record: Transfer, outbox: Sequence[Outgoing]
                       ) -> Callable[[], AuditBatch]:
        """``transfer``, made when called (as ``negotiation_later`` says)."""
        return functools.partial(self._transfer, record, outbox, _take_inbound(),
                                 self._clock())

    def _transfer(self, record: Transfer, outbox: Sequence[Outgoing], message: Inbound | None,
                  at: float) -> AuditBatch:
        batch = AuditBatch()
        data = self._step(batch, record.id, record.role.value, record.state.value,
                          record.history, record.state.terminal, message, keep_evidence=False)
        data |= {"consumerPid": record.consumer_pid, "providerPid": record.provider_pid,
                 "agreement": record.agreement_id, "peer": record.counterparty_id}
        self._outgoing(data, outbox)
        batch.events.append(Event("transfer", at, (record.id, record.agreement_id), data))
        return batch

    def revocation(self, agreement: Agreement) -> AuditBatch:
        return AuditBatch([Event("revocation", self._clock(), (agreement.id,),
                                 {"agreement": agreement.id, "reason": agreement.revoked})])

    # -- parts ---------------------------------------------------------------------------------

    def _step(self, batch: AuditBatch, pid: str, role: str, state: str,
              history: Sequence[HistoryEntry], done: bool, message: Inbound | None, *,
              keep_evidence: bool) -> dict[str, Any]:
        steps = self._new_steps(pid, history, done)
        data: dict[str, Any] = {"role": role, "state": state, "steps": steps}
        denials = [{"decision": s.message, "reasons": s.note.splitlines()}
                   for s in steps if s.by == "policy" and _denied(s.message)]
        if denials:
            data["denials"] = denials
        if message is not None:
            data["in"] = self._inbound(batch, message, keep_evidence)
        return data

    def _inbound(self, batch: AuditBatch, message: Inbound, keep_evidence: bool
                 ) -> dict[str, Any]:
        data = message.event_data()
        data["kept"] = keep_evidence
        if keep_evidence:  # the messages that form an agreement: the peer's signature over them
            if message.token:
                batch.evidence.append((data["tokenDigest"], "token", message.token.encode()))
            batch.evidence.append((data["bodyDigest"], "body", message.body))
            if message.document is not None:
                digest, document = self._document(message.document)
                data["peerDocument"] = digest
                self._keep(batch, digest, "did", document)
        return data

    def _keep(self, batch: AuditBatch, digest: str, kind: str, content: bytes) -> None:
        """Queue shared evidence unless this process already wrote it (the row would be
        ignored: same digest, same content)."""
        if digest not in self._kept:
            batch.evidence.append((digest, kind, content))
            batch.on_commit.append(lambda: self._kept.add(digest))

    def _document(self, document: Mapping[str, Any]) -> tuple[str, bytes]:
        """A peer's DID document as kept, and its digest; encoded once while it is the same
        object (verifiers hand out their cached copy)."""
        held = self._documents.get(id(document))
        if held is None or held[0] is not document:
            encoded = canonical(document)
            if len(self._documents) >= MAX_TRACKED_DOCUMENTS:
                self._documents.clear()
            held = self._documents[id(document)] = (document, sha256_hex(encoded), encoded)
        return held[1], held[2]

    def _agreement(self, batch: AuditBatch, agreement: Agreement) -> dict[str, Any]:
        body = canonical(agreement.body)
        digest = sha256_hex(body)
        batch.evidence.append((digest, "agreement", body))
        if agreement.policy_hash:
            text = self._policy_text(agreement.policy_hash)
            if text is not None:
                self._keep(batch, agreement.policy_hash, "policy", text)
        return {"agreement": agreement.id, "negotiation": agreement.negotiation_id,
                "role": agreement.role, "dataset": agreement.dataset_id,
                "assigner": agreement.assigner, "assignee": agreement.assignee,
                "agreementDigest": digest, "policyHash": agreement.policy_hash,
                "policyCommit": agreement.policy_commit}

    @staticmethod
    def _outgoing(data: dict[str, Any], outbox: Sequence[Outgoing]) -> None:
        if outbox:
            data["out"] = [{"type": _message_type(out.body), "peer": out.audience,
                            "url": out.url, "bodyDigest": sha256_hex(out.body)}
                           for out in outbox]

    def _new_steps(self, pid: str, history: Sequence[HistoryEntry], done: bool
                   ) -> list[HistoryEntry]:
        """The timeline lines added since this process was last audited (encoded as they
        are: ``at``, ``by``, ``message``, ``state``, ``note``)."""
        start = self._audited.pop(pid, 0)  # unknown (new, or before a restart): all
        if not done:
            if len(self._audited) >= MAX_TRACKED_PROCESSES:
                self._audited.pop(next(iter(self._audited)))
            self._audited[pid] = len(history)
        return list(history[start:])


def _denied(decision: str) -> bool:
    return any(w in decision for w in _DENIAL_WORDS)


class _Typed(msgspec.Struct):
    type: str = msgspec.field(default="?", name="@type")


_typed = msgspec.json.Decoder(_Typed)


def _message_type(body: bytes) -> str:
    """A DSP message's ``@type``, read without decoding the rest of it."""
    try:
        return _typed.decode(body).type
    except msgspec.DecodeError:
        return "?"


class AuditLog(Protocol):
    """What the trail needs of the store (``SqliteStore`` implements it)."""

    async def append_audit(self, batch: AuditBatch) -> None: ...

    def append_audit_behind(self, batch: AuditBatch) -> None: ...

    async def audit_head(self) -> tuple[int, str]: ...

    async def last_checkpoint(self) -> tuple[int, float]: ...

    async def add_checkpoint(self, seq: int, at: float, jws: str) -> None: ...

    async def agreement_uses(self, agreement_id: str) -> int: ...


class AuditTrail:
    """Appends the events that are steps of their own, and signs checkpoints."""

    def __init__(self, log_store: AuditLog, *, did: str, kid: str, key: SigningKey,
                 settings: AuditSettings, clock: Callable[[], float],
                 on_checkpoint: Callable[[str], None] = lambda _jws: None) -> None:
        self._store = log_store
        self.did = did
        self._kid, self._key = kid, key
        self.settings = settings
        self._clock = clock
        self._on_checkpoint = on_checkpoint
        self._wake = asyncio.Event()
        self._since = 0  # entries appended since the last checkpoint (approximate)

    def __repr__(self) -> str:  # never show the key
        return f"AuditTrail(did={self.did!r}, kid={self._kid!r})"

    def reload_key(self, *, kid: str, key: SigningKey) -> None:
        self._kid, self._key = kid, key

    def appended(self, count: int) -> None:
        """The store committed ``count`` entries; a checkpoint is due every N of them."""
        self._since += count
        if self._since >= self.settings.checkpoint_entries:
            self._wake.set()

    async def append(self, kind: str, refs: Sequence[str], data: Mapping[str, Any]) -> None:
        """One event as its own step (AuditError if it cannot be written)."""
        await self._store.append_audit(
            AuditBatch([Event(kind, self._clock(), tuple(refs), dict(data))]))

    def catalog_answer(self, peer: str, catalog: Mapping[str, Any]) -> None:
        """To whom we showed which offers (their ids), never the catalogue itself. An answer
        changes no state, so its entry is written behind (the next group commit)."""
        offers = [str(p.get("@id")) for d in catalog.get("dataset", []) if isinstance(d, dict)
                  for p in d.get("hasPolicy", []) if isinstance(p, dict)]
        self._store.append_audit_behind(AuditBatch([Event(
            "catalog", self._clock(), (peer,), {"peer": peer, "offers": offers})]))

    async def data_access(self, *, agreement: str, transfer: str, offset: int, records: int,
                          size: int, complete: bool | None) -> None:
        """Two entries per streamed response, never one per record: before the first byte
        (``complete`` None: the access granted, with the use count after it) and after the
        last (records and bytes sent, and whether the stream ended whole)."""
        uses = await self._store.agreement_uses(agreement)
        await self.append("data.access" if complete is None else "data.sent",
                          (transfer, agreement), {
            "agreement": agreement, "transfer": transfer, "offset": offset, "records": records,
            "bytes": size, "complete": complete, "usesAfter": uses})

    async def keys(self, keys: Mapping[str, Mapping[str, Any]], signing_kid: str) -> None:
        """Announce our public keys (key history: rotated-out keys still verify checkpoints)."""
        await self.append("keys", (), {"keys": {k: dict(v) for k, v in keys.items()},
                                       "signing": signing_kid})

    async def checkpoint(self) -> str | None:
        """Sign the chain's head now, unless a checkpoint already covers it."""
        seq, head = await self._store.audit_head()
        last_seq, _ = await self._store.last_checkpoint()
        if seq == 0 or seq == last_seq:
            return None
        now = self._clock()
        jws = sign_checkpoint(self._key, kid=self._kid, did=self.did, seq=seq, head=head,
                              now=int(now))
        await self._store.add_checkpoint(seq, now, jws)
        self._since = 0
        self._on_checkpoint(jws)
        return jws

    async def run(self) -> None:
        """Checkpoint every ``checkpoint_seconds`` (if anything changed) or N entries."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.checkpoint_seconds)
            self._wake.clear()
            try:
                await self.checkpoint()
            except Exception as exc:  # the database failed: try again next time
                log.error("cannot write an audit checkpoint: %s", exc)
