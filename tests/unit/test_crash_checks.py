"""The crash suite's own checks (tests/crash/): each mismatch it must report, it reports."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.crash.checks import Side, negotiation_mismatches, transfer_mismatches
from tests.crash.jobs import Job, whole_records
from tests.crash.space import log_problems, message_kind


def neg(pid: str, role: str, state: str, cpid: str, ppid: str | None,
        agreement: str | None = None) -> dict[str, Any]:
    return {"id": pid, "role": role, "state": state, "consumerPid": cpid, "providerPid": ppid,
            "agreementId": agreement, "reason": None}


def agreement(aid: str, negotiation: str) -> dict[str, Any]:
    return {"id": aid, "negotiationId": negotiation}


def finalized_pair() -> tuple[Side, Side]:
    consumer = Side([neg("c1", "consumer", "FINALIZED", "c1", "p1", "a1")],
                    [agreement("a1", "c1")], [])
    provider = Side([neg("p1", "provider", "FINALIZED", "c1", "p1", "a1")],
                    [agreement("a1", "p1")], [])
    return consumer, provider


def test_a_negotiation_finalized_alike_on_both_sides_is_no_mismatch() -> None:
    consumer, provider = finalized_pair()
    assert negotiation_mismatches(consumer, provider, [Job(0, "d", negotiation="c1")]) == []


def test_a_second_provider_negotiation_for_one_consumer_pid_is_reported() -> None:
    consumer, provider = finalized_pair()
    provider.negotiations.append(neg("p2", "provider", "TERMINATED", "c1", "p2"))
    found = negotiation_mismatches(consumer, provider, [])
    assert any(m.startswith("2 provider negotiations for consumerPid c1") for m in found)


def test_different_agreements_or_states_on_the_two_sides_are_reported() -> None:
    consumer, provider = finalized_pair()
    provider.negotiations[0]["agreementId"] = "a2"
    provider.agreements[0]["id"] = "a2"
    assert any("negotiation differs" in m for m in negotiation_mismatches(consumer, provider, []))
    consumer, provider = finalized_pair()
    consumer.negotiations[0]["state"] = "TERMINATED"
    found = negotiation_mismatches(consumer, provider, [Job(0, "d", negotiation="c1")])
    assert any("acknowledged negotiation not FINALIZED" in m for m in found)
    assert any("negotiation differs" in m for m in found)


def test_lost_acknowledged_work_and_doubled_agreements_are_reported() -> None:
    consumer, provider = finalized_pair()
    found = negotiation_mismatches(consumer, provider, [Job(0, "d", negotiation="gone")])
    assert found == ["acknowledged negotiation gone is gone from the consumer"]
    consumer.agreements.append(agreement("a9", "c1"))
    assert any("2 agreements for negotiation c1" in m
               for m in negotiation_mismatches(consumer, provider, []))
    consumer, provider = finalized_pair()
    provider.agreements.clear()
    assert any("FINALIZED negotiation without its agreement" in m
               for m in negotiation_mismatches(consumer, provider, []))


def transfer(pid: str, role: str, state: str, cpid: str, ppid: str) -> dict[str, Any]:
    return {"id": pid, "role": role, "state": state, "consumerPid": cpid, "providerPid": ppid,
            "agreementId": "a1", "reason": None}


def test_transfers_completed_alike_pass_and_every_divergence_is_reported() -> None:
    consumer = Side([], [], [transfer("c1", "consumer", "COMPLETED", "c1", "p1")])
    provider = Side([], [], [transfer("p1", "provider", "COMPLETED", "c1", "p1")])
    done = Job(0, "d", transfer="c1", verified=True)
    assert transfer_mismatches(consumer, provider, [done]) == []
    unverified = Job(0, "d", transfer="c1", verified=False)
    assert any("verified=False" in m for m in transfer_mismatches(consumer, provider,
                                                                  [unverified]))
    provider.transfers[0]["state"] = "TERMINATED"
    assert any("transfer differs" in m for m in transfer_mismatches(consumer, provider, [done]))
    provider.transfers.append(transfer("p2", "provider", "STARTED", "c1", "p2"))
    assert any(m.startswith("2 provider transfers for consumerPid c1")
               for m in transfer_mismatches(consumer, provider, [done]))


def test_whole_records_drops_a_cut_last_record(tmp_path: Path) -> None:
    part = tmp_path / "copy.jsonl"
    part.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    assert whole_records(part) == (2, hashlib.sha256(b'{"a": 1}\n{"a": 2}\n').hexdigest())
    assert part.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_message_kinds_name_the_dsp_endpoint_without_pids() -> None:
    base = "https://127.0.0.1:1/dsp/2025-1"
    assert message_kind(f"{base}/negotiations/request") == "negotiations/request"
    assert message_kind(f"{base}/negotiations/urn:uuid:x/agreement/verification") == (
        "negotiations/agreement/verification")
    assert message_kind(f"{base}/transfers/urn:uuid:x/completion") == "transfers/completion"


def test_tracebacks_and_5xx_on_dsp_routes_in_a_daemon_log_are_problems(tmp_path: Path) -> None:
    log = tmp_path / "provider" / "state" / "daemon.log"
    log.parent.mkdir(parents=True)
    lines = [
        "INFO connector.http: GET /api/transfers/x/summary -> 502 peer: cannot connect",
        "INFO connector.http: POST /dsp/2025-1/negotiations/x/events -> 400 invalid-transition",
        "INFO connector.http: POST /dsp/2025-1/negotiations/request -> 502 peer: oops",
        "ERROR aiohttp.server: Error handling request",
        "Traceback (most recent call last):",
    ]
    log.write_text("\n".join(lines) + "\n")
    found = log_problems(tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == lines[2:]
