"""A push cut mid-stream resumes where the consumer's whole records end (two real daemons).

The consumer's public URL is a TCP proxy in front of its real port (TLS passes through it), so
every DSP callback and the push itself cross the proxy. The proxy cuts the first connection
that has carried more than CUT_AFTER bytes towards the consumer: that is the push body. The
provider asks the consumer how many whole records it holds and streams the rest; the copy is
verified against the provider's summary and the transfer COMPLETES.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from connector.client import Management
from connector.config import load_settings
from tests.e2e.conftest import BIG_RECORDS, add_big_dataset
from tests.harness import Participant, create_space, free_port, start, stop

pytestmark = pytest.mark.asyncio(loop_scope="session")
CUT_AFTER = 3_000_000  # bytes towards the consumer on one connection (the big push is ~40 MB)


class CuttingProxy:
    """TCP proxy 127.0.0.1:listen -> 127.0.0.1:target that cuts one connection, once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.armed = True
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        sent = 0

        async def forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                          counts: bool) -> None:
            nonlocal sent
            try:
                while data := await src.read(65536):
                    if counts:
                        sent += len(data)
                        if self.armed and sent > CUT_AFTER:
                            self.armed = False
                            self.cuts += 1
                            for w in (writer, up_writer):
                                w.transport.abort()
                            return
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(forward(reader, up_writer, True), forward(up_reader, writer, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _behind_proxy(consumer: Participant) -> int:
    """Move the consumer's daemon to another port; its URL (and DID) stay the proxy's."""
    toml = consumer.dir / "connector.toml"
    text = toml.read_text()
    real = free_port()
    server = re.search(r"\[server\][^\[]*", text)
    assert server is not None
    section = re.sub(r"(?m)^port = \d+$", f"port = {real}", server.group(0), count=1)
    toml.write_text(text[:server.start()] + section + text[server.end():])
    return real


@pytest_asyncio.fixture(loop_scope="session")
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Participant, Participant, CuttingProxy]]:
    provider, consumer = create_space(tmp_path)
    add_big_dataset(provider.dir)
    big = provider.dir / "datasets" / "big.toml"
    big.write_text(big.read_text().replace(
        'policies = ["members-only"]\n',
        'policies = ["members-only"]\nformats = ["HttpData-PULL", "HttpData-PUSH"]\n'))
    public = int(consumer.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(_behind_proxy(consumer))
    await proxy.start(public)
    await asyncio.to_thread(start, provider)
    await asyncio.to_thread(start, consumer)
    try:
        yield provider, consumer, proxy
    finally:
        stop(consumer)
        stop(provider)
        await proxy.close()


async def test_a_push_cut_mid_stream_resumes_to_a_verified_copy(
        pair: tuple[Participant, Participant, CuttingProxy]) -> None:
    provider, consumer, proxy = pair
    api = Management(load_settings(consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=10",
                                {"provider": provider.url, "datasetId": "big"})
        assert record["state"] == "FINALIZED", record
        out = consumer.dir / "state" / "pushed.jsonl"
        cmd = [sys.executable, "-m", "connector.cli", "transfer", record["agreementId"],
               "--push", "--out", str(out), "--dir", str(consumer.dir)]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert proxy.cuts == 1, "the push was not cut: nothing was resumed"
        source = (provider.dir / "data" / "big.jsonl").read_bytes()
        copy = out.read_bytes()
        assert hashlib.sha256(copy).digest() == hashlib.sha256(source).digest()
        seqs = [int(line.split(b",")[0].split(b":")[1]) for line in copy.splitlines()]
        assert seqs == list(range(BIG_RECORDS))  # no record lost or duplicated
        assert b"verified (pushed)" in stdout
        provider_api = Management(load_settings(provider.dir))
        try:
            transfers = await provider_api.call("GET", "/api/transfers")
        finally:
            await provider_api.close()
        pushed = [t for t in transfers if t["format"] == "HttpData-PUSH"]
        assert len(pushed) == 1 and pushed[0]["state"] == "COMPLETED", pushed
        resumed = [h for h in pushed[0]["history"] if h["message"] == "push resumed"]
        assert len(resumed) == 1 and resumed[0]["note"].startswith("from record ")
        assert 0 < int(resumed[0]["note"].split()[2]) < BIG_RECORDS
    finally:
        await api.close()
