"""Sources, sinks and push between two real daemons over HTTPS.

Sources: an SQLite query and an HTTP upstream (JSON lines and CSV, bearer token from a secret
file), pulled end to end with the summary matching the copy exactly, and a resume by offset.
Sinks: a file, an SQLite table, stdout. Push: the provider streams to the consumer's endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from connector.client import Management
from connector.config import load_settings
from connector.keys import write_private
from tests.harness import Participant, create_space, free_port, start, stop

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROWS = 2_500
UPSTREAM_TOKEN = "upstream-secret-7f3a"
# CSV with a quoted comma, a doubled quote and a newline inside a field.
CSV_TEXT = "id,name,note\n" + "".join(
    f'{i},"name {i}","say ""hi"", {i}\nsecond line"\n' if i % 7 == 0 else f"{i},n{i},plain\n"
    for i in range(3000))
JSONL_LINES = [json.dumps({"seq": i, "v": "x" * (i % 13)}) for i in range(5000)]


@dataclass
class Pair:
    provider: Participant
    consumer: Participant


def _sqlite_rows() -> list[dict[str, Any]]:
    return [{"id": i, "name": f"row-{i}", "score": i * 0.5, "tag": None if i % 5 else "five"}
            for i in range(ROWS)]


def _datasets(folder: Path, upstream: str) -> None:
    db = folder / "data" / "rows.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, name TEXT, score REAL, tag TEXT)")
    con.executemany("INSERT INTO t VALUES (:id, :name, :score, :tag)", _sqlite_rows())
    con.commit()
    con.close()
    write_private(folder / "keys" / "upstream.token", (UPSTREAM_TOKEN + "\n").encode())
    (folder / "data" / "notes.csv").write_text(CSV_TEXT)
    common = 'policies = ["members-only"]\nformats = ["HttpData-PULL", "HttpData-PUSH"]\n'
    (folder / "datasets" / "rows.toml").write_text(
        f'id = "rows"\ntitle = "Rows"\n{common}'
        '[source]\ntype = "sqlite"\npath = "data/rows.db"\n'
        'query = "SELECT id, name, score, tag FROM t ORDER BY id"\n')
    (folder / "datasets" / "upstream.toml").write_text(
        f'id = "upstream"\ntitle = "Upstream"\n{common}'
        f'[source]\ntype = "http"\nurl = "{upstream}/lines"\nformat = "jsonl"\n'
        'token_file = "keys/upstream.token"\n')
    (folder / "datasets" / "slow.toml").write_text(
        f'id = "slow"\ntitle = "Slow"\n{common}'
        f'[source]\ntype = "http"\nurl = "{upstream}/slow"\n'
        'token_file = "keys/upstream.token"\n')
    (folder / "datasets" / "upstream-csv.toml").write_text(
        f'id = "upstream-csv"\ntitle = "Upstream CSV"\n{common}'
        f'[source]\ntype = "http"\nurl = "{upstream}/notes.csv"\nformat = "csv"\n'
        'token_file = "keys/upstream.token"\n')
    (folder / "datasets" / "notes.toml").write_text(
        f'id = "notes"\ntitle = "Notes"\n{common}[source]\ntype = "csv"\npath = "data/notes.csv"\n')


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def upstream(upstream_port: int) -> AsyncIterator[list[str]]:
    """An upstream serving JSON lines and CSV in small pieces, behind a bearer token."""
    hits: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_TOKEN}":
            return web.Response(status=401)
        hits.append(request.path)
        body = (CSV_TEXT if request.path.endswith(".csv") else "\n".join(JSONL_LINES)).encode()
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(0, len(body), 777):  # odd-sized pieces: records span them
            await response.write(body[i:i + 777])
            if request.path == "/slow":
                await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    yield hits
    await runner.cleanup()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("sources")
    provider, consumer = create_space(root)
    _datasets(provider.dir, f"http://127.0.0.1:{upstream_port}")
    start(provider)
    start(consumer)
    try:
        yield Pair(provider, consumer)
    finally:
        stop(consumer)
        stop(provider)


@pytest_asyncio.fixture(loop_scope="session")
async def consumer(pair: Pair) -> AsyncIterator[Management]:
    api = Management(load_settings(pair.consumer.dir))
    yield api
    await api.close()


async def _agreement(pair: Pair, api: Management, dataset: str) -> str:
    record = await api.call("POST", "/api/negotiations?wait=10",
                            {"provider": pair.provider.url, "datasetId": dataset})
    assert record["state"] == "FINALIZED", record
    return str(record["agreementId"])


async def _cli(pair: Pair, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "connector.cli", *args, "--dir", str(pair.consumer.dir)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _summary_of(data: bytes) -> dict[str, Any]:
    return {"records": data.count(b"\n"), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


async def test_sqlite_query_source_pulled_end_to_end_with_exact_summary(
        pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "rows")
    out = pair.consumer.dir / "state" / "rows.jsonl"
    done = await _cli(pair, "transfer", agreement, "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert b"verified" in done.stdout
    copy = out.read_bytes()
    assert [json.loads(line) for line in copy.splitlines()] == _sqlite_rows()
    # The provider's summary is exactly the copy (a fresh transfer asks it again).
    transfer = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    summary = await consumer.call("GET", f"/api/transfers/{transfer['id']}/summary")
    assert summary == _summary_of(copy)


async def test_resume_with_offset_on_the_sqlite_source(pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "rows")
    transfer = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    tid = transfer["id"]
    head = pair.consumer.dir / "state" / "rows-resume.jsonl"
    records, _ = await consumer.download(f"/api/transfers/{tid}/data", head)
    assert records == ROWS
    full = head.read_bytes().splitlines(keepends=True)
    tail = pair.consumer.dir / "state" / "rows-tail.jsonl"
    records, _ = await consumer.download(f"/api/transfers/{tid}/data?offset=1234", tail)
    assert records == ROWS - 1234 and tail.read_bytes() == b"".join(full[1234:])
    assert json.loads(full[1234])["id"] == 1234


async def test_http_upstream_source_with_a_token_file_pulled_end_to_end(
        pair: Pair, consumer: Management, upstream: list[str]) -> None:
    agreement = await _agreement(pair, consumer, "upstream")
    out = pair.consumer.dir / "state" / "upstream.jsonl"
    done = await _cli(pair, "transfer", agreement, "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes() == ("\n".join(JSONL_LINES) + "\n").encode()
    assert "/lines" in upstream  # the token from keys/upstream.token was accepted


async def test_http_csv_upstream_converts_as_the_csv_file_does(
        pair: Pair, consumer: Management, upstream: list[str]) -> None:
    copies = []
    for dataset in ("upstream-csv", "notes"):
        agreement = await _agreement(pair, consumer, dataset)
        out = pair.consumer.dir / "state" / f"{dataset}.jsonl"
        done = await _cli(pair, "transfer", agreement, "--out", str(out))
        assert done.returncode == 0, done.stderr.decode()
        copies.append(out.read_bytes())
    assert copies[0] == copies[1]
    rows = [json.loads(line) for line in copies[0].splitlines()]
    assert len(rows) == 3000 and rows[7]["note"] == 'say "hi", 7\nsecond line'


def _rows_jsonl() -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n"
                    for r in _sqlite_rows())


async def test_sqlite_table_sink(pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "rows")
    db = pair.consumer.dir / "state" / "sink.db"
    done = await _cli(pair, "transfer", agreement, "--out", f"sqlite://{db}#copy")
    assert done.returncode == 0, done.stderr.decode()
    assert b"verified" in done.stdout
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, record FROM copy ORDER BY seq").fetchall()
    con.close()
    assert [s for s, _ in rows] == list(range(ROWS))
    assert [json.loads(r) for _, r in rows] == _sqlite_rows()


async def test_out_dash_writes_the_records_to_stdout(pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "rows")
    done = await _cli(pair, "transfer", agreement, "--out", "-")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == _rows_jsonl()
    assert b"verified -> stdout" in done.stderr


async def test_push_transfer_end_to_end_verified(pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "rows")
    out = pair.consumer.dir / "state" / "pushed.jsonl"
    done = await _cli(pair, "transfer", agreement, "--push", "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert b"verified (pushed)" in done.stdout
    assert out.read_bytes() == _rows_jsonl()
    mine = [t for t in await consumer.call("GET", "/api/transfers")
            if t["agreementId"] == agreement and t["format"] == "HttpData-PUSH"]
    assert len(mine) == 1 and mine[0]["state"] == "COMPLETED"
    assert any(h["message"] == "push copy verified" for h in mine[0]["history"])
    provider = Management(load_settings(pair.provider.dir))
    try:
        theirs = await provider.call("GET", f"/api/transfers/{mine[0]['providerPid']}")
    finally:
        await provider.close()
    assert theirs["state"] == "COMPLETED" and theirs["format"] == "HttpData-PUSH"


async def test_push_from_an_http_upstream_into_stdout_and_a_table(
        pair: Pair, consumer: Management, upstream: list[str]) -> None:
    agreement = await _agreement(pair, consumer, "upstream")
    done = await _cli(pair, "transfer", agreement, "--push", "--out", "-")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == ("\n".join(JSONL_LINES) + "\n").encode()
    db = pair.consumer.dir / "state" / "pushed.db"
    done = await _cli(pair, "transfer", agreement, "--push", "--out", f"sqlite://{db}#up")
    assert done.returncode == 0, done.stderr.decode()
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM up").fetchone() == (len(JSONL_LINES),)
    con.close()


async def test_push_is_refused_when_the_dataset_offers_only_pull(
        pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer, "example-weather")
    out = pair.consumer.dir / "state" / "refused.jsonl"
    done = await _cli(pair, "transfer", agreement, "--push", "--out", str(out),
                      "--timeout", "5")
    assert done.returncode == 1
    assert not out.exists()


async def test_revocation_mid_push_cuts_it_and_nothing_completes(
        pair: Pair, consumer: Management, upstream: list[str]) -> None:
    agreement = await _agreement(pair, consumer, "slow")
    out = pair.consumer.dir / "state" / "slow.jsonl"
    record = await consumer.call("POST", "/api/transfers?wait=10",
                                 {"agreementId": agreement, "push": True, "sink": str(out)})
    for _ in range(500):  # the summary is read first (one pass), then the push streams
        if out.exists() and out.stat().st_size > 10_000:
            break
        await asyncio.sleep(0.01)
    assert out.exists() and out.stat().st_size > 10_000
    provider = Management(load_settings(pair.provider.dir))
    try:
        await provider.call("POST", f"/api/agreements/{agreement}/revoke",
                            {"reason": "consent withdrawn"})
    finally:
        await provider.close()
    for _ in range(100):
        state = await consumer.call("GET", f"/api/transfers/{record['id']}")
        if state["state"] == "TERMINATED":
            break
        await asyncio.sleep(0.05)
    assert state["state"] == "TERMINATED" and "consent withdrawn" in state["reason"]
    assert out.stat().st_size < len("\n".join(JSONL_LINES))
    with pytest.raises(Exception, match="no verified push"):
        await consumer.call("GET", f"/api/transfers/{record['id']}/push")
