"""Every refusal says why, on the side that can act: a consumer learns which terms a hidden
offer needs (unless the provider marks the dataset confidential), and an identity refusal
names its cause (not pinned, pinned with an older key, identity modes that differ)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.participant.keys import rotate_signing_key
from connector.participant.trust import add_trusted_peer, remove_trusted_peer
from tests.e2e.test_identity_edge import _identity_toml
from tests.harness import Participant, create_space, running, start, stop

DATASET = "example-weather"
# The daemon re-reads its folder within about a second; under load, give it far longer.
RELOAD_DEADLINE_S = 60.0


def _until(run: Callable[[], subprocess.CompletedProcess[str]],
           done: Callable[[subprocess.CompletedProcess[str]], bool]
           ) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + RELOAD_DEADLINE_S
    while True:
        result = run()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


@pytest.fixture
def lapsed(tmp_path: Path) -> Iterator[tuple[Participant, Participant]]:
    """A provider pinning its consumer with ``membership = lapsed``: members-only hides."""
    provider, consumer = create_space(tmp_path, consumer_attrs={"membership": "lapsed"})
    with running([provider, consumer]):
        yield provider, consumer


def test_a_hidden_offer_names_its_unmet_terms_unless_confidential(
        lapsed: tuple[Participant, Participant]) -> None:
    provider, consumer = lapsed
    shown = consumer.cli("catalog", provider.url)
    assert shown.returncode == 0, shown.stderr
    assert "no offers for us" in shown.stdout and "connector negotiate" in shown.stdout
    refused = consumer.cli("negotiate", provider.url, DATASET)
    assert refused.returncode == 2
    assert f"the provider shows us no dataset {DATASET!r}" in refused.stderr
    assert "offer 'members-only': membership eq active failed" in refused.stderr
    assert "{" not in refused.stderr  # a sentence, not a JSON body
    # The provider's log says it too.
    log = (provider.dir / "state" / "daemon.log").read_text()
    assert f"dataset {DATASET} is hidden from did:web:" in log
    assert "membership eq active failed" in log
    # The provider marks the dataset's existence confidential: nothing more is said.
    declaration = provider.dir / "datasets" / "example.toml"
    declaration.write_text("confidential = true\n" + declaration.read_text())
    hidden = _until(lambda: consumer.cli("negotiate", provider.url, DATASET),
                    lambda r: "members-only" not in r.stderr)
    assert hidden.returncode == 2
    assert f"the provider shows us no dataset {DATASET!r}" in hidden.stderr
    assert "members-only" not in hidden.stderr and "membership" not in hidden.stderr


def test_identity_refusals_name_their_cause(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    with running([provider, consumer]):
        assert consumer.cli("catalog", provider.url).returncode == 0
        # The consumer rotates its key and the provider has not re-pinned it.
        stop(consumer)
        rotate_signing_key(consumer.dir)
        start(consumer)
        stale = consumer.cli("catalog", provider.url)
        assert stale.returncode == 2
        assert "pinned with an older key" in stale.stderr and "re-pin" in stale.stderr
        assert "{" not in stale.stderr
        # Re-pinned, it works again; unpinned, it is told so.
        add_trusted_peer(provider.dir, consumer.dir, attributes={}, tls_cert=None)
        assert _until(lambda: consumer.cli("catalog", provider.url),
                      lambda r: r.returncode == 0).returncode == 0
        did = json.loads((consumer.dir / "did.json").read_text())["id"]
        remove_trusted_peer(provider.dir, did)
        unpinned = _until(lambda: consumer.cli("catalog", provider.url),
                          lambda r: r.returncode != 0)
        assert "not pinned by this provider" in unpinned.stderr, unpinned.stderr
        assert "connector trust add" in unpinned.stderr


def test_an_unanswered_negotiation_ends_with_the_reason(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    with running([provider, consumer]):
        assert consumer.cli("catalog", provider.url).returncode == 0  # the offer is known
        stop(provider)  # and then the provider never answers
        done = consumer.cli("negotiate", provider.url, DATASET, "--timeout", "3")
        assert done.returncode == 1
        assert "TERMINATED" in done.stderr and "no answer from the provider" in done.stderr
        assert "[identity] mode" in done.stderr
        status = json.loads(consumer.cli("status", "--json").stdout)
        assert [n["state"] for n in status["negotiations"]] == ["TERMINATED"]


def _dcp_mode(p: Participant, ca: Path) -> None:
    """``[identity] mode = "dcp"`` for ``p`` (trusting an authority no step here reaches)."""
    with (p.dir / "connector.toml").open("a") as f:
        f.write(_identity_toml("did:web:authority.example", [ca]))


def _negotiations(p: Participant) -> list[dict[str, Any]]:
    shown = p.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    negotiations: list[dict[str, Any]] = json.loads(shown.stdout)["negotiations"]
    return negotiations


def test_identity_modes_that_differ_end_the_negotiation_saying_so(tmp_path: Path) -> None:
    """The consumer runs DCP, the provider pinned trust (pinning the consumer, so it takes the
    request): the provider's answer is refused by the consumer, whose negotiation ends
    TERMINATED at once saying that the modes differ and what to do, instead of waiting for
    an answer that cannot pass and then saying it timed out; the provider's ends too."""
    provider, consumer = create_space(tmp_path)
    _dcp_mode(consumer, provider.dir / "tls" / "cert.pem")
    with running([provider, consumer]):
        done = consumer.cli("negotiate", provider.url, DATASET, "--timeout", "120")
        assert done.returncode == 1
        assert "TERMINATED: " in done.stderr and "identity modes differ:" in done.stderr, \
            done.stderr
        assert "signs as a pinned peer" in done.stderr and "restart" in done.stderr
        assert "no answer from the provider" not in done.stderr  # it did not wait it out
        [ours] = _negotiations(consumer)
        assert ours["state"] == "TERMINATED" and "identity modes differ" in ours["reason"]
        theirs: list[dict[str, Any]] = []
        deadline = time.monotonic() + RELOAD_DEADLINE_S
        while time.monotonic() < deadline:
            theirs = _negotiations(provider)
            if theirs and theirs[0]["state"] == "TERMINATED":
                break
            time.sleep(0.3)
        assert [n["state"] for n in theirs] == ["TERMINATED"], theirs
        assert "the consumer refused:" in theirs[0]["reason"]
        assert "identity modes differ" in theirs[0]["reason"]


def test_a_dcp_provider_tells_a_pinned_consumer_the_modes_differ(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    _dcp_mode(provider, consumer.dir / "tls" / "cert.pem")
    with running([provider, consumer]):
        done = consumer.cli("negotiate", provider.url, DATASET, "--timeout", "120")
        assert done.returncode != 0
        assert "identity modes differ" in done.stderr and "[identity] mode" in done.stderr
        assert "no answer from the provider" not in done.stderr
        assert "{" not in done.stderr  # sentences, not a JSON body
