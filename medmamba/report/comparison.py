"""Tables and plots of a network comparison, rebuilt from its committed result files alone.

Input: a folder of `<network>_seed<S>.json` files written by `medmamba compare`. Output: a Markdown table
(mean Dice and its spread over seeds, per-label Dice, HD95, difference to the baseline with a paired
Wilcoxon test over the validation cases, time and memory), a box plot of per-case Dice by network, and the
training curves of runs below a Dice threshold. Nothing in the outputs is typed by hand, so a new result
file and one command update the docs.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from medmamba.atomic import atomic_write
from medmamba.errors import MedmambaError


@dataclass
class NetworkRuns:
    """The result files of one network under one protocol (one per seed)."""

    network: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r["protocol"]["seed"] for r in self.runs]

    def mean_dice(self) -> float | None:
        """Mean Dice over this network's seeds."""
        return _mean_finite([r["mean_dice"] for r in self.runs])

    def case_dice(self) -> dict[str, float]:
        """Per-case mean Dice over labels, averaged over this network's seeds (the paired test's unit)."""
        per_case: dict[str, list[float]] = {}
        for r in self.runs:
            for case, labels in r["per_case"].items():
                vals = [v["dice"] for v in labels.values() if _finite(v["dice"])]
                if vals:
                    per_case.setdefault(case, []).append(sum(vals) / len(vals))
        return {c: sum(v) / len(v) for c, v in per_case.items()}


def _versus(g: NetworkRuns, ref: NetworkRuns) -> tuple[str, str]:
    """(mean Dice of g minus ref's, Wilcoxon p over the cases both scored): the one paired comparison, used
    against the baseline and between an ablation and its network."""
    from medmamba.report.stats import paired_values

    cases, ref_cases = g.case_dice(), ref.case_dice()
    shared = sorted(set(cases) & set(ref_cases))
    stats = paired_values([ref_cases[c] for c in shared], [cases[c] for c in shared])
    mean, ref_mean = g.mean_dice(), ref.mean_dice()
    diff = mean - ref_mean if _finite(mean) and _finite(ref_mean) else None
    return _fmt(diff, signed=True), f"{_p(stats['p_value'])} (n={stats['n_pairs']})"


def _finite(x: Any) -> TypeGuard[float]:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def load_results(folder: Path) -> list[NetworkRuns]:
    """Every result file in `folder`, grouped by network (registry order, unknown names last)."""
    from medmamba.registry import NETWORKS

    files = sorted(Path(folder).glob("*_seed*.json"))
    if not files:
        raise MedmambaError(f"{folder}: no result files (<network>_seed<S>.json)")
    groups: dict[str, NetworkRuns] = {}
    protocols = set()
    for path in files:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
            net = row["protocol"]["network"]
            protocols.add(tuple((k, v) for k, v in row["protocol"].items() if k not in ("network", "seed",
                                                                                       "preset_sha256")))
        except (ValueError, KeyError, TypeError) as exc:
            raise MedmambaError(f"{path}: not a medmamba compare result ({exc})") from None
        groups.setdefault(net, NetworkRuns(net)).runs.append(row)
    if len(protocols) > 1:
        raise MedmambaError(f"{folder}: result files of different protocols (dataset, fold, profile or budget); "
                            "keep one protocol per folder")
    order = {name: i for i, name in enumerate(NETWORKS)}
    for g in groups.values():
        g.runs.sort(key=lambda r: r["protocol"]["seed"])
    return sorted(groups.values(), key=lambda g: (order.get(g.network, len(order)), g.network))


def _fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if not _finite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def results_table(groups: Sequence[NetworkRuns], baseline: str = "nnunet", label_names: dict[str, str] | None = None
                  ) -> str:
    """Markdown: one row per network; Dice is the mean over seeds, the spread is over seeds."""
    labels = sorted({lab for g in groups for r in g.runs for lab in r["per_label"]}, key=int)
    names = label_names or next((r.get("label_names") for g in groups for r in g.runs), None) or {}
    base = next((g for g in groups if g.network == baseline), None)
    head = ["network", "seeds", "mean Dice", "spread over seeds"]
    head += [f"Dice {names.get(lab, lab)}" for lab in labels]
    head += ["HD95 (mm)", f"vs {baseline}", "Wilcoxon p (cases)", "train (min)", "s / iteration", "peak RSS (GB)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for g in groups:
        dice = [r["mean_dice"] for r in g.runs if _finite(r["mean_dice"])]
        mean = g.mean_dice()
        if len(dice) > 1:
            spread = f"{min(dice):.3f}-{max(dice):.3f} (sd {statistics.stdev(dice):.3f})"
        else:
            spread = "one seed"
        per_label = [_fmt(_mean_of(g.runs, lambda r, lab=lab: r["per_label"][lab]["dice"])) for lab in labels]
        hd95 = _mean_of(g.runs, lambda r: _mean_finite([r["per_label"][lab]["hd95_mm"] for lab in labels]))
        diff, p = ("-", "-") if g.network == baseline or base is None else _versus(g, base)
        minutes = _mean_of(g.runs, lambda r: r["train_s"] / 60)
        per_it = _mean_of(g.runs, lambda r: r["s_per_iteration"])
        rss = _max_of(g.runs, lambda r: r.get("peak_rss_mb_this_process"))
        row = [g.network, ",".join(map(str, g.seeds)), f"**{_fmt(mean)}**", spread, *per_label, _fmt(hd95, 2),
               diff, p, _fmt(minutes, 1), _fmt(per_it, 2), _fmt(rss / 1024 if _finite(rss) else None, 2)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ablations_table(groups: Sequence[NetworkRuns]) -> str:
    """Markdown: each ablation (registry `ablation_of`) against its own network, paired over the cases; empty
    when no pair is present. What the removed part adds, where the main table only compares with the baseline."""
    from medmamba.registry import NETWORKS

    by_name = {g.network: g for g in groups}
    lines = []
    for g in groups:
        spec = NETWORKS.get(g.network)
        full = by_name.get(spec.ablation_of) if spec is not None and spec.ablation_of else None
        if full is None:
            continue
        diff, p = _versus(g, full)
        lines.append(f"| {g.network} | {full.network} | {_fmt(g.mean_dice())} | {_fmt(full.mean_dice())} | {diff} "
                     f"| {p} |")
    if not lines:
        return ""
    head = ["| ablation | ablation of | its mean Dice | that network's | difference | Wilcoxon p (cases) |",
            "|---|---|---:|---:|---:|---:|"]
    return "\n".join(head + lines)


def _mean_finite(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if _finite(v)]
    return statistics.fmean(vals) if vals else None


def _mean_of(runs: Sequence[dict[str, Any]], get: Any) -> float | None:
    return _mean_finite([get(r) for r in runs])


def _max_of(runs: Sequence[dict[str, Any]], get: Any) -> float | None:
    vals = [float(v) for v in map(get, runs) if _finite(v)]
    return max(vals) if vals else None


def protocol_line(groups: Sequence[NetworkRuns]) -> str:
    """One sentence naming the protocol every file shares, the versions and commits they ran with."""
    r0 = groups[0].runs[0]
    p, b = r0["protocol"], r0["budget"]
    commits = sorted({(r["source"].get("commit") or "unknown")[:10] for g in groups for r in g.runs})
    n = sum(len(g.runs) for g in groups)
    files = "1 result file" if n == 1 else f"{n} result files"
    return (f"{files}; dataset {p['dataset']}, fold {p['fold']}, profile `{p['profile']}`, "
            f"{b['epochs']} epochs x {b['iterations_per_epoch']} iterations x batch {b['batch_size']} = "
            f"{b['patches']} patches, {r0['n_val_cases']} validation cases; torch {r0['versions'].get('torch')}, "
            f"nnunetv2 {r0['versions'].get('nnunetv2')}; commits {', '.join(commits)}.")


def dice_box_plot(groups: Sequence[NetworkRuns], title: str) -> bytes:
    """PNG: a box of per-case Dice (seed-averaged) per network; each seed's mean Dice as a dot beside it."""
    from medmamba.report.figures import net_color, new_figure, to_png

    fig = new_figure(max(5.0, 1.0 + 0.9 * len(groups)), 4.0)
    ax = fig.subplots()
    data = [list(g.case_dice().values()) for g in groups]
    bp = ax.boxplot(data, positions=range(len(groups)), widths=0.55, patch_artist=True, showfliers=True,
                    flierprops={"markersize": 3})
    for j, box in enumerate(bp["boxes"]):
        box.set_facecolor(net_color(j))
        box.set_alpha(0.55)
    for j, g in enumerate(groups):
        seeds = [r["mean_dice"] for r in g.runs if _finite(r["mean_dice"])]
        ax.scatter([j + 0.38] * len(seeds), seeds, s=14, color="black", zorder=3)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g.network for g in groups], rotation=25, fontsize=8, ha="right")
    ax.set_ylabel("Dice per case (mean over labels and seeds)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig, dpi=100)


def curve_png(run: dict[str, Any]) -> bytes:
    """The training curve stored in a result file, drawn like a training report."""
    from medmamba.report.figures import to_png, training_curves

    c = run["curve"]
    fig = training_curves(list(range(len(c["train_loss"]))), c["train_loss"], c["val_loss"], c["pseudo_dice"],
                          c["ema_fg_dice"], c["lr"])
    fig.suptitle(f"{run['protocol']['network']} seed {run['protocol']['seed']}: mean Dice "
                 f"{_fmt(run['mean_dice'])}", fontsize=10)
    return to_png(fig, dpi=80)


def replace_between_markers(document: Path, key: str, body: str) -> None:
    """Replace the text between `<!-- results:KEY begin -->` and `<!-- results:KEY end -->` in place."""
    begin, end = f"<!-- results:{key} begin -->", f"<!-- results:{key} end -->"
    text = document.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise MedmambaError(f"{document}: no '{begin}' ... '{end}' markers to write the table between")
    new = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)
    atomic_write(document, new.encode("utf-8"))


@dataclass(frozen=True)
class ComparisonOutputs:
    """What `write_comparison` wrote."""

    table: str
    plot: Path
    curves: list[Path]


def write_comparison(folder: Path, document: Path | None = None, key: str | None = None, baseline: str = "nnunet",
                     curve_below: float = 0.80, label_names: dict[str, str] | None = None) -> ComparisonOutputs:
    """Rebuild the table, the box plot (`folder/dice_boxplot.png`) and the curves of runs below `curve_below`
    (`folder/curves/<network>_seed<S>.png`) from the result files; put the table into `document`."""
    groups = load_results(folder)
    table = results_table(groups, baseline, label_names)
    plot = Path(folder) / "dice_boxplot.png"
    atomic_write(plot, dice_box_plot(groups, f"{groups[0].runs[0]['protocol']['dataset']}: per-case Dice"))
    curves = []
    for g in groups:
        for r in g.runs:
            if not _finite(r["mean_dice"]) or r["mean_dice"] < curve_below:
                path = Path(folder) / "curves" / f"{g.network}_seed{r['protocol']['seed']}.png"
                path.parent.mkdir(exist_ok=True)
                atomic_write(path, curve_png(r))
                curves.append(path)
    body = f"{protocol_line(groups)}\n\n{table}\n\n![per-case Dice by network]({_rel(plot, document)})"
    ablations = ablations_table(groups)
    if ablations:
        body += "\n\nAblations against their own network (paired per case):\n\n" + ablations
    if curves:
        body += "\n\nTraining curves of runs below " + f"{curve_below:.2f}: " + ", ".join(
            f"[{p.stem}]({_rel(p, document)})" for p in curves)
    if document is not None:
        replace_between_markers(document, key or Path(folder).name, body)
    return ComparisonOutputs(body, plot, curves)


def _rel(path: Path, document: Path | None) -> str:
    if document is None:
        return str(path)
    import os

    return os.path.relpath(Path(path).resolve(), Path(document).resolve().parent)
