"""Train a registered network on a planned dataset through nnU-Net's training loop."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmamba.distributed import is_main_process, process_group, seed_everything
from medmamba.errors import MedmambaError
from medmamba.plan import CONFIGURATION, PLANS_NAME, dataset_name
from medmamba.workspace import Workspace


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model lives and how it scored on its validation cases."""

    model_dir: Path
    fold_dir: Path
    epochs_done: int
    validation: dict[str, Any] | None


def resolve_device(device: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MedmambaError("--device cuda: no CUDA GPU is available on this machine")
    if device not in ("cpu", "cuda"):
        raise MedmambaError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for a block unless the user set it already."""
    if key in os.environ:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Swallow nnU-Net's console chatter (its log file keeps everything)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def train_model(ws: Workspace, dataset: str | int, network: str = "nnunet", fold: str | int = 0,
                preset: str | dict[str, Any] = "auto", epochs: int | None = None, iterations: int | None = None,
                device: str = "auto", continue_training: bool = False, validate: bool = True,
                on_start: Callable[[Any], None] | None = None,
                on_iteration: Callable[[int, float], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None, verbose: bool = False,
                seed: int | None = None, same_batches: bool = False) -> TrainResult:
    """Construct the trainer class directly (no lookup by name), train, and run nnU-Net's validation.

    Under torchrun (or `medmamba.distributed.launch_training`) each process joins the DDP group; only rank 0
    writes files and calls the callbacks. `seed` seeds random/numpy/torch (plus the rank, so that ranks draw
    different patches). `same_batches` is a verification mode: every rank draws the same global batch from
    the same seed and trains on rows rank::world_size of it, so N processes must reproduce 1 process.
    `preset` is a profile name, or a resolved preset dict (`medmamba.presets.load_preset`, edited).
    """
    dev = resolve_device(device)
    with process_group(dev) as where:
        if where is not None and dev.type == "cuda":
            dev = torch.device("cuda", where.local_rank)
        if seed is not None:
            seed_everything(seed + (where.rank if where is not None and not same_batches else 0))
        return _train(ws, dataset, network, fold, preset, epochs, iterations, dev, continue_training, validate,
                      on_start, on_iteration, on_epoch, verbose, same_batches)


def _train(ws: Workspace, dataset: str | int, network: str, fold: str | int, preset: str | dict[str, Any],
           epochs: int | None, iterations: int | None, dev: torch.device, continue_training: bool, validate: bool,
           on_start: Callable[[Any], None] | None, on_iteration: Callable[[int, float], None] | None,
           on_epoch: Callable[[dict[str, Any]], None] | None, verbose: bool, same_batches: bool) -> TrainResult:
    from medmamba.trainers.base import make_trainer

    main = is_main_process()
    ws.activate()  # nnU-Net reads its folders from the environment: make sure they are this workspace's
    name = dataset_name(dataset)
    plans_file = ws.preprocessed / name / f"{PLANS_NAME}.json"
    if not plans_file.is_file():
        raise MedmambaError(f"{plans_file}: missing; run `medmamba plan {name}` first")
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((ws.preprocessed / name / "dataset.json").read_text())
    if isinstance(preset, dict):  # a resolved preset (load_preset's output, possibly edited): used as given
        trainer_cls = make_trainer(network, str(preset["profile"]), preset=preset)
    else:
        profile = ("cpu" if dev.type == "cpu" else "default") if preset == "auto" else preset
        trainer_cls = make_trainer(network, profile)
    fold_arg: int | str = fold if fold == "all" else int(fold)
    plans["continue_training"] = continue_training
    with quiet(not verbose):
        trainer = trainer_cls(plans, CONFIGURATION, fold_arg, dataset_json, dev)
    trainer.verbose = verbose and main
    trainer.same_batches = same_batches
    if epochs is not None:
        trainer.num_epochs = int(epochs)
    if iterations is not None:
        trainer.num_iterations_per_epoch = int(iterations)
    if main:
        trainer.on_iteration = on_iteration
        trainer.on_epoch = on_epoch

    fold_dir = Path(trainer.output_folder)
    if continue_training:
        ckpt = next((fold_dir / f for f in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
                     if (fold_dir / f).is_file()), None)
        if ckpt is None:
            raise MedmambaError(f"{fold_dir}: --continue given but no checkpoint to resume from")
        with quiet(not verbose):
            trainer.load_checkpoint(str(ckpt))
    if on_start is not None and main:
        on_start(trainer)
    # 0 augmentation workers is fastest on small CPUs, but 0 crashes planning: set it only here
    # no stdout redirection here: the caller's progress bar draws while the loop runs
    with _env("nnUNet_n_proc_DA", "0"):
        trainer.run_training()
        validation = None
        if validate and main:
            trainer.validate_on_main_process()
            summary = fold_dir / "validation" / "summary.json"
            validation = json.loads(summary.read_text()) if summary.is_file() else None
    if main:
        _maybe_training_report(fold_dir)
    return TrainResult(Path(trainer.output_folder_base), fold_dir, trainer.current_epoch, validation)


def epoch_line(info: dict[str, Any]) -> str:
    """One line per finished epoch (CLI progress and the rank-0 output of multi-process runs)."""
    dice = ", ".join(f"{d:.3f}" for d in info["pseudo_dice"])
    return (f"epoch {info['epoch']}: train loss {info['train_loss']:.4f}  val loss {info['val_loss']:.4f}  "
            f"pseudo-Dice {dice}")


def _maybe_training_report(fold_dir: Path) -> None:
    """Loss and pseudo-Dice curves next to nnU-Net's progress.png, when the report module is present."""
    try:
        from medmamba.report import write_training_report  # type: ignore[attr-defined]
    except ImportError:
        return
    write_training_report(fold_dir)
