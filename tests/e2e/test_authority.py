"""A real authority process over HTTPS: did.json and a status list that follows revocations."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from connector import authority
from connector.core import credentials as vc
from connector.core.identity import KeyRing, did_web_to_url, document_keys
from tests.harness import free_port
from tests.unit.test_rotation import _assert_no_key_material


class Served:
    def __init__(self, folder: Path, process: asyncio.subprocess.Process,
                 tls: ssl.SSLContext) -> None:
        self.folder = folder
        self.process = process
        self.tls = tls
        self.settings = authority.load_authority(folder)

    async def get(self, url: str) -> tuple[int, str, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.get(url, ssl=self.tls) as response:
            return response.status, await response.text(), dict(response.headers)


async def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"authority not listening on {port}")


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    folder = tmp_path / "authority"
    authority.init_authority(folder, url=f"https://127.0.0.1:{free_port()}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector.cli", "authority", "run", str(folder),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    tls = ssl.create_default_context(cadata=(folder / authority.TLS_CERT).read_text())
    try:
        await _wait_listening(authority.load_authority(folder).port, time.monotonic() + 15)
        yield Served(folder, process, tls)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def test_did_document_and_status_list_over_https(served: Served) -> None:
    settings = served.settings
    status, text, _ = await served.get(did_web_to_url(settings.did))
    assert status == 200
    document = json.loads(text)
    ring = KeyRing(document_keys(document, settings.did, relationship="assertionMethod"))
    credential_id, _ = authority.issue_credential(served.folder, subject="did:web:member.example")
    entries = [json.loads(line) for line in (served.folder / "issued.jsonl").open()]
    index = entries[0]["index"]

    async def bit() -> bool:
        status, token, headers = await served.get(settings.status_url)
        assert status == 200 and headers["Content-Type"].startswith("application/vc+jwt")
        bits = vc.verify_status_list_credential(
            token, issuer=settings.did, url=settings.status_url, now=int(time.time()),
            leeway_s=5, resolve_key=ring.public_key)
        return vc.get_status(bits, index)

    assert await bit() is False
    revoke = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector.cli", "authority", "revoke", str(served.folder),
        credential_id, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await revoke.communicate()
    assert revoke.returncode == 0, err
    assert await bit() is True  # the running server re-signs the list on change
    status, _, _ = await served.get(settings.url + "/keys/signing-key.pem")
    assert status == 404
    served.process.terminate()
    stdout, stderr = await served.process.communicate()
    texts: list[Any] = [stdout.decode(), stderr.decode(), out.decode(), err.decode()]
    assert "serving" in texts[0]
    _assert_no_key_material(served.folder, texts)
