"""Bad input on every edge of a running daemon gets a clear 4xx (or a 503 naming the setting),
never a 5xx; what a caller sends cannot forge a log line; a caller hanging up leaves no
traceback. Real daemons over real HTTPS (tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from connector.client import Management
from connector.config import load_settings
from connector.core.messages import DSP_CONTEXT
from tests.e2e.conftest import Space
from tests.harness import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")
DEEP = 5000  # levels: far past any decoder's recursion limit
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")


def deep_body(depth: int = DEEP) -> bytes:
    return (b'{"@context": ["' + DSP_CONTEXT.encode() + b'"], "@type": "ContractRequestMessage",'
            b' "offer": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}")


async def raw_call(http: aiohttp.ClientSession, method: str, url: str, *, data: bytes | None,
                   headers: dict[str, str]) -> tuple[int, Any]:
    async with http.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        try:
            return resp.status, msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return resp.status, raw


def management_headers(space: Space, who: str = "consumer") -> tuple[str, dict[str, str]]:
    settings = load_settings(getattr(space, who).dir)
    return settings.management_url, {"Authorization": f"Bearer {settings.management_token()}",
                                     "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/catalog/request", "/negotiations/request",
                                  "/negotiations/offers", "/transfers/request",
                                  "/negotiations/urn:uuid:x/termination",
                                  "/transfers/urn:uuid:x/completion"])
async def test_deeply_nested_json_on_dsp_routes_is_a_400_in_the_dsp_shape(
        space: Space, http: aiohttp.ClientSession, path: str) -> None:
    token = space.members.token(space.provider_did).for_body(deep_body())
    status, body = await raw_call(http, "POST", space.base + path, data=deep_body(),
                                  headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"})
    assert status == 400, body
    assert body["@type"] in ("ContractNegotiationError", "TransferError", "CatalogError")
    assert "deep" in " ".join(body["reason"])


async def test_deeply_nested_json_in_a_token_is_refused_not_a_500(
        space: Space, http: aiohttp.ClientSession) -> None:
    segment = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode()
    for token in (f"{segment}.e30.c2ln", f"eyJhbGciOiJFZERTQSJ9.{segment}.c2ln"):
        status, body = await raw_call(http, "GET", f"{space.base}/negotiations/urn:uuid:x",
                                      data=None, headers={"Authorization": f"Bearer {token}"})
        assert status == 404, body  # DSP: an unauthenticated caller learns nothing


@pytest.mark.parametrize("route", ["/api/negotiations", "/api/offers", "/api/transfers",
                                   "/api/negotiations/x/terminate", "/api/transfers/x/pull"])
async def test_deeply_nested_json_on_management_routes_is_a_400(
        space: Space, http: aiohttp.ClientSession, route: str) -> None:
    base, headers = management_headers(space)
    status, body = await raw_call(http, "POST", base + route, data=deep_body(),
                                  headers=headers)
    assert status == 400, body
    assert "deep" in body["message"]


@pytest.mark.parametrize(("query", "name"), [
    ("/api/transfers/x/data?offset=abc", "offset"),
    ("/api/transfers/x/data?offset=-1", "offset"),
    ("/api/transfers/x/data?offset=1.5", "offset"),
    ("/api/transfers/x/data?offset=%C2%B2", "offset"),  # a superscript two: isdigit() but not int
    ("/api/negotiations/x?wait=soon", "wait"),
    ("/api/negotiations/x?wait=-3", "wait"),
    ("/api/negotiations/x?wait=nan", "wait"),
])
async def test_malformed_numeric_query_parameters_are_a_400_naming_them(
        space: Space, http: aiohttp.ClientSession, query: str, name: str) -> None:
    base, headers = management_headers(space)
    status, body = await raw_call(http, "GET", base + query, data=None, headers=headers)
    assert status == 400, body
    assert body["error"] == "invalid-parameter" and body["message"].startswith(name)


@pytest.mark.parametrize("offset", [None, [1], "3", -2, 1.5, True, {"n": 1}])
async def test_malformed_numeric_body_parameters_are_a_400_naming_them(
        space: Space, http: aiohttp.ClientSession, offset: Any) -> None:
    base, headers = management_headers(space)
    body = msgspec.json.encode({"sink": "/tmp/never-written.jsonl", "offset": offset})
    status, answer = await raw_call(http, "POST", base + "/api/transfers/x/pull", data=body,
                                    headers=headers)
    assert status == 400, answer
    assert answer["error"] == "invalid-parameter" and answer["message"].startswith("offset")


@pytest.mark.parametrize("offset", ["%C2%B2", "-1", "x", "1.0", "%EF%BC%91"])
async def test_a_malformed_offset_on_the_data_plane_is_a_400(
        space: Space, http: aiohttp.ClientSession, offset: str) -> None:
    """Checked before the token: a superscript two or a full-width one passes isdigit()."""
    status, body = await raw_call(http, "GET", f"{space.provider.url}/data?offset={offset}",
                                  data=None, headers={})
    assert status == 400, body
    assert body["message"].startswith("offset")


async def _started_transfer(consumer: Management, space: Space) -> str:
    record = await consumer.call("POST", "/api/negotiations?wait=20",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    assert record["state"] == "FINALIZED", record
    transfer = await consumer.call("POST", "/api/transfers?wait=20",
                                   {"agreementId": record["agreementId"]})
    assert transfer["state"] == "STARTED", transfer
    return str(transfer["id"])


async def test_negative_offset_on_a_started_transfer_is_the_callers_400_not_a_502(
        space: Space, http: aiohttp.ClientSession, apis: tuple[Management, Management]) -> None:
    tid = await _started_transfer(apis[1], space)
    base, headers = management_headers(space)
    status, body = await raw_call(http, "GET", f"{base}/api/transfers/{tid}/data?offset=-1",
                                  data=None, headers=headers)
    assert status == 400, body
    assert body["message"].startswith("offset")


async def test_a_sink_resumed_at_an_offset_it_does_not_hold_is_a_400(
        space: Space, http: aiohttp.ClientSession, apis: tuple[Management, Management],
        tmp_path: Path) -> None:
    tid = await _started_transfer(apis[1], space)
    base, headers = management_headers(space)
    missing = tmp_path / "never-written.jsonl"
    short = tmp_path / "short.jsonl"
    short.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    for sink, offset in ((str(missing), 5), (str(short), 3),
                         (f"sqlite://{tmp_path}/none.db#t", 2),
                         (str(tmp_path / "no-such-dir" / "x.jsonl"), 0)):
        body = msgspec.json.encode({"sink": sink, "offset": offset})
        status, answer = await raw_call(http, "POST", f"{base}/api/transfers/{tid}/pull",
                                        data=body, headers=headers)
        assert status == 400, (sink, answer)
        assert answer["error"] == "invalid-parameter", answer
    assert not missing.exists() and not (tmp_path / "none.db").exists()
    assert short.read_bytes() == b'{"a": 1}\n{"a": 2}\n'  # a refused resume cuts nothing


async def test_registry_search_without_a_registry_names_the_setting(
        space: Space, http: aiohttp.ClientSession) -> None:
    base, headers = management_headers(space)
    status, body = await raw_call(http, "GET", base + "/api/registry/search?q=weather",
                                  data=None, headers=headers)
    assert status == 503, body
    assert "[registry] urls" in body["message"] and "connector.toml" in body["message"]


# -- logs -----------------------------------------------------------------------------------------


def _log(space: Space) -> Path:
    return space.provider.dir / "state" / "daemon.log"


def _new_lines(space: Space, since: int) -> list[str]:
    return _log(space).read_bytes()[since:].decode().splitlines()


async def test_outside_values_with_control_characters_never_start_a_log_line(
        space: Space, http: aiohttp.ClientSession) -> None:
    """Path, header, token claims and a termination reason, each with a newline, a carriage
    return and an ANSI escape: each request writes exactly one line, which is ours."""
    evil = "FORGED\r\n2026-01-01 00:00:00,000 ERROR connector: owned \x1b[31m\u2028"
    marker = uuid.uuid4().hex
    start = _log(space).stat().st_size
    member = space.members
    token = member.token(space.provider_did)
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        # the path (percent-encoded newline), before any authentication
        ("GET", f"{space.base}/negotiations/{marker}-1%0D%0A{evil[8:20]}%1B", {}, None),
        # a header with control characters (sent raw: aiohttp's client refuses to)
        ("RAW", f"/dsp/2025-1/negotiations/{marker}-2",
         {"Authorization": f"Bearer {marker}-2\x1b[31mFORGED\x7f\x0bx"}, None),
        # claims: a properly signed token for another audience, whose aud carries the text
        ("GET", f"{space.base}/negotiations/{marker}-3",
         {"Authorization": "Bearer " + member.token(f"{marker}-3{evil}")}, None),
        # a termination reason, on a process the caller may not touch
        ("POST", f"{space.base}/negotiations/{marker}-4/termination",
         {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
         msgspec.json.encode({"@context": [DSP_CONTEXT],
                              "@type": "ContractNegotiationTerminationMessage",
                              "consumerPid": f"{marker}-4{evil}", "providerPid": f"{marker}-4",
                              "code": evil, "reason": [evil]})),
    ]
    for i, (method, url, headers, data) in enumerate(requests, 1):
        before = _log(space).stat().st_size
        if method == "RAW":
            status = await asyncio.to_thread(raw_get, space, url, headers)
        else:
            status, _ = await raw_call(http, method, url, data=data, headers=headers)
        assert 400 <= status < 500
        lines = _new_lines(space, before)
        assert len(lines) == 1, (i, lines)
        assert f"{marker}-{i}" in lines[0]
    lines = _new_lines(space, start)
    assert lines and all(LINE_START.match(line) for line in lines), lines
    assert not any(line.startswith("FORGED") or "\x1b" in line for line in lines)


async def test_a_peers_refusal_reason_with_control_characters_is_logged_on_one_line(
        space: Space, http: aiohttp.ClientSession) -> None:
    """The provider delivers its agreement to a callback that refuses it with a reason
    crafted to forge lines; the outbox logs the refusal (and the negotiation ends)."""
    marker = uuid.uuid4().hex
    evil = f"{marker}\nFORGED 2026-01-01 00:00:00,000 ERROR connector: owned\r\x1b[2J"

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(text=evil, status=400)  # not even JSON: raw text, as sent

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    start = _log(space).stat().st_size
    try:
        peer = space.members
        body = {"@context": [DSP_CONTEXT], "@type": "ContractRequestMessage",
                "consumerPid": f"urn:uuid:{uuid.uuid4()}",
                "offer": {"@id": "urn:offer:example-weather:members-only", "@type": "Offer",
                          "target": "example-weather",
                          "permission": [{"action": "use", "constraint": [
                              {"leftOperand": "membership", "operator": "eq",
                               "rightOperand": "active"}]}]},
                "callbackAddress": f"http://127.0.0.1:{port}/cb"}
        data = msgspec.json.encode(body)
        status, ack = await raw_call(
            http, "POST", f"{space.base}/negotiations/request", data=data,
            headers={"Authorization": f"Bearer {peer.token(space.provider_did).for_body(data)}",
                     "Content-Type": "application/json"})
        assert status == 201, ack
        for _ in range(400):  # the outbox delivers, is refused, logs
            if marker in _log(space).read_bytes()[start:].decode():
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    lines = _new_lines(space, start)
    carrying = [line for line in lines if marker in line]
    assert carrying, lines
    assert all(LINE_START.match(line) for line in lines), lines
    assert not any(line.startswith("FORGED") or "\x1b" in line for line in lines)


def _tls(space: Space) -> tuple[ssl.SSLSocket, str]:
    host, port = space.provider.url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=str(space.provider.dir / "tls" / "cert.pem"))
    raw = socket.create_connection((host, int(port)), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=host), host


def raw_get(space: Space, path: str, headers: dict[str, str]) -> int:
    """GET over a bare TLS socket, headers as given (control characters too); the status."""
    tls, host = _tls(space)
    with tls:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while b"\r\n" not in answer and (chunk := tls.recv(4096)):
            answer += chunk
    return int(answer.split(b" ")[1])


async def test_a_caller_hanging_up_before_the_answer_leaves_one_quiet_line(
        space: Space) -> None:
    """A body announced but cut: the handler's read fails with the caller gone."""
    start = _log(space).stat().st_size
    token = space.members.token(space.provider_did)

    def hang_up() -> None:
        tls, host = _tls(space)
        head = (f"POST /dsp/2025-1/negotiations/request HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n{\"@type\": ").encode()
        with tls:
            tls.sendall(head)  # and hang up: the body never comes

    await asyncio.to_thread(hang_up)
    for _ in range(200):  # the daemon notices the closed connection a moment later
        lines = _new_lines(space, start)
        if any("disconnected" in line for line in lines):
            break
        await asyncio.sleep(0.05)
    lines = _new_lines(space, start)
    assert [line for line in lines if "disconnected" in line], lines
    assert not any("Traceback" in line or "Error handling request" in line for line in lines)
