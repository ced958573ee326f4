"""`medmamba benchmark`: one table of cost for all registered networks on a dataset's plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medmamba.atomic import atomic_write

from .common import WorkdirOption, console, handle_errors, progress_bar

EPILOG = ("Examples:  medmamba benchmark Hippocampus  |  medmamba benchmark 4 --networks nnunet,lightm_unet -o b.json"
          "  |  medmamba benchmark 4 --networks lightm_unet,lightm_unet@MEDMAMBA_FUSED=0 --rounds 3"
          "  |  medmamba benchmark 4 --profile lightm_unet --threads 1")


@handle_errors
def benchmark(
    dataset: Annotated[str, typer.Argument(help="Planned dataset id or name.")],
    networks: Annotated[str | None, typer.Option(help="Comma-separated networks (default: all registered).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions (median is reported).")] = 3,
    rounds: Annotated[int, typer.Option(help="Measure the whole list this many times round-robin and keep each "
                                             "network's fastest round (for a shared machine).")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    preset: Annotated[str, typer.Option(help="Preset profile whose architecture and batch limit are measured.")]
    = "cpu",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the rows as JSON.")] = None,
    interleave: Annotated[bool, typer.Option(
        "--interleave", help="Times only: build all networks in one process and alternate them for --rounds "
                             "rounds (ratios that survive a loaded machine).")] = False,
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Instead of the table: torch.profiler self CPU time per op family for NETWORK.",
        metavar="NETWORK")] = None,
    profile_mode: Annotated[str, typer.Option(help="With --profile: 'train' (one iteration at the plan's "
                                                   "batch), 'forward' (batch 1, no grad) or 'memory' (what a "
                                                   "training step keeps for the backward, by module).")]
    = "train",
    predict_fold: Annotated[int | None, typer.Option(
        help="Also time nnU-Net's sliding-window prediction of this fold's validation cases (network time, "
             "no mirroring; needs the split, i.e. one trained model).")] = None,
    workdir: WorkdirOption = None,
) -> None:
    """Parameters, GFLOPs per patch (scans included), CPU latency, train-iteration time, peak memory, vs nnunet."""
    from medmamba.benchmark import add_ratios, benchmark_networks
    from medmamba.plan import dataset_name
    from medmamba.registry import NETWORKS
    from medmamba.workspace import open_workspace

    ws = open_workspace(workdir)
    folder = ws.preprocessed / dataset_name(dataset)
    if not (folder / "nnUNetPlans.json").is_file():
        raise FileNotFoundError(f"{folder / 'nnUNetPlans.json'}: missing; run `medmamba plan {dataset}` first")
    if profile is not None:
        _print_profile(folder, profile, max(1, repeats - 1), threads, preset, profile_mode, output)
        return
    names = networks.split(",") if networks else list(NETWORKS)  # NAME or NAME@VAR=VALUE (see parse_network_spec)
    if "nnunet" not in names:
        names.insert(0, "nnunet")
    if interleave:
        _print_interleaved(folder, names, rounds, threads, preset, output)
        return
    with progress_bar() as bar:
        task = bar.add_task("networks", total=len(names) * max(1, rounds))
        rows = benchmark_networks(folder, names, repeats, threads, on_result=lambda _: bar.advance(task),
                                  profile=preset, rounds=rounds, predict_fold=predict_fold)
    add_ratios(rows)
    table = Table(title=f"{folder.name}: cost per network (ratios to nnunet, same run)")
    columns = ["network", "params (M)", "GFLOPs/patch", "of which scans", "forward (s)", "train iter (s)",
               "peak RSS (MB)"]
    if predict_fold is not None:
        columns.append(f"predict fold {predict_fold} (s)")
    for col in columns:
        table.add_column(col, justify="left" if col == "network" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["network"], f"[red]error: {r['error']}[/]", *[""] * (len(columns) - 2))
            continue
        cells = [_cell(r, "params_M", ".2f"), _cell(r, "gflops_per_patch", ".1f"), f"{r['scan_gflops']:.2f}",
                 _cell(r, "forward_s", ".3f"), _cell(r, "train_iter_s", ".2f"), _cell(r, "peak_rss_MB", ".0f")]
        if predict_fold is not None:
            cells.append(_cell(r, "predict_s", ".1f"))
        table.add_row(r["network"], *cells)
    console.print(table)
    if rows and "patch_size" in rows[0]:
        def seen(key: str) -> str:  # the values the measured rows report for one execution setting
            return ", ".join(sorted({str(r.get(key, "?")) for r in rows if "error" not in r} - {"-"})) or "-"

        console.print(f"patch {rows[0]['patch_size']}, batch {rows[0]['batch_size']} (train iteration); "
                      f"allocator: {seen('allocator')}; scan kernel: {seen('scan_kernel')}; "
                      f"MKL dispatch: {seen('mkl_dispatch')}")
    if predict_fold is not None and rows and "predict_cases" in rows[0]:
        console.print(f"predict: {rows[0]['predict_cases']} validation cases of fold {predict_fold}, network time "
                      "of nnU-Net's sliding window, no mirroring")
    if output is not None:
        atomic_write(output, json.dumps(rows, indent=2))


def _print_interleaved(folder: Path, names: list[str], rounds: int, threads: int | None, preset: str,
                       output: Path | None) -> None:
    """The `--interleave` table: fastest round of each network, ratios to nnunet from the same process."""
    from medmamba.benchmark import add_ratios, interleaved_times

    rows = interleaved_times(folder, names, rounds, threads, preset)
    add_ratios(rows)
    table = Table(title=f"{folder.name}: fastest of {rounds} interleaved rounds, one process (ratios to nnunet)")
    for col in ("network", "forward, batch 1 (s)", "train iter (s)"):
        table.add_column(col, justify="left" if col == "network" else "right", overflow="fold")
    for r in rows:
        table.add_row(r["network"], _cell(r, "forward_s", ".3f"), _cell(r, "train_iter_s", ".2f"))
    console.print(table)
    console.print(f"train iteration at batch {rows[0]['batch_size']}" if rows else "")
    if output is not None:
        atomic_write(output, json.dumps(rows, indent=2))


def _print_profile(folder: Path, network: str, steps: int, threads: int | None, preset: str, mode: str,
                   output: Path | None) -> None:
    """The per-op-family table of `--profile` (and its JSON with -o)."""
    from medmamba.benchmark import profile_network

    if mode not in ("train", "forward", "memory"):
        raise ValueError(f"--profile-mode must be 'train', 'forward' or 'memory', not '{mode}'")
    res = profile_network(folder, network, steps, threads, preset, mode)
    if mode == "memory":
        _print_memory(res, output)
        return
    what = f"one training iteration at batch {res['batch_size']}" if mode == "train" else "one forward at batch 1"
    table = Table(title=f"{network}: self CPU time per op family, {what} (patch {res['patch_size']}, "
                        f"{threads or 'default'} threads)")
    for col in ("op family", "share", "ms", "calls", "largest ops (ms)"):
        table.add_column(col, justify="left" if col in ("op family", "largest ops (ms)") else "right")
    for r in res["families"]:
        table.add_row(r["family"], f"{100 * r['share']:.1f}%", f"{r['self_ms']:.0f}", str(r["calls"]), r["top_ops"])
    console.print(table)
    console.print(f"wall {res['wall_s']:.2f} s per step (profiler on), {res['profiled_ms']:.0f} ms of self time")
    if output is not None:
        atomic_write(output, json.dumps(res, indent=2))


def _print_memory(res: dict, output: Path | None) -> None:
    """The `--profile-mode memory` table: what one training forward keeps for the backward, by module."""
    table = Table(title=f"{res['network']}: activations kept for the backward of one training step at batch "
                        f"{res['batch_size']} (patch {res['patch_size']}), by module")
    for col in ("module (innermost three)", "MiB", "share"):
        table.add_column(col, justify="left" if col.startswith("module") else "right")
    for r in res["modules"]:
        if r["share"] >= 0.005:
            table.add_row(r["module"], f"{r['MiB']:.0f}", f"{100 * r['share']:.1f}%")
    console.print(table)
    console.print(f"total {res['saved_MiB']:.0f} MiB kept (checkpointed regions not seen); peak RSS of the "
                  f"measuring process {res['peak_rss_MB']:.0f} MB")
    if output is not None:
        atomic_write(output, json.dumps(res, indent=2))


def _cell(row: dict, key: str, fmt: str) -> str:
    return f"{row[key]:{fmt}} ({row.get(key + '_ratio', float('nan')):.2f}x)"
