"""`medmamba compare`: train several networks with one budget on one fold and tabulate Dice and time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import WorkdirOption, console, handle_errors, progress_bar

EPILOG = ("Examples:  medmamba compare Phantoms --networks nnunet,mhs_vm -o cmp/  |  "
          "medmamba compare Hippocampus --networks all --epochs 12 --iterations 25 -o cmp/")


@handle_errors
def compare(
    dataset: Annotated[str, typer.Argument(help="Planned dataset id or name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one result JSON per network.")],
    networks: Annotated[str, typer.Option(help="Comma-separated networks, or 'all'.")] = "all",
    fold: Annotated[int, typer.Option(help="Fold of nnU-Net's 5-fold split; its held-out cases are scored.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Epochs for every network (default: the preset's).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Iterations per epoch (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option(help="Preset profile used for every network.")] = "cpu",
    workdir: WorkdirOption = None,
) -> None:
    """Same data, fold, budget and validation for every network; finished networks are skipped, an
    interrupted one resumes from its last checkpoint."""
    from medmamba.compare import compare_networks, table
    from medmamba.registry import NETWORKS, get_network
    from medmamba.workspace import open_workspace

    names = list(NETWORKS) if networks == "all" else [n.strip() for n in networks.split(",") if n.strip()]
    for name in names:
        get_network(name)  # unknown names fail now, not after hours of training the others
    ws = open_workspace(workdir)
    with progress_bar() as bar:
        task = bar.add_task("networks", total=len(names))
        rows = compare_networks(ws, dataset, names, fold, epochs, iterations, preset, output,
                                on_result=lambda _: bar.advance(task))
    console.print(table(rows))
