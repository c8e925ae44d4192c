"""The health-consent example (Mon espace santé): a hospital shares its patients' documents
with the care team and an app, each record only under its patient's consent, and a patient
withdraws in the middle of a transfer. See README.md next to this file.

Run from the repository root: ``make examples``, or
``.venv/bin/python examples/health-consent/run.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from space import Daemon, check, consumer_folder, main, provider_folder, running  # noqa: E402
from space import git as git_as  # noqa: E402

from connector.participant.trust import add_trusted_peer  # noqa: E402

PATIENTS = ("patient-0001", "patient-0002", "patient-0003")
# The documents pulled while patient-0002 withdraws: enough that the stream is still running
# when the withdrawal is answered, whatever the sockets hold in flight (~45 MB).
DOCUMENTS = 180_000
# Records read before patient-0002 withdraws.
WITHDRAW_AFTER = 3_000

AUTHOR = ("Hospital", "dpo@hospital.example")  # who commits to the folder's git


def git(folder: Path, *args: str) -> str:
    """``git -C folder ARGS`` as AUTHOR."""
    return git_as(folder, *args, author=AUTHOR)


def hospital_folder(root: Path) -> Daemon:
    """The hospital's connector: this example's policy and datasets, the documents."""
    hospital = provider_folder(root, "hospital", HERE)
    with (hospital.dir / "data" / "patient-documents.jsonl").open("w") as f:
        for i in range(DOCUMENTS):
            patient = PATIENTS[i % 3]
            f.write(json.dumps({"patient": patient, "doc": f"{patient}-d{i // 3 + 1}",
                                "kind": ("report", "prescription", "result")[i % 7 % 3],
                                "text": "lorem ipsum " * 16}) + "\n")
    git(hospital.dir, "init", "-q", "-b", "main")
    git(hospital.dir, "add", ".")
    git(hospital.dir, "commit", "-q", "-m", "The hospital's policy: documents for care, "
        "under each patient's consent")
    return hospital


def reader(root: Path, name: str, hospital: Daemon, membership: str) -> Daemon:
    """A consumer the hospital pins with a membership attribute."""
    peer = consumer_folder(root, name)
    add_trusted_peer(hospital.dir, peer.dir, tls_cert=None, attributes={"membership": membership})
    add_trusted_peer(peer.dir, hospital.dir, attributes={}, tls_cert=None)
    return peer


def grant(hospital: Daemon, patient: str, consumer: str, purpose: str) -> None:
    until = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    hospital.cli("consent", "grant", patient, "--consumer", consumer, "--purpose", purpose,
                 "--until", until)


def by_patient(lines: list[str]) -> Counter[str]:
    return Counter(json.loads(line)["patient"] for line in lines if line.strip())


def consent_line(hospital: Daemon, agreement: str) -> str:
    """The hospital's account of its last stream under ``agreement`` (``connector why``)."""
    status = json.loads(hospital.cli("status", "--json").stdout)
    mine = [t for t in status["transfers"] if t["agreementId"] == agreement]
    check(bool(mine), f"the hospital holds no transfer under {agreement}")
    shown = hospital.cli("why", mine[-1]["id"]).stdout
    lines = [line.strip() for line in shown.splitlines() if line.strip().startswith("consent:")]
    check(bool(lines), f"`connector why` shows no consent line:\n{shown}")
    check(not any(p in shown for p in PATIENTS), "`connector why` names a patient")
    return lines[-1]


def pull(reader: Daemon, hospital: Daemon, dataset: str) -> tuple[str, Counter[str], str]:
    agreement = reader.cli("negotiate", hospital.url, dataset).stdout.strip()
    check(agreement.startswith("urn:"), f"{reader.name} got no agreement: {agreement!r}")
    done = reader.cli("transfer", agreement, "--out", "-")
    check("verified" in done.stderr, f"{reader.name}'s copy is not verified: {done.stderr}")
    return agreement, by_patient(done.stdout.splitlines()), done.stderr.strip()


def story(root: Path) -> None:
    hospital = hospital_folder(root)
    care = reader(root, "care-team", hospital, "care-team")
    app = reader(root, "health-app", hospital, "app")
    print("[1] the hospital offers patient-summaries and patient-documents under "
          "care-under-consent (consent eq care), subject field \"patient\"")
    with running([hospital, care, app]):
        grant(hospital, "patient-0001", "membership=care-team", "care")
        grant(hospital, "patient-0001", app.did(), "care")
        grant(hospital, "patient-0002", "membership=care-team", "care")
        grant(hospital, "patient-0003", app.did(), "research")
        git(hospital.dir, "add", "consents")
        git(hospital.dir, "commit", "-q", "-m", "Consents recorded at the front desk")
        print("[2] the patients' consents, committed in hospital/consents/ "
              f"({git(hospital.dir, 'log', '-1', '--format=%h', '--', 'consents')}):")
        for row in json.loads(hospital.cli("consent", "list", "--json").stdout):
            who = "the app" if row["consumer"] == app.did() else row["consumer"]
            print(f"      {row['subject']} allows {who} for {row['purpose']}: {row['state']}")
        summaries(hospital, care, app)
        withdrawal(hospital, care)


def summaries(hospital: Daemon, care: Daemon, app: Daemon) -> None:
    agreement, got, _ = pull(care, hospital, "patient-summaries")
    check(got == {"patient-0001": 4, "patient-0002": 4},
          f"the care team should get patients 1 and 2 only, not {dict(got)}")
    print(f"[3] the care team pulls patient-summaries: {dict(sorted(got.items()))}")
    print(f"      hospital: {consent_line(hospital, agreement)}")
    agreement, got, _ = pull(app, hospital, "patient-summaries")
    check(got == {"patient-0001": 4}, f"the app should get patient 1 only, not {dict(got)}")
    line = consent_line(hospital, agreement)
    check("other consumer 4" in line and "other purpose 4" in line,
          f"the hospital's account does not say why: {line}")
    print(f"    the app pulls patient-summaries: {dict(got)}")
    print(f"      hospital: {line}")


def withdrawal(hospital: Daemon, care: Daemon) -> None:
    agreement = care.cli("negotiate", hospital.url, "patient-documents").stdout.strip()
    command = [sys.executable, "-m", "connector.cli", "transfer", agreement, "--out", "-",
               "--dir", str(care.dir)]
    stream = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert stream.stdout is not None and stream.stderr is not None
    lines = [stream.stdout.readline() for _ in range(WITHDRAW_AFTER)]
    answer = hospital.cli("consent", "withdraw", "patient-0002").stdout.strip()
    answered_at = len(lines)
    lines += stream.stdout.readlines()
    stream.wait(120)
    stderr = stream.stderr.read()
    seen = [json.loads(line)["patient"] for line in lines if line.strip()]
    last = max(i for i, p in enumerate(seen) if p == "patient-0002")
    after = Counter(seen[last + 1:])
    print(f"[4] the care team pulls patient-documents; at record {answered_at} patient-0002 "
          f"withdraws:\n      hospital: {answer}")
    check(set(after) == {"patient-0001"} and after["patient-0001"] > len(seen) // 10,
          f"the stream should go on with patient-0001 alone after {last}, not {dict(after)}")
    check(len(seen) < DOCUMENTS * 2 // 3,
          f"patient-0002's records did not stop: {len(seen)} records received")
    print(f"      received {len(seen)} records; patient-0002's last at record {last + 1} "
          f"(in flight when the withdrawal was answered), then {after['patient-0001']} more "
          "records, all patient-0001's")
    line = consent_line(hospital, agreement)
    check("withdrawn" in line, f"the hospital's account does not count the withdrawal: {line}")
    print(f"      hospital: {line}")
    check(stream.returncode != 0 and "does not match" in stderr,
          "the copy should not match the summary taken before the withdrawal")
    print("      the copy does not match the summary taken before the withdrawal, as "
          "docs/consent.md says")
    _, got, verified = pull(care, hospital, "patient-documents")
    check("patient-0002" not in got and got["patient-0001"] == DOCUMENTS // 3,
          f"a new pull should hold patient-0001's documents only, not {dict(got)}")
    print(f"[5] a new pull: {dict(got)}\n      {verified}")


if __name__ == "__main__":
    sys.exit(main("health-consent", story))
