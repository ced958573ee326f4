"""Fair comparison of networks: one dataset, one fold, one budget, one validation; every run kept as data.

A run is (network, seed) under a protocol: fold, epochs x iterations, preset profile and the hash of the
resolved preset. Each finished run writes `<network>_seed<S>.json` into the output folder, atomically:
Dice and HD95 per validation case and label, the training curve, time and memory, and the versions and
commit it ran with. That file is the result; tables and plots are rebuilt from such files
(`medmamba.report.comparison`). A run whose file exists for the same protocol is skipped; an interrupted
run resumes from its last checkpoint; a file from another protocol is never overwritten.

    medmamba compare Hippocampus --networks nnunet:0,nnunet:1,mhs_vm --preset short -o docs/results/hippocampus
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medmamba.errors import MedmambaError
from medmamba.workspace import Workspace

#: The fields that make two result files the same experiment.
PROTOCOL_KEYS = ("dataset", "network", "seed", "fold", "profile", "epochs", "iterations", "preset_sha256")
RESULT_FORMAT = 1


@dataclass(frozen=True)
class Run:
    """One training run of the queue."""

    network: str
    seed: int

    @property
    def filename(self) -> str:
        return f"{self.network}_seed{self.seed}.json"


def parse_runs(networks: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """`name` runs every seed in `seeds`; `name:S` runs just seed S; order is kept (it is the queue's order)."""
    from medmamba.registry import get_network

    runs: list[Run] = []
    for item in networks:
        name, _, seed = item.strip().partition(":")
        get_network(name)  # unknown names fail now, not after hours of training the others
        try:
            chosen = [int(seed)] if seed else list(seeds)
        except ValueError:
            raise MedmambaError(f"--networks {item}: the seed after ':' must be an integer") from None
        runs += [Run(name, s) for s in chosen if Run(name, s) not in runs]
    return runs


def select_part(runs: Sequence[Run], num_parts: int = 1, part_id: int = 0) -> list[Run]:
    """Runs k with k mod num_parts == part_id, in queue order (nnU-Net's -num_parts/-part_id convention,
    as `predict --num-parts`). Each run belongs to exactly one part and writes its own result file, so parts
    run as independent workers (one per GPU or node: torchrun, a SLURM array, a Kubernetes indexed Job)."""
    from medmamba.shard import select_part as split

    return split(runs, num_parts, part_id)


def effective_preset(network: str, profile: str, epochs: int | None, iterations: int | None) -> dict[str, Any]:
    """The preset a run trains with: the profile resolved, with the budget overrides written in."""
    from medmamba.presets import load_preset

    preset = load_preset(network, profile)
    if epochs is not None:
        preset["training"]["num_epochs"] = int(epochs)
    if iterations is not None:
        preset["training"]["num_iterations_per_epoch"] = int(iterations)
    return preset


def preset_sha256(preset: dict[str, Any]) -> str:
    """Hash of what decides the training (architecture, recipe, limits), independent of key order."""
    body = {k: preset[k] for k in ("architecture", "training", "limits")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def protocol(dataset: str, run: Run, fold: int, profile: str, preset: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run: two results with the same protocol are the same experiment."""
    t = preset["training"]
    return {"dataset": dataset, "network": run.network, "seed": run.seed, "fold": fold, "profile": profile,
            "epochs": int(t["num_epochs"]), "iterations": int(t["num_iterations_per_epoch"]),
            "preset_sha256": preset_sha256(preset)}


def existing_result(path: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result when it is this protocol's; an error when the file belongs to another protocol."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text(encoding="utf-8"))
    differs = [k for k in PROTOCOL_KEYS if row.get("protocol", {}).get(k) != wanted[k]]
    if differs:
        raise MedmambaError(f"{path}: a result of another protocol ({', '.join(differs)} differ); "
                            "move it away or choose another --output folder")
    return row


def _source_commit() -> dict[str, Any]:
    """Commit of the source tree medmamba runs from, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, encoding="utf-8").stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, encoding="utf-8").stdout.strip() != ""
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def score_validation(fold_dir: Path, gt_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """case -> label -> {dice, hd95_mm}: Dice from nnU-Net's own summary.json, HD95 (mm) from medmamba's
    metrics on the same prediction/reference pairs (nnU-Net computes none)."""
    from medmamba.metrics import case_metrics
    from medmamba.report.cases import read_volume

    summary = json.loads((fold_dir / "validation" / "summary.json").read_text(encoding="utf-8"))
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for entry in summary["metric_per_case"]:
        pred_path = Path(entry["prediction_file"])
        case = pred_path.name.removesuffix(".nii.gz")
        ref = read_volume(gt_dir / pred_path.name)
        pred = read_volume(fold_dir / "validation" / pred_path.name)
        labels = [int(k) for k in entry["metrics"]]
        ours = case_metrics(ref.array, pred.array, ref.spacing, labels)
        cases[case] = {str(lab): {"dice": float(entry["metrics"][str(lab)]["Dice"]),
                                  "hd95_mm": float(ours[lab]["hd95_mm"])} for lab in labels}
    return cases


def _curve(log: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch losses, pseudo-Dice and learning rate from nnU-Net's logger (the training curve as data)."""
    as_floats = lambda xs: [float(x) for x in xs]  # noqa: E731
    return {"train_loss": as_floats(log["train_losses"]), "val_loss": as_floats(log["val_losses"]),
            "pseudo_dice": [as_floats(d) for d in log["dice_per_class_or_region"]],
            "ema_fg_dice": as_floats(log["ema_fg_dice"]), "lr": as_floats(log["lrs"]),
            "epoch_s": [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"],
                                              strict=False)]}


def run_one(ws: Workspace, dataset: str, run: Run, fold: int, profile: str, preset: dict[str, Any],
            device: str = "auto", verbose: bool = False,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train + validate one run (resuming an interrupted one) and return its result record; `on_epoch` gets
    nnU-Net's log of each finished epoch (progress for a queue that runs for hours)."""
    from medmamba.checkpoint import load_checkpoint
    from medmamba.kernels.bench import peak_rss_kib, reset_peak_rss_kib
    from medmamba.plan import dataset_name
    from medmamba.report.build import versions
    from medmamba.runtime import resolve_device
    from medmamba.train import model_dir, train_model
    from medmamba.workspace import SIDECAR

    reset_peak_rss_kib()
    dev = resolve_device(device)
    folder = model_dir(ws, dataset, run.network, profile, run.seed)
    fold_dir = folder / f"fold_{fold}"
    resume = any((fold_dir / c).is_file() for c in ("checkpoint_latest.pth", "checkpoint_final.pth"))
    # the sidecar records the preset the model trains with (budget included): resume only the same recipe
    if resume and (folder / SIDECAR).is_file() and \
            preset_sha256(json.loads(
                (folder / SIDECAR).read_text(encoding="utf-8"))["preset"]) != preset_sha256(preset):
        raise MedmambaError(f"{folder / SIDECAR}: this model was trained with another preset; remove the folder "
                            "to start the run again")
    t = preset["training"]
    start = time.perf_counter()
    result = train_model(ws, dataset, run.network, fold, preset, device=str(dev), continue_training=resume,
                         validate=True, seed=run.seed, verbose=verbose, on_epoch=on_epoch)
    wall = time.perf_counter() - start
    if result.validation is None:
        raise MedmambaError(f"{fold_dir}: nnU-Net's validation wrote no summary.json")
    log = load_checkpoint(fold_dir / "checkpoint_final.pth")["logging"]
    curve = _curve(log)
    iterations = t["num_epochs"] * t["num_iterations_per_epoch"]
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    batch = plans["configurations"]["3d_fullres"]["batch_size"]
    train_s = sum(curve["epoch_s"])
    cases = score_validation(fold_dir, ws.preprocessed / dataset_name(dataset) / "gt_segmentations")
    labels = sorted({lab for c in cases.values() for lab in c}, key=int)
    names = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
    mean_label = {lab: {m: _mean([c[lab][m] for c in cases.values()]) for m in ("dice", "hd95_mm")}
                  for lab in labels}
    return {
        "format": RESULT_FORMAT,
        "protocol": protocol(dataset_name(dataset), run, fold, profile, preset),
        "preset": preset,
        "budget": {"epochs": t["num_epochs"], "iterations_per_epoch": t["num_iterations_per_epoch"],
                   "batch_size": batch, "patches": iterations * batch},
        "source": _source_commit(),
        "versions": versions(),
        "device": str(dev),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed": resume,
        "label_names": {str(v): k for k, v in names.items() if str(v) in labels},
        "mean_dice": _mean([mean_label[lab]["dice"] for lab in labels]),
        "per_label": mean_label,
        "per_case": cases,
        "unlearnt_labels": result.warnings,
        "n_val_cases": len(cases),
        "train_s": train_s,
        "s_per_iteration": train_s / iterations,
        "wall_s_this_process": wall,
        "peak_rss_mb_this_process": peak_rss_kib() / 1024,
        "curve": curve,
        "model_dir": str(folder),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def estimate_seconds(output: Path, network: str, estimates: dict[str, float]) -> float | None:
    """Expected wall time of a run: the longest uninterrupted finished run of the same network in `output`,
    else the caller's estimate (seconds); None when neither is known."""
    walls = []
    for p in output.glob(f"{network}_seed*.json"):
        row = json.loads(p.read_text(encoding="utf-8"))
        if row.get("protocol", {}).get("network") == network and not row.get("resumed"):
            walls.append(float(row["wall_s_this_process"]))
    return max(walls) if walls else estimates.get(network)


def _bind(on_epoch: Callable[[Run, dict[str, Any]], None] | None, run: Run
          ) -> Callable[[dict[str, Any]], None] | None:
    return None if on_epoch is None else lambda info: on_epoch(run, info)


def compare_networks(ws: Workspace, dataset: str, runs: Sequence[Run], fold: int, profile: str,
                     output: Path, epochs: int | None = None, iterations: int | None = None, device: str = "auto",
                     deadline: float | None = None, estimates: dict[str, float] | None = None,
                     on_result: Callable[[Run, dict[str, Any] | None, str], None] | None = None,
                     on_epoch: Callable[[Run, dict[str, Any]], None] | None = None,
                     ) -> list[dict[str, Any]]:
    """Run (or pick up) every run in order; returns the results that exist at the end.

    `deadline` (a time.time() value) keeps the queue from starting a run whose estimate does not fit before
    it; `on_result(run, row, status)` reports each run as 'done', 'skipped' (result existed) or 'not started',
    and `on_epoch(run, info)` each finished epoch of a run being trained.
    """
    from medmamba.atomic import atomic_write, remove_stale_partials
    from medmamba.plan import dataset_name

    output.mkdir(parents=True, exist_ok=True)
    name = dataset_name(dataset)
    rows = []
    for run in runs:
        preset = effective_preset(run.network, profile, epochs, iterations)
        path = output / run.filename
        remove_stale_partials(output, [run.filename])  # a run's file has one writer (its part): its leftovers
        row = existing_result(path, protocol(name, run, fold, profile, preset))
        status = "skipped"
        if row is None:
            estimate = estimate_seconds(output, run.network, estimates or {})
            if deadline is not None and (estimate is None or time.time() + estimate > deadline):
                why = "no time estimate" if estimate is None else f"needs ~{estimate / 3600:.1f} h"
                if on_result is not None:
                    on_result(run, None, f"not started ({why} before the deadline)")
                continue
            row = run_one(ws, dataset, run, fold, profile, preset, device, on_epoch=_bind(on_epoch, run))
            atomic_write(path, json.dumps(row, indent=2))
            status = "done"
        rows.append(row)
        if on_result is not None:
            on_result(run, row, status)
    return rows
