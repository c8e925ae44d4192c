"""The audit tables read (and pruned) directly in the SQLite file, for ``connector audit``.

The commands run beside a daemon or without one: SQLite's locking lets them read while the
daemon writes (WAL), and the daemon's only in-memory state about the trail is the chain's
head, which a prune of old entries never touches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import msgspec

from connector.core.audit import Entry
from connector.core.errors import AuditError

# Entries read at a time when walking the whole chain.
CHUNK = 5_000
# The evidence column of an entry (written by ``sqlite._entry_rows``).
_evidence = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]])


def _connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    if not path.exists():
        raise AuditError(f"{path}: no database (has the connector ever run here?)")
    uri = f"file:{path}?mode={'rw' if write else 'ro'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        conn.execute("SELECT 1 FROM audit_entries LIMIT 1")
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: cannot read the audit trail: {exc}") from exc
    return conn


def _entries(rows: Iterable[tuple[int, str, str, bytes | str]]) -> list[Entry]:
    # A body edited by hand may come back as TEXT: its bytes are what the digest is over.
    return [Entry(seq=int(r[0]), digest=str(r[1]), hash=str(r[2]),
                  body=r[3].encode() if isinstance(r[3], str) else bytes(r[3])) for r in rows]


def iter_chain(path: Path, chunk: int = CHUNK) -> Iterator[Entry]:
    """Every entry in order of ``seq``, read ``chunk`` at a time (memory stays flat)."""
    with closing(_connect(path)) as conn:
        after = -1
        while True:
            rows = _entries(conn.execute(
                "SELECT seq, digest, hash, body FROM audit_entries WHERE seq > ?"
                " ORDER BY seq LIMIT ?", (after, chunk)))
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].seq


def read_range(path: Path, first: int, last: int) -> list[Entry]:
    """The entries numbered ``first`` to ``last``, in order."""
    with closing(_connect(path)) as conn:
        return _entries(conn.execute(
            "SELECT seq, digest, hash, body FROM audit_entries WHERE seq BETWEEN ? AND ?"
            " ORDER BY seq", (first, last)))


def read_checkpoints(path: Path) -> list[str]:
    with closing(_connect(path)) as conn:
        return [str(r[0]) for r in conn.execute("SELECT jws FROM audit_checkpoints ORDER BY seq")]


def read_head(path: Path) -> Entry | None:
    """The last entry, or None when the trail is empty."""
    with closing(_connect(path)) as conn:
        found = _entries(conn.execute("SELECT seq, digest, hash, body FROM audit_entries"
                                      " ORDER BY seq DESC LIMIT 1"))
    return found[0] if found else None


def read_refs(path: Path, refs: Iterable[str]) -> list[int]:
    """The sequence numbers of the entries concerning any of ``refs``, in order."""
    with closing(_connect(path)) as conn:
        seqs: set[int] = set()
        for ref in refs:
            seqs.update(int(r[0]) for r in conn.execute(
                "SELECT seq FROM audit_entries WHERE ref1 = ? UNION"
                " SELECT seq FROM audit_entries WHERE ref2 = ?", (ref, ref)))
    return sorted(seqs)


def read_entries(path: Path, seqs: Iterable[int]) -> list[Entry]:
    """The entries with these numbers (those still there), in order."""
    with closing(_connect(path)) as conn:
        rows = [row for seq in sorted(set(seqs)) for row in conn.execute(
            "SELECT seq, digest, hash, body FROM audit_entries WHERE seq = ?", (seq,))]
    return _entries(rows)


def read_evidence(path: Path, seqs: Iterable[int], digests: Iterable[str]
                  ) -> dict[str, tuple[str, bytes]]:
    """digest -> (kind, content) of the evidence kept with entries ``seqs`` and of the shared
    evidence among ``digests``."""
    out: dict[str, tuple[str, bytes]] = {}
    with closing(_connect(path)) as conn:
        for seq in sorted(set(seqs)):
            for (kept,) in conn.execute(
                    "SELECT evidence FROM audit_entries WHERE seq = ? AND evidence IS NOT NULL",
                    (seq,)):
                for digest, kind, content in _evidence.decode(kept):
                    out[digest] = (kind, content)
        for digest in dict.fromkeys(digests):
            for kind, content in conn.execute(
                    "SELECT kind, content FROM audit_shared WHERE digest = ?", (digest,)):
                out[digest] = (str(kind), bytes(content))
    return out


def add_checkpoint(path: Path, seq: int, at: float, jws: str) -> None:
    with closing(_connect(path, write=True)) as conn, conn:
        conn.execute("INSERT INTO audit_checkpoints (seq, at, jws) VALUES (?, ?, ?)"
                     " ON CONFLICT (seq) DO NOTHING", (seq, at, jws))


def checkpoints_before(path: Path, before: float) -> list[tuple[int, float]]:
    """(seq, at) of the checkpoints signed before ``before``, oldest first."""
    with closing(_connect(path)) as conn:
        return [(int(r[0]), float(r[1])) for r in conn.execute(
            "SELECT seq, at FROM audit_checkpoints WHERE at < ? ORDER BY seq", (before,))]


def prune_through(path: Path, seq: int) -> int:
    """Delete the entries up to and including ``seq``, the evidence kept with them, and the
    checkpoints before it (the one at ``seq`` stays: the kept chain starts from its signed
    head). Returns the entries deleted."""
    with closing(_connect(path, write=True)) as conn, conn:
        deleted = conn.execute("DELETE FROM audit_entries WHERE seq <= ?", (seq,)).rowcount
        conn.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (seq,))
    return int(deleted)
