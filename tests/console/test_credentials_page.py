"""The policies, trust and identity page checks each of our credentials' revocation now, as a
verifier does: a consumer daemon in DCP mode holds one valid membership credential, one its
authority revoked, and one from an authority whose status list cannot be fetched (it is not
running). The page says valid, revoked, and unknown with the reason; in English and French.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector import authority
from connector.config import load_settings
from connector.console.i18n import catalogue
from connector.participant.credentials import import_credential
from tests.console.browser_session import console_base, logged_in, visible_texts
from tests.e2e.test_identity_edge import _identity_toml, _wait_listening
from tests.harness import Participant, create_space, free_port, start, stop


@dataclass
class Holder:
    consumer: Participant
    unreachable_list: str  # the status list URL nobody serves


def _hold(authority_dir: Path, folder: Path, name: str, *, revoked: bool = False) -> None:
    credential_id, token = authority.issue_credential(authority_dir,
                                                      subject=load_settings(folder).did)
    if revoked:
        authority.revoke_credential(authority_dir, credential_id)
    source = folder / "state" / f"{name}.jwt"
    source.write_text(token)
    import_credential(folder, source)


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    root = tmp_path_factory.mktemp("credential-status")
    served = authority.init_authority(root / "authority",
                                      url=f"https://127.0.0.1:{free_port()}")
    gone = authority.init_authority(root / "gone", url=f"https://127.0.0.1:{free_port()}")
    _, consumer = create_space(root)
    with (consumer.dir / "connector.toml").open("a") as f:
        f.write(_identity_toml(served.did, [root / "authority" / authority.TLS_CERT]))
    _hold(root / "authority", consumer.dir, "valid")
    _hold(root / "authority", consumer.dir, "revoked", revoked=True)
    _hold(root / "gone", consumer.dir, "unreachable")
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "authority", "run", str(root / "authority")],
        stdout=(root / "authority.out").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_listening(served.port)
        start(consumer)
        yield Holder(consumer, gone.status_url)
    finally:
        stop(consumer)
        process.terminate()
        process.wait(10)


def _rows(html: str) -> dict[str, list[str]]:
    """Each credential row's status (data-status) -> the visible texts of its rows."""
    rows: dict[str, list[str]] = {}
    for chunk in html.split('<tr class="credential" data-status="')[1:]:
        status, _, rest = chunk.partition('"')
        row = rest.split(">", 1)[1].split("</tr>")[0]
        rows.setdefault(status, []).append(" ".join(visible_texts(row)))
    return rows


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("language", ["en", "fr"])
async def test_each_credential_shows_its_revocation_status_checked_now(
        holder: Holder, language: str) -> None:
    say = catalogue(language).gettext
    async with (logged_in(holder.consumer, language) as (http, _),
                http.get(f"{console_base(holder.consumer)}/policies") as resp):
        assert resp.status == 200
        html = await resp.text()
    rows = _rows(html)
    assert sorted(rows) == ["revoked", "unknown", "valid"], rows
    assert all(len(texts) == 1 for texts in rows.values()), rows
    assert say("valid: not revoked") in rows["valid"][0]
    assert say("revoked") in rows["revoked"][0]
    assert "MembershipCredential" in rows["revoked"][0]
    unknown = rows["unknown"][0]
    assert say("unknown") in unknown and holder.unreachable_list in unknown, unknown
    assert say("valid: not revoked") not in unknown  # never valid by default
    if language == "fr":
        assert "révoqué" in rows["revoked"][0] and "inconnu" in unknown
