"""One crash run: the plan, the killer, the workload, the settling, the report."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.client import Management
from connector.config import load_settings
from tests.crash.checks import (
    Side,
    negotiation_mismatches,
    read_side,
    settled,
    transfer_mismatches,
)
from tests.crash.jobs import Driver, Job, SlowReader
from tests.crash.space import (
    DATASETS,
    OutboxTap,
    integrity,
    log_excerpt,
    log_problems,
    make_space,
    message_kind,
    outbox_depth,
    restart,
    sigkill,
)
from tests.harness import start, stop
from tests.stores import StateDb

# While jobs are still being started, a call gives up after this long (the work's length plus
# this): far beyond any kill's downtime, so only a process stuck for good stops its job.
JOB_HORIZON_S = 300.0


@dataclass(frozen=True)
class Plan:
    """What one run does. ``kills`` bounds the short form; ``seconds`` the long one."""

    seed: int
    concurrency: int = 5
    min_jobs: int = 20  # jobs started at least (short form)
    kills: int | None = 3  # stop after this many kill cycles (None: until ``seconds``)
    seconds: float | None = None  # start jobs and kill for this long (long form)
    kill_gap_s: tuple[float, float] = (1.0, 3.0)  # between a restart and the next kill
    # This share of kills comes right after a restart, while the daemon re-sends its outbox.
    early_kills: float = 0.2
    early_gap_s: tuple[float, float] = (0.05, 0.4)
    down_s: tuple[float, float] = (0.1, 1.2)  # how long a killed daemon stays down
    drain_s: float = 90.0  # jobs and outboxes must settle within this after the work stops


@dataclass
class Kill:
    at: float  # seconds since the work started
    victims: tuple[str, ...]
    down: float
    redelivered: list[str] = field(default_factory=list)  # "daemon kind process" per row


@dataclass
class Report:
    seed: int
    root: Path
    kills: list[Kill] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 500s from a management API
    work_s: float = 0.0
    settle_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        jobs = self.jobs
        return {
            "seed": self.seed, "kills": len(self.kills),
            "provider_kills": sum("provider" in k.victims for k in self.kills),
            "consumer_kills": sum("consumer" in k.victims for k in self.kills),
            "jobs": len(jobs),
            "negotiations_acknowledged": sum(j.negotiation is not None for j in jobs),
            "transfers_acknowledged": sum(j.transfer is not None for j in jobs),
            "copies_verified": sum(j.verified for j in jobs),
            "calls_unacknowledged": sum(j.failed_calls for j in jobs),
            "pulls_resumed": sum(j.resumes for j in jobs),
            "rows_redelivered": sum(len(k.redelivered) for k in self.kills),
            "work_s": round(self.work_s, 1), "settle_s": round(self.settle_s, 1),
            "mismatches": len(self.mismatches), "server_errors": len(self.server_errors),
        }

    def explain(self) -> str:
        """Everything a failure message needs to be replayed and understood."""
        lines = [f"CRASH_SEED={self.seed} (set it to replay this kill schedule and these jobs)",
                 f"figures: {json.dumps(self.figures())}",
                 "kills: " + ", ".join(f"{k.at:.1f}s {'+'.join(k.victims)} down {k.down:.1f}s"
                                       for k in self.kills)]
        lines += [f"  kill {i + 1} re-delivers {row}" for i, k in enumerate(self.kills)
                  for row in k.redelivered]
        lines.append(f"folders and daemon logs: {self.root}")
        lines += [f"MISMATCH {m}" for m in self.mismatches]
        lines += [f"500 {e}" for e in self.server_errors]
        lines += ["log: " + line for line in log_excerpt(self.root)]
        return "\n".join(lines)


class CrashRun:
    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan = plan
        # Kills and jobs draw from two generators, so that one's timing never shifts the other.
        self.kill_rng = random.Random(f"{plan.seed}/kills")
        self.job_rng = random.Random(f"{plan.seed}/jobs")
        self.report = Report(seed=plan.seed, root=root)
        self.provider, self.consumer = make_space(root)
        self.parts = {"provider": self.provider, "consumer": self.consumer}
        # Open for the whole run: a kill ends the daemon's connections, not these.
        self.dbs = {name: StateDb(part.dir) for name, part in self.parts.items()}
        self.taps = {name: OutboxTap(part, self.dbs[name]) for name, part in self.parts.items()}
        # The first two kills take each daemon once; then any, or both together.
        self.first_victims = self.kill_rng.sample(list(self.parts), 2)
        self.generation = 0
        self.t0 = 0.0
        self.stopping = asyncio.Event()

    def _schedule(self) -> Kill:
        rng = self.kill_rng
        victims = rng.choices([("provider",), ("consumer",), ("provider", "consumer")],
                              weights=[4, 4, 1])[0]
        if self.first_victims:
            victims = (self.first_victims.pop(0),)
        gap = self.plan.early_gap_s if rng.random() < self.plan.early_kills else (
            self.plan.kill_gap_s)
        return Kill(at=rng.uniform(*gap), victims=victims,
                    down=rng.uniform(*self.plan.down_s))

    def _kills_left(self) -> bool:
        plan, done = self.plan, len(self.report.kills)
        if plan.seconds is not None:
            return time.monotonic() - self.t0 < plan.seconds
        return plan.kills is None or done < plan.kills

    async def killer(self) -> None:
        """Kill, damage the outbox as a kill can, wait, restart; until the plan is done (or
        a restart failed: the work stops too, and the run fails with the reason)."""
        try:
            while self._kills_left():
                kill = self._schedule()
                await asyncio.sleep(kill.at)
                kill.at = time.monotonic() - self.t0
                for name in kill.victims:
                    self._kill(name, kill)
                self.report.kills.append(kill)
                await asyncio.sleep(kill.down)
                self.generation += 1
                for name in kill.victims:
                    await asyncio.to_thread(restart, self.parts[name], self.generation)
        finally:
            self.stopping.set()

    def _kill(self, name: str, kill: Kill) -> None:
        sigkill(self.parts[name])
        broken = integrity(self.dbs[name])
        if broken:
            self.report.mismatches.append(f"{name} database after SIGKILL: {broken}")
        for row in self.taps[name].redeliver(self.kill_rng):
            kill.redelivered.append(f"{name} {message_kind(row[2])} {row[1]}")

    async def tap(self) -> None:
        """Watch both outboxes (see OutboxTap) until the work stops."""
        while not self.stopping.is_set():
            for tap in self.taps.values():
                await asyncio.to_thread(tap.poll)
            await asyncio.sleep(0.01)

    def _work_left(self, started: int) -> bool:
        plan = self.plan
        if plan.seconds is not None:
            return time.monotonic() - self.t0 < plan.seconds
        return not self.stopping.is_set() or started < plan.min_jobs

    async def workload(self, driver: Driver, work: Path) -> None:
        running: set[asyncio.Task[None]] = set()
        while self._work_left(len(self.report.jobs)):
            while len(running) >= self.plan.concurrency:
                _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            number = len(self.report.jobs)
            dataset = self.job_rng.choices(list(DATASETS), [w for _, _, w in DATASETS.values()])[0]
            job = Job(number=number, dataset=dataset)
            self.report.jobs.append(job)
            running.add(asyncio.create_task(driver.run(job, work)))
            await asyncio.sleep(self.job_rng.uniform(0.0, 0.2))
        # No more work: what is under way must finish within the drain time.
        driver.deadline[0] = time.monotonic() + self.plan.drain_s
        if running:
            await asyncio.wait(running)

    async def settle(self, driver: Driver, provider_api: Management) -> tuple[Side, Side]:
        """Wait until both outboxes are empty and no process waits for its peer."""
        t0 = time.monotonic()
        while True:
            consumer = await read_side(driver, driver.api)
            provider = await read_side(driver, provider_api)
            depths = [outbox_depth(self.dbs[name]) for name in ("consumer", "provider")]
            quiet = depths == [0, 0] and settled(consumer) and settled(provider)
            if quiet or time.monotonic() > driver.deadline[0]:
                self.report.settle_s = time.monotonic() - t0
                if not quiet:
                    self.report.mismatches.append(
                        f"not settled after {self.report.settle_s:.0f}s: outboxes "
                        f"{depths[0]}/{depths[1]}")
                return consumer, provider
            await asyncio.sleep(0.5)

    async def run(self) -> Report:
        try:
            return await self._run()
        finally:
            for db in self.dbs.values():
                db.close()

    async def _run(self) -> Report:
        report = self.report
        print(f"CRASH_SEED={self.plan.seed} folders in {report.root}", flush=True)
        start(self.provider)
        start(self.consumer)
        consumer_api = Management(load_settings(self.consumer.dir))
        provider_api = Management(load_settings(self.provider.dir))
        reader = SlowReader(load_settings(self.consumer.dir))
        # Calls give up at this deadline, moved to drain_s ahead once no new job starts.
        horizon = (self.plan.seconds or 0.0) + JOB_HORIZON_S
        driver = Driver(consumer_api, reader, self.provider, report.server_errors,
                        [time.monotonic() + horizon])
        work = report.root / "copies"
        work.mkdir()
        try:
            self.t0 = time.monotonic()
            killer = asyncio.create_task(self.killer())
            tap = asyncio.create_task(self.tap())
            await self.workload(driver, work)
            await killer
            await tap
            report.work_s = time.monotonic() - self.t0
            consumer, provider = await self.settle(driver, provider_api)
            report.mismatches += [f"job {j.number}: {j.problem}" for j in report.jobs
                                  if j.problem]
            report.mismatches += negotiation_mismatches(consumer, provider, report.jobs)
            report.mismatches += transfer_mismatches(consumer, provider, report.jobs)
        finally:
            await consumer_api.close()
            await provider_api.close()
            await reader.close()
            stop(self.consumer)
            stop(self.provider)
        for name, db in self.dbs.items():
            broken = integrity(db)
            if broken:
                report.mismatches.append(f"{name} database at the end: {broken}")
        report.mismatches += [f"daemon log: {line}" for line in log_problems(report.root)]
        return report


def seed_from_env() -> int:
    """``CRASH_SEED`` if set (a replay), else a fresh one."""
    given = os.environ.get("CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)
