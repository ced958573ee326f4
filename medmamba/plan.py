"""Fingerprint, experiment planning and preprocessing through nnunetv2's own Python API.

Process counts are sized for small CPU machines (1 process: on 2 cores nnU-Net's default of 8 spawned
workers is 7x slower), and only the 3d_fullres configuration is preprocessed: every medmamba network
trains on 3D volumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from medmamba.errors import MedmambaError
from medmamba.workspace import Workspace

CONFIGURATION = "3d_fullres"
PLANS_NAME = "nnUNetPlans"


@dataclass(frozen=True)
class PlanSummary:
    """What a user wants to see after planning."""

    dataset: str
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    network: str
    n_stages: int
    strides: list[list[int]]
    features_per_stage: list[int]
    plans_file: Path

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("dataset", self.dataset),
            ("configuration", CONFIGURATION),
            ("target spacing (mm)", " x ".join(f"{s:.3g}" for s in self.spacing)),
            ("median shape", " x ".join(map(str, self.median_shape))),
            ("patch size", " x ".join(map(str, self.patch_size))),
            ("batch size", str(self.batch_size)),
            ("network", self.network.rpartition(".")[2]),
            ("stages", f"{self.n_stages} (features {', '.join(map(str, self.features_per_stage))})"),
            ("strides", " ".join("x".join(map(str, s)) for s in self.strides)),
            ("plans", str(self.plans_file)),
        ]


def dataset_name(dataset: str | int) -> str:
    """Accept 4, '4', 'Dataset004_Hippocampus' or 'Hippocampus' and return nnU-Net's folder name."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    raw = Path(os.environ["nnUNet_raw"])
    text = str(dataset)
    if not text.isdigit() and not text.startswith("Dataset"):
        matches = [p.name for p in raw.glob(f"Dataset???_{text}") if p.is_dir()]
        if len(matches) != 1:
            raise MedmambaError(f"dataset '{text}': {'not found' if not matches else 'ambiguous'} in {raw}")
        return matches[0]
    try:
        return maybe_convert_to_dataset_name(int(text) if text.isdigit() else text)
    except RuntimeError:
        raise MedmambaError(f"dataset '{text}': not found in {raw}") from None


def dataset_id(name: str) -> int:
    return int(name[7:10])


def plan_dataset(ws: Workspace, dataset: str | int, num_processes: int = 1, verify: bool = True,
                 gpu_memory_target_gb: float | None = None) -> PlanSummary:
    """Run fingerprint -> plan -> preprocess for 3d_fullres and return a summary of the plan."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    ws.activate()  # several workspaces may be open in one process (tests, notebooks): point nnU-Net at ours
    name = dataset_name(dataset)
    did = dataset_id(name)
    try:
        extract_fingerprint_dataset(did, DatasetFingerprintExtractor, num_processes=num_processes,
                                    check_dataset_integrity=verify, clean=True, verbose=False,
                                    show_progress_bar=False)
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise MedmambaError(f"{ws.raw / name}: dataset check failed: {exc}") from None
    plan_experiment_dataset(did, ExperimentPlanner, gpu_memory_target_in_gb=gpu_memory_target_gb)
    preprocess_dataset(did, PLANS_NAME, [CONFIGURATION], [num_processes], verbose=False, show_progress_bar=False)
    return summarize_plan(ws.preprocessed / name / f"{PLANS_NAME}.json")


def summarize_plan(plans_file: Path) -> PlanSummary:
    """Read the planned 3d_fullres configuration back from nnU-Net's plans file."""
    plans = json.loads(Path(plans_file).read_text(encoding="utf-8"))
    cfg = plans["configurations"][CONFIGURATION]
    arch = cfg["architecture"]
    return PlanSummary(
        dataset=plans["dataset_name"],
        spacing=[float(s) for s in cfg["spacing"]],
        median_shape=[int(s) for s in cfg["median_image_size_in_voxels"]],
        patch_size=[int(s) for s in cfg["patch_size"]],
        batch_size=int(cfg["batch_size"]),
        network=arch["network_class_name"],
        n_stages=int(arch["arch_kwargs"]["n_stages"]),
        strides=[[int(x) for x in s] for s in arch["arch_kwargs"]["strides"]],
        features_per_stage=[int(f) for f in arch["arch_kwargs"]["features_per_stage"]],
        plans_file=Path(plans_file),
    )
