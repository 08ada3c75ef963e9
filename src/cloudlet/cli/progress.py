"""Progress on stderr: a bar for byte transfers, a status line for phases.

Both are silent when stderr is not a terminal (pipes, CI logs, -o json to a file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.spinner import Spinner
from rich.text import Text

from cloudlet.cli.render import err
from cloudlet.cli.signals import cancel_on_interrupt
from cloudlet.progress import ProgressEvent, ProgressSink


@contextmanager
def byte_progress() -> Iterator[Callable[[int, int | None], None]]:
    """Yield a callback (done, total) that drives one progress bar on stderr."""
    with Progress(
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("transfer", total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class PhaseLine:
    """``creating web1: boot (12 s)``: the current phase and the seconds since the start,
    worked out each time the line is drawn (so the seconds count on between phases)."""

    def __init__(self, title: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self.clock = clock
        self.started = clock()
        self.event: ProgressEvent | None = None

    def text(self) -> str:
        elapsed = f"({self.clock() - self.started:.0f} s)"
        event = self.event
        if event is None:
            return f"{self.title} {elapsed}"
        stage = event.stage
        if event.done is not None and event.total:
            stage += f" {100 * event.done // event.total}%"
        return f"{self.title}: {stage} {elapsed}"

    def __rich__(self) -> Text:
        return Text(self.text())


@contextmanager
def phases(title: str, *, quiet: bool = False) -> Iterator[ProgressSink]:
    """Yield a sink whose events redraw one status line on stderr (``title: phase (N s)``);
    ``quiet`` (machine-read output such as ``-o json``) draws nothing, as a pipe does."""
    if quiet or not err.is_terminal:
        yield lambda event: None
        return
    line = PhaseLine(title)
    with Live(Spinner("dots", text=line), console=err, transient=True) as live:

        def show(event: ProgressEvent) -> None:
            line.event = event
            live.refresh()  # drawn now: a short phase is seen too

        yield show


@contextmanager
def tracked(title: str, *, quiet: bool = False) -> Iterator[ProgressSink]:
    """``phases`` for one long engine call, whose first Ctrl-C cancels it cleanly."""
    with cancel_on_interrupt(), phases(title, quiet=quiet) as sink:
        yield sink
