"""`medmamba plan | train | predict | evaluate`: thin wrappers over medmamba's pipeline functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import PlainPredictLog, WorkdirOption, console, err_console, fail, handle_errors, progress_bar


@handle_errors
def plan(
    dataset: Annotated[str, typer.Argument(help="Dataset id, name or DatasetXXX_Name in the workspace.")],
    processes: Annotated[int, typer.Option(help="Worker processes (1 is fastest on 2 cores).")] = 1,
    verify: Annotated[bool, typer.Option(help="Check dataset integrity first.")] = True,
    gpu_memory_gb: Annotated[float | None, typer.Option(help="GPU memory target for planning "
                                                        "(smaller = smaller patch and batch).")] = None,
    verbose: Annotated[bool, typer.Option(help="Show nnU-Net's own output.")] = False,
    workdir: WorkdirOption = None,
) -> None:
    """Fingerprint, plan and preprocess a dataset (3d_fullres) with nnU-Net."""
    from medmamba.plan import plan_dataset
    from medmamba.runtime import quiet
    from medmamba.workspace import open_workspace

    ws = open_workspace(workdir)
    with console.status(f"planning {dataset} (fingerprint, plan, preprocess)"), quiet(not verbose):
        summary = plan_dataset(ws, dataset, processes, verify, gpu_memory_gb)
    table = Table(title="nnU-Net plan", show_header=False)
    for key, value in summary.rows():
        table.add_row(key, value)
    console.print(table)


@handle_errors
def train(
    dataset: Annotated[str, typer.Argument(help="Planned dataset id or name.")],
    network: Annotated[str, typer.Option(help="Registered network (see `medmamba networks`).")] = "nnunet",
    fold: Annotated[str, typer.Option(help="Cross-validation fold 0-4, or 'all'.")] = "0",
    preset: Annotated[str, typer.Option(help="Preset profile: auto (cpu on CPU), default, cpu.")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Override the preset's number of epochs.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override iterations per epoch.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    continue_training: Annotated[bool, typer.Option("--continue", help="Resume from the latest checkpoint.")] = False,
    validate: Annotated[bool, typer.Option(help="Predict the fold's validation cases at the end.")] = True,
    seed: Annotated[int | None, typer.Option(help="Seed every RNG: the same command repeats its loss curve on a "
                                             "CPU; the run gets its own results folder (..._seed<N>).")] = None,
    verbose: Annotated[bool, typer.Option(help="Show nnU-Net's own output.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes on this machine (DDP: one per GPU, or gloo on CPU); the "
                                       "global batch is split between them. Multi-node: run under torchrun.")] = 1,
    workdir: WorkdirOption = None,
) -> None:
    """Train a network with nnU-Net's training loop; writes the usual nnU-Net results folder."""
    from medmamba.distributed import rank_from_env
    from medmamba.train import epoch_line, train_model
    from medmamba.workspace import open_workspace

    ws = open_workspace(workdir)
    if nproc != 1:
        from medmamba.distributed import launch_training

        result = launch_training(nproc, ws.root, dataset=dataset, network=network, fold=fold, preset=preset,
                                 epochs=epochs, iterations=iterations, device=device,
                                 continue_training=continue_training, validate=validate, seed=seed,
                                 verbose=verbose)
        _print_train_result(result)
        return
    with progress_bar() as bar:
        state: dict[str, Any] = {}

        def on_start(trainer: Any) -> None:
            state["task"] = bar.add_task(_epoch_label(trainer.current_epoch, trainer.num_epochs, None),
                                         total=trainer.num_iterations_per_epoch)
            state["epochs"] = trainer.num_epochs

        def on_iteration(epoch: int, loss: float) -> None:
            bar.update(state["task"], advance=1, description=_epoch_label(epoch, state["epochs"], state.get("last"),
                                                                             loss))

        def on_epoch(info: dict[str, Any]) -> None:
            state["last"] = info
            console.print(epoch_line(info), highlight=False, soft_wrap=True)
            bar.reset(state["task"], description=_epoch_label(info["epoch"] + 1, state["epochs"], info))

        result = train_model(ws, dataset, network, fold, preset, epochs, iterations, device, continue_training,
                             validate, seed=seed, on_start=on_start, on_iteration=on_iteration, on_epoch=on_epoch,
                             verbose=verbose, distributed=rank_from_env() is not None)
    _print_train_result(result)


def _print_train_result(result: Any) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank returns here; rank 0 speaks
        return
    console.print(f"model folder: {result.model_dir}")
    if result.validation is not None:
        console.print(f"validation foreground mean Dice: {result.validation['foreground_mean']['Dice']:.4f}")
    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def _epoch_label(epoch: int, total: int, last: dict[str, Any] | None, loss: float | None = None) -> str:
    text = f"epoch {min(epoch, total - 1) + 1}/{total}"
    if loss is not None:
        text += f" loss {loss:.3f}"
    if last is not None:
        text += f" | pseudo-Dice {sum(last['pseudo_dice']) / len(last['pseudo_dice']):.3f}"
    return text


@handle_errors
def predict(
    input_dir: Annotated[Path | None, typer.Option("--input", "-i", help="Images: a folder (CASE_0000.nii.gz ..., "
                                                   "CASE.nii.gz for one channel, .nrrd, .mha/.mhd, DICOM series "
                                                   "subfolders), one image file, or one DICOM series folder.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for CASE.nii.gz label maps and "
                                                    "predict_summary.json.")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model", "-m", help="Trained model folder (printed by train) or "
                                                   "a bundle folder/.zip (from export; hashes checked before "
                                                   "loading). A relative path that does not exist is looked up "
                                                   "under the workspace's results/.")] = None,
    folds: Annotated[list[str] | None, typer.Option("--folds", "-f", help="Folds to ensemble (default: all).")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Mirroring test-time augmentation "
                                             "(default: on for GPU, off for CPU).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    step_size: Annotated[float, typer.Option(help="Sliding-window step as a fraction of the patch.")] = 0.5,
    fast: Annotated[bool, typer.Option("--fast", help="CPU speed: no TTA and a sliding-window step of 0.7.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
    max_voxels: Annotated[int, typer.Option(help="Refuse images with more voxels than this per channel (read from "
                                            "the header, before any voxel).")] = 512 * 512 * 1024,
    resume: Annotated[bool, typer.Option("--continue", help="Keep complete outputs of an earlier (killed) run; "
                                         "predict only the rest.")] = False,
    series: Annotated[str | None, typer.Option(help="DICOM SeriesInstanceUID to use where a folder holds several "
                                               "series.")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write CASE_probabilities.npz "
                                                "(float16 class probabilities on the input grid).")] = False,
    output_format: Annotated[str, typer.Option(help="nifti, or dicom-seg: also CASE_seg.dcm (DICOM SEG) for each "
                                               "DICOM series input (nifti).")] = "nifti",
    seg_codes: Annotated[Path | None, typer.Option(help="JSON label name -> {category, type: [value, scheme, "
                                                   "meaning]} codes for DICOM SEG (SNOMED CT).")] = None,
    ref: Annotated[Path | None, typer.Option(help="Reference labels: also write a report to OUTPUT/report/.")] = None,
    pdf: Annotated[bool, typer.Option(help="With --ref: also render the report as PDF.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show nnU-Net's own output.")] = False,
    num_parts: Annotated[int, typer.Option(help="Split the cases into this many parts (one per job/machine).")] = 1,
    part_id: Annotated[int, typer.Option(help="Predict only this part, 0..num-parts-1 (case k of the sorted list "
                                         "goes to part k mod num-parts).")] = 0,
    merge_summary: Annotated[Path | None, typer.Option(help="Only merge the part summaries in this output folder "
                                                       "into predict_summary.json (done automatically by the "
                                                       "last part to finish).", show_default=False)] = None,
    workdir: WorkdirOption = None,
) -> None:
    """Segment images; labels are written on each input's own grid, every case is listed in predict_summary.json."""
    from medmamba.model_folder import locate_model
    from medmamba.predict import predict_folder

    if merge_summary is not None:
        from medmamba.shard import merge_summaries

        console.print(f"merged summary: {merge_summaries(merge_summary)}", highlight=False, soft_wrap=True)
        return
    missing = [flag for flag, value in (("--input", input_dir), ("--output", output_dir), ("--model", model_dir))
               if value is None]
    if missing:
        fail(f"missing option(s) {', '.join(missing)} (required unless --merge-summary)")
    assert input_dir is not None and output_dir is not None and model_dir is not None  # checked just above
    model_dir = locate_model(model_dir, workdir)

    plain = None if console.is_terminal else PlainPredictLog()  # no terminal: plain lines, not bars
    with progress_bar(disable=plain is not None) as bar:
        state: dict[str, Any] = {}

        def on_start(n_cases: int) -> None:
            state["task"] = bar.add_task("predicting", total=n_cases)
            if plain is not None:
                plain.on_start(n_cases)

        def on_case(case: str, error: str | None) -> None:
            bar.update(state["task"], advance=1, description=f"predicted {case}")
            if error:
                err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)

        result = predict_folder(input_dir, output_dir, model_dir, folds, tta, device, step_size, on_case=on_case,
                                verbose=verbose, resume=resume, fast=fast, threads=threads, max_voxels=max_voxels,
                                series=series, on_start=on_start, probabilities=probabilities,
                                output_format=output_format, seg_codes=seg_codes, num_parts=num_parts,
                                part_id=part_id, **(plain.hooks() if plain is not None else {}))
    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    skipped = f", {len(result.skipped)} kept from an earlier run" if result.skipped else ""
    console.print(f"{len(result.written)} case(s) written to {output_dir}{skipped}, {len(result.failed)} failed; "
                  f"summary: {result.summary}", highlight=False, soft_wrap=True)
    if result.merged is not None:
        console.print(f"all {num_parts} parts finished; merged summary: {result.merged}", highlight=False,
                      soft_wrap=True)
    if ref is not None and (result.written or result.skipped):
        from medmamba.report import report_for_prediction

        with console.status("writing report"):
            report = report_for_prediction(ref, output_dir, model_dir=model_dir, images_dir=input_dir, pdf=pdf)
        console.print(f"report: {report.html}")
    if result.failed:
        raise typer.Exit(1)


@handle_errors
def evaluate(
    ref_dir: Annotated[Path, typer.Argument(help="Reference label folder.")],
    pred_dir: Annotated[Path, typer.Argument(help="Prediction folder (same file names).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="summary.json to write "
                                                "(default: PRED_DIR/summary.json).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: those in the references).")]
    = None,
) -> None:
    """Dice and IoU per case and label (nnU-Net's evaluation), written as nnU-Net's summary.json."""
    from medmamba.evaluate import evaluate_folders

    label_list = [int(x) for x in labels.split(",")] if labels else None
    out = output or Path(pred_dir) / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, out, label_list)
    print_summary(summary)
    console.print(f"wrote {out}")


def print_summary(summary: dict[str, Any]) -> None:
    """Short table: per-label mean Dice/IoU and the foreground mean."""
    table = Table(title=f"{len(summary['metric_per_case'])} case(s)")
    table.add_column("label")
    table.add_column("Dice", justify="right")
    table.add_column("IoU", justify="right")
    for label, metrics in summary["mean"].items():
        table.add_row(str(label), f"{metrics['Dice']:.4f}", f"{metrics['IoU']:.4f}")
    fg = summary["foreground_mean"]
    table.add_row("foreground mean", f"{fg['Dice']:.4f}", f"{fg['IoU']:.4f}", style="bold")
    console.print(table)


def networks() -> None:
    """List the registered networks."""
    from medmamba.registry import NETWORKS

    table = Table(title="registered networks")
    table.add_column("name")
    table.add_column("preset")
    table.add_column("description")
    for spec in NETWORKS.values():
        table.add_row(spec.name, spec.preset, spec.description)
    console.print(table)


__all__ = ["evaluate", "fail", "networks", "plan", "predict", "train"]
