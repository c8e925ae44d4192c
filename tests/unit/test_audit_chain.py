"""The audit chain's format (core/audit.py): every kind of tampering is found, naming the entry.

Pure tests: entries and checkpoints are built in memory, altered, and verified again.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from connector.core.audit import (
    GENESIS,
    Entry,
    Event,
    chain_events,
    link,
    sign_checkpoint,
    verify_chain,
    witness_problem,
)
from connector.core.identity import build_did_document, public_jwk

DID = "did:web:acme.example"
KID1, KID2 = DID + "#key-1", DID + "#key-2"
KEY1, KEY2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
NOW = 1_800_000_000


def document(*keys: tuple[str, Ed25519PrivateKey]) -> dict[str, object]:
    return build_did_document(DID, "https://acme.example/dsp",
                              [(kid, public_jwk(key)) for kid, key in keys])


DOC = document((KID1, KEY1))


def events(n: int, kind: str = "negotiation") -> list[Event]:
    return [Event(kind, NOW + i, (f"urn:p:{i % 3}",), {"state": "REQUESTED", "i": i})
            for i in range(n)]


def signed(entries: list[Entry], every: int = 4, key: Ed25519PrivateKey = KEY1,
           kid: str = KID1) -> list[str]:
    return [sign_checkpoint(key, kid=kid, did=DID, seq=e.seq, head=e.hash, now=NOW)
            for e in entries if e.seq % every == 0 or e is entries[-1]]


def verify(entries: list[Entry], checkpoints: list[str], doc: dict[str, object] = DOC,
           ) -> tuple[int | None, str]:
    report = verify_chain(entries, checkpoints, did=DID, document=doc)
    return report.broken, report.problem


def test_an_intact_chain_verifies_with_its_checkpoints() -> None:
    entries = chain_events(1, GENESIS, events(10))
    assert [e.seq for e in entries] == list(range(1, 11))
    assert verify(entries, signed(entries)) == (None, "")
    assert entries[1].hash == link(entries[0].hash, entries[1].digest)


def test_one_byte_changed_names_the_entry() -> None:
    entries = chain_events(1, GENESIS, events(10))
    body = bytearray(entries[5].body)
    body[body.index(b"REQUESTED")] = ord("X")
    entries[5] = replace(entries[5], body=bytes(body))
    assert verify(entries, signed(entries)) == (6, "entry 6: its content does not match its "
                                                   "digest")


def test_a_changed_entry_with_its_hashes_redone_breaks_the_next_link() -> None:
    entries = chain_events(1, GENESIS, events(10))
    forged = chain_events(6, entries[4].hash, [Event("negotiation", NOW, (), {"forged": 1})])[0]
    entries[5] = forged
    broken, problem = verify(entries, signed(chain_events(1, GENESIS, events(10))))
    assert broken == 7 and "not chained to entry 6" in problem


def test_a_deleted_entry_is_a_gap() -> None:
    entries = chain_events(1, GENESIS, events(10))
    checkpoints = signed(entries)
    del entries[3]
    broken, problem = verify(entries, checkpoints)
    assert broken == 5 and "expected entry 4" in problem


def test_two_entries_reordered_are_found() -> None:
    entries = chain_events(1, GENESIS, events(10))
    checkpoints = signed(entries)
    # Swapped, each renumbered into the other's place (as an UPDATE of the seq column would).
    a, b = entries[2], entries[3]
    entries[2], entries[3] = replace(b, seq=3), replace(a, seq=4)
    broken, problem = verify(entries, checkpoints)
    assert broken == 3 and "names another position" in problem


def test_a_truncated_tail_is_found_by_the_checkpoint_that_covered_it() -> None:
    entries = chain_events(1, GENESIS, events(10))
    checkpoints = signed(entries)
    broken, problem = verify(entries[:7], checkpoints)
    assert broken == 8 and "truncated" in problem


def test_a_replaced_checkpoint_signature_is_found() -> None:
    entries = chain_events(1, GENESIS, events(10))
    checkpoints = signed(entries)
    header, payload, _ = checkpoints[0].split(".")
    other = sign_checkpoint(KEY2, kid=KID1, did=DID, seq=4, head=entries[3].hash, now=NOW)
    checkpoints[0] = f"{header}.{payload}.{other.split('.')[2]}"
    broken, problem = verify(entries, checkpoints)
    assert broken == 4 and "checkpoint at entry 4: signature invalid" in problem


def test_a_checkpoint_naming_another_head_is_found() -> None:
    entries = chain_events(1, GENESIS, events(10))
    wrong = sign_checkpoint(KEY1, kid=KID1, did=DID, seq=5, head="0" * 64, now=NOW)
    checkpoints = [*signed(entries), wrong]
    broken, problem = verify(entries, checkpoints)
    assert broken == 5 and "differs from the one its signed checkpoint names" in problem


def test_a_rewritten_and_re_signed_chain_passes_alone_but_not_the_witness() -> None:
    original = chain_events(1, GENESIS, events(10))
    witnessed = [(e.seq, e.hash) for e in original if e.seq % 4 == 0]
    rewritten = chain_events(1, GENESIS, [*events(5), *events(5, kind="rewritten")])
    assert verify(rewritten, signed(rewritten)) == (None, "")  # the owner's key re-signed it

    def against_witness(entries: list[Entry]) -> tuple[int | None, str]:
        report = verify_chain(entries, [], did=DID, document=DOC,
                              keep={seq for seq, _ in witnessed})
        assert report.ok, report.problem
        return witness_problem(report, witnessed)

    assert against_witness(original) == (None, "")
    seq, problem = against_witness(rewritten)
    assert seq == 8 and "differs from what the witness saw (history rewritten after entry 4)" \
        in problem
    seq, problem = against_witness(original[:6])
    assert seq == 8 and "missing" in problem


def test_entries_are_verified_as_a_stream() -> None:
    entries = chain_events(1, GENESIS, events(10))
    report = verify_chain(iter(entries), signed(entries), did=DID, document=DOC)
    assert report.ok and (report.entries, report.first_seq, report.last_seq) == (10, 1, 10)


def test_rotated_out_keys_verify_old_checkpoints_through_the_chain_s_key_history() -> None:
    old = chain_events(1, GENESIS, [Event("keys", NOW, (), {"keys": {KID1: public_jwk(KEY1)}}),
                                    *events(5)])
    later = chain_events(7, old[-1].hash, [
        Event("keys", NOW, (), {"keys": {KID2: public_jwk(KEY2)}}), *events(4)])
    entries = old + later
    checkpoints = [*signed(old, every=100), *signed(later, every=100, key=KEY2, kid=KID2)]
    rotated = document((KID2, KEY2))  # key-1 was retired: no longer in did.json
    assert verify(entries, checkpoints, rotated) == (None, "")
    # The newest checkpoint must be signed with a key the DID document holds now.
    broken, problem = verify(entries, checkpoints[:1], rotated)
    assert broken == 6 and "unknown key" in problem
    # Nor may it be signed with a key the DID document no longer holds.
    broken, problem = verify(entries, checkpoints, document((KID1, KEY1)))
    assert broken == 11 and "unknown key" in problem
    # A rotated-out key that no entry announced vouches for nothing.
    silent = chain_events(1, GENESIS, events(6))
    rest = chain_events(7, silent[-1].hash, events(5))
    broken, problem = verify(silent + rest, [*signed(silent, every=100),
                                             *signed(rest, every=100, key=KEY2, kid=KID2)],
                             rotated)
    assert broken == 6 and "unknown key" in problem


def test_a_pruned_chain_verifies_from_its_kept_checkpoint() -> None:
    entries = chain_events(1, GENESIS, events(12))
    checkpoints = signed(entries)
    kept = checkpoints[1:]  # the one at entry 4, which anchors entry 5, is gone
    assert verify(entries[4:], checkpoints) == (None, "")
    broken, problem = verify(entries[4:], kept)
    assert broken == 5 and "no signed checkpoint" in problem
