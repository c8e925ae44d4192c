"""The DCP verifier's SSRF guard (issue #4): core.hosts and GuardedHttp.

The guard runs in ``GuardedHttp`` before its transport (``_send``): here a subclass routes
what passes the guard to the in-memory network of ``test_dcp_verifier`` and records it, so
"refused before any request" means "never reached ``_send``" (and no session was opened).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from connector.adapters.http.guard import GuardedHttp, GuardedResolver, RefusedAddress
from connector.config import load_settings
from connector.core import credentials as vc
from connector.core.errors import AuthError, ConfigError
from connector.core.hosts import AllowedHosts, address_refusal, parse_host_pattern
from connector.core.identity import did_web_to_url, issue_dcp_token
from connector.service.dcp_verifier import DcpVerifier, DidResolver
from tests.unit.test_dcp_verifier import ISSUER, NOW, FakeHttp, Party, World, publish

# -- core.hosts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "fe80::1", "fe80::1%eth0", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe", "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "239.255.255.250",
    "ff02::1", "255.255.255.255"])
def test_link_local_unspecified_multicast_addresses_are_refused(address: str) -> None:
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "10.0.0.7", "172.16.3.4", "192.168.1.1", "fd00::1", "8.8.8.8",
    "2001:db8::1", "authority.example"])
def test_private_loopback_and_public_addresses_pass_the_address_rule(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(("entries", "host", "port", "allowed"), [
    ([], "anything.example", 443, True),
    (["authority.example"], "authority.example", 443, True),
    (["authority.example"], "AUTHORITY.example.", 8443, True),  # any port; case, root dot
    (["authority.example"], "evil.example", 443, False),
    (["authority.example"], "x.authority.example", 443, False),
    (["authority.example"], "authority.example.evil.org", 443, False),
    (["authority.example:8443"], "authority.example", 8443, True),
    (["authority.example:8443"], "authority.example", 443, False),
    (["authority.example:443"], "authority.example", 443, True),
    (["*.members.example"], "a.members.example", 443, True),
    (["*.members.example"], "a.b.members.example", 443, True),
    (["*.members.example"], "members.example", 443, False),
    (["*.members.example"], "evilmembers.example", 443, False),
    (["*.members.example:8443"], "a.members.example", 443, False),
    (["127.0.0.1:8443"], "127.0.0.1", 8443, True),
    (["127.0.0.1:8443"], "127.0.0.1", 8444, False),
    (["127.0.0.1"], "127.0.0.2", 443, False),
    (["10.0.0.7"], "10.0.0.7", 443, True),
    (["[::1]:8443"], "::1", 8443, True),
    (["[::1]:8443"], "0:0::1", 8443, True),
    (["::1"], "::1", 1234, True),
    (["[::1]:8443"], "::2", 8443, False),
    (["a.example", "*.b.example"], "x.b.example", 443, True),
])
def test_allowed_hosts_matching(entries: list[str], host: str, port: int,
                                allowed: bool) -> None:
    assert AllowedHosts(entries).allows(host, port) is allowed


@pytest.mark.parametrize(("entry", "why"), [
    ("", "empty"),
    ("https://authority.example", "not a URL"),
    ("authority.example/did.json", "not a URL"),
    ("user@authority.example", "not a URL"),
    ("*", "'\\*' may only start"),
    ("a.*.example", "'\\*' may only start"),
    ("*.", "not a host name"),
    ("*.10.0.0.1", "wildcard needs a domain name"),
    ("authority.example:0", "port '0'"),
    ("authority.example:65536", "port '65536'"),
    ("authority.example:https", "port 'https'"),
    ("[10.0.0.1]:443", "only an IPv6 address"),
    ("fe80::zz", "not an IPv6 address"),
    ("bad host", "not a host name"),
    ("-bad.example", "not a host name"),
    ("1.2.3", "not a host name"),
    ("bücher.example", "xn--"),
])
def test_bad_allowed_hosts_entries(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_host_pattern(entry)


# -- GuardedHttp ---------------------------------------------------------------------------------


class Routed(GuardedHttp):
    """A GuardedHttp whose transport is a FakeHttp: records what got past the guard."""

    def __init__(self, fake: FakeHttp, allowed_hosts: Iterable[str] = ()) -> None:
        super().__init__(ssl.create_default_context(), allowed_hosts=allowed_hosts)
        self.fake = fake
        self.sent: list[str] = []

    async def _send(self, method: str, target: URL, *, max_bytes: int, data: bytes | None,
                    headers: Mapping[str, str] | None) -> tuple[bytes, Mapping[str, str]]:
        url = str(target)
        self.sent.append(f"{method} {url}")
        if method == "GET":
            return await self.fake.get(url, max_bytes=max_bytes)
        assert data is not None and headers is not None
        return await self.fake.post_json(url, data, authorization=headers["Authorization"],
                                         max_bytes=max_bytes), {}


def guarded_world(allowed_hosts: Iterable[str] = ()) -> tuple[World, Routed]:
    """test_dcp_verifier's world, with the verifier fetching through the guard."""
    w = World()
    http = Routed(w.http, allowed_hosts)
    w.verifier = DcpVerifier(identity=w.identity,
                             resolver=DidResolver(http, cache_s=300, clock=w.clock), http=http,
                             trusted_issuers={ISSUER: ["MembershipCredential"]},
                             required_types=["MembershipCredential"], leeway_s=5,
                             status_cache_s=30, clock=w.clock)
    return w, http


async def test_the_guard_lets_an_allowed_member_through() -> None:
    w, http = guarded_world(["holder.example", "authority.example"])
    claims = await w.verifier.verify_async(w.authorization())
    assert claims.participant_id == w.holder.did
    assert "POST https://holder.example/cs/presentations/query" in http.sent
    assert "GET https://authority.example/status/revocation" in http.sent


@pytest.mark.parametrize("endpoint", [
    "https://169.254.169.254/cs", "https://[fe80::1]:8443/cs",
    "https://[::ffff:169.254.169.254]/cs", "https://0.0.0.0/cs", "https://224.0.0.1/cs"])
async def test_a_credential_service_at_a_link_local_address_is_refused_unsent(
        endpoint: str) -> None:
    w, http = guarded_world()  # no allowed_hosts: the address rule holds anyway
    publish(w.http, w.holder, endpoint)
    with pytest.raises(AuthError, match=r"refused, \S+ is an? (link-local|unspecified|multi)"):
        await w.verifier.verify_async(w.authorization())
    assert http.sent == [f"GET {did_web_to_url(w.holder.did)}"]  # its did.json only
    assert w.http.posts == []
    assert http._session is None  # not even a connection pool was opened


async def test_a_did_web_at_a_link_local_address_is_refused_unsent() -> None:
    w, http = guarded_world()
    metadata = Party("did:web:169.254.169.254")
    token = issue_dcp_token(metadata.key, kid=metadata.kid, issuer=metadata.did,
                            audience=w.verifier_party.did, now=NOW, jti="m", ttl_s=60,
                            access_token="a")
    with pytest.raises(AuthError, match=r"169\.254\.169\.254 is a link-local address"):
        await w.verifier.verify_async("Bearer " + token)
    assert http.sent == []


async def test_a_did_document_host_outside_allowed_hosts_is_refused_unsent() -> None:
    w, http = guarded_world(["authority.example"])
    with pytest.raises(AuthError, match=r"host holder\.example:443 is not in \[identity\] "
                                        r"allowed_hosts"):
        await w.verifier.verify_async(w.authorization())
    assert http.sent == []


async def test_a_credential_service_outside_allowed_hosts_is_refused_unsent() -> None:
    w, http = guarded_world(["holder.example", "authority.example"])
    publish(w.http, w.holder, "https://10.0.0.7/cs")  # a LAN address: allowed_hosts decides
    with pytest.raises(AuthError, match=r"host 10\.0\.0\.7:443 is not in"):
        await w.verifier.verify_async(w.authorization())
    assert not any(s.startswith("POST") for s in http.sent)


async def test_a_status_list_outside_allowed_hosts_is_refused_unsent() -> None:
    w, http = guarded_world(["holder.example", "authority.example"])
    elsewhere = "https://lists.elsewhere.example/revocation"
    token = vc.issue_status_list_credential(w.authority.key, kid=w.authority.kid,
                                            issuer=ISSUER, url=elsewhere,
                                            bits=vc.new_status_list(), now=NOW - 10,
                                            valid_s=86_400)
    w.http.pages[elsewhere] = (token.encode(), {})
    w.credential = vc.issue_credential(
        w.authority.key, kid=w.authority.kid, issuer=ISSUER, subject=w.holder.did,
        credential_id="urn:uuid:9", now=NOW - 100, valid_s=86_400,
        status=vc.StatusEntry(elsewhere, 7))
    with pytest.raises(AuthError, match=r"host lists\.elsewhere\.example:443 is not in "
                                        r"\[identity\] allowed_hosts"):
        await w.verifier.verify_async(w.authorization())
    assert "POST https://holder.example/cs/presentations/query" in http.sent
    assert f"GET {elsewhere}" not in http.sent and elsewhere not in w.http.gets


async def test_only_https_urls_are_fetched() -> None:
    http = Routed(FakeHttp())
    for url in ("http://authority.example/x", "file:///etc/passwd", "https:///nohost"):
        with pytest.raises(AuthError, match="only https"):
            await http.get(url, max_bytes=10)
    assert http.sent == []


async def test_userinfo_does_not_fool_the_host_check() -> None:
    http = Routed(FakeHttp(), ["authority.example"])
    with pytest.raises(AuthError, match=r"host evil\.example:443 is not in"):
        await http.get("https://authority.example@evil.example/x", max_bytes=10)
    assert http.sent == []


# -- GuardedResolver: names that resolve to refused addresses ------------------------------------


class FakeResolver(AbstractResolver):
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for a in self.answers[host]]

    async def close(self) -> None:
        return None


async def test_the_resolver_refuses_a_name_if_any_address_is_refused() -> None:
    inner = FakeResolver({"ok.example": ["10.0.0.7", "127.0.0.1"],
                          "rebound.example": ["10.0.0.7", "169.254.169.254"]})
    guard = GuardedResolver(inner)
    assert [r["host"] for r in await guard.resolve("ok.example", 443)] == ["10.0.0.7",
                                                                          "127.0.0.1"]
    with pytest.raises(RefusedAddress, match=r"rebound\.example resolves to 169\.254\.169\.254"):
        await guard.resolve("rebound.example", 443)


async def test_a_name_resolving_to_metadata_is_refused_without_a_connection() -> None:
    fake = FakeResolver({"metadata.attacker.example": ["169.254.169.254"],
                         "v6.attacker.example": ["fe80::a9fe:a9fe"]})
    http = GuardedHttp(ssl.create_default_context(), resolver=lambda: fake)
    try:
        with pytest.raises(AuthError, match=r"metadata\.attacker\.example resolves to "
                                            r"169\.254\.169\.254, a link-local address"):
            await http.get("https://metadata.attacker.example/latest/meta-data", max_bytes=10)
        with pytest.raises(AuthError, match="resolves to fe80::a9fe:a9fe, a link-local"):
            await http.post_json("https://v6.attacker.example/cs/presentations/query", b"{}",
                                 authorization="Bearer x", max_bytes=10)
    finally:
        await http.close()
    assert fake.calls == ["metadata.attacker.example", "v6.attacker.example"]


# -- [identity] allowed_hosts in connector.toml ---------------------------------------------------


def _config(tmp_path: Path, identity: str) -> Path:
    from connector.participant.init import init_folder

    init_folder(tmp_path / "p", name="p", url="https://127.0.0.1:8443")
    config = tmp_path / "p" / "connector.toml"
    config.write_text(config.read_text() + '\n[identity]\nmode = "dcp"\n' + identity)
    return tmp_path / "p"


def test_allowed_hosts_default_is_empty(tmp_path: Path) -> None:
    assert load_settings(_config(tmp_path, "")).allowed_hosts == ()


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    folder = _config(tmp_path, 'allowed_hosts = ["authority.example", "*.members.example", '
                               '"127.0.0.1:8443", "[::1]:9443"]\n')
    assert load_settings(folder).allowed_hosts == (
        "authority.example", "*.members.example", "127.0.0.1:8443", "[::1]:9443")


@pytest.mark.parametrize(("value", "why"), [
    ('"authority.example"', "must be a list of strings"),
    ('["authority.example", 443]', "must be a list of strings"),
    ('["https://authority.example/"]', "bad entry 'https://authority.example/': give a host"),
    ('["*"]', r"bad entry '\*'"),
    ('["authority.example:99999"]', "port '99999'"),
])
def test_bad_allowed_hosts_are_config_errors(tmp_path: Path, value: str, why: str) -> None:
    folder = _config(tmp_path, f"allowed_hosts = {value}\n")
    with pytest.raises(ConfigError, match=f"\\[identity\\]: key 'allowed_hosts'.*{why}"):
        load_settings(folder)


def test_the_daemon_guards_with_the_configured_hosts(tmp_path: Path) -> None:
    from connector.daemon import Daemon

    folder = _config(tmp_path, 'allowed_hosts = ["authority.example"]\n')
    daemon = Daemon(load_settings(folder))
    assert daemon.dcp_http._allowed.entries == ("authority.example",)
    assert isinstance(daemon.verifier, DcpVerifier)
