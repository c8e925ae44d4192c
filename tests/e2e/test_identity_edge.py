"""Identity at the DSP edge over real HTTPS, with real daemons (issue #4).

A DCP space: an authority process (``connector authority run``) issues membership credentials
and serves its revocation list; a provider and a consumer daemon run with
``[identity] mode = "dcp"`` (the provider pins nobody: it trusts the authority for
MembershipCredential and reaches callers' did.json over HTTPS). The test also plays scripted
DCP participants: one HTTPS server in the test process serves their did.json documents and
their Credential Services, answering with whatever presentation the test wants.

Each attack on the negotiation/transfer endpoints is refused 404, leaves no record, and the
reason is in the provider's log. A revoked member stops seeing offers and cannot negotiate
within the status-list cache time. A pinned-mode provider rotates its key while several
consumers negotiate, without one failed request. No private key reaches a log or a database.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from connector import authority, keys
from connector.client import Management
from connector.config import load_settings
from connector.core import credentials as vc
from connector.core import dcp as dcp_messages
from connector.core.audit import parse_checkpoint
from connector.core.binding import DSP_PATH
from connector.core.errors import PeerError
from connector.core.identity import (
    build_did_document,
    did_web_from_url,
    issue_dcp_token,
    signing_public_jwk,
    with_credential_service,
)
from connector.core.messages import DSP_CONTEXT
from connector.participant import credentials
from connector.participant.keys import retire_signing_key
from connector.participant.trust import add_trusted_peer
from tests.harness import (
    Participant,
    create_space,
    free_port,
    free_port_pair,
    new_participant,
    start,
    stop,
)
from tests.stores import StateDb
from tests.unit.test_rotation import _assert_no_key_material

pytestmark = pytest.mark.asyncio(loop_scope="session")
STATUS_CACHE_S = 2


def connector(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "connector.cli", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- scripted DCP participants -----------------------------------------------------------------


@dataclass
class Scripted:
    """A DCP participant the test plays: its key, its credentials, what its CS answers."""

    name: str
    did: str
    key: ec.EllipticCurvePrivateKey
    credentials: list[str] = field(default_factory=list)
    # audience -> the VP JWTs its Credential Service answers (default: a VP of its credentials)
    answer: Callable[[str], list[str]] | None = None
    queries: int = 0

    @property
    def kid(self) -> str:
        return self.did + "#key-1"

    def document(self, base: str) -> dict[str, Any]:
        doc = build_did_document(self.did, base + DSP_PATH,
                                 [(self.kid, signing_public_jwk(self.key))])
        return with_credential_service(doc, f"{base}/{self.name}/cs")

    def presentations(self, audience: str) -> list[str]:
        if self.answer is not None:
            return self.answer(audience)
        return [vc.issue_presentation(self.key, kid=self.kid, holder=self.did, audience=audience,
                                      credentials=self.credentials, now=int(time.time()),
                                      jti=str(uuid.uuid4()), ttl_s=60)]

    def token(self, audience: str, *, now: int | None = None, ttl: int = 60,
              key: ec.EllipticCurvePrivateKey | None = None, kid: str | None = None,
              jti: str | None = None) -> str:
        return issue_dcp_token(key or self.key, kid=kid or self.kid, issuer=self.did,
                               audience=audience, now=int(time.time()) if now is None else now,
                               jti=jti or str(uuid.uuid4()), ttl_s=ttl,
                               access_token="opaque-access-token")


@dataclass
class DcpSpace:
    root: Path
    authority_dir: Path
    authority_process: subprocess.Popen[bytes]
    provider: Participant
    consumer: Participant
    provider_did: str
    consumer_credential: str
    scripted_port: int
    scripted: dict[str, Scripted]
    tls: ssl.SSLContext

    @property
    def base(self) -> str:
        return self.provider.url + DSP_PATH

    def provider_log(self) -> str:
        return (self.provider.dir / "state" / "daemon.log").read_text()


def _identity_toml(authority_did: str, ca_files: list[Path]) -> str:
    files = ", ".join(json.dumps(str(p)) for p in ca_files)
    return (f'\n[identity]\nmode = "dcp"\nrequired_credentials = ["MembershipCredential"]\n'
            f"status_cache_s = {STATUS_CACHE_S}\ndid_cache_s = 300\ntls_ca_files = [{files}]\n"
            f"[identity.trusted_issuers]\n{json.dumps(authority_did)} = "
            f'["MembershipCredential"]\n')


def _member(authority_dir: Path, folder: Path, did: str) -> str:
    credential_id, token = authority.issue_credential(authority_dir, subject=did)
    source = folder / "state" / "membership.jwt"
    source.write_text(token)
    credentials.import_credential(folder, source)
    return credential_id


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


@pytest.fixture(scope="module")
def dcp_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcpSpace]:
    root = tmp_path_factory.mktemp("dcp")
    authority_dir = root / "authority"
    settings = authority.init_authority(authority_dir, url=f"https://127.0.0.1:{free_port()}")
    provider, consumer = create_space(root)
    for pin in (provider.dir / "trust").glob("*.json"):
        pin.unlink()  # the provider trusts callers by their credentials alone
    scripted_port = free_port()
    keys.generate_tls(root / "scripted-cert.pem", root / "scripted-key.pem", ["127.0.0.1"])
    ca = [authority_dir / authority.TLS_CERT, consumer.dir / "tls" / "cert.pem",
          root / "scripted-cert.pem"]
    for p in (provider, consumer):
        with (p.dir / "connector.toml").open("a") as f:
            f.write(_identity_toml(settings.did, ca))
    provider_did = load_settings(provider.dir).did
    _member(authority_dir, provider.dir, provider_did)
    consumer_credential = _member(authority_dir, consumer.dir, load_settings(consumer.dir).did)
    scripted = {}
    for name in ("alice", "revoked", "rogue", "mallory"):
        did = did_web_from_url(f"https://127.0.0.1:{scripted_port}/{name}")
        scripted[name] = Scripted(name, did, ec.generate_private_key(ec.SECP256R1()))
    for name in ("alice", "revoked", "mallory"):
        credential_id, token = authority.issue_credential(authority_dir,
                                                          subject=scripted[name].did)
        scripted[name].credentials.append(token)
        if name == "revoked":
            authority.revoke_credential(authority_dir, credential_id)
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "authority", "run", str(authority_dir)],
        stdout=(root / "authority.out").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_listening(settings.port)
        start(provider)
        start(consumer)
        tls = ssl.create_default_context(cafile=str(provider.dir / "tls" / "cert.pem"))
        yield DcpSpace(root, authority_dir, process, provider, consumer, provider_did,
                       consumer_credential, scripted_port, scripted, tls)
    finally:
        stop(consumer)
        stop(provider)
        process.terminate()
        process.wait(10)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def dcp(dcp_space: DcpSpace) -> AsyncIterator[DcpSpace]:
    """The scripted participants' HTTPS server (did.json and Credential Service per name)."""
    s = dcp_space
    base = f"https://127.0.0.1:{s.scripted_port}"

    async def did_json(request: web.Request) -> web.Response:
        who = s.scripted.get(request.match_info["name"])
        if who is None:
            raise web.HTTPNotFound()
        return web.json_response(who.document(base))

    async def query(request: web.Request) -> web.Response:
        who = s.scripted[request.match_info["name"]]
        who.queries += 1
        assert request.headers["Authorization"].startswith("Bearer ")
        dcp_messages.parse_presentation_query(await request.json())
        answer = dcp_messages.presentation_response(who.presentations(s.provider_did))
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/{name}/did.json", did_json)
    app.router.add_post("/{name}/cs/presentations/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(s.root / "scripted-cert.pem", s.root / "scripted-key.pem")
    await web.TCPSite(runner, "127.0.0.1", s.scripted_port, ssl_context=server_tls).start()
    yield s
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http(dcp_space: DcpSpace) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=dcp_space.tls)) as s:
        yield s


async def post(http: aiohttp.ClientSession, url: str, body: Any, token: str
               ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(url, data=msgspec.json.encode(body), headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (msgspec.json.decode(raw) if raw else {})


def contract_request(consumer_pid: str) -> dict[str, Any]:
    return {"@context": [DSP_CONTEXT], "@type": "ContractRequestMessage",
            "consumerPid": consumer_pid,
            "offer": {"@id": "urn:offer:example-weather:members-only", "@type": "Offer",
                      "target": "example-weather",
                      "permission": [{"action": "use", "constraint": [
                          {"leftOperand": "membership", "operator": "eq",
                           "rightOperand": "active"}]}]},
            "callbackAddress": "https://127.0.0.1:9/dsp/2025-1"}


def transfer_request(consumer_pid: str) -> dict[str, Any]:
    return {"@context": [DSP_CONTEXT], "@type": "TransferRequestMessage",
            "consumerPid": consumer_pid, "agreementId": "urn:uuid:nope",
            "format": "HttpData-PULL", "callbackAddress": "https://127.0.0.1:9/dsp/2025-1"}


async def provider_records(s: DcpSpace) -> list[dict[str, Any]]:
    api = Management(load_settings(s.provider.dir))
    try:
        negotiations: list[dict[str, Any]] = await api.call("GET", "/api/negotiations")
        transfers: list[dict[str, Any]] = await api.call("GET", "/api/transfers")
        return negotiations + transfers
    finally:
        await api.close()


async def assert_refused(http: aiohttp.ClientSession, s: DcpSpace, token: str, reason: str,
                         *, area: str = "negotiations") -> None:
    """404 with the DSP error body, nothing persisted, the reason in the provider's log."""
    pid = f"urn:uuid:{uuid.uuid4()}"
    body = contract_request(pid) if area == "negotiations" else transfer_request(pid)
    status, doc = await post(http, f"{s.base}/{area}/request", body, token)
    assert status == 404, doc
    assert doc["code"] == "unknown-process" or doc["reason"] == ["not found"]
    assert pid not in json.dumps(await provider_records(s))
    for _ in range(20):
        if reason in s.provider_log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{reason!r} not in the provider's log")


# -- DCP happy paths ---------------------------------------------------------------------------


async def test_did_document_advertises_the_credential_service(
        http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    async with http.get(f"{dcp.provider.url}/.well-known/did.json") as resp:
        doc = await resp.json()
    services = {s["type"]: s["serviceEndpoint"] for s in doc["service"]}
    assert services["CredentialService"] == dcp.provider.url + "/cs"


async def test_scripted_member_sees_offers_and_negotiates(
        http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    status, catalog = await post(http, f"{dcp.base}/catalog/request",
                                 {"@context": [DSP_CONTEXT], "@type": "CatalogRequestMessage"},
                                 alice.token(dcp.provider_did))
    assert status == 200, catalog
    assert "example-weather" in {d["@id"] for d in catalog["dataset"]}
    pid = f"urn:uuid:{uuid.uuid4()}"
    status, ack = await post(http, f"{dcp.base}/negotiations/request", contract_request(pid),
                             alice.token(dcp.provider_did))
    assert status == 201 and ack["consumerPid"] == pid
    assert pid in json.dumps(await provider_records(dcp))  # what assert_refused looks for
    assert alice.queries == 1  # the second message reused the verified claims


async def test_two_dcp_daemons_negotiate_to_finalized(dcp: DcpSpace) -> None:
    api = Management(load_settings(dcp.consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=15",
                                {"provider": dcp.provider.url, "datasetId": "example-weather"})
    finally:
        await api.close()
    assert record["state"] == "FINALIZED", record


# -- attacks: each refused 404, nothing persisted, reason logged -------------------------------


async def test_forged_signature(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    forger = ec.generate_private_key(ec.SECP256R1())
    token = alice.token(dcp.provider_did, key=forger)
    await assert_refused(http, dcp, token, "signature invalid")
    await assert_refused(http, dcp, alice.token(dcp.provider_did, key=forger),
                         "signature invalid", area="transfers")


async def test_unknown_kid(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    await assert_refused(http, dcp, alice.token(dcp.provider_did, kid=alice.did + "#key-99"),
                         "unknown key id")


async def test_wrong_audience(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    await assert_refused(http, dcp, alice.token("did:web:someone-else.example"),
                         "wrong audience")


async def test_expired(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    await assert_refused(http, dcp, alice.token(dcp.provider_did, now=int(time.time()) - 600),
                         "token expired")


async def test_not_yet_valid(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    await assert_refused(http, dcp, alice.token(dcp.provider_did, now=int(time.time()) + 600),
                         "token not yet valid")


async def test_replayed_jti(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    token = alice.token(dcp.provider_did)
    status, _ = await post(http, f"{dcp.base}/catalog/request",
                           {"@context": [DSP_CONTEXT], "@type": "CatalogRequestMessage"}, token)
    assert status == 200
    await assert_refused(http, dcp, token, "token replayed")


async def test_revoked_membership(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    revoked = dcp.scripted["revoked"]
    await assert_refused(http, dcp, revoked.token(dcp.provider_did), "credential revoked")


async def test_untrusted_issuer(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    rogue = dcp.scripted["rogue"]
    issuer = "did:web:rogue-authority.example"
    rogue.credentials = [vc.issue_credential(
        ec.generate_private_key(ec.SECP256R1()), kid=issuer + "#key-1", issuer=issuer,
        subject=rogue.did, credential_id=f"urn:uuid:{uuid.uuid4()}", now=int(time.time()),
        valid_s=3600)]
    await assert_refused(http, dcp, rogue.token(dcp.provider_did), "untrusted issuer")


async def test_holder_not_the_token_issuer(http: aiohttp.ClientSession, dcp: DcpSpace) -> None:
    mallory, alice = dcp.scripted["mallory"], dcp.scripted["alice"]
    # Mallory's CS hands over a presentation Alice made (of Alice's credential) for the provider.
    mallory.answer = alice.presentations
    await assert_refused(http, dcp, mallory.token(dcp.provider_did),
                         "holder does not match the token issuer")


async def test_missing_bearer_prefix_is_refused(http: aiohttp.ClientSession,
                                                dcp: DcpSpace) -> None:
    alice = dcp.scripted["alice"]
    headers = {"Authorization": alice.token(dcp.provider_did)}
    async with http.post(f"{dcp.base}/negotiations/request", headers=headers,
                         data=msgspec.json.encode(contract_request("urn:uuid:x"))) as resp:
        assert resp.status == 404


# -- revocation of a running member --------------------------------------------------------------


async def test_revoked_member_stops_seeing_offers_within_the_cache_time(dcp: DcpSpace) -> None:
    api = Management(load_settings(dcp.consumer.dir))
    try:
        catalog = await api.call("GET", f"/api/catalog?provider={dcp.provider.url}")
        assert "example-weather" in {d["@id"] for d in catalog["dataset"]}
        connector("authority", "revoke", str(dcp.authority_dir), dcp.consumer_credential)
        revoked_at = time.monotonic()
        refused_after = None
        while time.monotonic() - revoked_at < STATUS_CACHE_S * 3 + 5:
            try:
                await api.call("GET", f"/api/catalog?provider={dcp.provider.url}")
            except PeerError:
                refused_after = time.monotonic() - revoked_at
                break
            await asyncio.sleep(0.2)
        assert refused_after is not None, "the revoked member was still served"
        # The claims and the status list are each cached at most STATUS_CACHE_S.
        assert refused_after <= 2 * STATUS_CACHE_S + 1.5
        try:  # the consumer may still hold the catalogue: then the provider refuses the request
            record = await api.call("POST", "/api/negotiations?wait=5",
                                    {"provider": dcp.provider.url, "datasetId": "example-weather"})
        except PeerError:
            record = None
        if record is not None:
            assert record["state"] != "FINALIZED", record
            assert record["consumerPid"] not in json.dumps(await provider_records(dcp))
    finally:
        await api.close()
    assert "credential revoked" in dcp.provider_log()


async def test_no_private_key_in_logs_or_databases(dcp: DcpSpace) -> None:
    dcp.authority_process.terminate()
    dcp.authority_process.wait(10)
    texts = [(dcp.root / "authority.out").read_text()]
    for p in (dcp.provider, dcp.consumer):
        texts.append((p.dir / "state" / "daemon.log").read_text())
        with StateDb(p.dir) as db:
            texts.append(db.text())
    for folder in (dcp.provider.dir, dcp.consumer.dir, dcp.authority_dir):
        _assert_no_key_material(folder, texts)
        for key_file in (folder / "keys").iterdir():
            assert key_file.stat().st_mode & 0o077 == 0, key_file


# -- rotation under load (pinned mode) ----------------------------------------------------------


def _pinned_space(root: Path, consumers: int) -> tuple[Participant, list[Participant]]:
    provider, first = create_space(root)
    others = []
    for i in range(consumers - 1):
        other = new_participant(root, f"consumer{i + 2}", f"https://127.0.0.1:{free_port_pair()}")
        add_trusted_peer(provider.dir, other.dir, attributes={"membership": "active"},
                         tls_cert=None)
        add_trusted_peer(other.dir, provider.dir, attributes={}, tls_cert=None)
        others.append(other)
    return provider, [first, *others]


async def test_provider_rotates_while_consumers_negotiate(
        tmp_path: Path) -> None:
    provider, consumers = _pinned_space(tmp_path, 3)
    with (provider.dir / "connector.toml").open("a") as f:  # checkpoints under either key
        f.write("\n[audit]\ncheckpoint_entries = 20\n")
    old_kid = load_settings(provider.dir).signing_kid
    start(provider)
    for c in consumers:
        start(c)
    apis = [Management(load_settings(c.dir)) for c in consumers]
    results: list[str] = []
    failures: list[str] = []
    done = asyncio.Event()

    async def negotiate_until_done(api: Management) -> None:
        while not done.is_set():
            try:
                record = await api.call("POST", "/api/negotiations?wait=15",
                                        {"provider": provider.url,
                                         "datasetId": "example-weather"})
                results.append(record["state"])
                if record["state"] != "FINALIZED":
                    failures.append(str(record))
            except PeerError as exc:
                failures.append(exc.message)

    async def run(*args: str) -> str:
        return await asyncio.to_thread(connector, *args)

    try:
        workers = [asyncio.create_task(negotiate_until_done(api)) for api in apis]
        await asyncio.sleep(1.0)
        out = await run("keys", "rotate", str(provider.dir), "--publish-only")
        new_kid = next(w for w in out.split() if "#key-" in w)
        for c in consumers:  # re-pin: every consumer knows the new key before it signs
            await run("trust", "add", str(provider.dir), "--dir", str(c.dir))
        await asyncio.sleep(2.5)  # the consumers' folder reload (1 s)
        await run("keys", "rotate", str(provider.dir), "--activate", new_kid)
        for _ in range(50):
            if f"signing with {new_kid}" in (provider.dir / "state" / "daemon.log").read_text():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the provider never switched to the new key")
        before = len(results)
        await asyncio.sleep(2.0)  # negotiations signed with the new key
        done.set()
        await asyncio.gather(*workers)
        assert len(results) > before
    finally:
        for api in apis:
            await api.close()
        for c in consumers:
            stop(c)
        stop(provider)
    assert failures == []
    assert len(results) >= 3 * len(consumers)
    for c in consumers:
        log = (c.dir / "state" / "daemon.log").read_text()
        assert "unauthorized" not in log and "-> 404" not in log, log[-2000:]
    # The provider's audit checkpoints, signed under both keys, still verify once the old key
    # is retired (gone from did.json): the chain announced it while it signed.
    retire_signing_key(provider.dir, old_kid, now=time.time() + 10_000)
    with StateDb(provider.dir) as db:
        kids = {parse_checkpoint(jws).kid for (jws,) in db.execute(
            "SELECT jws FROM audit_checkpoints")}
    assert old_kid in kids and new_kid in kids, kids
    verified = provider.cli("audit", "verify")
    assert verified.returncode == 0 and "audit trail ok" in verified.stdout, verified.stdout
