"""Train several networks on one dataset with one budget and tabulate Dice and wall time.

The fair-comparison protocol: same planned data, same fold of nnU-Net's 5-fold split, same epochs x
iterations, same validation (nnU-Net's own prediction of the fold's held-out cases and its metrics).
One JSON file per network is written when that network is done, so an interrupted run continues where it
stopped (finished networks are skipped, the interrupted one resumes from its checkpoint_latest).

    medmamba compare DATASET --networks nnunet,lightm_unet --epochs 6 --iterations 50 -o out/
    python -m medmamba.compare DATASET --networks nnunet,lightm_unet --epochs 6 --iterations 50 -o out/
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medmamba.workspace import open_workspace


def run_one(ws, dataset: str, network: str, fold: int, epochs: int, iterations: int, preset: str) -> dict[str, Any]:
    """Train + validate one network (resuming an interrupted run); returns Dice per label, mean, and times."""
    from medmamba.checkpoint import load_checkpoint
    from medmamba.plan import dataset_name
    from medmamba.registry import get_network
    from medmamba.train import train_model

    trainer = get_network(network).trainer.rpartition(".")[2]
    fold_dir = ws.results / dataset_name(dataset) / f"{trainer}_{preset}__nnUNetPlans__3d_fullres" / f"fold_{fold}"
    resume = any((fold_dir / c).is_file() for c in ("checkpoint_latest.pth", "checkpoint_final.pth"))
    start = time.perf_counter()
    result = train_model(ws, dataset, network, fold, preset, epochs, iterations, "cpu", continue_training=resume,
                         validate=True)
    wall = time.perf_counter() - start
    log = load_checkpoint(result.fold_dir / "checkpoint_final.pth")["logging"]
    train_s = sum(e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"], strict=False))
    val = result.validation or {}
    return {
        "network": network,
        "fold": fold,
        "epochs": epochs,
        "iterations": iterations,
        "preset": preset,
        "dice_per_label": {k: v["Dice"] for k, v in val.get("mean", {}).items()},
        "mean_dice": val.get("foreground_mean", {}).get("Dice"),
        "n_val_cases": len(val.get("metric_per_case", [])),
        "wall_s": wall,
        "train_s": train_s,
        "resumed": resume,
        "model_dir": str(result.model_dir),
    }


def table(rows: list[dict[str, Any]], baseline: str = "nnunet") -> str:
    """Markdown table with the difference to the baseline's mean Dice."""
    base = next((r["mean_dice"] for r in rows if r["network"] == baseline), None)
    labels = sorted({k for r in rows for k in r["dice_per_label"]}, key=int)
    head = "| network | " + " | ".join(f"Dice {k}" for k in labels) + " | mean Dice | vs nnunet | train (min) |"
    lines = [head, "|" + "---|" * (len(labels) + 4)]
    for r in rows:
        diff = f"{r['mean_dice'] - base:+.3f}" if base is not None and r["mean_dice"] is not None else "n/a"
        per = " | ".join(f"{r['dice_per_label'].get(k, float('nan')):.3f}" for k in labels)
        minutes = r.get("train_s", r["wall_s"]) / 60
        lines.append(f"| {r['network']} | {per} | {r['mean_dice']:.3f} | {diff} | {minutes:.1f} |")
    return "\n".join(lines)


def compare_networks(ws, dataset: str, networks: list[str], fold: int, epochs: int, iterations: int, preset: str,
                     output: Path, on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run (or pick up) every network in turn; one JSON per network in `output`, written when it is complete.

    A network whose JSON exists is not retrained; an interrupted one resumes from its checkpoint_latest.
    """
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for network in networks:
        path = output / f"{network}.json"
        if path.is_file():
            row = json.loads(path.read_text())
        else:
            row = run_one(ws, dataset, network, fold, epochs, iterations, preset)
            tmp = path.with_name(f".{path.name}.partial")
            tmp.write_text(json.dumps(row, indent=2))
            tmp.replace(path)
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--networks", default="nnunet")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    ws = open_workspace(args.workdir)
    done: list[dict[str, Any]] = []

    def show(row: dict[str, Any]) -> None:
        done.append(row)
        print(table(done), flush=True)

    compare_networks(ws, args.dataset, args.networks.split(","), args.fold, args.epochs, args.iterations,
                     args.preset, args.output, on_result=show)


if __name__ == "__main__":
    main()
