"""Aggregates per network and label, worst-first ordering, and paired comparisons against a baseline.

Paired tests use only cases scored by both networks where both values are finite (NaN pairs dropped and
counted); the test is scipy.stats.wilcoxon (two-sided, zero differences dropped: zero_method='wilcox').
p-values are not corrected for multiple comparisons; the report says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmamba.metrics import summarise
from medmamba.report.cases import CaseResult

SUMMARY_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "vol_diff_ml")
PAIRED_METRICS = ("dice", "hd95_mm", "assd_mm", "nsd")


def values(results: Sequence[CaseResult], net: str, label: int, metric: str) -> list[float]:
    """Per-case values of one network/label/metric over the cases that network predicted."""
    return [float(r.metrics[net][label][metric]) for r in results if net in r.metrics]


def aggregates(results: Sequence[CaseResult], nets: Sequence[str], labels: Sequence[int],
               metrics: Sequence[str] = SUMMARY_METRICS) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """net -> label -> metric -> {mean, std, median, q25, q75, n, nan}."""
    return {net: {lab: {m: summarise(values(results, net, lab, m)) for m in metrics} for lab in labels}
            for net in nets}


def case_score(result: CaseResult, net: str, labels: Sequence[int]) -> float:
    """Mean Dice over labels (NaN labels left out); NaN when no label has a Dice."""
    if net not in result.metrics:
        return math.nan
    d = np.array([result.metrics[net][lab]["dice"] for lab in labels], dtype=float)
    return float(np.nanmean(d)) if np.isfinite(d).any() else math.nan


def worst_first(results: Sequence[CaseResult], net: str, labels: Sequence[int]) -> list[CaseResult]:
    """Cases by ascending mean Dice of `net`; cases without a score (all labels NaN) go last."""
    def key(r: CaseResult) -> tuple[int, float, str]:
        s = case_score(r, net, labels)
        return (1, 0.0, r.case) if math.isnan(s) else (0, s, r.case)
    return sorted(results, key=key)


def paired(results: Sequence[CaseResult], baseline: str, other: str, label: int, metric: str) -> dict[str, Any]:
    """Paired difference other - baseline on shared cases, with a two-sided Wilcoxon signed-rank test."""
    shared = [r for r in results if baseline in r.metrics and other in r.metrics]
    return paired_values([r.metrics[baseline][label][metric] for r in shared],
                         [r.metrics[other][label][metric] for r in shared])


def paired_values(baseline: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """other - baseline over pairs where both are finite, with a two-sided Wilcoxon signed-rank test."""
    from scipy.stats import wilcoxon

    a = np.array(baseline, dtype=float)
    b = np.array(other, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    diff = b[ok] - a[ok]
    out: dict[str, Any] = {"n_pairs": int(ok.sum()), "n_dropped_nan": int((~ok).sum()),
                           "mean_diff": math.nan, "std_diff": math.nan, "median_diff": math.nan,
                           "n_other_higher": int((diff > 0).sum()), "n_other_lower": int((diff < 0).sum()),
                           "n_tied": int((diff == 0).sum()), "wilcoxon_statistic": math.nan, "p_value": math.nan,
                           "note": ""}
    if diff.size:
        out.update(mean_diff=float(diff.mean()), median_diff=float(np.median(diff)),
                   std_diff=float(diff.std(ddof=1)) if diff.size > 1 else 0.0)
    if not np.any(diff != 0):
        out["note"] = "no pairs" if diff.size == 0 else "all differences zero"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-n warnings; n_pairs is reported beside p
        res = wilcoxon(b[ok], a[ok], zero_method="wilcox", alternative="two-sided")
    out["wilcoxon_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def comparison(results: Sequence[CaseResult], nets: Sequence[str], baseline: str, labels: Sequence[int],
               metrics: Sequence[str] = PAIRED_METRICS) -> dict[str, dict[int, dict[str, dict[str, Any]]]]:
    """other network -> label -> metric -> paired statistics against the baseline."""
    return {net: {lab: {m: paired(results, baseline, net, lab, m) for m in metrics} for lab in labels}
            for net in nets if net != baseline}
