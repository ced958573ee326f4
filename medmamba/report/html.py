"""One self-contained HTML page: inline CSS, inline base64 PNGs, no scripts, no external requests."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from medmamba.metrics import EMPTY_POLICIES
from medmamba.report import figures as F
from medmamba.report.figures import METRIC_TITLES, fmt
from medmamba.report.stats import PAIRED_METRICS, SUMMARY_METRICS, case_score

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1.0em;margin:1em 0 .3em}
table{border-collapse:collapse;font-size:12px;margin:.4em 0 1em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f0f3f7}
td.l,th.l{text-align:left} tr:nth-child(even) td{background:#fafafa}
.meta{font-size:12px;color:#444} .note{font-size:12px;color:#555;max-width:70em}
img{max-width:100%} figure{margin:.6em 0 1.2em} figcaption{font-size:12px;color:#333}
.bad{color:#b00020;font-weight:600} code{font-size:12px}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """HTML table; the first `left` columns are left-aligned text, cells are escaped."""
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{v}</{tag}>"
    head = "".join(cell("th", i, esc(c)) for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_rows(agg: Mapping[int, Mapping[str, Mapping[str, float]]], labels: Sequence[int],
                 names: Mapping[int, str]) -> list[list[str]]:
    """Rows label | metric | mean | median | IQR | n | NaN (also used for the PDF)."""
    rows = []
    for lab in labels:
        for m in SUMMARY_METRICS:
            s = agg[lab][m]
            rows.append([names[lab], METRIC_TITLES[m], fmt(s["mean"]), fmt(s["median"]),
                         f"{fmt(s['q25'])} – {fmt(s['q75'])}", str(s["n"]), str(s["nan"])])
    return rows


SUMMARY_COLUMNS = ["label", "metric", "mean", "median", "IQR (q25 – q75)", "n", "NaN"]


def mean_std_rows(aggs: Mapping[str, Any], labels: Sequence[int], names: Mapping[int, str]) -> list[list[str]]:
    rows = []
    for lab in labels:
        for net, agg in aggs.items():
            rows.append([names[lab], net] + [f"{fmt(agg[lab][m]['mean'])} ± {fmt(agg[lab][m]['std'])}"
                                              for m in SUMMARY_METRICS])
    return rows


def paired_rows(comp: Mapping[str, Any], baseline: str, labels: Sequence[int],
                names: Mapping[int, str]) -> list[list[str]]:
    rows = []
    for net, per_label in comp.items():
        for lab in labels:
            for m in PAIRED_METRICS:
                s = per_label[lab][m]
                p = s["p_value"]
                ptxt = (f"{p:.2e}" if p < 1e-3 else fmt(p, 4)) if p == p else (s["note"] or "NaN")
                rows.append([f"{net} − {baseline}", names[lab], METRIC_TITLES[m], str(s["n_pairs"]),
                             f"{fmt(s['mean_diff'])} ± {fmt(s['std_diff'])}", fmt(s["median_diff"]),
                             f"{s['n_other_higher']}/{s['n_other_lower']}/{s['n_tied']}", ptxt])
    return rows


PAIRED_COLUMNS = ["pair", "label", "metric", "n pairs", "mean ± std diff", "median diff", "higher/lower/tied",
                  "Wilcoxon p"]


def case_table(data: Any, order: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the worst-first case table (HTML links to overlays when `data.overlay_ids`)."""
    nets, labels, names = data.nets, data.cases.labels, data.cases.label_names
    per = ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "vol_diff_ml", "fp_components", "fn_components") \
        if len(nets) == 1 and len(labels) <= 3 else ("dice", "hd95_mm", "nsd")  # keep wide label sets readable
    short = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95", "assd_mm": "ASSD", "nsd": "NSD",
             "vol_diff_ml": "ΔV mL", "fp_components": "FP cc", "fn_components": "FN cc"}
    cols = ["#", "case"] + [f"mean Dice {n}" if len(nets) > 1 else "mean Dice" for n in nets]
    for net in nets:
        for lab in labels:
            cols += [f"{short[m]} {names[lab]}" + (f" {net}" if len(nets) > 1 else "") for m in per]
    cols.append("flags")
    rows = []
    for i, r in enumerate(order, 1):
        row = [str(i), r.case] + [fmt(case_score(r, n, labels)) for n in nets]
        flags = set()
        for net in nets:
            for lab in labels:
                mm = r.metrics.get(net, {}).get(lab)
                row += [fmt(mm[m]) if mm else "missing" for m in per]
                if mm:
                    for f in ("empty_ref", "empty_pred", "touches_border"):
                        if mm[f]:
                            flags.add(f.replace("_", " ") + ("" if f == "touches_border" else f" ({names[lab]})"))
        row.append("; ".join(sorted(flags)))
        rows.append(row)
    return cols, rows


def render(data: Any) -> str:
    """The whole page from a build.ReportData."""
    c = data.cases
    names, labels, man = c.label_names, c.labels, data.manifest
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(data.title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(data.title)}</h1>"]
    nets_txt = ", ".join(f"<b>{esc(n)}</b>: <code>{esc(p)}</code>" for n, p in man["inputs"]["predictions"].items())
    parts.append(
        f"<p class='meta'>Created {esc(man['created_utc'])} by medmamba {esc(man['versions']['medmamba'])} · "
        f"{len(c.results)} cases · labels {esc(', '.join(f'{k}={v}' for k, v in names.items()))}<br>"
        f"Reference: <code>{esc(man['inputs']['reference'])}</code><br>Predictions: {nets_txt}<br>"
        f"Images: <code>{esc(man['inputs']['images'] or 'none (overlays show the reference faintly)')}</code>"
        f" · runtime {man['runtime_s']['total']:.1f} s</p>")
    for net, info in man.get("models", {}).items():
        if info:
            parts.append(f"<p class='meta'>Model of {esc(net)}: "
                         + " · ".join(f"{esc(k)} <code>{esc(v)}</code>" for k, v in info.items()) + "</p>")
    for net, missing in c.missing_predictions.items():
        parts.append(f"<p class='bad'>{esc(net)}: {len(missing)} reference case(s) have no prediction and are "
                     f"not scored: {esc(', '.join(missing[:20]))}{' …' if len(missing) > 20 else ''}</p>")
    tol = ", ".join(f"{names[int(k)]}: {v} mm" for k, v in man["settings"]["nsd_tolerance_mm"].items())
    impl = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in man["implementation"].items())
    parts.append(
        "<details open><summary><b>Definitions and policies</b></summary><div class='note'><ul>"
        f"<li>Empty-mask policy <code>{esc(man['settings']['empty_policy'])}</code>: "
        f"{esc(EMPTY_POLICIES[man['settings']['empty_policy']])}</li>"
        f"<li>NSD tolerance: {esc(tol)}. Connected components: scipy.ndimage.label, connectivity "
        f"{man['settings']['connectivity']} (3 = 26-neighbourhood); an FN component is a reference component "
        "touching no predicted voxel, an FP component a predicted one touching no reference voxel.</li>"
        "<li>Distances in mm from the reference header spacing; means, medians and IQR leave NaN out, "
        "n counts finite values, NaN counts the rest.</li>"
        f"{impl}</ul></div></details>")
    parts.append("<h2>Summary</h2>")
    for net in data.nets:
        if len(data.nets) > 1:
            parts.append(f"<h3>{esc(net)}</h3>")
        parts.append(table(SUMMARY_COLUMNS, [[esc(x) for x in r] for r in summary_rows(data.aggregates[net], labels,
                                                                                       names)], left=2))
    parts.append("<h3>Per-label distributions</h3>" + img_tag(data.box_png, "per-label box plots"))
    if len(data.nets) > 1:
        parts.append(f"<h2>Comparison (baseline: {esc(data.baseline)})</h2>")
        parts.append("<h3>Mean ± std per label</h3>")
        parts.append(table(["label", "network"] + [METRIC_TITLES[m] for m in SUMMARY_METRICS],
                           [[esc(x) for x in r] for r in mean_std_rows(data.aggregates, labels, names)], left=2))
        parts.append("<h3>Paired per-case differences against the baseline</h3><p class='note'>Cases predicted by "
                     "both networks with finite values on both sides; difference = network − baseline (for HD95 "
                     "and ASSD lower is better). Two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero "
                     "differences dropped); p-values not corrected for multiple comparisons.</p>")
        parts.append(table(PAIRED_COLUMNS, [[esc(x) for x in r] for r in paired_rows(data.comparison, data.baseline,
                                                                                     labels, names)], left=3))
        parts.append(img_tag(data.paired_png, "per-case Dice per network"))
    cols, rows = case_table(data, data.order)
    for row, r in zip(rows, data.order, strict=True):
        anchor = data.overlay_ids.get(r.case)
        row[1] = f"<a href='#{anchor}'>{esc(r.case)}</a>" if anchor else esc(r.case)
        row[2:] = [esc(x) for x in row[2:]]
    parts.append(f"<h2>Cases, worst first</h2><p class='note'>Ordered by mean Dice over labels of "
                 f"{esc(data.order_net)}; cases with no Dice (label absent everywhere) last.</p>")
    parts.append(table(cols, rows, left=2))
    legend = " ".join(f"<span style='color:{F.net_color(j)};font-weight:600'>- - {esc(n)}</span>"
                      for j, n in enumerate(data.nets))
    parts.append(f"<h2>Overlays</h2><p class='note'><span style='color:{F.REF_COLOR};font-weight:600'>━ reference"
                 f"</span> {legend}<br>Outlines follow voxel borders (every label drawn in its source's colour); the "
                 "three orientations cut through the slices with the most voxels where prediction and reference "
                 f"disagree.{esc(data.overlay_note)}</p>")
    for case, png, caption in data.overlays:
        parts.append(f"<figure id='{esc(data.overlay_ids[case])}'>{img_tag(png, 'overlay ' + case)}"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
