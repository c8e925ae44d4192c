"""Where a consumer's copy goes: a file, or an SQLite table. (Stdout is the CLI's: ``--out -``.)

A sink is given JSON-lines chunks as they arrive and hashes them as it writes, so the copy is
checked against the provider's summary (records, bytes, SHA-256) without a second read. Both
sinks resume: opened at ``offset`` they keep the first ``offset`` records (re-hashing them)
and drop whatever followed.

Spec strings (the CLI's ``--out``, the management API's ``sink``)::

    /abs/path/file.jsonl             a file of JSON lines
    sqlite:///abs/path/db.sqlite#table   a table (seq INTEGER PRIMARY KEY, record JSON): one
                                     row per record, ``record`` the record's exact JSON text
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Protocol

from connector.core.errors import MalformedMessage

SQLITE_PREFIX = "sqlite://"
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Sink(Protocol):
    size: int

    @property
    def records(self) -> int: ...

    def write(self, block: bytes) -> None: ...

    def sha256(self) -> str: ...

    def close(self) -> None: ...


class FileSink:
    """A file being written and hashed; resumes after the first ``offset`` records.

    Records are not counted while writing (it cost ~15% of a pull's event loop): a copy
    whose bytes and SHA-256 match the provider's has its record count too; ``records`` is
    counted from the file when asked."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.digest = hashlib.sha256()
        self.file = path.open("r+b" if offset and path.exists() else "wb")
        for _ in range(offset):  # re-hash the records already there, cut what follows
            line = self.file.readline()
            if not line:
                break
            self.digest.update(line)
        self.file.truncate(self.file.tell())
        self.size = self.file.tell()

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.digest.update(block)
        self.size += len(block)

    @property
    def records(self) -> int:
        if not self.file.closed:
            self.file.flush()
        with open(self.file.name, "rb") as f:
            return sum(c.count(b"\n") for c in iter(lambda: f.read(1 << 20), b""))

    def sha256(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.file.close()


class SqliteSink:
    """One row per record in ``table`` (created if absent); committed on close."""

    def __init__(self, path: Path, table: str, offset: int = 0) -> None:
        self.digest = hashlib.sha256()
        # Opened in a thread, written on the loop, closed in a thread: one user at a time.
        self.con = sqlite3.connect(path, check_same_thread=False)
        self.table = table
        self.con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" '
                         "(seq INTEGER PRIMARY KEY, record JSON NOT NULL)")
        self.con.execute(f'DELETE FROM "{table}" WHERE seq >= ?', (offset,))
        self.records = self.size = 0
        for (text,) in self.con.execute(f'SELECT record FROM "{table}" ORDER BY seq'):
            line = text.encode() + b"\n"
            self.digest.update(line)
            self.size += len(line)
            self.records += 1
        self._tail = b""

    def write(self, block: bytes) -> None:
        self.digest.update(block)
        self.size += len(block)
        data = self._tail + block
        end = data.rfind(b"\n") + 1
        self._tail = data[end:]
        lines = data[:end].split(b"\n")[:-1]
        first = self.records
        self.con.executemany(f'INSERT INTO "{self.table}" (seq, record) VALUES (?, ?)',
                             ((first + i, line.decode()) for i, line in enumerate(lines)))
        self.records += len(lines)

    def sha256(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        try:
            self.con.commit()
        finally:
            self.con.close()


def parse_sink(spec: str) -> tuple[Path, str | None]:
    """(path, table or None) of a sink spec; MalformedMessage if it is not one."""
    if spec.startswith(SQLITE_PREFIX):
        rest, _, table = spec[len(SQLITE_PREFIX):].partition("#")
        path = Path(rest)
        if not path.is_absolute() or not _TABLE.match(table):
            raise MalformedMessage(f"sink {spec!r}: use sqlite:///ABSOLUTE/PATH.db#table",
                                   area=None)
        return path, table
    path = Path(spec)
    if not path.is_absolute():
        raise MalformedMessage(f"sink {spec!r}: a file sink's path must be absolute", area=None)
    return path, None


def open_sink(spec: str, offset: int = 0) -> Sink:
    path, table = parse_sink(spec)
    if table is not None:
        return SqliteSink(path, table, offset)
    return FileSink(path, offset)
