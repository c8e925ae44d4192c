"""Values a caller may send that one engine could store and the other not: never a 5xx.

PostgreSQL's ``text`` cannot hold U+0000 (the server refuses the parameter outright:
"invalid byte sequence for encoding UTF8: 0x00") where SQLite stores it, and a B-tree index
refuses an entry over about 2.7 kB where SQLite's takes any. So both are answered before
they reach a query, the same on both engines: a NUL anywhere (path, parameter, JSON string,
token claim) is malformed, and an identifier we would store and index (a pid, an agreement's
id, a token's jti) is at most ``MAX_ID_LENGTH`` characters.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import aiohttp
import pytest

from connector.core.messages import MAX_ID_LENGTH
from tests.e2e.conftest import Space
from tests.e2e.test_bad_input import management_headers, raw_call
from tests.e2e.test_dsp_edge import call, open_negotiation, request_body

pytestmark = pytest.mark.asyncio(loop_scope="session")
NUL = "\x00"
# Random, so that no compression brings it under the index's limit.
LONG = "urn:uuid:" + secrets.token_hex(MAX_ID_LENGTH)


@pytest.mark.parametrize(("method", "route"), [
    ("GET", "/api/negotiations/%00"),
    ("GET", "/api/negotiations/urn:uuid:a%00b?wait=0.1"),
    ("GET", "/api/transfers/%00"),
    ("GET", "/api/transfers/%00/data"),
    ("GET", "/api/transfers/%00/summary"),
    ("POST", "/api/transfers/%00/suspend"),
    ("POST", "/api/transfers/%00/pull"),
    ("POST", "/api/negotiations/%00/terminate"),
    ("GET", "/api/agreements/%00"),
    ("POST", "/api/agreements/%00/revoke"),
    ("GET", "/api/transfers/%00/push"),
    ("POST", "/api/transfers/%00/refresh"),
    ("POST", "/api/negotiations/%00/accept"),
])
async def test_a_nul_in_a_management_id_finds_nothing(
        space: Space, http: aiohttp.ClientSession, method: str, route: str) -> None:
    for who in ("consumer", "provider"):
        base, headers = management_headers(space, who)
        data = b'{"reason": "x\\u0000y", "sink": "/tmp/never-written.jsonl"}' if (
            method == "POST") else None
        status, body = await raw_call(http, method, base + route, data=data, headers=headers)
        assert 400 <= status < 500, (who, status, body)


async def test_a_nul_in_a_management_body_is_refused_or_kept_whole(
        space: Space, http: aiohttp.ClientSession) -> None:
    base, headers = management_headers(space)
    for body in ({"provider": space.provider.url, "datasetId": f"example{NUL}weather"},
                 {"provider": f"{space.provider.url}{NUL}", "datasetId": "example-weather"},
                 {"agreementId": f"urn:uuid:{NUL}"}):
        route = "/api/transfers" if "agreementId" in body else "/api/negotiations"
        status, answer = await raw_call(http, "POST", base + route + "?wait=5",
                                        data=_json(body), headers=headers)
        assert status < 500, (body, status, answer)


@pytest.mark.parametrize("field", ["consumerPid", "callbackAddress", "offer.@id",
                                   "offer.target"])
async def test_a_nul_in_a_dsp_message_is_a_4xx(space: Space, http: aiohttp.ClientSession,
                                               field: str) -> None:
    peer = space.members
    body: dict[str, Any] = request_body(peer)
    holder, _, key = field.rpartition(".")
    target = body[holder] if holder else body
    target[key] = f"{target[key]}{NUL}x"
    status, answer = await call(http, "POST", f"{space.base}/negotiations/request", body,
                                peer.token(space.provider_did))
    assert 400 <= status < 500, (field, status, answer)


async def test_a_nul_in_a_dsp_path_or_reason_is_a_4xx(space: Space,
                                                      http: aiohttp.ClientSession) -> None:
    peer = space.members
    consumer_pid, provider_pid = await open_negotiation(http, space, peer)
    for pid in (f"{provider_pid}%00", "%00", f"urn:uuid:{uuid.uuid4()}%00"):
        status, answer = await call(http, "GET", f"{space.base}/negotiations/{pid}",
                                    token=peer.token(space.provider_did))
        assert 400 <= status < 500, (pid, status, answer)
    body = {"@context": request_body(peer)["@context"],
            "@type": "ContractNegotiationTerminationMessage", "consumerPid": consumer_pid,
            "providerPid": provider_pid, "code": f"x{NUL}", "reason": [f"a{NUL}b"]}
    status, answer = await call(http, "POST",
                                f"{space.base}/negotiations/{provider_pid}/termination", body,
                                peer.token(space.provider_did))
    assert status < 500, (status, answer)


def _json(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc).encode()


async def test_a_nul_in_a_token_id_is_refused(space: Space, http: aiohttp.ClientSession) -> None:
    """A member's properly signed token whose jti holds U+0000: refused, never a 5xx (the id
    would be recorded as seen)."""
    peer = space.members
    body = request_body(peer)
    status, answer = await call(http, "POST", f"{space.base}/negotiations/request", body,
                                peer.token(space.provider_did, jti=f"{uuid.uuid4()}{NUL}"))
    assert 400 <= status < 500, (status, answer)


@pytest.mark.parametrize("field", ["consumerPid", "offer.@id", "jti"])
async def test_a_long_id_in_a_dsp_message_is_a_4xx(space: Space, http: aiohttp.ClientSession,
                                                   field: str) -> None:
    peer = space.members
    body: dict[str, Any] = request_body(peer)
    if field != "jti":
        holder, _, key = field.rpartition(".")
        (body[holder] if holder else body)[key] = LONG
    token = peer.token(space.provider_did, jti=LONG if field == "jti" else None)
    status, answer = await call(http, "POST", f"{space.base}/negotiations/request", body, token)
    assert 400 <= status < 500, (field, status, answer)

