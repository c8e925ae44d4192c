"""The policies, trust and identity page: the folder's policies at their git commit with
`connector policy check`'s result, which datasets offer each and how many agreements were
made under it; the pinned peers; our keys and whether a rotation is in progress.
(Credentials and their revocation: tests/console/test_credentials_page.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.console.facts import read_folder_view
from connector.participant.datasets import load_datasets
from connector.participant.init import init_folder
from connector.participant.keys import rotate_signing_key
from connector.participant.policies import load_policies, policy_hash
from connector.participant.trust import load_trust
from tests.console.browser_session import console_base, logged_in, visible_texts
from tests.managed_space import ManagedSpace


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), "-c", "user.name=t",
                           "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _view(folder: Path) -> object:
    settings = load_settings(folder)
    return read_folder_view(folder, did=settings.did, signing_kid=settings.signing_kid,
                            peers=load_trust(folder).values(),
                            datasets=load_datasets(folder))


def test_the_facts_follow_git_the_linter_and_a_rotation(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    init_folder(folder, name="acme", url="https://127.0.0.1:18443")
    _git(folder, "init", "-q")
    _git(folder, "add", ".")
    _git(folder, "commit", "-q", "-m", "ours")
    head = _git(folder, "rev-parse", "HEAD")
    view = _view(folder)
    policies = view.policies  # type: ignore[attr-defined]
    assert policies["members-only"]["commit"] == head
    assert policies["members-only"]["hash"] == policy_hash(
        load_policies(folder)["members-only"])
    assert view.offers == {"members-only": ["example-weather"]}  # type: ignore[attr-defined]
    assert view.problems == [] and len(view.keys) == 1  # type: ignore[attr-defined]
    # An edit not committed yet, a problem, and a rotation in progress.
    policy = folder / "policies" / "members-only.json"
    policy.write_text(policy.read_text().replace('"operator": "eq"', '"operator": "eqq"'))
    rotate_signing_key(folder, publish_only=True)
    view = _view(folder)
    assert view.policies["members-only"]["commit"] == head + "+modified"  # type: ignore
    assert any("members-only.json:" in p for p in view.problems)  # type: ignore
    assert len(view.keys) == 2  # type: ignore[attr-defined]


@pytest.mark.asyncio(loop_scope="session")
async def test_the_provider_sees_its_policies_offers_agreements_and_peers(
        managed_space: ManagedSpace) -> None:
    provider = managed_space.provider
    async with logged_in(provider) as (http, _), http.get(
            f"{console_base(provider)}/policies") as resp:
        assert resp.status == 200
        html = await resp.text()
    row = html.split('<table id="policies">')[1].split("</table>")[0]
    members = next(r for r in row.split("<tr>") if r.startswith("<td>members-only"))
    texts = visible_texts(members)
    digest = policy_hash(load_policies(provider.dir)["members-only"])
    assert digest[:16] in texts and "membership is active" in " ".join(texts)
    assert "example-weather, big" in texts or "big, example-weather" in texts, texts
    assert int(texts[-1]) >= 1  # the agreement the managed space made under it
    peers = html.split('<table id="peers">')[1].split("</table>")[0]
    assert load_settings(managed_space.consumer.dir).did in peers
    assert "membership=active" in peers
    assert load_settings(provider.dir).signing_kid in html
    assert "policy check: no problem found." in visible_texts(html)
