"""``[identity] allowed_hosts`` with real daemons over HTTPS in DCP mode (issue #4).

An authority process issues membership credentials; a provider and a consumer daemon run with
``mode = "dcp"``, the provider pinning nobody. While the provider's ``allowed_hosts`` lists
only the authority, the consumer's catalogue request is refused before the provider fetches
anything from the consumer's host, with the reason in the provider's log and the DSP shapes
of a refusal (401 CatalogError on the catalogue, 404 on negotiations); once the consumer's
host:port is listed too, the same requests are served.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from connector import authority
from connector.client import Management
from connector.config import load_settings
from connector.core import dcp
from connector.core.binding import DSP_PATH
from connector.core.errors import PeerError
from connector.core.identity import did_web_from_url
from connector.core.messages import DSP_CONTEXT
from connector.keys import load_any_signing_key
from connector.service.auth import Identity
from tests.e2e.test_identity_edge import (
    _identity_toml,
    _member,
    _wait_listening,
    contract_request,
)
from tests.harness import Participant, create_space, free_port, start, stop

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Space:
    provider: Participant
    consumer: Participant
    config: str  # the provider's connector.toml without [identity]
    identity: str  # its [identity] table, with '{hosts}' where allowed_hosts goes
    authority_host: str
    consumer_host: str

    def restart_provider(self, hosts: list[str]) -> None:
        stop(self.provider)
        line = f"allowed_hosts = {json.dumps(hosts)}\n"
        (self.provider.dir / "connector.toml").write_text(
            self.config + self.identity.replace("{hosts}", line))
        start(self.provider)

    def provider_log(self) -> str:
        return (self.provider.dir / "state" / "daemon.log").read_text()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root = tmp_path_factory.mktemp("allowed-hosts")
    authority_dir = root / "authority"
    settings = authority.init_authority(authority_dir, url=f"https://127.0.0.1:{free_port()}")
    provider, consumer = create_space(root)
    for pin in (provider.dir / "trust").glob("*.json"):
        pin.unlink()  # the provider trusts callers by their credentials alone
    ca = [authority_dir / authority.TLS_CERT, consumer.dir / "tls" / "cert.pem"]
    identity = _identity_toml(settings.did, ca)
    with (consumer.dir / "connector.toml").open("a") as f:
        f.write(identity)
    config = (provider.dir / "connector.toml").read_text()
    head, sep, tail = identity.partition("[identity.trusted_issuers]")
    for p in (provider, consumer):
        _member(authority_dir, p.dir, load_settings(p.dir).did)
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "authority", "run", str(authority_dir)],
        stdout=(root / "authority.out").open("wb"), stderr=subprocess.STDOUT)
    consumer_url = URL(consumer.url)
    s = Space(provider, consumer, config, head + "{hosts}" + sep + tail,
              authority_host=f"127.0.0.1:{settings.port}",
              consumer_host=f"{consumer_url.host}:{consumer_url.port}")
    try:
        _wait_listening(settings.port)
        start(consumer)
        yield s
    finally:
        stop(consumer)
        stop(provider)
        process.terminate()
        process.wait(10)


async def _catalog(s: Space) -> dict[str, Any]:
    api = Management(load_settings(s.consumer.dir))
    try:
        doc: dict[str, Any] = await api.call("GET", f"/api/catalog?provider={s.provider.url}")
        return doc
    finally:
        await api.close()


async def _dsp_as_consumer(s: Space) -> tuple[tuple[int, Any], tuple[int, Any]]:
    """The consumer's own catalogue and contract requests, sent by hand: (status, body) each."""
    c = load_settings(s.consumer.dir)
    identity = Identity(did=c.did, kid=c.signing_kid, key=load_any_signing_key(c.signing_key),
                        ttl_s=60, clock=time.time, dcp_mode=True,
                        grants=dcp.type_scopes(c.required_credentials, c.scope_alias))
    audience = did_web_from_url(s.provider.url)
    tls = ssl.create_default_context(cafile=str(s.provider.dir / "tls" / "cert.pem"))
    base = s.provider.url + DSP_PATH
    answers = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
        for path, body in (("catalog/request", {"@context": [DSP_CONTEXT],
                                                "@type": "CatalogRequestMessage"}),
                           ("negotiations/request",
                            contract_request(f"urn:uuid:{uuid.uuid4()}"))):
            headers = {"Authorization": identity.authorization(audience)}
            async with http.post(f"{base}/{path}", json=body, headers=headers) as resp:
                answers.append((resp.status, await resp.json()))
    return answers[0], answers[1]


async def test_a_caller_outside_allowed_hosts_is_refused_then_served_once_listed(
        space: Space) -> None:
    space.restart_provider([space.authority_host])
    with pytest.raises(PeerError):
        await _catalog(space)
    # The DSP shapes of the refusal: 401 CatalogError, 404 ContractNegotiationError.
    (status, doc), (n_status, n_doc) = await _dsp_as_consumer(space)
    assert status == 401 and doc["@type"] == "CatalogError", doc
    assert n_status == 404 and n_doc["@type"] == "ContractNegotiationError", n_doc
    assert n_doc["reason"] == ["not found"]
    log = space.provider_log()
    refusal = (f"GET https://{space.consumer_host}/.well-known/did.json: refused, host "
               f"{space.consumer_host} is not in [identity] allowed_hosts")
    assert refusal in log, log[-2000:]
    assert f"POST {DSP_PATH}/catalog/request -> 401 unauthorized" in log

    space.restart_provider([space.authority_host, space.consumer_host])
    catalog = await _catalog(space)
    assert "example-weather" in {d["@id"] for d in catalog["dataset"]}
    (status, doc), (n_status, n_doc) = await _dsp_as_consumer(space)
    assert status == 200 and n_status == 201, (doc, n_doc)
    assert "allowed_hosts" not in space.provider_log()


async def _until(s: Space, want: int, *, timeout_s: float = 10.0) -> None:
    """Poll the consumer's catalogue request until the provider answers ``want``."""
    deadline = time.monotonic() + timeout_s
    while True:
        (status, doc), _ = await _dsp_as_consumer(s)
        if status == want:
            return
        assert time.monotonic() < deadline, (status, doc)
        await asyncio.sleep(0.2)


async def test_identity_settings_follow_connector_toml_without_a_restart(space: Space) -> None:
    """[identity] edited in place: allowed_hosts and trusted issuers apply within seconds,
    the daemon keeps running, and claims verified under the old trust are not reused."""
    space.restart_provider([space.authority_host])
    pid = space.provider.process.pid if space.provider.process else None
    toml = space.provider.dir / "connector.toml"

    def write(hosts: list[str], identity: str) -> None:
        toml.write_text(space.config + identity.replace(
            "{hosts}", f"allowed_hosts = {json.dumps(hosts)}\n"))

    await _until(space, 401)
    write([space.authority_host, space.consumer_host], space.identity)
    await _until(space, 200)
    authority_did = next(line.split(" = ")[0].strip('"') for line in space.identity.splitlines()
                         if line.startswith('"did:web:'))
    untrusted = space.identity.replace(authority_did, "did:web:nobody.example")
    write([space.authority_host, space.consumer_host], untrusted)
    await _until(space, 401)  # the claims cached a moment ago are not reused
    write([space.authority_host, space.consumer_host], space.identity)
    await _until(space, 200)
    log = space.provider_log()
    assert "reloaded [identity] (allowed_hosts) without a restart" in log
    assert "reloaded [identity] (trusted_issuers) without a restart" in log
    assert (space.provider.process.pid if space.provider.process else None) == pid
