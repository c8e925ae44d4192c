"""Processes held to a share of the host's CPU, each in a cgroup of its own, as a container's
CPU limit holds a replica (Kubernetes ``resources.limits.cpu``, ``podman run --cpus``).

This is Linux's CPU bandwidth control (the CFS quota): at most QUOTA µs of CPU every
PERIOD_US µs. It is cgroup v2's ``cpu.max`` where the unified hierarchy offers the ``cpu``
controller, and cgroup v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` otherwise (the
kernel's Documentation/admin-guide/cgroup-v2.rst "cpu.max", and scheduler/sched-bwc.rst).
Writing either takes root or a delegated cgroup. Where neither can be written, ``capped``
raises ``CapUnavailable``, which says what it tried.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default period
V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/cpu")


class CapUnavailable(RuntimeError):
    """No cgroup hierarchy with the cpu controller that this process may write."""


def _hierarchy() -> tuple[Path, bool]:
    """The mount to create groups in, and whether it is cgroup v2."""
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        return V2_ROOT, True
    if (V1_ROOT / "cpu.cfs_quota_us").is_file():
        return V1_ROOT, False
    raise CapUnavailable(f"no cpu controller: neither {controllers} lists cpu nor"
                         f" {V1_ROOT / 'cpu.cfs_quota_us'} exists")


def _group_of(pid: int, v2: bool) -> str:
    """The process's cgroup in that hierarchy (from /proc/<pid>/cgroup), to put it back."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controllers == "") if v2 else ("cpu" in controllers.split(",")):
            return path
    return "/"


def _limit(group: Path, cores: float, v2: bool) -> None:
    quota = max(1000, round(cores * PERIOD_US))  # the kernel refuses less than 1 ms
    if v2:
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))


@contextmanager
def capped(pids: Mapping[str, int], cores: float) -> Iterator[None]:
    """Each of ``pids`` (name -> pid) in a cgroup of its own held to ``cores`` of CPU; on
    leaving, each is put back where it was and the groups are removed."""
    root, v2 = _hierarchy()
    made: list[tuple[Path, int, str]] = []
    try:
        try:
            if v2 and "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            for name, pid in pids.items():
                group = root / f"bench-{os.getpid()}-{name}"
                group.mkdir()
                made.append((group, pid, _group_of(pid, v2)))
                _limit(group, cores, v2)
                (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise CapUnavailable(f"cannot cap CPU in {root} (root or a delegated cgroup is"
                                 f" needed): {exc}") from exc
        yield
    finally:
        for group, pid, before in reversed(made):
            with contextlib.suppress(OSError):  # the process may have ended
                (root / before.lstrip("/") / "cgroup.procs").write_text(str(pid))
            with contextlib.suppress(OSError):
                group.rmdir()
