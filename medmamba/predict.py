"""Predict label maps for a folder of images with a trained medmamba model folder.

The network is rebuilt by medmamba (registry + plans + medmamba.json) and its weights are read with
weights_only=True, then handed to nnUNetPredictor.manual_initialization: nnU-Net's preprocessing,
sliding window and resampling back to the input grid are used unchanged, its trainer lookup by name is
never touched. One bad case never stops the others; the caller gets every failure back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmamba.errors import InputError, MedmambaError
from medmamba.io import group_cases, read_case, write_label_map
from medmamba.train import quiet, resolve_device

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


@dataclass
class LoadedModel:
    """A ready nnUNetPredictor plus what callers need to know about the model."""

    predictor: Any
    n_channels: int
    info: dict[str, Any]
    folds: list[str]


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, one-line error)
    seconds: dict[str, float] = field(default_factory=dict)


def find_folds(model_dir: Path, folds: list[str] | None, checkpoint: str | None = None) -> list[tuple[str, Path]]:
    """(fold, checkpoint path) pairs; by default every fold_* folder with a final (else best) checkpoint."""
    names = [f"fold_{f}" for f in folds] if folds else sorted(p.name for p in model_dir.glob("fold_*") if p.is_dir())
    found = []
    for name in names:
        candidates = (checkpoint,) if checkpoint else CHECKPOINTS
        path = next((model_dir / name / c for c in candidates if (model_dir / name / c).is_file()), None)
        if path is None:
            raise MedmambaError(f"{model_dir / name}: no {' or '.join(candidates)} found")
        found.append((name[5:], path))
    if not found:
        raise MedmambaError(f"{model_dir}: no fold_* folders with checkpoints")
    return found


def load_model(model_dir: Path, folds: list[str] | None = None, device: str = "auto", tta: bool | None = None,
               step_size: float = 0.5, checkpoint: str | None = None) -> LoadedModel:
    """Rebuild the network from the model folder and set up nnUNetPredictor without name lookups."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.checkpoint import load_checkpoint
    from medmamba.plan import CONFIGURATION
    from medmamba.trainers.base import trainer_from_sidecar

    model_dir = Path(model_dir)
    for required in ("plans.json", "dataset.json"):
        if not (model_dir / required).is_file():
            raise MedmambaError(f"{model_dir / required}: missing; not a trained model folder")
    trainer_cls, info = trainer_from_sidecar(model_dir)
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(info.get("configuration", CONFIGURATION))
    n_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    dev = resolve_device(device)
    parameters, mirror_axes = [], None
    fold_ckpts = find_folds(model_dir, folds, checkpoint)
    for _, ckpt_path in fold_ckpts:
        ckpt = load_checkpoint(ckpt_path)
        parameters.append(ckpt["network_weights"])
        mirror_axes = ckpt.get("inference_allowed_mirroring_axes", mirror_axes)
    network = trainer_cls.build_network_architecture(plans_manager, cm, n_channels, n_outputs, False)
    use_tta = (dev.type == "cuda") if tta is None else tta
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_tta,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, cm, parameters, dataset_json, trainer_cls.__name__,
                                    tuple(mirror_axes) if mirror_axes is not None else None)
    return LoadedModel(predictor, n_channels, info, [f for f, _ in fold_ckpts])


def predict_folder(input_dir: Path, output_dir: Path, model_dir: Path, folds: list[str] | None = None,
                   tta: bool | None = None, device: str = "auto", step_size: float = 0.5,
                   on_case: Callable[[str, str | None], None] | None = None, verbose: bool = False) -> PredictResult:
    """Predict every case of `input_dir` into `output_dir` as CASE.nii.gz on the input grid."""
    with quiet(not verbose):
        model = load_model(model_dir, folds, device, tta, step_size)
    cases = group_cases(Path(input_dir), model.n_channels)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = PredictResult()
    for case, files in cases.items():
        start = time.perf_counter()
        error = None
        try:
            data, props = read_case(files)
            with torch.inference_mode():
                seg = model.predictor.predict_single_npy_array(data, props, None, None, False)
            out = output_dir / f"{case}.nii.gz"
            write_label_map(seg, props, out)
            result.written.append(out)
        except InputError as exc:
            error = str(exc)
            result.failed.append((case, error))
        result.seconds[case] = time.perf_counter() - start
        if on_case is not None:
            on_case(case, error)
    return result
