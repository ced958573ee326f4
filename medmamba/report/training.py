"""Training report of one nnU-Net fold folder: loss, pseudo-Dice and learning-rate curves as one HTML page.

nnU-Net's MetaLogger keeps its per-epoch lists only inside checkpoints, but the trainer also prints each
epoch to training_log_*.txt ("Epoch N", "Current learning rate: x", "train_loss x", "val_loss x",
"Pseudo dice [..]", "Epoch time: x s"); those text logs are parsed here, so no pickle is ever opened.
A resumed run writes a new log file; later files override earlier epochs with the same number.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medmamba.atomic import atomic_write
from medmamba.errors import MedmambaError

_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} [\d:.]+: (?P<msg>.*?)\s*$")
_NUMPY_WRAP = re.compile(r"np\.\w+\(([^()]*)\)")  # numpy>=2 reprs: np.float32(0.5) -> 0.5
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)


@dataclass
class TrainingLog:
    """Per-epoch values parsed from nnU-Net training logs (NaN where an epoch lacks a value)."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)
    final_validation_dice: float | None = None
    files: list[str] = field(default_factory=list)


def _floats(text: str) -> list[float]:
    return [float(x) for x in _FLOAT.findall(_NUMPY_WRAP.sub(r"\1", text))]


def parse_training_logs(fold_dir: Path) -> TrainingLog:
    """Read every training_log_*.txt of a fold folder (in name order = start time order)."""
    fold_dir = Path(fold_dir)
    files = sorted(fold_dir.glob("training_log_*.txt"))
    if not files:
        raise MedmambaError(f"{fold_dir}: no nnU-Net training_log_*.txt found")
    per_epoch: dict[int, dict[str, object]] = {}
    final = None
    for path in files:
        epoch = None
        for raw in path.read_text(errors="replace", encoding="utf-8").splitlines():
            m = _LINE.match(raw)
            if not m:
                continue
            msg = m.group("msg")
            try:
                if msg.startswith("Epoch time:"):
                    if epoch is not None:
                        per_epoch[epoch]["time"] = _floats(msg)[0]
                elif re.fullmatch(r"Epoch \d+", msg):
                    epoch = int(msg.split()[1])
                    per_epoch[epoch] = {}
                elif epoch is None:
                    if msg.startswith("Mean Validation Dice:"):
                        final = _floats(msg)[0]
                elif msg.startswith("Current learning rate:"):
                    per_epoch[epoch]["lr"] = _floats(msg.split(":", 1)[1])[0]
                elif msg.startswith("train_loss"):
                    per_epoch[epoch]["train"] = _floats(msg[len("train_loss"):])[0]
                elif msg.startswith("val_loss"):
                    per_epoch[epoch]["val"] = _floats(msg[len("val_loss"):])[0]
                elif msg.startswith("Pseudo dice"):
                    per_epoch[epoch]["dice"] = _floats(msg[len("Pseudo dice"):])
                elif msg.startswith("Mean Validation Dice:"):
                    final = _floats(msg)[0]
            except IndexError:
                continue  # a line cut short by an interrupted run: keep what was logged
    log = TrainingLog(final_validation_dice=final, files=[p.name for p in files])
    ema = math.nan
    for ep in sorted(per_epoch):
        v = per_epoch[ep]
        if "train" not in v and "val" not in v:
            continue  # epoch started but never finished
        log.epochs.append(ep)
        log.train_loss.append(float(v.get("train", math.nan)))  # type: ignore[arg-type]
        log.val_loss.append(float(v.get("val", math.nan)))  # type: ignore[arg-type]
        dice = list(v.get("dice", []))  # type: ignore[call-overload]
        log.pseudo_dice.append(dice)
        log.lr.append(float(v.get("lr", math.nan)))  # type: ignore[arg-type]
        log.epoch_time_s.append(float(v.get("time", math.nan)))  # type: ignore[arg-type]
        mean = float(np.nanmean(dice)) if dice and np.isfinite(dice).any() else math.nan
        # nnU-Net's MetaLogger: ema = 0.9 * previous + 0.1 * mean pseudo Dice, started at the first value
        ema = mean if math.isnan(ema) else 0.9 * ema + 0.1 * mean
        log.ema.append(ema)
    if not log.epochs:
        raise MedmambaError(f"{files[-1]}: no finished epoch in the training log")
    width = max(len(d) for d in log.pseudo_dice)
    log.pseudo_dice = [d + [math.nan] * (width - len(d)) for d in log.pseudo_dice]
    return log


#: A label whose Dice stays below this after training was not learnt (a half-learnt one scores far higher).
UNLEARNT_DICE = 0.1


def unlearnt_labels(fold_dir: Path, threshold: float = UNLEARNT_DICE) -> list[str]:
    """One warning per label that training did not learn: its Dice on the full validation cases (nnU-Net's
    summary.json) or, without one, its last epoch's pseudo-Dice is below `threshold`.

    Short CPU budgets can end with one structure at Dice ~0 while the other looks fine; a user reading only the
    mean would not notice that half the anatomy is missing.
    """
    fold = Path(fold_dir)
    names: dict[str, str] = {}
    dataset_json = fold.parent / "dataset.json"
    if dataset_json.is_file():
        names = {str(v): k for k, v in json.loads(dataset_json.read_text(encoding="utf-8")).get("labels", {}).items()
                 if isinstance(v, int)}
    scores: dict[str, float] = {}
    source = "validation Dice"
    summary = fold / "validation" / "summary.json"
    if summary.is_file():
        scores = {str(k): float(v["Dice"]) for k, v in json.loads(
            summary.read_text(encoding="utf-8")).get("mean", {}).items()}
    else:
        log = parse_training_logs(fold)
        scores = {str(i + 1): float(d) for i, d in enumerate(log.pseudo_dice[-1])}
        source = f"pseudo-Dice at epoch {log.epochs[-1]}"
    out = []
    for label, dice in sorted(scores.items(), key=lambda kv: int(kv[0])):
        if not dice >= threshold:  # NaN counts as not learnt
            name = f" ({names[label]})" if label in names else ""
            out.append(f"label {label}{name} not learnt ({source} {dice:.3f}): train longer or use --preset default")
    return out


def write_training_report(fold_output_folder: Path, out_file: Path | None = None) -> Path:
    """Write training_report.html (curves + per-epoch table) into the fold folder; returns its path.

    Meant to be called at the end of `medmamba train`; also picks up validation/summary.json if present.
    """
    from medmamba.report.figures import fmt, to_png, training_curves
    from medmamba.report.html import CSS, esc, img_tag, table

    fold = Path(fold_output_folder)
    log = parse_training_logs(fold)
    fig = training_curves(log.epochs, log.train_loss, log.val_loss, log.pseudo_dice, log.ema, log.lr)
    png = to_png(fig, dpi=90)
    best = int(np.nanargmax(log.ema)) if np.isfinite(log.ema).any() else None
    facts = [("epochs logged", str(len(log.epochs))), ("last epoch", str(log.epochs[-1])),
             ("final train loss", fmt(log.train_loss[-1], 4)), ("final validation loss", fmt(log.val_loss[-1], 4)),
             ("best EMA pseudo Dice", f"{fmt(log.ema[best], 4)} (epoch {log.epochs[best]})" if best is not None
              else "NaN"),
             ("median epoch time", f"{fmt(float(np.nanmedian(log.epoch_time_s)), 2)} s"
              if np.isfinite(log.epoch_time_s).any() else "n/a"),
             ("log files", ", ".join(log.files))]
    validation = fold / "validation" / "summary.json"
    if log.final_validation_dice is not None:
        facts.append(("mean validation Dice (full cases)", fmt(log.final_validation_dice, 4)))
    val_html = ""
    if validation.is_file():
        try:
            summary = json.loads(validation.read_text(encoding="utf-8"))
            rows = [[esc(lab), fmt(v.get("Dice", math.nan), 4), fmt(v.get("IoU", math.nan), 4)]
                    for lab, v in summary.get("mean", {}).items()]
            val_html = "<h2>Validation (nnU-Net summary.json)</h2>" + table(["label", "Dice", "IoU"], rows)
        except (json.JSONDecodeError, AttributeError, TypeError):
            val_html = f"<p>{esc(validation)}: unreadable, skipped</p>"
    warnings_html = "".join(f"<p class='bad'>{esc(w)}</p>" for w in unlearnt_labels(fold))
    n_cls = len(log.pseudo_dice[0])
    epoch_rows = [[str(ep), fmt(tr, 4), fmt(va, 4)] + [fmt(x, 4) for x in d] + [fmt(e, 4), fmt(lr, 5), fmt(t, 1)]
                  for ep, tr, va, d, e, lr, t in zip(log.epochs, log.train_loss, log.val_loss, log.pseudo_dice,
                                                     log.ema, log.lr, log.epoch_time_s, strict=True)]
    cols = ["epoch", "train loss", "val loss"] + [f"pseudo Dice {c + 1}" for c in range(n_cls)] + \
        ["EMA", "lr", "time (s)"]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Training report {esc(fold.name)}"
            f"</title><style>{CSS}</style></head><body><h1>Training report: {esc(fold.parent.name)}/{esc(fold.name)}"
            f"</h1><p class='meta'>Created {created} from <code>{esc(fold)}</code>. Pseudo Dice is nnU-Net's "
            "per-epoch Dice on validation patches (not full cases); EMA = 0.9·previous + 0.1·mean, as nnU-Net "
            "uses to pick checkpoint_best.</p>" + warnings_html
            + table(["", ""], [[esc(a), esc(b)] for a, b in facts]) + img_tag(png, "training curves") + val_html
            + "<h2>Per epoch</h2>" + table(cols, epoch_rows) + "</body></html>")
    out = Path(out_file) if out_file else fold / "training_report.html"
    return atomic_write(out, page)
