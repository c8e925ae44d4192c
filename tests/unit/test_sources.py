"""Source declarations (check_folder, load_datasets) and the source readers' record framing."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import ipaddress
import shutil
import sqlite3
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from connector.adapters.sources import (
    PostgresSource,
    SqliteSource,
    _complete_csv_end,
    _csv_records,
    _skip_jsonl,
    open_source,
    pg_record,
    record_chunks,
)
from connector.core.errors import ConfigError
from connector.keys import write_private
from connector.participant.datasets import load_datasets
from connector.participant.init import init_folder
from connector.participant.lint import check_folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "acme"
    init_folder(root, name="acme", url="https://127.0.0.1:8443")
    return root


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "acme"
    shutil.copytree(pristine, root)
    return root


def _lines(folder: Path, name: str, text: str) -> list[str]:
    (folder / "datasets" / name).write_text(text)
    return [f"{p.file}:{p.line}: {p.message}" for p in check_folder(folder)]


HEAD = 'id = "x"\ntitle = "X"\npolicies = ["open-use"]\n'


def test_sqlite_and_http_sources_load(folder: Path) -> None:
    write_private(folder / "keys" / "up.token", b"t0k3n\n")
    (folder / "data" / "x.db").write_bytes(b"")
    (folder / "datasets/x.toml").write_text(
        HEAD + 'formats = ["HttpData-PULL", "HttpData-PUSH"]\n[source]\ntype = "sqlite"\n'
        'path = "data/x.db"\nquery = "SELECT 1 AS one"\n')
    (folder / "datasets/y.toml").write_text(
        HEAD.replace('"x"', '"y"') + '[source]\ntype = "http"\n'
        'url = "https://up.example/data.csv"\nformat = "csv"\ntoken_file = "keys/up.token"\n')
    assert check_folder(folder) == []
    decls = {d.id: d for d in load_datasets(folder)}
    x, y = decls["x"], decls["y"]
    assert x.source_query == "SELECT 1 AS one" and x.source_path == (folder / "data/x.db")
    assert x.offered_formats == ("HttpData-PULL", "HttpData-PUSH")
    assert y.source_url == "https://up.example/data.csv" and y.source_format == "csv"
    assert y.source_token_file == folder.resolve() / "keys/up.token"
    assert y.source_path is None and y.offered_formats == ("HttpData-PULL",)


def test_check_flags_inline_secrets_at_their_lines(folder: Path) -> None:
    f = folder / "datasets/x.toml"
    lines = _lines(folder, "x.toml", HEAD + '[source]\ntype = "http"\nurl = "https://u/x"\n'
                   'token = "abc"\npassword = "hunter2"\n')
    assert lines == [
        f"{f}:7: [source] key 'token' puts a credential inline: name a secret file instead "
        '(e.g. token_file = "keys/up.token")',
        f"{f}:8: [source] key 'password' puts a credential inline: name a secret file instead "
        '(e.g. token_file = "keys/up.token")',
    ]


def test_check_flags_bad_source_declarations(folder: Path) -> None:
    f = folder / "datasets/x.toml"
    assert _lines(folder, "x.toml", HEAD + '[source]\ntype = "sqlite"\npath = "data/x.db"\n'
                  'query = "DELETE FROM t"\n') == [
        f"{f}:7: [source] key 'query' must be a SELECT"]
    assert _lines(folder, "x.toml", HEAD + '[source]\ntype = "sqlite"\npath = "data/x.db"\n') \
        == [f"{f}:4: [source] key 'query' must be a non-empty string for type 'sqlite'"]
    assert _lines(folder, "x.toml", HEAD + '[source]\ntype = "http"\nurl = "ftp://x"\n'
                  'format = "xml"\n') == [
        f"{f}:6: [source] key 'url' must be an http(s) URL",
        f"{f}:7: [source] key 'format' must be one of ('jsonl', 'csv')"]
    assert _lines(folder, "x.toml", HEAD + 'formats = ["HttpData-PUSH", "S3"]\n[source]\n'
                  'type = "http"\nurl = "https://u/x"\ntoken_file = "keys/none"\n') == [
        f"{f}:4: key 'formats' must be a non-empty list of ('HttpData-PULL', 'HttpData-PUSH')"]


def test_check_flags_a_missing_or_readable_secret_file(folder: Path) -> None:
    f = folder / "datasets/x.toml"
    text = HEAD + '[source]\ntype = "http"\nurl = "https://u/x"\ntoken_file = "keys/up.token"\n'
    assert _lines(folder, "x.toml", text) == [
        f"{f}:7: no secret file {folder / 'keys/up.token'}"]
    write_private(folder / "keys" / "up.token", b"t\n")
    (folder / "keys" / "up.token").chmod(0o644)
    lines = _lines(folder, "x.toml", text)
    assert any(line.startswith(f"{f}:7: ") for line in lines), lines


PG = HEAD + '[source]\ntype = "postgres"\n'


def test_postgres_source_loads(folder: Path) -> None:
    write_private(folder / "keys" / "pg.dsn", b"postgresql://u:p@127.0.0.1:5432/db\n")
    (folder / "datasets/x.toml").write_text(
        PG + 'dsn_file = "keys/pg.dsn"\nquery = "SELECT * FROM t ORDER BY id"\n')
    assert check_folder(folder) == []
    (decl,) = [d for d in load_datasets(folder) if d.id == "x"]
    assert decl.source_dsn_file == folder.resolve() / "keys/pg.dsn"
    assert decl.source_query == "SELECT * FROM t ORDER BY id" and decl.source_path is None
    source = open_source(decl)
    assert isinstance(source, PostgresSource) and source.dsn_file == decl.source_dsn_file


def test_check_flags_bad_postgres_declarations(folder: Path) -> None:
    f = folder / "datasets/x.toml"
    assert _lines(folder, "x.toml", PG) == [
        f"{f}:4: [source] key 'dsn_file' must be a non-empty string for type 'postgres'",
        f"{f}:4: [source] key 'query' must be a non-empty string for type 'postgres'"]
    write_private(folder / "keys" / "pg.dsn", b"host=db\n")
    assert _lines(folder, "x.toml", PG + 'dsn_file = "keys/pg.dsn"\n'
                  'query = "UPDATE t SET a = 1"\n') == [
        f"{f}:7: [source] key 'query' must be a SELECT"]
    inline = "name a secret file instead (e.g. token_file = \"keys/up.token\")"
    assert _lines(folder, "x.toml", PG + 'dsn = "host=db password=x"\npassword = "x"\n'
                  'url = "postgresql://u:hunter2@db/x"\nquery = "SELECT 1"\n') == [
        f"{f}:6: [source] key 'dsn' puts a credential inline: {inline}",
        f"{f}:7: [source] key 'password' puts a credential inline: {inline}",
        f"{f}:8: [source] key 'url' puts a credential inline: {inline}",
        f"{f}:4: [source] key 'dsn_file' must be a non-empty string for type 'postgres'"]


def test_check_flags_a_missing_or_readable_dsn_file(folder: Path) -> None:
    f = folder / "datasets/x.toml"
    text = PG + 'dsn_file = "keys/pg.dsn"\nquery = "SELECT 1"\n'
    assert _lines(folder, "x.toml", text) == [f"{f}:6: no secret file {folder / 'keys/pg.dsn'}"]
    write_private(folder / "keys" / "pg.dsn", b"host=db\n")
    (folder / "keys" / "pg.dsn").chmod(0o640)
    lines = _lines(folder, "x.toml", text)
    assert f"{f}:6: mode 0640 allows group/other access; private keys must be 0600" in lines


def test_postgres_row_values_become_json() -> None:
    at = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    row = {"n": 1, "f": 0.5, "b": True, "s": "é", "none": None,
           "num": decimal.Decimal("12345678901234567890.10"), "at": at,
           "local": at.replace(tzinfo=None), "day": at.date(), "time": at.time(),
           "raw": b"\x00\xffhi", "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
           "arr": [decimal.Decimal("1.5"), None, [b"a"]], "doc": {"k": [1, "v"]},
           "ip": ipaddress.ip_address("10.0.0.1"), "span": datetime.timedelta(days=1, hours=2)}
    assert pg_record(row) == {
        "n": 1, "f": 0.5, "b": True, "s": "é", "none": None,
        "num": "12345678901234567890.10", "at": "2024-05-06T07:08:09.123456+00:00",
        "local": "2024-05-06T07:08:09.123456", "day": "2024-05-06", "time": "07:08:09.123456",
        "raw": "AP9oaQ==", "ref": "12345678-1234-5678-1234-567812345678",
        "arr": ["1.5", None, ["YQ=="]], "doc": {"k": [1, "v"]}, "ip": "10.0.0.1",
        "span": "1 day, 2:00:00"}


async def test_postgres_source_refuses_a_readable_dsn_file(tmp_path: Path) -> None:
    dsn = tmp_path / "pg.dsn"
    dsn.write_text("postgresql://u:secret@127.0.0.1:1/db\n")
    dsn.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        await _collect(PostgresSource(dsn, "SELECT 1").chunks())
    dsn.write_text("postgresql://u:secret@[bad/db\n")
    dsn.chmod(0o600)
    with pytest.raises(ConfigError, match="not a valid DSN") as raised:
        await _collect(PostgresSource(dsn, "SELECT 1").chunks())
    assert "secret" not in raised.value.message


async def _collect(gen: AsyncGenerator[bytes, None]) -> bytes:
    return b"".join([c async for c in gen])


async def _pieces(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [1, 3, 10, 1000])
def test_jsonl_upstream_skips_whole_records_across_pieces(size: int) -> None:
    data = b'{"a":1}\n{"a":22}\n{"a":333}'
    assert asyncio.run(_collect(_skip_jsonl(_pieces(data, size), 0))) == data + b"\n"
    assert asyncio.run(_collect(_skip_jsonl(_pieces(data, size), 2))) == b'{"a":333}\n'
    assert asyncio.run(_collect(_skip_jsonl(_pieces(data, size), 5))) == b""


@pytest.mark.parametrize("size", [1, 4, 17, 10_000])
def test_csv_upstream_matches_the_csv_file(tmp_path: Path, size: int) -> None:
    text = 'a,b\n1,"x\ny"\n2,"q ""z"", w"\r\n3,\n\n4,last'
    (tmp_path / "f.csv").write_text(text, newline="")
    expected = b"".join(record_chunks("csv", tmp_path / "f.csv", 1))
    got = asyncio.run(_collect(_csv_records(_pieces(text.encode(), size), 1)))
    assert got == expected and got.count(b"\n") == 3


def test_complete_csv_end_respects_quotes() -> None:
    assert _complete_csv_end('a,"b\nc') == 0
    assert _complete_csv_end('a,"b\nc"\nd') == 8


def test_sqlite_source_offset_and_summary(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (i INTEGER, b BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, bytes([i])) for i in range(10)])
    con.commit()
    con.close()
    source = SqliteSource(db, "SELECT i, b FROM t ORDER BY i;")
    full = asyncio.run(_collect(source.chunks(0)))
    assert full.splitlines()[1] == b'{"i":1,"b":"AQ=="}'
    assert asyncio.run(_collect(source.chunks(7))) == b"".join(full.splitlines(True)[7:])
    summary = asyncio.run(source.summary())
    assert summary["records"] == 10 and summary["bytes"] == len(full)
