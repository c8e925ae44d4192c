"""``[log] format = "json"`` on two real daemons through a whole negotiation and transfer:
every line is one JSON object with time, level and event; none holds a key, a token or the
management secret, even at level DEBUG."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from connector.client import Management
from connector.config import load_settings
from connector.core.errors import PeerError
from connector.core.identity import did_web_from_url, issue_token
from connector.keys import load_signing_key
from tests.harness import Participant, create_space, start, stop

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Participant, Participant]]:
    provider, consumer = create_space(tmp_path_factory.mktemp("jsonlogs"))
    for p in (provider, consumer):
        toml = p.dir / "connector.toml"
        toml.write_text(toml.read_text() + '\n[log]\nformat = "json"\nlevel = "DEBUG"\n')
    start(provider)
    start(consumer)
    try:
        yield provider, consumer
    finally:
        stop(consumer)
        stop(provider)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def done(pair: tuple[Participant, Participant]) -> dict[str, Any]:
    """A negotiation, a pull verified against the summary, a completion; then both stop."""
    provider, consumer = pair
    api = Management(load_settings(consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=20",
                                {"provider": provider.url, "datasetId": "example-weather"})
        assert record["state"] == "FINALIZED", record
        transfer = await api.call("POST", "/api/transfers?wait=20",
                                  {"agreementId": record["agreementId"]})
        assert transfer["state"] == "STARTED", transfer
        pulled = await api.call("POST", f"/api/transfers/{transfer['id']}/pull",
                                {"sink": str(consumer.dir / "state" / "copy.jsonl")})
        assert pulled["records"] == 10
        started = transfer
        with pytest.raises(PeerError):  # a refusal on the consumer: a line with its reason
            await api.call("POST", "/api/transfers/nope/pull", {"sink": "relative.jsonl"})
        url = f"{provider.url}/dsp/2025-1/negotiations/x"  # a DSP refusal, with its reason
        async with aiohttp.ClientSession() as http, http.get(url, ssl=False) as r:
            assert r.status == 404
        # The consumer, authenticated, asks for a process it does not have: the provider's
        # line names the consumer's DID as the peer.
        me = load_settings(consumer.dir)
        token = issue_token(load_signing_key(me.signing_key), kid=me.signing_kid,
                            issuer=me.did, audience=did_web_from_url(provider.url),
                            now=int(time.time()), jti=str(uuid.uuid4()), ttl_s=60)
        async with aiohttp.ClientSession() as http, http.get(
                url + "-unknown", ssl=False, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 404
    finally:
        await api.close()
    stop(consumer)  # flushed and closed: the logs are complete
    stop(provider)
    return started


def _secrets(folder: Path, transfer: dict[str, Any]) -> dict[str, str]:
    settings = load_settings(folder)
    found = {"management token": settings.management_token()}
    key = load_signing_key(settings.signing_key)
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    found["signing key (JWK d)"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    found["signing key (hex)"] = raw.hex()
    for pem in (settings.signing_key, settings.tls_key):
        body = "".join(line for line in pem.read_text().splitlines() if "-----" not in line)
        found[f"{pem.name} (PEM)"] = body[:40]
    secret = folder / "keys" / "data-token.secret"
    if secret.exists():
        found["data-token secret (hex)"] = secret.read_bytes().hex()
        found["data-token secret (b64)"] = base64.b64encode(secret.read_bytes()).decode()[:30]
    for name, value in _strings(transfer):
        if "auth" in name.lower() or "token" in name.lower():
            found[f"data-plane token ({name})"] = value.removeprefix("Bearer ")
    return found


def _strings(doc: Any, name: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(doc, dict) and isinstance(doc.get("name"), str) and "value" in doc:
        yield from _strings(doc["value"], doc["name"])  # a DSP endpoint property
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from _strings(value, key)
    elif isinstance(doc, list):
        for value in doc:
            yield from _strings(value, name)
    elif isinstance(doc, str) and len(doc) >= 16:
        yield name, doc


def test_every_line_is_one_json_object_with_the_fields(
        pair: tuple[Participant, Participant], done: dict[str, Any]) -> None:
    for p in pair:
        lines = (p.dir / "state" / "daemon.log").read_text().splitlines()
        assert lines, p.name
        for line in lines:
            doc = json.loads(line)
            assert {"time", "level", "logger", "event"} <= set(doc), line
    provider_lines = [json.loads(x) for x in
                      (pair[0].dir / "state" / "daemon.log").read_text().splitlines()]
    refused = [d for d in provider_lines if d.get("status") == 401]
    assert refused and refused[-1]["reason"] and refused[-1]["process_id"] == "x"
    unknown = [d for d in provider_lines if d.get("process_id") == "x-unknown"]
    consumer_did = load_settings(pair[1].dir).did
    assert unknown and unknown[-1]["peer"] == consumer_did and unknown[-1]["status"] == 404


def test_no_key_token_or_secret_in_the_logs_of_a_negotiation_and_transfer(
        pair: tuple[Participant, Participant], done: dict[str, Any]) -> None:
    secrets: dict[str, str] = {}
    for p in pair:
        secrets.update({f"{p.name} {k}": v for k, v in _secrets(p.dir, done).items()})
    assert any(k.startswith("consumer data-plane token") for k in secrets), done
    for p in pair:
        text = (p.dir / "state" / "daemon.log").read_text()
        leaked = [name for name, value in secrets.items() if value in text]
        assert leaked == [], f"{p.name}'s log holds {leaked}"
        assert not JWT.search(text), JWT.search(text)
