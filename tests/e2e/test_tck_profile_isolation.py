"""The TCK profile cannot be switched on from a normal connector.toml.

The profile lives in ``interop/tck/profile.py``, outside the installed package; nothing in
``connector`` imports it. A daemon whose connector.toml asks for it anyway serves no TCK
webhook and refuses the TCK's static token.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import aiohttp
import pytest

from connector.participant.init import init_folder
from tests.harness import Participant, free_port_pair, start, stop

SRC = Path(__file__).resolve().parents[2] / "src" / "connector"


def test_package_never_imports_the_profile() -> None:
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any("interop" in n or "tck" in n.lower() for n in names), path


@pytest.mark.asyncio
async def test_connector_toml_cannot_enable_the_tck_profile(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port_pair()}"
    folder = tmp_path / "p"
    init_folder(folder, name="p", url=url)
    with (folder / "connector.toml").open("a") as f:
        f.write('\n[tck]\nenabled = true\nprofile = "tck"\nauthorization = "Bearer tck"\n')
    participant = Participant("p", folder, url)
    start(participant)
    try:
        tls = ssl.create_default_context(cafile=str(folder / "tls" / "cert.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
            async with http.post(f"{url}/tck/negotiations/requests",
                                 json={"datasetId": "ACNC0101", "offerId": "offerACNC0101",
                                       "connectorAddress": "http://127.0.0.1:1"}) as resp:
                assert resp.status == 404
            async with http.post(f"{url}/dsp/2025-1/catalog/request",
                                 json={"@context": [], "@type": "CatalogRequestMessage"},
                                 headers={"Authorization": "Bearer tck"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["@type"] == "CatalogError"
    finally:
        stop(participant)
