"""`medmamba export`: a trained model folder -> checksummed bundle (folder, optional .zip)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import WorkdirOption, console, handle_errors

EPILOG = ("Example:  medmamba export medmamba_work/results/Dataset500_Phantoms/MedmambaTrainer_cpu__nnUNetPlans__"
          "3d_fullres bundles/phantoms --zip")


@handle_errors
def export(
    model_dir: Annotated[Path, typer.Argument(help="Trained model folder (printed by train; a relative path that "
                                              "does not exist is looked up under the workspace's results/).")],
    out: Annotated[Path, typer.Argument(help="Bundle folder to write (OUT.zip too with --zip).")],
    make_zip: Annotated[bool, typer.Option("--zip", help="Also write OUT.zip (same files).")] = False,
    folds: Annotated[list[str] | None, typer.Option("--folds", "-f", help="Folds to include (default: all).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint file name (default: final, else best).")] = None,
    intended_use: Annotated[str | None, typer.Option(help="Intended-use statement for metadata.json.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
    workdir: WorkdirOption = None,
) -> None:
    """Write weights as safetensors, plans, dataset, metadata.json and SHA256SUMS for offline deployment."""
    from medmamba.bundle import DEFAULT_INTENDED_USE, export_bundle
    from medmamba.model_folder import locate_model

    folder, zip_path, bundle_id = export_bundle(locate_model(model_dir, workdir), out, folds, checkpoint, make_zip,
                                                intended_use or DEFAULT_INTENDED_USE, overwrite)
    console.print(f"bundle: {folder}", highlight=False)
    if zip_path is not None:
        console.print(f"zip: {zip_path}", highlight=False)
    console.print(f"bundle id (SHA256 of SHA256SUMS): {bundle_id}", highlight=False)
