"""TLS read buffers that start small and grow with the stream (adapters/http/tls_buffers.py),
on a real aiohttp server and client over TLS on loopback."""

from __future__ import annotations

import hashlib
import ssl
from asyncio import sslproto
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from connector.adapters.http import tls_buffers
from connector.adapters.http.tls_buffers import FIRST_BUFFER, FULL_BUFFER, LeanSSLProtocol
from connector.keys import generate_tls

BIG = 8 * 1024 * 1024


class _Seen(LeanSSLProtocol):
    """LeanSSLProtocol that remembers every connection it served."""

    made: ClassVar[list[_Seen]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        _Seen.made.append(self)


def _contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_tls(cert, key, ["127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def _serve(server_ssl: ssl.SSLContext, body: bytes) -> tuple[web.AppRunner, int]:
    async def small(request: web.Request) -> web.Response:
        return web.json_response({"got": len(await request.read())})

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=body)

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"sha256": hashlib.sha256(await request.read()).hexdigest()})

    app = web.Application(client_max_size=2 * BIG)
    app.router.add_post("/small", small)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port


def _side(server_side: bool) -> list[_Seen]:
    return [p for p in _Seen.made if p._server_side is server_side]


async def test_buffers_stay_small_for_messages_and_grow_for_streams(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslproto, "SSLProtocol", _Seen)  # what install() does, undone after
    _Seen.made = []
    server_ssl, client_ssl = _contexts(tmp_path)
    body = bytes(range(256)) * (BIG // 256)
    runner, port = await _serve(server_ssl, body)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{port}"
            async with session.post(f"{url}/small", json={"a": 1}, ssl=client_ssl) as resp:
                assert (await resp.json()) == {"got": 8}
            # A DSP-sized exchange: neither side's buffer grew.
            assert [p.max_size for p in _Seen.made] == [FIRST_BUFFER, FIRST_BUFFER]
            async with session.get(f"{url}/big", ssl=client_ssl) as resp:
                got = await resp.read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
            # The client read a stream: its buffer grew to asyncio's full size; the
            # server's, which read one small request, did not.
            assert [p.max_size for p in _side(False)] == [FULL_BUFFER]
            assert [p.max_size for p in _side(True)] == [FIRST_BUFFER]
            async with session.post(f"{url}/upload", data=body, ssl=client_ssl) as resp:
                assert (await resp.json())["sha256"] == hashlib.sha256(body).hexdigest()
            # A large upload (a push) grows the server side's buffer the same way.
            assert [p.max_size for p in _side(True)] == [FULL_BUFFER]
    finally:
        await runner.cleanup()


def test_install_makes_new_tls_connections_lean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslproto, "SSLProtocol", sslproto.SSLProtocol)  # restored after
    tls_buffers.install()
    assert sslproto.SSLProtocol is LeanSSLProtocol
    assert FIRST_BUFFER < FULL_BUFFER
