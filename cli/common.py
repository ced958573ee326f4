"""Shared CLI plumbing: workdir option, one-line errors, progress bars."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)

WorkdirOption = Annotated[
    Path | None,
    typer.Option("--workdir", "-w", help="Workspace with raw/, preprocessed/, results/ "
                 "[default: $MEDMAMBA_HOME, else ./medmamba_work]", show_default=False),
]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn the library's expected errors into one clear line and exit code 1 (no traceback)."""
    from medmamba.errors import MedmambaError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (MedmambaError, FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            fail(str(msg))
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    """The one progress-bar style used by every long command."""
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient,
                    disable=disable)


class PlainPredictLog:
    """Plain, flushed lines for `predict` without a terminal (container logs, batch jobs): rich bars print
    nothing there, so a long run looked hung and a kill left no trace of what was done.

    One line per finished case (time stamp, case, status, seconds); during a case that has run longer than
    `tile_after` seconds, a line through the sliding-window tiles at most every `every` seconds.
    """

    def __init__(self, stream: TextIO | None = None, tile_after: float | None = None, every: float | None = None
                 ) -> None:
        self.stream = stream or sys.stdout
        # $MEDMAMBA_TILE_LOG_AFTER (seconds, default 30) sets both thresholds: 0 logs every tile (tests)
        default = float(os.environ.get("MEDMAMBA_TILE_LOG_AFTER", "30"))
        self.tile_after = default if tile_after is None else tile_after
        self.every = default if every is None else every
        self.case, self.started, self.last_line, self.index, self.n_cases = "", 0.0, 0.0, 0, 0

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", file=self.stream, flush=True)

    def on_start(self, n_cases: int) -> None:
        self.n_cases = n_cases
        self._print(f"predict: {n_cases} case(s)")

    def on_case_start(self, case: str) -> None:
        self.case, self.index = case, self.index + 1
        self.started = self.last_line = time.monotonic()

    def on_tile(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started >= self.tile_after and (now - self.last_line >= self.every or done == total):
            self.last_line = now
            self._print(f"{self.case}: running, sliding-window tile {done}/{total}, {now - self.started:.0f} s")

    def on_record(self, record: dict[str, Any]) -> None:
        seconds = f"{record['seconds']:.1f} s" if record.get("seconds") is not None else "-"
        error = f" {record['error']}" if record.get("error") else ""
        self._print(f"[{self.index}/{self.n_cases}] {record['case']} {record['status']} {seconds}{error}")

    def hooks(self) -> dict[str, Callable[..., None]]:
        """Keyword arguments for predict_folder."""
        return {"on_case_start": self.on_case_start, "on_tile": self.on_tile, "on_record": self.on_record}
