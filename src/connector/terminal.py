"""What the ``connector`` commands print: tables that fit the terminal, short ids, JSON.

Tables are drawn with ``rich``: columns shrink and wrap to the terminal's width, so
``connector status`` stays readable in a narrow window; in a pipe, rows are not folded.
Process ids are ``urn:uuid:`` URNs; a table shows their last eight hex digits (core/ids.py),
and every command taking an id accepts such an end, or a beginning (``match_id``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from connector.core.errors import InvalidParameter, NotFound
from connector.core.ids import names

# Wide enough that no table row of ours folds when the output is not a terminal.
UNFOLDED_WIDTH = 1000


def match_id(given: str, ids: Iterable[str], kind: str) -> str:
    """The one id of ``ids`` that ``given`` names (whole, its beginning or its end).

    NotFound when none matches, InvalidParameter when the prefix is ambiguous.
    """
    ids = list(ids)
    if given in ids:
        return given
    found = [i for i in ids if names(given, i)]
    if not found:
        raise NotFound(f"no {kind} {given!r} here")
    if len(found) > 1:
        raise InvalidParameter(f"{given!r} names {len(found)} {kind}s; give more of the id")
    return found[0]


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                title: str | None = None, empty: str = "none") -> None:
    """A table on stdout that fits the terminal, or ``empty`` when there are no rows."""
    rows = list(rows)
    if title is not None:
        print(title)
    if not rows:
        print(f"  {empty}")
        return
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(soft_wrap=False, highlight=False, width=_width()).print(table)


def _width() -> int | None:
    """None on a terminal (rich asks it for its width); in a pipe or a file, rows are not
    folded, so ``grep`` finds whole ids (whatever ``COLUMNS`` a parent shell exported)."""
    return None if sys.stdout.isatty() else UNFOLDED_WIDTH


@contextmanager
def download_progress(total_bytes: int | None, already: int
                      ) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (bytes, rate, ETA, records) for a download that resumes at
    ``already`` bytes; the callback takes (records, bytes) received so far. Nothing is
    drawn when stderr is not a terminal (a log or a pipe keeps only the outcome)."""
    if not sys.stderr.isatty():
        yield lambda records, size: None
        return
    columns = (TextColumn("{task.fields[records]} records"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("transfer", total=total_bytes, completed=already, records=0)

        def update(records: int, size: int) -> None:
            bar.update(task, completed=already + size, records=records)

        yield update


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (for scripts: ``--json``)."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
