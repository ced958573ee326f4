"""`medmamba compare` (train a queue of runs under one protocol) and `medmamba compare-table` (docs from them)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import WorkdirOption, console, handle_errors, progress_bar

EPILOG = ("Examples:  medmamba compare Phantoms --networks nnunet,mhs_vm -o cmp/  |  medmamba compare Hippocampus "
          "--networks nnunet:0,nnunet:1,nnunet:2,mhs_vm --preset short -o docs/results/hippocampus --stop-by 17:00  |  "
          "torchrun --nproc-per-node 4 -m medmamba.cli compare 4 --networks all --preset short -o cmp/")
TABLE_EPILOG = ("Example:  medmamba compare-table docs/results/hippocampus --document docs/benchmarks.md")


def _parse_deadline(text: str | None) -> float | None:
    """HH:MM (today, local time; tomorrow if already past) or an ISO date-time -> time.time() value."""
    if text is None:
        return None
    try:
        if len(text) <= 5 and ":" in text:
            hh, mm = (int(x) for x in text.split(":"))
            now = datetime.now()
            at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            stamp = at.timestamp()
            return stamp if stamp > now.timestamp() else stamp + 86400
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--stop-by {text}: give HH:MM or an ISO date-time") from None


def _parse_estimates(items: list[str] | None) -> dict[str, float]:
    """NETWORK=HOURS items -> seconds."""
    out = {}
    for item in items or []:
        name, _, hours = item.partition("=")
        try:
            out[name.strip()] = float(hours) * 3600
        except ValueError:
            raise ValueError(f"--estimate {item}: expected NETWORK=HOURS, e.g. lightm_unet=2.5") from None
    return out


@handle_errors
def compare(
    dataset: Annotated[str, typer.Argument(help="Planned dataset id or name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one result JSON per run "
                                         "(<network>_seed<S>.json).")],
    networks: Annotated[str, typer.Option(help="Comma-separated networks in queue order, or 'all'; NAME:S runs "
                                          "only seed S of that network.")] = "all",
    seeds: Annotated[str, typer.Option(help="Seeds for networks named without ':S' (comma-separated).")] = "0",
    fold: Annotated[int, typer.Option(help="Fold of nnU-Net's 5-fold split; its held-out cases are scored.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Epochs for every network (default: the preset's).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Iterations per epoch (default: the preset's).")] = None,
    preset: Annotated[str, typer.Option(help="Preset profile used for every network (cpu, short, default).")]
    = "cpu",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    stop_by: Annotated[str | None, typer.Option(help="Start no run that is not expected to finish by then "
                                                "(HH:MM or ISO date-time).")] = None,
    estimate: Annotated[list[str] | None, typer.Option(help="NETWORK=HOURS: a run's expected wall time where the "
                                                       "output folder has no finished run of that network yet "
                                                       "(e.g. nnunet's time x the ratio from `medmamba "
                                                       "benchmark`). Repeatable.")] = None,
    num_parts: Annotated[int | None, typer.Option(help="Split the queue into this many workers (default: "
                                                  "$WORLD_SIZE under torchrun, else 1).")] = None,
    part_id: Annotated[int | None, typer.Option(help="This worker's part: runs k with k mod num-parts == part-id "
                                                "(default: $RANK under torchrun, else 0).")] = None,
    workdir: WorkdirOption = None,
) -> None:
    """Same data, fold, budget and validation for every run; a run whose result file exists is skipped, an
    interrupted one resumes from its last checkpoint."""
    from medmamba.compare import compare_networks, parse_runs
    from medmamba.registry import NETWORKS
    from medmamba.train import epoch_line
    from medmamba.workspace import open_workspace

    names = list(NETWORKS) if networks == "all" else [n for n in networks.split(",") if n.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {seeds}: comma-separated integers") from None
    import os

    from medmamba.compare import select_part

    num_parts = num_parts if num_parts is not None else int(os.environ.get("WORLD_SIZE", "1"))
    part_id = part_id if part_id is not None else int(os.environ.get("RANK", "0"))
    runs = select_part(parse_runs(names, seed_list), num_parts, part_id)
    if device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:  # one GPU per worker under torchrun
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deadline = _parse_deadline(stop_by)
    ws = open_workspace(workdir)

    with progress_bar() as bar:
        task = bar.add_task("runs", total=len(runs))
        start = time.perf_counter()

        def report(run: Any, row: dict[str, Any] | None, status: str) -> None:
            bar.advance(task)
            dice = f"mean Dice {row['mean_dice']:.3f}" if row and row.get("mean_dice") is not None else ""
            console.print(f"run {run.network} seed {run.seed}: {status} {dice} "
                          f"({(time.perf_counter() - start) / 60:.1f} min elapsed)", highlight=False, soft_wrap=True)

        def epoch(run: Any, info: dict[str, Any]) -> None:
            console.print(f"run {run.network} seed {run.seed} {epoch_line(info)} ({info['epoch_time']:.0f} s)",
                          highlight=False, soft_wrap=True)  # one line per epoch in a log, never wrapped

        compare_networks(ws, dataset, runs, fold, preset, output, epochs, iterations, device, deadline,
                         _parse_estimates(estimate), on_result=report, on_epoch=epoch)
    from medmamba.report.comparison import load_results, results_table

    if any(output.glob("*_seed*.json")):
        console.print(results_table(load_results(output)), highlight=False, soft_wrap=True, markup=False)


@handle_errors
def compare_table(
    results: Annotated[Path, typer.Argument(help="Folder of result files written by `medmamba compare`.")],
    document: Annotated[Path | None, typer.Option(help="Markdown file whose '<!-- results:KEY begin/end -->' "
                                                  "block gets the table.")] = None,
    key: Annotated[str | None, typer.Option(help="Marker key (default: the results folder's name).")] = None,
    baseline: Annotated[str, typer.Option(help="Network the others are compared with.")] = "nnunet",
    curve_below: Annotated[float, typer.Option(help="Draw the training curve of runs whose mean Dice is below "
                                               "this.")] = 0.80,
) -> None:
    """Rebuild the comparison table, the box plot and the curves of weak runs from the result files alone."""
    from medmamba.report.comparison import write_comparison

    out = write_comparison(results, document, key, baseline, curve_below)
    console.print(out.table, highlight=False, soft_wrap=True, markup=False)
    console.print(f"box plot: {out.plot}" + (f"; updated {document}" if document else ""), highlight=False)
