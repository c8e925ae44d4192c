"""What must hold once the work stopped and both outboxes drained."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connector.client import Management
from tests.crash.jobs import NEGOTIATION_TERMINAL, TRANSFER_TRANSIENT, Driver, Job


def _by(rows: Iterable[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row[key])].append(row)
    return grouped


def _brief(row: dict[str, Any]) -> str:
    return (f"{row['id']} {row['state']} cpid={row['consumerPid']} ppid={row['providerPid']}"
            f" reason={row.get('reason')!r}")


@dataclass
class Side:
    """What one daemon holds, read through its management API."""

    negotiations: list[dict[str, Any]]
    agreements: list[dict[str, Any]]
    transfers: list[dict[str, Any]]


def negotiation_mismatches(consumer: Side, provider: Side, jobs: list[Job]) -> list[str]:
    found = []
    theirs = _by((n for n in provider.negotiations if n["role"] == "provider"), "consumerPid")
    for cpid, rows in theirs.items():
        if len(rows) > 1:
            found.append(f"{len(rows)} provider negotiations for consumerPid {cpid}: "
                         + "; ".join(_brief(r) for r in rows))
    mine = {n["id"]: n for n in consumer.negotiations if n["role"] == "consumer"}
    for job in jobs:
        if job.negotiation is not None and job.negotiation not in mine:
            found.append(f"acknowledged negotiation {job.negotiation} is gone from the consumer")
        elif job.negotiation is not None and mine[job.negotiation]["state"] != "FINALIZED":
            found.append(f"acknowledged negotiation not FINALIZED: "
                         f"{_brief(mine[job.negotiation])}")
    for pid, ours in mine.items():
        rows = theirs.get(pid, [])
        if not rows:
            if ours["state"] != "TERMINATED":  # a request that never arrived may be given up
                found.append(f"consumer negotiation unknown to the provider: {_brief(ours)}")
            continue
        other = rows[-1]
        if (ours["state"], ours["providerPid"], ours["agreementId"]) != (
                other["state"], other["id"], other["agreementId"]):
            found.append(f"negotiation differs: consumer {_brief(ours)} "
                         f"agreement={ours['agreementId']} / provider {_brief(other)} "
                         f"agreement={other['agreementId']}")
    found += agreement_mismatches("consumer", consumer)
    found += agreement_mismatches("provider", provider)
    return found


def agreement_mismatches(name: str, side: Side) -> list[str]:
    found = []
    for nid, rows in _by(side.agreements, "negotiationId").items():
        if len(rows) > 1:
            found.append(f"{name}: {len(rows)} agreements for negotiation {nid}: "
                         + ", ".join(r["id"] for r in rows))
    held = {a["id"] for a in side.agreements}
    for n in side.negotiations:
        if n["state"] == "FINALIZED" and n["agreementId"] not in held:
            found.append(f"{name}: FINALIZED negotiation without its agreement: {_brief(n)}")
    return found


def transfer_mismatches(consumer: Side, provider: Side, jobs: list[Job]) -> list[str]:
    found = []
    theirs = _by((t for t in provider.transfers if t["role"] == "provider"), "consumerPid")
    for cpid, rows in theirs.items():
        if len(rows) > 1:
            found.append(f"{len(rows)} provider transfers for consumerPid {cpid}: "
                         + "; ".join(_brief(r) for r in rows))
    mine = {t["id"]: t for t in consumer.transfers if t["role"] == "consumer"}
    for job in jobs:
        if job.transfer is None:
            continue
        ours = mine.get(job.transfer)
        if ours is None:
            found.append(f"acknowledged transfer {job.transfer} is gone from the consumer")
        elif ours["state"] != "COMPLETED" or not job.verified:
            found.append(f"acknowledged transfer not COMPLETED with a verified copy "
                         f"(verified={job.verified}): {_brief(ours)}")
    for pid, ours in mine.items():
        rows = theirs.get(pid, [])
        if not rows:
            if ours["state"] != "TERMINATED":
                found.append(f"consumer transfer unknown to the provider: {_brief(ours)}")
            continue
        other = rows[-1]
        if (ours["state"], ours["providerPid"], ours["agreementId"]) != (
                other["state"], other["id"], other["agreementId"]):
            found.append(f"transfer differs: consumer {_brief(ours)} / provider {_brief(other)}")
    return found


async def read_side(driver: Driver, api: Management) -> Side:
    return Side(negotiations=await driver.call("GET", "/api/negotiations", api=api),
                agreements=await driver.call("GET", "/api/agreements", api=api),
                transfers=await driver.call("GET", "/api/transfers", api=api))


def settled(side: Side) -> bool:
    """No process waits for an answer from the peer."""
    return (all(n["state"] in NEGOTIATION_TERMINAL or n["state"] == "OFFERED"
                for n in side.negotiations)
            and all(t["state"] not in TRANSFER_TRANSIENT for t in side.transfers))
