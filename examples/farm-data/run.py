"""The farm-data example (Agdatahub): a farmer shares parcel yields with two cooperatives
under policies the farmer keeps in git. See README.md next to this file.

Run from the repository root: ``make examples``, or ``.venv/bin/python examples/farm-data/run.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from space import Daemon, check, consumer_folder, main, provider_folder, running  # noqa: E402
from space import git as git_as  # noqa: E402

from connector.participant.trust import add_trusted_peer  # noqa: E402

DATASET = "parcel-yields"
POLICY = "advice-only"

AUTHOR = ("Farmer", "farmer@example.org")  # who commits to the folder's git


def git(folder: Path, *args: str) -> str:
    """``git -C folder ARGS`` as AUTHOR."""
    return git_as(folder, *args, author=AUTHOR)


def farmer_folder(root: Path) -> Daemon:
    """The farmer's connector: this example's policies, dataset and records, committed."""
    farmer = provider_folder(root, "farmer", HERE)
    git(farmer.dir, "init", "-q", "-b", "main")
    git(farmer.dir, "add", ".")
    git(farmer.dir, "commit", "-q", "-m", "The farmer's policies: yields for agronomic advice")
    return farmer


def cooperative(root: Path, name: str, farmer: Daemon, purpose: str) -> Daemon:
    """A cooperative's connector, admitted by the farmer for one purpose."""
    coop = consumer_folder(root, name)
    add_trusted_peer(farmer.dir, coop.dir, tls_cert=None,
                     attributes={"membership": "active", "purpose": purpose})
    add_trusted_peer(coop.dir, farmer.dir, attributes={}, tls_cert=None)
    return coop


def sha256_lines(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def story(root: Path) -> None:
    farmer = farmer_folder(root)
    commit = git(farmer.dir, "log", "-1", "--format=%H", "--", f"policies/{POLICY}.yaml")
    print(f"[1] the farmer's policies are committed in {farmer.dir.name}/.git: "
          f"{POLICY} at {commit[:12]}")
    advice = cooperative(root, "coop-advice", farmer, "agronomic-advice")
    purchasing = cooperative(root, "coop-purchasing", farmer, "collective-purchasing")
    print("[2] the farmer admitted coop-advice for agronomic-advice and coop-purchasing "
          "for collective-purchasing")
    with running([farmer, advice, purchasing]):
        agreement = advice.cli("negotiate", farmer.url, DATASET).stdout.strip()
        check(agreement.startswith("urn:"), f"coop-advice got no agreement: {agreement!r}")
        out = root / "coop-advice-yields.jsonl"
        pulled = advice.cli("transfer", agreement, "--out", str(out)).stdout.strip()
        source = farmer.dir / "data" / f"{DATASET}.jsonl"
        check(out.read_bytes() == source.read_bytes(),
              "coop-advice's copy differs from the farmer's records")
        records = len(out.read_text().splitlines())
        print(f"[3] coop-advice (agronomic-advice): agreement {agreement}, {records} records, "
              f"copy verified (sha256 {sha256_lines(out)[:16]}...)")
        print(f"      {pulled}")
        denied = purchasing.cli("negotiate", farmer.url, DATASET, ok=False)
        check(denied.returncode != 0, "coop-purchasing obtained an agreement beyond its grant")
        reason = (denied.stderr + denied.stdout).strip()
        check("purpose" in reason and "agronomic-advice" in reason,
              f"coop-purchasing's denial does not name the purpose constraint: {reason!r}")
        print("[4] coop-purchasing (collective-purchasing) is refused:")
        for line in reason.splitlines():
            print(f"      {line}")
        ledger(farmer, {advice.did(): advice.name, purchasing.did(): purchasing.name},
               agreement, commit)


def ledger(farmer: Daemon, names: dict[str, str], agreement: str, commit: str) -> None:
    """Who obtained which data, when and under which policy commit: the farmer's agreements
    (``connector agreements``) and the audit trail's data entries (``connector audit show``)."""
    listed = json.loads(farmer.cli("agreements", "--json").stdout)
    check([a["id"] for a in listed] == [agreement],
          f"the farmer should hold exactly coop-advice's agreement, not {listed}")
    print("[5] the farmer's side: who obtained which data, when, under which policy commit")
    for a in listed:
        when = datetime.fromtimestamp(a["createdAt"], UTC).isoformat(timespec="seconds")
        who = names.get(a["assignee"], a["assignee"])
        print(f"      {who} obtained {a['datasetId']} on {when} under {POLICY} "
              f"commit {a['policyCommit']}, {a['uses']} use(s)")
        check(a["policyCommit"] == commit, f"agreement made under {a['policyCommit']}, "
              f"not the committed policy {commit}")
    shown = farmer.cli("audit", "show", agreement).stdout.splitlines()
    entries = [line.strip() for line in shown if "data.sent" in line or "FINALIZED;" in line]
    check(any("data.sent" in e and "records 6" in e for e in entries),
          "the audit trail does not record the 6 records sent")
    check(any(f"commit {commit}" in e for e in entries),
          "the audit trail does not record the policy commit")
    print("      audit trail (connector audit show):")
    for entry in entries:
        head, _, policy = entry.partition("; agreement ")
        if policy:  # the negotiation's last step: keep its head and the agreement's terms
            head = head.split(";")[0] + "; agreement " + policy.split(";")[0]
        print(f"        {head}")

if __name__ == "__main__":
    sys.exit(main("farm-data", story))
