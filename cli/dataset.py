"""`medmamba dataset ...`: make or convert datasets into the workspace's raw folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import WorkdirOption, console, handle_errors, progress_bar

app = typer.Typer(help="Create the built-in phantom dataset or convert public datasets to nnU-Net raw format.",
                  no_args_is_help=True)


@app.command("synth", epilog="Examples:  medmamba dataset synth Phantoms --cases 24 --test-cases 6  |  "
             "medmamba dataset synth Thick --cases 10 --anisotropic --seed 3  |  "
             "medmamba dataset synth Dataset501_Liver")
@handle_errors
def synth(
    name: Annotated[str, typer.Argument(help="Dataset name (letters, digits, '_', '-'), or nnU-Net's "
                                        "DatasetXXX_Name (the id is taken from it).")] = "Phantoms",
    cases: Annotated[int, typer.Option("--cases", "-n", help="Training cases.")] = 24,
    test_cases: Annotated[int, typer.Option(help="Held-out cases written to imagesTs/labelsTs.")] = 0,
    size: Annotated[int, typer.Option(help="Edge length in voxels.")] = 48,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    anisotropic: Annotated[bool, typer.Option(help="Thick first axis (2.5 mm) like clinical MRI.")] = False,
    dataset_id: Annotated[int | None, typer.Option("--id", help="Dataset id (default: next free from 500).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    workdir: WorkdirOption = None,
) -> None:
    """Write synthetic 3D phantoms (two labelled structures, texture, noise, bias field)."""
    from medmamba.datasets.synth import synthesize_dataset
    from medmamba.workspace import open_workspace

    ws = open_workspace(workdir)
    with progress_bar() as bar:
        task = bar.add_task("phantoms", total=cases + test_cases)
        folder = synthesize_dataset(ws.raw, name, cases, size, seed, anisotropic, test_cases, dataset_id,
                                    overwrite, progress=lambda _: bar.advance(task))
    console.print(f"wrote {folder}")


@app.command("convert-msd", epilog="Example:  medmamba dataset convert-msd ~/data/Task04_Hippocampus")
@handle_errors
def convert_msd(
    task_dir: Annotated[Path, typer.Argument(help="MSD task folder with dataset.json, imagesTr, labelsTr.")],
    dataset_id: Annotated[int | None, typer.Option("--id", help="Dataset id (default: the task number).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    workdir: WorkdirOption = None,
) -> None:
    """Convert a Medical Segmentation Decathlon task (4D images split into channels), checking every case."""
    import json

    from medmamba.datasets.msd import convert_msd as run
    from medmamba.workspace import open_workspace

    ws = open_workspace(workdir)
    try:
        total = len(json.loads((task_dir / "dataset.json").read_text(encoding="utf-8")).get("training", []))
    except (OSError, ValueError):
        total = None
    with progress_bar() as bar:
        task = bar.add_task("cases", total=total)
        folder = run(task_dir, ws.raw, dataset_id, overwrite, progress=lambda _: bar.advance(task))
    console.print(f"wrote {folder}")
