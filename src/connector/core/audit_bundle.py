"""Evidence bundles: one agreement's audit entries, provable offline. Pure: no IO, no clock.

A bundle (``connector audit export``) is one JSON document holding

- ``entries``: a contiguous stretch of the exporter's chain, from the first entry concerning
  the agreement to a signed checkpoint; entries concerning other processes are redacted to
  their digest (``body`` null), which keeps the chain checkable without showing them;
- ``checkpoint``: the exporter's signed checkpoint over the last entry of that stretch;
- ``didDocuments``: the exporter's and the peer's DID documents (their public keys);
- ``evidence``: what the entries name by digest: the agreement as exchanged, the policy text
  hashing to the agreed ``policyHash``, and the peer's signed tokens with the bodies of the
  negotiation messages they came with.

``verify_bundle`` needs nothing but the bundle: the chain links, the checkpoint's signature
with the exporter's key, the agreement and policy against their digests, and each peer token's
signature with the peer's key, its digest in the chain and, when it carries the body digest
claim, the message body it signed. A token without that claim (EDC's) is reported as
*unbound*: it proves the peer called, not what it sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.core.audit import (
    BUNDLE_FORMAT,
    Entry,
    check_checkpoint_signature,
    parse_checkpoint,
    sha256_hex,
    verify_links,
)
from connector.core.errors import AuthError
from connector.core.identity import (
    BODY_DIGEST_CLAIM,
    KeyRing,
    document_keys,
    parse_jws,
    verify_jws_signature,
)


def build_bundle(*, agreement_id: str, participant: str, entries: Sequence[Entry],
                 concerning: set[int], checkpoint: str,
                 did_documents: Mapping[str, Mapping[str, Any]],
                 evidence: Mapping[str, tuple[str, bytes]]) -> dict[str, Any]:
    """The bundle document; ``entries`` run from the first concerning one to the checkpoint."""
    return {
        "format": BUNDLE_FORMAT,
        "agreement": agreement_id,
        "participant": participant,
        "entries": [{"seq": e.seq, "digest": e.digest, "hash": e.hash,
                     "body": e.body.decode() if e.seq in concerning else None}
                    for e in entries],
        "checkpoint": checkpoint,
        "didDocuments": {did: dict(doc) for did, doc in did_documents.items()},
        "evidence": {digest: {"kind": kind, "content": base64.b64encode(content).decode()}
                     for digest, (kind, content) in evidence.items()},
    }


@dataclass
class BundleReport:
    """What ``verify_bundle`` found. ``problem`` empty: the bundle holds."""

    agreement: str = ""
    participant: str = ""
    peer: str = ""
    entries: int = 0
    messages: list[str] = field(default_factory=list)  # "type from peer: bound|unbound"
    unbound: int = 0
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


class _Broken(Exception):
    pass


def verify_bundle(bundle: Any) -> BundleReport:
    """Check a bundle offline; the report names the first problem found."""
    report = BundleReport()
    try:
        _verify(bundle, report)
    except _Broken as exc:
        report.problem = str(exc)
    except (AuthError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        report.problem = f"malformed bundle: {getattr(exc, 'message', exc)!s}"
    return report


def _verify(bundle: Any, report: BundleReport) -> None:
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise _Broken(f"not a {BUNDLE_FORMAT} document")
    report.agreement, report.participant = str(bundle["agreement"]), str(bundle["participant"])
    entries = [Entry(seq=int(e["seq"]), digest=str(e["digest"]), hash=str(e["hash"]),
                     body=e["body"].encode() if isinstance(e["body"], str) else b"")
               for e in bundle["entries"]]
    report.entries = len(entries)
    if not entries:
        raise _Broken("the bundle holds no entries")
    broken, problem = verify_links(entries, None)
    if broken is not None:
        raise _Broken(problem)
    _check_checkpoint(bundle, entries[-1], report.participant)
    evidence = {d: (str(v["kind"]), base64.b64decode(v["content"], validate=True))
                for d, v in bundle["evidence"].items()}
    bodies = [e.decoded() for e in entries if e.body]
    made = next(((b["seq"], b["data"]["agreement"]) for b in bodies
                 if b.get("kind") == "negotiation"
                 and isinstance(b["data"].get("agreement"), dict)
                 and b["data"]["agreement"].get("agreement") == report.agreement), None)
    if made is None:
        raise _Broken(f"no entry made the agreement {report.agreement!r}")
    seq, data = made
    _check_agreement(seq, data, evidence)
    me = report.participant
    report.peer = str(data["assignee"] if data["assigner"] == me else data["assigner"])
    for body in bodies:
        inbound = body["data"].get("in")
        if isinstance(inbound, dict) and inbound.get("kept"):
            _check_token(body["seq"], inbound, evidence, bundle["didDocuments"], report)


def _check_checkpoint(bundle: Mapping[str, Any], last: Entry, participant: str) -> None:
    checkpoint = parse_checkpoint(str(bundle["checkpoint"]))
    if checkpoint.issuer != participant:
        raise _Broken(f"checkpoint issued by {checkpoint.issuer!r}, not {participant!r}")
    document = bundle["didDocuments"].get(participant)
    if not isinstance(document, dict):
        raise _Broken(f"no DID document for {participant!r}")
    try:
        keys = KeyRing(document_keys(document, participant, relationship="assertionMethod"))
        check_checkpoint_signature(checkpoint, keys)
    except AuthError as exc:
        raise _Broken(f"checkpoint: {exc.message}") from exc
    if checkpoint.seq != last.seq or checkpoint.head != last.hash:
        raise _Broken(f"the checkpoint signs entry {checkpoint.seq}, not the bundle's last "
                      f"entry {last.seq} as it is")


def _check_agreement(seq: int, data: Mapping[str, Any],
                     evidence: Mapping[str, tuple[str, bytes]]) -> None:
    digest = str(data.get("agreementDigest"))
    held = evidence.get(digest)
    if held is None or held[0] != "agreement" or sha256_hex(held[1]) != digest:
        raise _Broken(f"entry {seq}: the agreement text does not match its digest")
    policy_hash = data.get("policyHash")
    if policy_hash:
        policy = evidence.get(str(policy_hash))
        if policy is None or policy[0] != "policy" or sha256_hex(policy[1]) != policy_hash:
            raise _Broken(f"entry {seq}: the policy text does not hash to the agreed "
                          f"policyHash {policy_hash}")


def _check_token(seq: int, data: Mapping[str, Any], evidence: Mapping[str, tuple[str, bytes]],
                 documents: Mapping[str, Any], report: BundleReport) -> None:
    if data.get("tokenDigest") is None:  # the caller's token was not a JWS (a test profile)
        report.unbound += 1
        report.messages.append(f"{data.get('type')} from {data.get('peer')}: unbound "
                               "(no signed token)")
        return
    digest = str(data["tokenDigest"])
    held = evidence.get(digest)
    if held is None or held[0] != "token" or sha256_hex(held[1]) != digest:
        raise _Broken(f"entry {seq}: the peer's token does not match its digest")
    jws = parse_jws(held[1].decode())
    issuer = str(jws.payload.get("iss"))
    if issuer != data.get("peer"):
        raise _Broken(f"entry {seq}: the token was issued by {issuer!r}, not the peer")
    kept = evidence.get(str(data.get("peerDocument")))  # the keys it was checked with then
    document = json.loads(kept[1]) if kept is not None and kept[0] == "did" else documents.get(
        issuer)
    if kept is not None and sha256_hex(kept[1]) != data.get("peerDocument"):
        raise _Broken(f"entry {seq}: the peer's DID document does not match its digest")
    if not isinstance(document, dict):
        raise _Broken(f"entry {seq}: no DID document for {issuer!r} to check its token")
    key = KeyRing(document_keys(document, issuer)).public_key(jws.kid or "")
    try:
        if key is None:
            raise AuthError(f"unknown key {jws.kid!r}")
        verify_jws_signature(jws, key)
    except AuthError as exc:
        raise _Broken(f"entry {seq}: the peer's token signature: {exc.message}") from exc
    claimed = jws.payload.get(BODY_DIGEST_CLAIM)
    kind = str(data.get("type"))
    if claimed is None:
        report.unbound += 1
        report.messages.append(f"{kind} from {issuer}: unbound (no {BODY_DIGEST_CLAIM} claim)")
        return
    message = evidence.get(str(claimed))
    if claimed != data.get("bodyDigest") or message is None or sha256_hex(
            message[1]) != claimed:
        raise _Broken(f"entry {seq}: the message body is not the one the peer's token signed")
    report.messages.append(f"{kind} from {issuer}: bound")
