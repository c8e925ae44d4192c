"""What the daemon's garbage-collection threshold buys: negotiations per second and CPU per
negotiation with ``connector run``'s threshold (``daemon.GC_YOUNG``) and with Python's default
(700), in the same run.

Two pairs of connector daemons are created and started as ``make demo`` does; the daemons of
the ``default`` pair start with a ``sitecustomize`` (on their PYTHONPATH alone) that makes
``gc.set_threshold`` do nothing, so they keep the interpreter's default. The driver alternates
5 s phases at c=64 between the pairs (``bench/ab.py``, ABBA); the ``young`` lines carry the
``default`` figure as ``limit`` (in the CPU lines of ``emit_cpu``, ``_gc_on`` is the daemon's
threshold and ``_gc_off`` Python's default).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench import emit
from bench.ab import Variant, compare, emit_cpu, make_pair, round_ratio, running

ROUNDS = 6
_KEEP_DEFAULT = "import gc\n\ngc.set_threshold = lambda *_args: None  # bench/gc_young.py\n"


@contextmanager
def _python_path(folder: Path) -> Iterator[None]:
    """Processes started meanwhile import ``folder``'s modules first."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), before) if p)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def run(*, quick: bool) -> None:
    duration_s = 1.0 if quick else 5.0
    root = Path(tempfile.mkdtemp(prefix="bench-gc-"))
    try:
        young = Variant(*make_pair(root / "young", ""))
        default = Variant(*make_pair(root / "default", ""))
        site = root / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_KEEP_DEFAULT)
        with ExitStack() as stack:
            stack.enter_context(running(young))
            with _python_path(site):
                stack.enter_context(running(default))
            asyncio.run(compare({"young": young, "default": default}, rounds=ROUNDS,
                                duration_s=duration_s, warmup_s=1.0, label="gc"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit("negotiations_per_s_gc_default_c64", default.rate(), "negotiations/s")
    emit("negotiations_per_s_gc_young_c64", young.rate(), "negotiations/s",
         limit=default.rate())
    emit("negotiations_per_s_gc_ratio_median_c64", round_ratio(young, default), "ratio")
    emit_cpu("gc", young, default)
    emit("negotiation_errors_gc", young.errors + default.errors, "count")
