"""`build_report`: reference + prediction folders -> long-form CSV, nnU-Net-style JSON, HTML and optional PDF.

Everything is computed before anything is written, and each file is written under a temporary name and
renamed, so a bad input leaves the output folder as it was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.atomic import atomic_write
from medmamba.errors import MedmambaError
from medmamba.metrics import EMPTY_POLICIES, FLAGS, IMPLEMENTATION, METRICS, tolerance_for
from medmamba.report import figures as F
from medmamba.report import html as H
from medmamba.report.cases import CaseResult, Cases, collect_cases, find_image, read_volume
from medmamba.report.stats import aggregates, comparison, worst_first

# nnU-Net summary.json metric names for the metrics nnU-Net itself reports; the rest keep medmamba names.
NNUNET_NAMES = {"dice": "Dice", "iou": "IoU", "tp": "TP", "fp": "FP", "fn": "FN", "tn": "TN",
                "hd95_mm": "HD95", "assd_mm": "ASSD", "nsd": "NSD"}
CSV_COLUMNS = ("network", "case", "label", "label_name", *METRICS, "nsd_tolerance_mm", *FLAGS,
               "reference_file", "prediction_file")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VERSIONED = ("numpy", "scipy", "torch", "monai", "SimpleITK", "nibabel", "matplotlib", "nnunetv2")


@dataclass
class ReportData:
    """What the HTML and PDF writers render."""

    title: str
    cases: Cases
    nets: list[str]
    baseline: str
    aggregates: dict[str, Any]
    comparison: dict[str, Any]
    manifest: dict[str, Any]
    order: list[CaseResult]
    order_net: str
    box_png: bytes = b""
    paired_png: bytes = b""
    overlays: list[tuple[str, bytes, str]] = field(default_factory=list)
    overlay_slices: list[F.OverlaySlices] = field(default_factory=list)
    overlay_ids: dict[str, str] = field(default_factory=dict)
    overlay_note: str = ""


@dataclass
class ReportResult:
    """Paths written and headline numbers, for the CLI and for `predict` to print."""

    out_dir: Path
    csv: Path
    summaries: dict[str, Path]
    html: Path
    pdf: Path | None
    comparison: Path | None
    n_cases: int
    seconds: float
    data: ReportData


def versions() -> dict[str, str]:
    """Versions of medmamba, Python and the packages whose behaviour a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import medmamba

    out = {"medmamba": medmamba.__version__, "python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


def nnunet_summary(cases: Cases, net: str, manifest: Mapping[str, Any], agg: Mapping[int, Any]) -> dict[str, Any]:
    """summary.json as nnU-Net writes it (metric_per_case, mean, foreground_mean) plus extra metrics and keys.

    Means are NaN-ignoring means over cases per label (nnU-Net: np.nanmean), foreground_mean the mean of
    the label means; flags are per case only. NaN is written as NaN, as nnU-Net's json.dump does.
    """
    per_case: list[dict[str, Any]] = []
    for r in cases.results:
        if net not in r.metrics:
            continue
        per_case.append({
            "prediction_file": str(r.prediction_files[net]), "reference_file": str(r.reference_file),
            "metrics": {str(lab): {NNUNET_NAMES.get(k, k): _json_value(v) for k, v in r.metrics[net][lab].items()}
                        for lab in cases.labels}})
    numeric = [k for k in per_case[0]["metrics"][str(cases.labels[0])] if k not in FLAGS] if per_case else []
    mean: dict[str, dict[str, float]] = {}
    for lab in cases.labels:
        mean[str(lab)] = {}
        for k in numeric:
            arr = np.array([c["metrics"][str(lab)][k] for c in per_case], dtype=float)
            mean[str(lab)][k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    fg = {k: float(np.mean([mean[str(lab)][k] for lab in cases.labels])) for k in numeric}
    return {"foreground_mean": fg, "mean": mean, "metric_per_case": per_case,
            "label_names": {str(k): v for k, v in cases.label_names.items()},
            "aggregates": {str(lab): agg[lab] for lab in cases.labels},
            "network": net, "manifest": dict(manifest)}


def _csv_text(cases: Cases, nets: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for net in nets:
        for r in cases.results:
            if net not in r.metrics:
                continue
            for lab in cases.labels:
                m = r.metrics[net][lab]
                row: list[Any] = [net, r.case, lab, cases.label_names[lab]]
                for k in METRICS:
                    v = m[k]
                    row.append(("NaN" if math.isnan(v) else repr(float(v))) if isinstance(v, float) else v)
                row.append(m["nsd_tolerance_mm"])
                row += [int(bool(m[f])) for f in FLAGS]
                row += [str(r.reference_file), str(r.prediction_files[net])]
                w.writerow(row)
    return buf.getvalue()


def _caption(r: CaseResult, nets: Sequence[str], cases: Cases) -> str:
    parts = []
    for net in nets:
        if net not in r.metrics:
            parts.append(f"{net}: no prediction")
            continue
        per = "; ".join(f"{cases.label_names[lab]} Dice {F.fmt(m['dice'])}, HD95 {F.fmt(m['hd95_mm'], 2)} mm, "
                        f"ΔV {F.fmt(m['vol_diff_ml'], 3)} mL" for lab, m in r.metrics[net].items())
        parts.append(f"{net}: {per}" if len(nets) > 1 else per)
    return f"{r.case} — " + " | ".join(parts)


def _overlays(data: ReportData, images_dir: Path | None, max_overlays: int) -> None:
    """Re-read the shown cases (worst first) and draw them; keep only their 2D slices for the PDF."""
    shown = data.order[:max_overlays] if max_overlays >= 0 else data.order
    if len(shown) < len(data.order):
        data.overlay_note = f" Showing the {len(shown)} worst of {len(data.order)} cases (max_overlays)."
    labels = data.cases.labels
    for i, r in enumerate(shown):
        ref = read_volume(r.reference_file)
        preds = {n: read_volume(p).array for n, p in r.prediction_files.items()}
        image, note = None, ""
        img_path = find_image(images_dir, r.case)
        if img_path is not None:
            vol = read_volume(img_path, labels=False)
            if vol.array.shape == ref.array.shape:
                image = vol.array.astype(np.float32)
            else:
                note = f" (image {img_path.name} is on another grid {vol.array.shape[::-1]}: not shown)"
        elif images_dir is not None:
            note = f" (no image {r.case}.nii.gz or {r.case}_0000.nii.gz in the images folder)"
        ov = F.extract_slices(r.case, image, ref.array, preds, r.slices, ref.spacing, F.plane_names(ref.direction))
        data.overlays.append((r.case, F.overlay_png(ov, labels), _caption(r, data.nets, data.cases) + note))
        data.overlay_slices.append(ov)
        data.overlay_ids[r.case] = f"case-{i + 1}"


def _pdf_bytes(data: ReportData) -> bytes:
    """The same content as the HTML page, as PDF pages (matplotlib PdfPages)."""
    from matplotlib.backends.backend_pdf import PdfPages

    c, man = data.cases, data.manifest
    names, labels = c.label_names, c.labels
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": data.title, "Creator": "medmamba report"}) as pdf:
        lines = [f"Created {man['created_utc']}  medmamba {man['versions']['medmamba']}  cases: {len(c.results)}",
                 f"Reference: {man['inputs']['reference']}"]
        lines += [f"Prediction {n}: {p}" for n, p in man["inputs"]["predictions"].items()]
        lines += [f"Images: {man['inputs']['images']}", f"Labels: {names}",
                  f"Empty-mask policy {man['settings']['empty_policy']}:",
                  *_wrap(EMPTY_POLICIES[man["settings"]["empty_policy"]]),
                  f"NSD tolerance (mm): {man['settings']['nsd_tolerance_mm']}",
                  f"Components: scipy.ndimage.label, connectivity {man['settings']['connectivity']}", "",
                  "Implementations:"] + [f"  {k}: {v}" for k, v in man["implementation"].items()]
        for net, missing in c.missing_predictions.items():
            lines.append(f"{net}: {len(missing)} reference case(s) without prediction (not scored)")
        pdf.savefig(F.text_figure(data.title, lines))
        for net in data.nets:
            rows = H.summary_rows(data.aggregates[net], labels, names)
            for k in range(0, len(rows), 40):
                pdf.savefig(F.table_figure(f"Summary: {net}", H.SUMMARY_COLUMNS, rows[k:k + 40]))
        pdf.savefig(_fig_from_png(data.box_png, "Per-label distributions"))
        if len(data.nets) > 1:
            cols = ["label", "network"] + [F.METRIC_TITLES[m] for m in H.SUMMARY_METRICS]
            pdf.savefig(F.table_figure("Mean ± std per label", cols, H.mean_std_rows(data.aggregates, labels, names)))
            rows = H.paired_rows(data.comparison, data.baseline, labels, names)
            for k in range(0, len(rows), 30):
                pdf.savefig(F.table_figure(f"Paired differences vs {data.baseline} (two-sided Wilcoxon, uncorrected)",
                                           H.PAIRED_COLUMNS, rows[k:k + 30]))
            pdf.savefig(_fig_from_png(data.paired_png, "Per-case Dice per network"))
        cols, rows = H.case_table(data, data.order)
        for k in range(0, len(rows), 30):
            pdf.savefig(F.table_figure(f"Cases, worst first ({k + 1}–{min(k + 30, len(rows))} of {len(rows)})",
                                       cols, rows[k:k + 30]))
        for k in range(0, len(data.overlay_slices), 4):
            pngs = [png for _, png, _ in data.overlays[k:k + 4]]
            pdf.savefig(F.overlay_page(data.overlay_slices[k:k + 4], pngs, data.nets))
    return buf.getvalue()


def _wrap(text: str, width: int = 120) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def _fig_from_png(png: bytes, title: str) -> Any:
    """Embed an already-rendered PNG as a PDF page, so the PDF shows exactly the HTML's picture."""
    import matplotlib.image as mpimg

    arr = mpimg.imread(io.BytesIO(png), format="png")
    h, w = arr.shape[:2]
    fig = F.new_figure(11.0, 11.0 * h / w + 0.5)
    ax = fig.add_axes((0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    ax.imshow(arr)
    ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return fig


def parse_pred_dirs(pred: Path | str | Mapping[str, Path | str] | Sequence[Path | str]) -> dict[str, Path]:
    """Networks by name: a folder (named after itself), a mapping, or 'NAME=DIR' strings."""
    if isinstance(pred, Mapping):
        out = {str(k): Path(v) for k, v in pred.items()}
    else:
        items = [pred] if isinstance(pred, (str, Path)) else list(pred)
        out = {}
        for item in items:
            text = str(item)
            if isinstance(item, str) and "=" in text and not Path(text).exists():
                name, _, folder = text.partition("=")
            else:
                name, folder = Path(text).resolve().name, text
            if name in out:
                raise MedmambaError(f"--pred: network name {name!r} given twice; use NAME=DIR to tell them apart")
            out[name] = Path(folder)
    if not out:
        raise MedmambaError("no prediction folder given (--pred)")
    for name in out:
        if not _NAME_RE.match(name):
            raise MedmambaError(f"--pred: network name {name!r} must be letters, digits, '.', '_' or '-'; "
                                "name it with NAME=DIR")
    return out


def build_report(ref_dir: Path, pred_dirs: Path | str | Mapping[str, Path | str] | Sequence[Path | str],
                 out_dir: Path, images_dir: Path | None = None, pdf: bool = False, baseline: str | None = None,
                 labels: Sequence[int] | None = None, nsd_tolerance_mm: float | Mapping[int, float] = 1.0,
                 empty_policy: str = "nan", connectivity: int = 3, max_overlays: int = 200,
                 model_info: Mapping[str, Mapping[str, Any]] | None = None, title: str = "Segmentation report",
                 dpi: int = 80, on_case: Callable[[str], None] | None = None) -> ReportResult:
    """Score predictions against references and write metrics.csv, summary JSON, report.html (and report.pdf).

    One network: summary.json. Several: summary_<NAME>.json each and comparison.json (per-label mean ± std,
    paired Wilcoxon tests against `baseline`, default the first). `model_info` (network -> e.g. model id,
    sha256) goes into the manifest. Returns the paths written.
    """
    t0 = time.perf_counter()
    nets_dirs = parse_pred_dirs(pred_dirs)
    nets = list(nets_dirs)
    baseline = baseline or nets[0]
    if baseline not in nets_dirs:
        raise MedmambaError(f"--baseline {baseline!r} is not one of the networks {nets}")
    if empty_policy not in EMPTY_POLICIES:
        raise MedmambaError(f"--empty-policy must be one of {', '.join(EMPTY_POLICIES)}; got {empty_policy!r}")
    if connectivity not in (1, 2, 3):
        raise MedmambaError(f"--connectivity must be 1, 2 or 3; got {connectivity}")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise MedmambaError(f"{images_dir}: images folder does not exist")
    tols = nsd_tolerance_mm.values() if isinstance(nsd_tolerance_mm, Mapping) else [nsd_tolerance_mm]
    if any(not (math.isfinite(float(t)) and float(t) >= 0) for t in tols):
        raise MedmambaError(f"NSD tolerance must be a finite number of mm >= 0; got {nsd_tolerance_mm}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedmambaError(f"{out_dir}: exists and is not a folder")

    cases = collect_cases(Path(ref_dir), nets_dirs, labels, nsd_tolerance_mm, empty_policy, connectivity, on_case)
    t_metrics = time.perf_counter() - t0
    aggs = aggregates(cases.results, nets, cases.labels)
    comp = comparison(cases.results, nets, baseline, cases.labels) if len(nets) > 1 else {}
    manifest: dict[str, Any] = {
        "tool": "medmamba report", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "platform": platform.platform(), "device": "cpu",
        "inputs": {"reference": str(Path(ref_dir).resolve()),
                   "predictions": {n: str(p.resolve()) for n, p in nets_dirs.items()},
                   "images": str(Path(images_dir).resolve()) if images_dir else None},
        "models": {n: dict(model_info.get(n, {})) if model_info else {} for n in nets},
        "n_cases": len(cases.results), "missing_predictions": cases.missing_predictions,
        "labels": {str(k): v for k, v in cases.label_names.items()},
        "settings": {"empty_policy": empty_policy, "empty_policy_text": EMPTY_POLICIES[empty_policy],
                     "nsd_tolerance_mm": {str(lab): tolerance_for(lab, nsd_tolerance_mm) for lab in cases.labels},
                     "connectivity": connectivity, "baseline": baseline if len(nets) > 1 else None},
        "implementation": dict(IMPLEMENTATION), "runtime_s": {"metrics": round(t_metrics, 3)},
    }
    data = ReportData(title, cases, nets, baseline, aggs, comp, manifest,
                      worst_first(cases.results, baseline, cases.labels), baseline)
    t1 = time.perf_counter()
    _overlays(data, Path(images_dir) if images_dir else None, max_overlays)
    box_metrics = ("dice", "hd95_mm", "assd_mm", "nsd", "vol_diff_ml")
    per_values = {net: {lab: {m: [float(r.metrics[net][lab][m]) for r in cases.results if net in r.metrics]
                              for m in box_metrics} for lab in cases.labels} for net in nets}
    data.box_png = F.to_png(F.box_plots(per_values, cases.labels, cases.label_names, box_metrics), dpi)
    if len(nets) > 1:
        shared = [r for r in cases.results if all(n in r.metrics for n in nets)]
        dice = {n: {lab: [r.metrics[n][lab]["dice"] for r in shared] for lab in cases.labels} for n in nets}
        data.paired_png = F.to_png(F.paired_plot(dice, cases.labels, cases.label_names), dpi)
    manifest["runtime_s"]["figures"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    pdf_bytes = _pdf_bytes(data) if pdf else None
    if pdf:
        manifest["runtime_s"]["pdf"] = round(time.perf_counter() - t2, 3)
    manifest["runtime_s"]["total"] = round(time.perf_counter() - t0, 3)

    summaries = {n: nnunet_summary(cases, n, manifest, aggs[n]) for n in nets}
    page = H.render(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out_dir / "metrics.csv", out_dir / "report.html"
    atomic_write(csv_path, _csv_text(cases, nets))
    summary_paths = {}
    for n in nets:
        p = out_dir / ("summary.json" if len(nets) == 1 else f"summary_{n}.json")
        atomic_write(p, json.dumps(summaries[n], indent=2))
        summary_paths[n] = p
    comp_path = None
    if len(nets) > 1:
        comp_path = out_dir / "comparison.json"
        atomic_write(comp_path, json.dumps({
            "baseline": baseline, "networks": nets, "labels": manifest["labels"],
            "mean_std": {n: {str(lab): {m: {"mean": s["mean"], "std": s["std"], "n": s["n"], "nan": s["nan"]}
                                        for m, s in aggs[n][lab].items()} for lab in cases.labels} for n in nets},
            "paired_vs_baseline": {n: {str(lab): v for lab, v in per.items()} for n, per in comp.items()},
            "test": "scipy.stats.wilcoxon two-sided, zero_method='wilcox', on cases with finite values for both; "
                    "uncorrected for multiple comparisons",
            "manifest": manifest}, indent=2))
    pdf_path = None
    if pdf_bytes is not None:
        pdf_path = out_dir / "report.pdf"
        atomic_write(pdf_path, pdf_bytes)
    atomic_write(html_path, page)
    return ReportResult(out_dir, csv_path, summary_paths, html_path, pdf_path, comp_path, len(cases.results),
                        time.perf_counter() - t0, data)


def report_for_prediction(ref_dir: Path, pred_dir: Path, model_dir: Path | None = None, out_dir: Path | None = None,
                          images_dir: Path | None = None, pdf: bool = False, **kwargs: Any) -> ReportResult:
    """What `medmamba predict --ref DIR` chains: a report of one prediction folder, model id and hashes included.

    The network is named after the model folder or bundle; the manifest records its path and either the bundle's
    SHA256 id or the SHA256 of every fold's checkpoint (medmamba.model_folder.model_identity). Default output:
    PRED/report/ (a sub-folder, so the predictions folder still holds only label maps at its top level).
    """
    from medmamba.model_folder import model_identity

    pred_dir = Path(pred_dir)
    info: dict[str, Any] = {}
    name = pred_dir.resolve().name
    if model_dir is not None:
        name = Path(model_dir).resolve().name
        info = model_identity(Path(model_dir))
    if not _NAME_RE.match(name):
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "prediction"
    return build_report(ref_dir, {name: pred_dir}, Path(out_dir) if out_dir else pred_dir / "report",
                        images_dir=images_dir, pdf=pdf, model_info={name: info}, **kwargs)
