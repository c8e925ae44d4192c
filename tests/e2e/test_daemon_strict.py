"""The daemon is as strict as ``connector policy check``: an edit that fails the check keeps
the previous version in force with one WARNING per change naming file and line; a dataset
whose source file is missing is not offered; a pull refused for good ends the transfer
TERMINATED with the reason instead of advising to run again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector.client import Management
from connector.config import load_settings
from connector.core.errors import PeerError
from connector.participant.lint import check_folder
from tests.console.browser_session import console_base, logged_in
from tests.harness import Participant, create_space, running

DATASET = "example-weather"
# The daemon looks at its folder every second; under load, give it far longer.
DEADLINE_S = 60.0
# Reload rounds let pass before counting warnings (the loop runs once a second).
SETTLE_S = 3.0


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {DEADLINE_S} s: {what}")
        time.sleep(0.2)


def _log(p: Participant) -> str:
    return (p.dir / "state" / "daemon.log").read_text()


def _offered(consumer: Participant, provider: Participant) -> set[str]:
    done = consumer.cli("catalog", provider.url, "--json")
    assert done.returncode == 0, done.stderr
    datasets = json.loads(done.stdout).get("dataset", [])
    return {d["@id"] for d in (datasets if isinstance(datasets, list) else [datasets])}


ONCE = {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "@type": "Offer",
        "description": "one access", "permission": [{"action": "use", "constraint": [
            {"leftOperand": "count", "operator": "lteq", "rightOperand": "1"}]}]}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Participant, Participant]]:
    provider, consumer = create_space(tmp_path)
    (provider.dir / "policies" / "once.json").write_text(json.dumps(ONCE, indent=2))
    (provider.dir / "datasets" / "once.toml").write_text(
        'id = "once"\ntitle = "Once"\npolicies = ["once"]\n'
        '[source]\ntype = "jsonl"\npath = "data/example.jsonl"\n')
    with running([provider, consumer]):
        yield provider, consumer


def test_a_failing_edit_keeps_the_previous_version_with_one_warning(
        pair: tuple[Participant, Participant]) -> None:
    provider, consumer = pair
    assert DATASET in _offered(consumer, provider)
    policy = provider.dir / "policies" / "members-only.json"
    good = policy.read_text()
    policy.write_text(good.replace('"operator": "eq"', '"operator": "eqq"'))
    _until(lambda: "folder edit not applied" in _log(provider), "the refusal's warning")
    time.sleep(SETTLE_S)  # several reload rounds: still one warning for this one change
    warnings = [line for line in _log(provider).splitlines()
                if "folder edit not applied" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0] and f"{policy}:" in warnings[0]
    line = good.splitlines().index(
        next(x for x in good.splitlines() if '"operator": "eq"' in x)) + 1
    assert f"members-only.json:{line}:" in warnings[0]
    assert DATASET in _offered(consumer, provider)  # the previous policy is in force
    done = consumer.cli("negotiate", provider.url, DATASET)
    assert done.returncode == 0, done.stderr
    # Broken JSON: the same, once, with the line of the syntax error.
    policy.write_text(good.replace('"use",', '"use"'))
    _until(lambda: _log(provider).count("folder edit not applied") == 2, "a second warning")
    time.sleep(SETTLE_S)
    assert _log(provider).count("folder edit not applied") == 2
    # Fixed: taken.
    policy.write_text(good)
    _until(lambda: "reloaded trust/, datasets/ and policies/" in _log(provider), "the reload")


async def test_a_missing_source_is_not_offered_and_ends_its_transfer(
        pair: tuple[Participant, Participant], tmp_path: Path) -> None:
    provider, consumer = pair
    done = consumer.cli("negotiate", provider.url, DATASET)
    assert done.returncode == 0, done.stderr
    agreement = done.stdout.strip()
    api = Management(load_settings(consumer.dir))
    try:
        started = await api.call("POST", "/api/transfers?wait=30", {"agreementId": agreement})
        assert started["state"] == "STARTED"
        source = provider.dir / "data" / "example.jsonl"
        kept = source.read_bytes()
        source.unlink()
        # A pull under the started transfer is refused for good, with the reason.
        with pytest.raises(PeerError) as refused:
            await api.call("GET", f"/api/transfers/{started['id']}/summary")
        assert refused.value.peer_status == 403
        assert "its source file example.jsonl is missing" in refused.value.message
    finally:
        await api.close()
    await asyncio.to_thread(_until, lambda: DATASET not in _offered(consumer, provider),
                            "the dataset withdrawn")
    assert f"dataset {DATASET} is not offered: its source file example.jsonl is missing" \
        in _log(provider)
    # A new transfer is refused by the provider and ends TERMINATED, with no advice to retry.
    pulled = consumer.cli("transfer", agreement, "--out", str(tmp_path / "w.jsonl"))
    assert pulled.returncode == 1
    assert "TERMINATED" in pulled.stderr and "no longer offered" in pulled.stderr
    assert "run the same command again" not in pulled.stderr
    source.write_bytes(kept)
    await asyncio.to_thread(_until, lambda: DATASET in _offered(consumer, provider),
                            "the dataset offered again")


def test_an_exhausted_use_count_ends_the_transfer(pair: tuple[Participant, Participant],
                                                  tmp_path: Path) -> None:
    provider, consumer = pair
    done = consumer.cli("negotiate", provider.url, "once")
    assert done.returncode == 0, done.stderr
    agreement = done.stdout.strip()
    first = consumer.cli("transfer", agreement, "--out", str(tmp_path / "1.jsonl"))
    assert first.returncode == 0, first.stderr
    second: subprocess.CompletedProcess[str] = consumer.cli(
        "transfer", agreement, "--out", str(tmp_path / "2.jsonl"))
    assert second.returncode == 1
    assert "TERMINATED" in second.stderr and "count lteq 1" in second.stderr, second.stderr
    assert "run the same command again" not in second.stderr
    again = consumer.cli("transfer", agreement, "--out", str(tmp_path / "2.jsonl"))
    assert again.returncode == 1 and "run the same command again" not in again.stderr


def test_a_setting_needing_a_restart_says_so(pair: tuple[Participant, Participant]) -> None:
    provider, _ = pair
    toml = provider.dir / "connector.toml"
    before = toml.read_text()
    toml.write_text(before + '\n[registry]\nurls = ["https://127.0.0.1:9"]\n')
    _until(lambda: "restart the daemon" in _log(provider), "the restart notice")
    [notice] = [line for line in _log(provider).splitlines() if "restart the daemon" in line]
    assert "WARNING" in notice and "[registry] urls changed" in notice
    shown = provider.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "restart needed to apply: [registry] urls" in shown.stdout
    assert "management API http://127.0.0.1:" in shown.stdout
    status = json.loads(provider.cli("status", "--json").stdout)
    assert status["daemon"]["restartNeeded"] == ["[registry] urls"]
    toml.write_text(before)  # undone: nothing waits any more
    _until(lambda: json.loads(provider.cli("status", "--json").stdout)["daemon"][
        "restartNeeded"] == [], "the notice withdrawn")
    # A new [identity] section turning DCP on: the mode waits for a restart, and nothing
    # says the rest of the section was applied (a pinned daemon verifies no credential).
    toml.write_text(before + '\n[identity]\nmode = "dcp"\nrequired_credentials = '
                    '["MembershipCredential"]\n[identity.trusted_issuers]\n'
                    '"did:web:authority.example" = ["MembershipCredential"]\n')
    _until(lambda: "[identity] mode changed" in _log(provider), "the mode's restart notice")
    [mode] = [line for line in _log(provider).splitlines() if "[identity] mode changed" in line]
    assert "WARNING" in mode and "restart the daemon" in mode
    assert "reloaded [identity]" not in _log(provider)
    status = json.loads(provider.cli("status", "--json").stdout)["daemon"]
    assert "[identity] mode" in status["restartNeeded"] and status["identityMode"] == "pinned"


async def _console_pull(consumer: Participant, transfer: str) -> None:
    """Press the console's "Pull the records" on ``transfer``."""
    async with logged_in(consumer) as (http, csrf), http.post(
            f"{console_base(consumer)}/transfers/{transfer}/pull", data={"csrf": csrf},
            allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()


async def test_a_withdrawn_dataset_ends_each_transfer_in_words(
        pair: tuple[Participant, Participant], tmp_path: Path) -> None:
    """The provider removes a dataset after agreeing to it: a transfer already started, pulled
    by the command (resumed) or from the console, and a new one, each end TERMINATED saying
    that the dataset is no longer offered by the provider, with no advice to run again."""
    provider, consumer = pair
    words = f"dataset {DATASET} is no longer offered by the provider"
    done = consumer.cli("negotiate", provider.url, DATASET)
    assert done.returncode == 0, done.stderr
    agreement = done.stdout.strip()
    api = Management(load_settings(consumer.dir))
    try:
        started = [await api.call("POST", "/api/transfers?wait=30", {"agreementId": agreement})
                   for _ in range(2)]
        assert [t["state"] for t in started] == ["STARTED", "STARTED"]
        (provider.dir / "datasets" / "example.toml").unlink()
        await asyncio.to_thread(_until, lambda: DATASET not in _offered(consumer, provider),
                                "the dataset withdrawn")
        # The command resuming an interrupted pull of the first one.
        out = tmp_path / "w.jsonl"
        (tmp_path / "w.jsonl.part").write_bytes(b"")
        (tmp_path / "w.jsonl.part.json").write_text(json.dumps(
            {"agreement": agreement, "transfer": started[0]["id"]}))
        resumed = await asyncio.to_thread(consumer.cli, "transfer", agreement, "--out", str(out))
        assert resumed.returncode == 1
        assert f"TERMINATED: the provider refuses: {words}" in resumed.stderr, resumed.stderr
        assert "run the same command again" not in resumed.stderr
        assert "unverified" not in resumed.stderr  # it says why, not that it goes on blind
        # The console's pull of the second one.
        await _console_pull(consumer, started[1]["id"])
        for transfer in started:
            record = await api.call("GET", f"/api/transfers/{transfer['id']}")
            deadline = time.monotonic() + DEADLINE_S
            while record["state"] != "TERMINATED" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                record = await api.call("GET", f"/api/transfers/{transfer['id']}")
            assert record["state"] == "TERMINATED"
            assert record["reason"].endswith(f": the provider refuses: {words}"), record
    finally:
        await api.close()
    # A new transfer: the provider refuses the request; the consumer's process ends with
    # the provider's words, not "peer unreachable or refused: POST …".
    fresh = await asyncio.to_thread(consumer.cli, "transfer", agreement, "--out", str(out))
    assert fresh.returncode == 1
    assert f"TERMINATED: the provider refused: {words}" in fresh.stderr, fresh.stderr
    assert "run the same command again" not in fresh.stderr
    assert "unreachable" not in fresh.stderr


def test_at_start_each_problem_is_one_warning_and_the_rest_is_served(tmp_path: Path) -> None:
    """A folder that fails `connector policy check` when the daemon starts: one WARNING per
    problem naming file and line, `connector status` lists them, the files with a problem
    stay out and everything else is served."""
    provider, consumer = create_space(tmp_path)
    typo = json.loads((provider.dir / "policies" / "members-only.json").read_text())
    typo["permission"][0]["constraint"][0]["operator"] = "eqq"
    (provider.dir / "policies" / "typo.json").write_text(json.dumps(typo, indent=2))
    (provider.dir / "datasets" / "typo.toml").write_text(
        'id = "typo"\ntitle = "Typo"\npolicies = ["typo"]\n'
        '[source]\ntype = "jsonl"\npath = "data/example.jsonl"\n')
    (provider.dir / "datasets" / "half.toml").write_text('id = "half"\ntitle = "Half"\n')
    (provider.dir / "trust" / "broken.json").write_text('{"did": "did:web:x",\n')
    problems = [str(p) for p in check_folder(provider.dir)]
    assert len(problems) >= 3, problems  # the policy, the dataset without a source, the pin
    with running([provider, consumer]):
        warned = [line for line in _log(provider).splitlines()
                  if "connector policy check:" in line]
        assert len(warned) == len(problems) and all("WARNING" in w for w in warned), warned
        for problem in problems:
            assert sum(problem in w for w in warned) == 1, (problem, warned)
        for name in ("policies/typo.json:", "datasets/half.toml:", "trust/broken.json:"):
            assert any(name in w for w in warned), (name, warned)
        # The rest is in force: the consumer still gets its dataset; the typo's is not offered.
        assert _offered(consumer, provider) == {DATASET}
        done = consumer.cli("negotiate", provider.url, DATASET)
        assert done.returncode == 0, done.stderr
        status = json.loads(provider.cli("status", "--json").stdout)["daemon"]
        assert status["folderProblems"] == problems
        assert "typo" in status["unavailableDatasets"]
        shown = provider.cli("status")
        assert f"connector policy check finds {len(problems)} problem(s)" in shown.stdout
        assert all(problem in shown.stdout for problem in problems), shown.stdout
