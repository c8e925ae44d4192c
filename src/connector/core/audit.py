"""The audit trail's format: entries, the hash chain, signed checkpoints. Pure: no IO, no clock.

Theory of operation (docs/audit.md has the whole picture).

An **event** is what happened (``kind``, the ids it concerns, a small JSON object of facts; never
record content, never token or key material). The store numbers it and chains it:

    digest_n = SHA-256(body_n)               body_n = canonical JSON of {seq, at, kind, refs, data}
    hash_n   = SHA-256(hash_{n-1} || digest_n)   (hex strings, hash_0 = GENESIS)

so changing one byte of a body breaks its digest, deleting or reordering entries breaks the next
link, and an entry can be shown as ``(seq, digest)`` alone (an evidence bundle redacts the entries
that concern other agreements) without breaking the chain.

A **checkpoint** is a compact JWS (RFC 7515) signed with the participant's key over
``{iss, seq, head, iat}``: the chain's hash at ``seq``. It verifies with the keys of the
participant's DID document; keys rotated out are vouched for by ``keys`` entries of the chain
itself, which the newest checkpoint (signed with a current key) covers. A truncated tail is
found when a checkpoint names an entry that is gone; a chain rewritten and re-signed with the
participant's own key is found only by comparing with checkpoints a witness kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from connector.core.errors import AuthError
from connector.core.identity import (
    KeyRing,
    SigningKey,
    document_keys,
    parse_jws,
    sign_jwt,
    verify_jws_signature,
)

_encode = msgspec.json.Encoder(order="sorted").encode
GENESIS = "0" * 64
CHECKPOINT_TYP = "audit-checkpoint+jwt"
BUNDLE_FORMAT = "connector-audit-bundle/1"


class Event(msgspec.Struct, frozen=True):
    """Something to record; the store gives it its sequence number and its place in the chain.

    (Structs, not dataclasses, for ``Event`` and ``Entry``: every audited step makes one of
    each, and a frozen dataclass costs a ``object.__setattr__`` per field.)"""

    kind: str
    at: float
    refs: tuple[str, ...] = ()
    data: Mapping[str, Any] = msgspec.field(default_factory=dict)


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One chained entry as stored: ``body`` is the canonical JSON its ``digest`` is over."""

    seq: int
    digest: str
    hash: str
    body: bytes

    def decoded(self) -> dict[str, Any]:
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}


def canonical(value: Any) -> bytes:
    """The JSON form entries are written in: sorted keys, no spaces, UTF-8. Digests are over
    the stored bytes, so a verifier never needs to produce this form again itself."""
    return _encode(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link(prev: str, digest: str) -> str:
    """The chain hash of an entry whose body has ``digest``, after an entry hashing to ``prev``."""
    return sha256_hex((prev + digest).encode("ascii"))


def entry_prefix(event: Event) -> bytes:
    """An entry's body up to its number: the canonical JSON of ``{seq, at, kind, refs,
    data}`` ends with ``seq`` (its keys are sorted and "seq" sorts last), so the body of entry
    ``n`` is this prefix, ``n`` in decimal and ``}``. A store that numbers entries inside the
    database (PostgreSQL's ``audit_append``, migration 012) completes it there; ``make_entry``
    does it here, and both digest and link it as ``link`` says."""
    data = event.data if type(event.data) is dict else dict(event.data)
    return _encode({"at": event.at, "kind": event.kind, "refs": event.refs,
                    "data": data})[:-1] + b',"seq":'


def make_entry(seq: int, prev: str, event: Event) -> Entry:
    """Number and chain ``event``."""
    body = b"%s%d}" % (entry_prefix(event), seq)
    digest = sha256_hex(body)
    return Entry(seq=seq, digest=digest, hash=link(prev, digest), body=body)


def chain_events(seq: int, prev: str, events: Iterable[Event]) -> list[Entry]:
    """Entries for ``events`` numbered from ``seq`` on, the first linked to ``prev``."""
    out = []
    for event in events:
        entry = make_entry(seq, prev, event)
        out.append(entry)
        seq, prev = seq + 1, entry.hash
    return out


# --- checkpoints --------------------------------------------------------------------------------


def sign_checkpoint(key: SigningKey, *, kid: str, did: str, seq: int, head: str, now: int) -> str:
    """A checkpoint JWS over the chain's hash ``head`` at entry ``seq``."""
    return sign_jwt(key, kid=kid, claims={"iss": did, "seq": seq, "head": head, "iat": now},
                    typ=CHECKPOINT_TYP)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's verified-or-not contents (``parse_checkpoint``)."""

    seq: int
    head: str
    issuer: str
    kid: str
    issued_at: int
    jws: str


def parse_checkpoint(jws: str) -> Checkpoint:
    """Decode a checkpoint without checking its signature; AuthError when malformed."""
    parsed = parse_jws(jws)
    p = parsed.payload
    seq, head, iss, iat = p.get("seq"), p.get("head"), p.get("iss"), p.get("iat")
    if (parsed.header.get("typ") != CHECKPOINT_TYP or not isinstance(seq, int)
            or not isinstance(head, str) or not isinstance(iss, str)
            or not isinstance(iat, int) or parsed.kid is None):
        raise AuthError("malformed audit checkpoint")
    return Checkpoint(seq=seq, head=head, issuer=iss, kid=parsed.kid, issued_at=iat, jws=jws)


def check_checkpoint_signature(checkpoint: Checkpoint, keys: KeyRing) -> None:
    """AuthError unless ``keys`` holds the checkpoint's kid and its signature verifies."""
    key = keys.public_key(checkpoint.kid)
    if key is None:
        raise AuthError(f"checkpoint signed with unknown key {checkpoint.kid[:200]!r}")
    verify_jws_signature(parse_jws(checkpoint.jws), key)


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What ``verify_chain`` found: ``broken`` names the first broken entry (or None).

    ``hashes`` holds the chain's hash at the entries asked for (``keep``) and at every
    checkpoint, for a comparison with a witness after the walk.
    """

    entries: int
    checkpoints: int
    first_seq: int | None
    last_seq: int | None
    broken: int | None = None
    problem: str = ""
    hashes: Mapping[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problem


def _announced_keys(body: Mapping[str, Any], did: str) -> dict[str, dict[str, Any]]:
    """The keys a ``keys`` entry announced (the key history), those under ``did`` only."""
    if body.get("kind") != "keys":
        return {}
    keys = body.get("data", {}).get("keys") or {}
    return {kid: jwk for kid, jwk in keys.items()
            if isinstance(kid, str) and isinstance(jwk, dict) and kid.startswith(did + "#")}


def _link_problem(entry: Entry, expected_seq: int, prev: str | None,
                  body: Mapping[str, Any] | None) -> str:
    """Why ``entry`` does not belong where it is ("" when it does); ``body`` is its decoded
    content (None for an entry shown by its digest alone)."""
    if entry.seq != expected_seq:
        return f"entry {entry.seq}: expected entry {expected_seq} here (a gap)"
    if entry.body and sha256_hex(entry.body) != entry.digest:
        return f"entry {entry.seq}: its content does not match its digest"
    if body is not None and body.get("seq") != entry.seq:
        return f"entry {entry.seq}: its content names another position"
    if prev is not None and link(prev, entry.digest) != entry.hash:
        return (f"entry {entry.seq}: not chained to entry {entry.seq - 1} "
                "(an entry before it was removed, changed or moved)")
    return ""


def _decoded(entry: Entry) -> dict[str, Any] | None:
    if not entry.body:
        return None
    try:
        return entry.decoded()
    except ValueError:
        return {}  # not JSON: its digest check names it


def verify_links(entries: Iterable[Entry], start_prev: str | None) -> tuple[int | None, str]:
    """The first entry whose digest, number or link is wrong, and why; (None, "") if none.

    ``start_prev`` is the hash the first entry must follow (GENESIS, or a kept checkpoint's
    head after a prune); None accepts whatever it follows (a segment in a bundle).
    """
    prev, expected = start_prev, None
    for entry in entries:
        expected = entry.seq if expected is None else expected
        problem = _link_problem(entry, expected, prev, _decoded(entry))
        if problem:
            return entry.seq, problem
        prev, expected = entry.hash, entry.seq + 1
    return None, ""


def verify_chain(entries: Iterable[Entry], checkpoints: Sequence[str], *, did: str,
                 document: Mapping[str, Any], keep: Collection[int] = ()) -> Report:
    """Recompute the chain, in one pass over ``entries`` (in order; they may be streamed),
    then check every checkpoint: its signature, and the head it names.

    The newest checkpoint must be signed with a key of ``document`` (the DID document as it is
    now); older ones may be signed with a key the chain announced (rotated out since). A chain
    whose first entry is not 1 (pruned) must hang from a signed checkpoint at the entry before.
    """
    parsed = []
    for jws in checkpoints:
        try:
            parsed.append(parse_checkpoint(jws))
        except AuthError as exc:
            return Report(0, len(checkpoints), None, None, None, f"checkpoint: {exc.message}")
    parsed.sort(key=lambda c: c.seq)
    heads = {c.seq: c.head for c in parsed}
    wanted = set(heads) | set(keep)
    count, first, last, prev = 0, None, None, GENESIS
    announced: dict[str, dict[str, Any]] = {}
    hashes: dict[int, str] = {}

    def report(broken: int | None = None, problem: str = "") -> Report:
        return Report(count, len(checkpoints), first, last, broken, problem, hashes)

    for entry in entries:
        if first is None:
            first = entry.seq
            if first > 1:  # pruned: the kept chain hangs from a checkpoint
                if first - 1 not in heads:
                    return report(first, f"entries before {first} are gone and no signed "
                                         f"checkpoint at entry {first - 1} anchors the rest")
                prev = heads[first - 1]
        body = _decoded(entry)
        problem = _link_problem(entry, first if last is None else last + 1, prev, body)
        if problem:
            return report(entry.seq, problem)
        announced |= _announced_keys(body or {}, did)
        if entry.seq in wanted:
            hashes[entry.seq] = entry.hash
        count, last, prev = count + 1, entry.seq, entry.hash
    return _check_checkpoints(parsed, report, did=did, document=document, announced=announced,
                              first=first, hashes=hashes)


def _check_checkpoints(parsed: Sequence[Checkpoint], report: Callable[..., Report], *, did: str,
                       document: Mapping[str, Any], announced: Mapping[str, dict[str, Any]],
                       first: int | None, hashes: Mapping[int, str]) -> Report:
    current = document_keys(document, did, relationship="assertionMethod")
    for i, cp in enumerate(parsed):
        newest = i == len(parsed) - 1
        ring = KeyRing(current if newest else {**announced, **current})
        try:
            if cp.issuer != did:
                raise AuthError(f"issued by {cp.issuer[:200]!r}, not {did!r}")
            check_checkpoint_signature(cp, ring)
        except AuthError as exc:
            return report(cp.seq, f"checkpoint at entry {cp.seq}: {exc.message}")
        if first is not None and cp.seq < first:
            continue  # pruned: the kept chain starts after it (its head was the anchor)
        if cp.seq not in hashes:
            return report(cp.seq, f"entry {cp.seq}, signed in a checkpoint, is missing "
                                  "(the chain was truncated)")
        if hashes[cp.seq] != cp.head:
            return report(cp.seq, f"entry {cp.seq}: the chain's hash differs from the one "
                                  "its signed checkpoint names")
    return report()


def witness_problem(report: Report, witnessed: Iterable[tuple[int, str]]
                    ) -> tuple[int | None, str]:
    """Compare a verified chain with the (seq, head) pairs a witness received (``report``
    must have kept those entries' hashes): the first it lacks or differs from."""
    matched = 0  # the last witnessed entry the local chain still agrees with
    for seq, head in sorted(witnessed):
        if report.first_seq is not None and seq < report.first_seq:
            continue  # pruned locally
        if seq not in report.hashes:
            return seq, f"entry {seq}, witnessed, is missing from the local chain"
        if report.hashes[seq] != head:
            return seq, (f"entry {seq}: the local chain differs from what the witness saw "
                         f"(history rewritten after entry {matched})")
        matched = seq
    return None, ""
