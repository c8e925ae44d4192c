"""The lab-results data space (SI-DEP), shared by ``run.py`` (3 laboratories) and the
``python -m bench labs`` benchmark (100): the folders, one day of results per laboratory, and
the aggregator's national table, which takes every result once, by its id.

A laboratory offers ``daily-results`` under ``policies/surveillance-only.yaml``, which names
the national aggregator by its DID: the file says ``did:web:aggregator.sante.example``, the DID
the aggregator would have in production; ``build`` writes this run's aggregator DID in its
place (a loopback port differs on each run).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from space import Daemon, admit, dcp_identity, free_port_pair

from connector import authority
from connector.participant.init import init_folder
from connector.participant.trust import add_trusted_peer

HERE = Path(__file__).resolve().parent
DATASET = "daily-results"
POLICY = "surveillance-only"
PRODUCTION_DID = "did:web:aggregator.sante.example"
PURPOSE = "public-health-surveillance"
DAY = "2026-12-05"

# (test, share of positive results) of a winter day's respiratory panel.
TESTS = (("SARS-CoV-2 RT-PCR", 0.07), ("Influenza A/B RT-PCR", 0.14), ("RSV RT-PCR", 0.05),
         ("SARS-CoV-2 antigen", 0.04))
AGE_BANDS = ("0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80+")


def lab_code(index: int) -> str:
    return f"LAB-{index:04d}"


def daily_results(index: int, day: str, count: int) -> bytes:
    """One laboratory's results of ``day`` as JSON lines, the same on every run. No name and
    no patient identifier: what a surveillance table needs, by age band and postcode."""
    rng = random.Random(f"{index}/{day}")
    lines = []
    for n in range(1, count + 1):
        test, positive = rng.choice(TESTS)
        lines.append(json.dumps({
            "result_id": f"{lab_code(index)}-{day}-{n:05d}", "lab": lab_code(index),
            "sampled": day, "test": test,
            "result": "positive" if rng.random() < positive else "negative",
            "age_band": rng.choice(AGE_BANDS), "sex": rng.choice("FM"),
            "postcode": f"{rng.randint(1, 95):02d}{rng.randrange(0, 1000, 10):03d}"}))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Space:
    """The ministry (the authority), the aggregator, the laboratories and the members that
    are not the aggregator (admitted, so they get as far as the policy)."""

    ministry: Daemon
    authority_did: str
    aggregator: Daemon
    labs: list[Daemon]
    others: list[Daemon]

    def daemons(self) -> list[Daemon]:
        return [self.ministry, self.aggregator, *self.others, *self.labs]


def lab_folder(root: Path, index: int, aggregator_did: str, records: int,
               port_pair: Callable[[], int]) -> Daemon:
    """A laboratory: this example's policy (naming the aggregator) and dataset, and its day."""
    name = f"lab-{index}"
    lab = Daemon(name, root / name, f"https://127.0.0.1:{port_pair()}")
    init_folder(lab.dir, name=name, url=lab.url)
    for template in (*(lab.dir / "policies").iterdir(), lab.dir / "datasets" / "example.toml",
                     lab.dir / "data" / "example.jsonl"):
        template.unlink()
    policy = (HERE / "policies" / f"{POLICY}.yaml").read_text()
    (lab.dir / "policies" / f"{POLICY}.yaml").write_text(
        policy.replace(PRODUCTION_DID, aggregator_did))
    (lab.dir / "datasets" / f"{DATASET}.toml").write_bytes(
        (HERE / "datasets" / f"{DATASET}.toml").read_bytes())
    (lab.dir / "data" / f"{DATASET}.jsonl").write_bytes(daily_results(index, DAY, records))
    return lab


def member_folder(root: Path, name: str, port_pair: Callable[[], int]) -> Daemon:
    """A participant that offers nothing (the aggregator, a regional agency)."""
    member = Daemon(name, root / name, f"https://127.0.0.1:{port_pair()}")
    init_folder(member.dir, name=name, url=member.url)
    (member.dir / "datasets" / "example.toml").unlink()
    return member


def build(root: Path, labs: int, records: int, *, others: tuple[str, ...] = (),
          port_pair: Callable[[], int] = free_port_pair) -> Space:
    """Every folder, in DCP mode, each member admitted by the ministry: the aggregator with
    the purpose public-health-surveillance, each name in ``others`` with the same purpose (so
    only the aggregator's DID sets it apart), each laboratory as a plain member. The
    aggregator and the others know each laboratory (``connector trust add``: its URL and
    keys); the laboratories pin nobody."""
    ministry = Daemon("ministry", root / "ministry", f"https://127.0.0.1:{port_pair()}",
                      command=("authority", "run"), ready_word=b"serving")
    settings = authority.init_authority(ministry.dir, url=ministry.url)
    aggregator = member_folder(root, "aggregator", port_pair)
    others_ = [member_folder(root, name, port_pair) for name in others]
    lab_list = [lab_folder(root, i, aggregator.did(), records, port_pair)
                for i in range(1, labs + 1)]
    space = Space(ministry, settings.did, aggregator, lab_list, others_)
    members = [aggregator, *others_, *lab_list]
    bundle = root / "space-ca.pem"  # the self-signed certificates of the whole space
    bundle.write_bytes((ministry.dir / authority.TLS_CERT).read_bytes() + b"".join(
        (m.dir / "tls" / "cert.pem").read_bytes() for m in members))
    for member in members:
        dcp_identity(member, settings.did, [bundle])
        purpose = {"purpose": PURPOSE} if member in (aggregator, *others_) else None
        admit(ministry.dir, member, purpose)
    for lab in lab_list:  # who asks knows the laboratories' addresses; the laboratories pin nobody
        for asker in (aggregator, *others_):
            add_trusted_peer(asker.dir, lab.dir, attributes={}, tls_cert=None)
    return space


@dataclass(frozen=True)
class Ingested:
    """One batch taken into the national table."""

    records: int
    added: int
    duplicates: int


class NationalTable:
    """The aggregator's national table: one row per result id (the primary key), so a batch
    delivered twice, or a result sent by two batches, is counted once and reported."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS results (result_id TEXT PRIMARY KEY, "
                        "lab TEXT NOT NULL, record TEXT NOT NULL)")

    def ingest(self, batch: Path) -> Ingested:
        records = added = 0
        with self.db, batch.open("rb") as lines:
            for line in lines:
                record = json.loads(line)
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO results VALUES (?, ?, ?)",
                    (record["result_id"], record["lab"], line.decode().rstrip("\n")))
                records += 1
                added += cursor.rowcount
        return Ingested(records, added, records - added)

    def count(self, lab: str | None = None) -> int:
        if lab is None:
            row = self.db.execute("SELECT count(*) FROM results").fetchone()
        else:
            row = self.db.execute("SELECT count(*) FROM results WHERE lab = ?", (lab,)).fetchone()
        return int(row[0])

    def ids(self) -> Iterator[str]:
        for (result_id,) in self.db.execute("SELECT result_id FROM results"):
            yield str(result_id)

    def close(self) -> None:
        self.db.close()
