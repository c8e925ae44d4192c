"""The two daemons of a crash run: their folders, databases, kills and restarts."""

from __future__ import annotations

import json
import random
import re
import signal
import time
from collections import defaultdict
from pathlib import Path

from connector.core.binding import DSP_PATH
from tests.harness import Participant, create_space, start
from tests.stores import StateDb

# What the jobs pull: dataset id -> (file under data/, records written for it, weight of the
# choice). The ten example records come with every participant folder. A kill cuts a pull only
# if the records still to come exceed what the kernel's socket buffers hold (a few MB on
# loopback), hence the long one (~10 MB, pulled in ~2.5 s, see READ_PAUSE_S).
DATASETS = {
    "example-weather": ("example.jsonl", 0, 1),
    "crash-series": ("series.jsonl", 40_000, 2),
    "crash-long": ("long.jsonl", 200_000, 1),
}
# A restart whose port another program took meanwhile is tried this often, a second apart.
RESTART_ATTEMPTS = 10
LOG_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")


def make_space(root: Path) -> tuple[Participant, Participant]:
    """Provider and consumer folders; the provider offers longer series besides the example.

    The records are written first: the ports are picked last, just before the daemons start,
    so that little else on the machine can take them in between."""
    records = root / "records"
    records.mkdir()
    for name, count, _ in DATASETS.values():
        if count:
            with (records / name).open("w") as f:
                for i in range(count):
                    f.write(json.dumps({"seq": i, "station": f"s-{i % 31}",
                                        "reading": round((i * 7919 % 1000) / 10, 1)}) + "\n")
    provider, consumer = create_space(root)
    (consumer.dir / "datasets" / "example.toml").unlink()  # the consumer offers nothing
    for dataset, (name, count, _) in DATASETS.items():
        if count:
            (records / name).rename(provider.dir / "data" / name)
            (provider.dir / "datasets" / f"{dataset}.toml").write_text(
                f'id = "{dataset}"\ntitle = "{dataset}"\ndescription = "{count} readings"\n'
                'keywords = ["series"]\npolicies = ["members-only"]\n'
                f'[source]\ntype = "jsonl"\npath = "data/{name}"\n')
    return provider, consumer


def source_of(provider: Participant, dataset: str) -> Path:
    return provider.dir / "data" / DATASETS[dataset][0]


def integrity(db: StateDb) -> list[str]:
    """What ``PRAGMA integrity_check`` and ``foreign_key_check`` find wrong in an SQLite
    file (empty: sound). A PostgreSQL database is the server's files, which no kill of a
    daemon (a client) can tear: nothing to check there."""
    if db.engine == "postgres":
        return []
    found = [str(r[0]) for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
    return found + [f"foreign key: {r}" for r in db.execute("PRAGMA foreign_key_check")]


def outbox_depth(db: StateDb) -> int:
    return int(db.execute("SELECT count(*) FROM outbox")[0][0])


OutboxRow = tuple[int, str, str, str, bytes]  # seq, process_id, url, audience, body


def outbox_rows(db: StateDb) -> dict[int, OutboxRow]:
    return {r[0]: (r[0], r[1], r[2], r[3], bytes(r[4])) for r in db.execute(
        "SELECT seq, process_id, url, audience, body FROM outbox")}


def message_kind(url: str) -> str:
    """``negotiations/request``, ``negotiations/agreement/verification``, ``transfers/start``..."""
    area, _, rest = url.partition(DSP_PATH + "/")[2].partition("/")
    if rest == "request":  # the initial request names no pid yet
        return f"{area}/request"
    return area + "/" + rest.partition("/")[2]


class OutboxTap:
    """Remembers every outbox row it saw, to tell which ones were delivered since."""

    def __init__(self, participant: Participant, db: StateDb) -> None:
        self.participant = participant
        self.db = db
        self.seen: dict[int, OutboxRow] = {}
        self.written_back: set[tuple[str, str]] = set()  # (process, url): each row once

    def poll(self) -> None:
        if self.participant.process is not None:
            self.seen.update(outbox_rows(self.db))

    def redeliver(self, rng: random.Random) -> list[OutboxRow]:
        """With the daemon dead: write back one delivered row of each kind (the state a
        kill between delivery and deletion leaves); forget the rest (seqs get reused)."""
        present = outbox_rows(self.db)
        by_kind: dict[str, list[OutboxRow]] = defaultdict(list)
        for seq in sorted(self.seen):
            row = self.seen[seq]
            if seq not in present and (row[1], row[2]) not in self.written_back:
                by_kind[message_kind(row[2])].append(row)
        chosen = sorted(rng.choice(rows) for _, rows in sorted(by_kind.items()))
        # On PostgreSQL the row is unclaimed (claim_until NULL): the restarted daemon takes
        # it over as it takes the rows of a replica that died.
        for row in chosen:
            self.db.execute("INSERT INTO outbox (seq, process_id, url, audience, body,"
                            " next_attempt) VALUES (?, ?, ?, ?, ?, 0)", *row)
        self.written_back.update((row[1], row[2]) for row in chosen)
        self.seen.clear()
        return chosen


def sigkill(participant: Participant) -> None:
    proc = participant.process
    assert proc is not None, f"{participant.name} is not running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    participant.process = None


def restart(participant: Participant, generation: int) -> None:
    """Start again in the same folder (same ports), keeping the previous run's log.

    While the daemon was down, another program on the machine may have been given one of its
    ports for an outgoing connection: then wait for the port a few times."""
    for attempt in range(RESTART_ATTEMPTS):
        log = participant.dir / "state" / "daemon.log"
        if log.exists():
            log.rename(log.with_name(f"daemon.{generation}.{attempt}.log"))
        try:
            start(participant)
            return
        except RuntimeError:
            if "address already in use" not in log.read_text(errors="replace"):
                raise
            time.sleep(1.0)
    raise RuntimeError(f"{participant.name}: its ports stayed taken; see {log.parent}")


def daemon_logs(root: Path) -> list[Path]:
    """Every daemon run's log under ``root``, oldest first."""
    return sorted(root.glob("*/state/daemon*.log"), key=lambda p: p.stat().st_mtime)


def log_problems(root: Path) -> list[str]:
    """Lines that must never appear, kills or not: a traceback (an error nobody handled), or
    a 5xx answered on a DSP or data-plane route (a management call may answer 502 while the
    other daemon is down: that is the peer's failure, reported as such)."""
    found = []
    for log in daemon_logs(root):
        for line in log.read_text(errors="replace").splitlines():
            answered_5xx = re.search(r"connector\.http: [A-Z]+ (\S+) -> 5\d\d ", line)
            if "Traceback" in line or "Error handling request" in line or (
                    answered_5xx and not answered_5xx.group(1).startswith("/api/")):
                found.append(f"{log.parent.parent.name}/{log.name}: {line[:300]}")
    return found


def log_excerpt(root: Path, limit: int = 60) -> list[str]:
    """Warnings, errors and tracebacks of every daemon run under ``root``, oldest first."""
    found = []
    for log in daemon_logs(root):
        for line in log.read_text(errors="replace").splitlines():
            if any(marker in line for marker in LOG_MARKERS):
                found.append(f"{log.parent.parent.name}/{log.name}: {line[:300]}")
    return found[:limit]
