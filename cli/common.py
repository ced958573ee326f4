"""Shared CLI plumbing: workdir option, one-line errors, progress bars."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

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


def progress_bar(transient: bool = False) -> Progress:
    """The one progress-bar style used by every long command."""
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient)
