"""Train a registered network on a planned dataset through nnU-Net's training loop."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmamba.distributed import is_main_process, process_group
from medmamba.errors import MedmambaError
from medmamba.nets.blocks.common import recompute_blocks
from medmamba.plan import CONFIGURATION, PLANS_NAME, dataset_name
from medmamba.runtime import quiet, resolve_device
from medmamba.workspace import Workspace


@dataclass(frozen=True)
class TrainResult:
    """Where the trained model lives and how it scored on its validation cases."""

    model_dir: Path
    fold_dir: Path
    epochs_done: int
    validation: dict[str, Any] | None
    warnings: list[str]


def resolve_profile(preset: str, device: torch.device) -> str:
    """`auto` is the cpu profile on a CPU and the full (default) profile on a GPU."""
    if preset == "auto":
        return "cpu" if device.type == "cpu" else "default"
    return preset


def model_dir(ws: Workspace, dataset: str | int, network: str, profile: str, seed: int | None = None) -> Path:
    """nnU-Net's results folder of (network, resolved profile, seed) in this workspace."""
    from medmamba.trainers.base import trainer_name

    return ws.results / dataset_name(dataset) / f"{trainer_name(network, profile, seed)}__{PLANS_NAME}__{CONFIGURATION}"


def seed_everything(seed: int) -> None:
    """Seed every RNG nnU-Net's loop draws from (Python, NumPy's global one for patch sampling and
    augmentation, torch for initialisation and dropout): with 0 augmentation workers a CPU run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def train_model(ws: Workspace, dataset: str | int, network: str = "nnunet", fold: str | int = 0,
                preset: str | dict[str, Any] = "auto", epochs: int | None = None, iterations: int | None = None,
                device: str = "auto", continue_training: bool = False, validate: bool = True,
                seed: int | None = None, on_start: Callable[[Any], None] | None = None,
                on_iteration: Callable[[int, float], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None, verbose: bool = False,
                same_batches: bool = False, distributed: bool = False) -> TrainResult:
    """Construct the trainer class directly (no lookup by name), train, and run nnU-Net's validation.

    With `seed`, the run gets its own results folder (`..._seed<N>`) and every RNG is seeded, so the same
    command repeats its loss curve on a CPU. A resumed run is re-seeded at the resume point: it repeats
    itself, not the uninterrupted run.

    `distributed`: join the DDP group torchrun's variables describe (`medmamba train` does when started by
    torchrun, `launch_training`'s workers always); off by default, so that a caller whose own workers run
    under torchrun (compare's queue) still trains one independent model per process. Under DDP only rank 0
    writes files and calls the callbacks, and rank r is seeded with seed + r so that ranks draw different
    patches. `same_batches` is a verification mode: every rank draws the same global batch from the same
    seed and trains on rows rank::world_size of it, so N processes must reproduce 1 process.
    `preset` is a profile name, or a resolved preset dict (`medmamba.presets.load_preset`, edited).
    """
    recompute_blocks()  # a mistyped MEDMAMBA_RECOMPUTE fails before anything is written
    dev = resolve_device(device)
    with process_group(dev, enabled=distributed) as where:
        if where is not None and dev.type == "cuda":
            dev = torch.device("cuda", where.local_rank)
        rng_seed = seed + where.rank if seed is not None and where is not None and not same_batches else seed
        return _train(ws, dataset, network, fold, preset, epochs, iterations, dev, continue_training, validate,
                      seed, rng_seed, on_start, on_iteration, on_epoch, verbose, same_batches)


def _train(ws: Workspace, dataset: str | int, network: str, fold: str | int, preset: str | dict[str, Any],
           epochs: int | None, iterations: int | None, dev: torch.device, continue_training: bool, validate: bool,
           seed: int | None, rng_seed: int | None, on_start: Callable[[Any], None] | None,
           on_iteration: Callable[[int, float], None] | None, on_epoch: Callable[[dict[str, Any]], None] | None,
           verbose: bool, same_batches: bool) -> TrainResult:
    from medmamba.trainers.base import make_trainer

    main = is_main_process()
    ws.activate()  # nnU-Net reads its folders from the environment: make sure they are this workspace's
    name = dataset_name(dataset)
    plans_file = ws.preprocessed / name / f"{PLANS_NAME}.json"
    if not plans_file.is_file():
        raise MedmambaError(f"{plans_file}: missing; run `medmamba plan {name}` first")
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    dataset_json = json.loads((ws.preprocessed / name / "dataset.json").read_text(encoding="utf-8"))
    if isinstance(preset, dict):  # a resolved preset (load_preset's output, possibly edited): used as given
        trainer_cls = make_trainer(network, str(preset["profile"]), preset=preset, seed=seed)
    else:
        trainer_cls = make_trainer(network, resolve_profile(preset, dev), seed=seed)
    fold_arg: int | str = fold if fold == "all" else int(fold)
    plans["continue_training"] = continue_training
    with quiet(not verbose):
        trainer = trainer_cls(plans, CONFIGURATION, fold_arg, dataset_json, dev)  # type: ignore[arg-type]  # 'all' too
    trainer.verbose = verbose and main
    trainer.same_batches = same_batches
    if epochs is not None:
        trainer.num_epochs = int(epochs)
    if iterations is not None:
        trainer.num_iterations_per_epoch = int(iterations)
    if main:
        trainer.on_iteration = on_iteration
        trainer.on_epoch = on_epoch

    if rng_seed is not None:
        seed_everything(rng_seed)
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
            with quiet(not verbose):
                trainer.validate_on_main_process()
            summary = fold_dir / "validation" / "summary.json"
            validation = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None
    if not main:
        return TrainResult(Path(trainer.output_folder_base), fold_dir, trainer.current_epoch, None, [])
    from medmamba.report.training import unlearnt_labels, write_training_report

    write_training_report(fold_dir)  # loss and pseudo-Dice curves next to nnU-Net's progress.png
    return TrainResult(Path(trainer.output_folder_base), fold_dir, trainer.current_epoch, validation,
                       unlearnt_labels(fold_dir))


def epoch_line(info: dict[str, Any]) -> str:
    """One line per finished epoch (CLI progress and the rank-0 output of multi-process runs)."""
    dice = ", ".join(f"{d:.3f}" for d in info["pseudo_dice"])
    return (f"epoch {info['epoch']}: train loss {info['train_loss']:.4f}  val loss {info['val_loss']:.4f}  "
            f"pseudo-Dice {dice}")
