"""Report figures built with matplotlib's object API (Figure + Agg canvas): no pyplot, no global backend.

Each builder returns a Figure, so the HTML page (inline PNG) and the PDF (PdfPages) show the same pictures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

REF_COLOR = "#00d000"
NET_COLORS = ("#ff3030", "#2f8fff", "#ffaa00", "#d040ff", "#00d0d0", "#ff70b0")
METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)", "nsd": "NSD",
                 "vol_diff_ml": "Volume difference (mL)", "vol_ref_ml": "Reference volume (mL)",
                 "vol_pred_ml": "Predicted volume (mL)"}
PLANE_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (for inline base64 in HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plane_names(direction: Sequence[float]) -> tuple[str, str, str]:
    """Anatomical plane of a slice along each numpy axis, from the SimpleITK direction cosines.

    numpy axis a is ITK index axis 2-a; its world direction is that column of the direction matrix, and the
    plane perpendicular to a mostly-x axis is sagittal, mostly-y coronal, mostly-z axial.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return tuple(PLANE_NAMES[int(np.argmax(np.abs(d[:, 2 - a])))] for a in range(3))  # type: ignore[return-value]


def net_color(i: int) -> str:
    return NET_COLORS[i % len(NET_COLORS)]


def box_plots(values: Mapping[str, Mapping[int, Mapping[str, Sequence[float]]]], labels: Sequence[int],
              label_names: Mapping[int, str], metrics: Sequence[str]) -> Figure:
    """One panel per metric; a box per label (grouped by network when several); NaN left out, n shown."""
    nets = list(values)
    fig = new_figure(max(3.2, 0.3 * len(labels) * len(nets) + 1.0) * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / max(len(nets), 1)
    for ax, metric in zip(axes, metrics, strict=True):
        for j, net in enumerate(nets):
            data, pos = [], []
            for i, lab in enumerate(labels):
                arr = np.asarray(values[net][lab][metric], dtype=float)
                data.append(arr[np.isfinite(arr)])
                pos.append(i + (j - (len(nets) - 1) / 2) * width)
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                            manage_ticks=False, flierprops={"markersize": 3})
            for box in bp["boxes"]:
                box.set_facecolor(net_color(j) if len(nets) > 1 else "#9cc3e6")
                box.set_alpha(0.7)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([label_names[lab] for lab in labels], rotation=20, fontsize=8)
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if len(nets) > 1:
        handles = [Line2D([], [], color=net_color(j), lw=6, alpha=0.7) for j in range(len(nets))]
        fig.legend(handles, nets, loc="upper center", ncol=len(nets), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
    else:
        fig.tight_layout()
    return fig


@dataclass
class OverlaySlices:
    """The three 2D slices of one case that an overlay shows (kept small so PDF pages need no re-reading)."""

    title: str
    image: list[np.ndarray] | None  # one 2D slice per numpy axis, or None without an image
    window: tuple[float, float]
    ref: list[np.ndarray]
    preds: dict[str, list[np.ndarray]]
    slices: tuple[int, ...]
    spacing: tuple[float, ...]
    planes: tuple[str, ...]


def extract_slices(title: str, image: np.ndarray | None, ref: np.ndarray, preds: Mapping[str, np.ndarray],
                   slices: Sequence[int], spacing: Sequence[float], planes: Sequence[str]) -> OverlaySlices:
    """Cut the slices of most disagreement out of the volumes; the image window is the 1-99th percentile."""
    window = (0.0, 1.0)
    image_sl = None
    if image is not None:
        finite = image[np.isfinite(image)]
        if finite.size:
            lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
            window = (lo, hi if hi > lo else lo + 1.0)
        image_sl = [np.take(image, int(i), axis=a) for a, i in enumerate(slices)]
    return OverlaySlices(title, image_sl, window, [np.take(ref, int(i), axis=a) for a, i in enumerate(slices)],
                         {n: [np.take(p, int(i), axis=a) for a, i in enumerate(slices)] for n, p in preds.items()},
                         tuple(int(i) for i in slices), tuple(float(s) for s in spacing), tuple(planes))


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def overlay_panel(ov: OverlaySlices, axis: int, labels: Sequence[int], target_px: int = 240) -> np.ndarray:
    """RGB picture of one orientation: image (or faint reference), reference outline solid green, predictions
    dashed in their network colour. Drawn with numpy (outline = mask minus its 2-pixel erosion after
    nearest-neighbour upsampling), which is ~50x faster than matplotlib contours and as exact: the outline
    follows voxel borders. Upsampling per axis follows the in-plane spacing, so pixels are square in mm.
    """
    from scipy import ndimage

    rows_ax, cols_ax = [a for a in range(3) if a != axis]
    sr, sc = ov.spacing[rows_ax], ov.spacing[cols_ax]
    ref = ov.ref[axis]
    extent = max(ref.shape[0] * sr, ref.shape[1] * sc)
    pix = max(extent / target_px, min(sr, sc) / 8)  # mm per output pixel, at most 8x upsampling
    fr, fc = max(1, int(round(sr / pix))), max(1, int(round(sc / pix)))

    def up(a: np.ndarray) -> np.ndarray:
        a = np.repeat(np.repeat(a, fr, axis=0), fc, axis=1)
        return a if ov.planes[axis] == "axial" else a[::-1]  # superior up for coronal/sagittal

    if ov.image is not None:
        lo, hi = ov.window
        gray = np.clip((ov.image[axis].astype(np.float32) - lo) / (hi - lo), 0, 1) * 255
    else:
        gray = (ref > 0).astype(np.float32) * 60
    rgb = np.repeat(up(gray.astype(np.uint8))[..., None], 3, axis=2)
    rr, cc = np.indices(rgb.shape[:2])
    dash = ((rr + cc) // 5) % 2 == 0
    cross = ndimage.generate_binary_structure(2, 1)
    layers = [(ref, _rgb(REF_COLOR), None)] + [(p[axis], _rgb(net_color(j)), dash)
                                                for j, p in enumerate(ov.preds.values())]
    for sl, color, pattern in layers:
        for lab in labels:
            m = sl == lab
            if not m.any():
                continue
            m = up(m)
            edge = m & ~ndimage.binary_erosion(m, cross, iterations=2, border_value=0)
            if pattern is not None:
                edge &= pattern
            rgb[edge] = color
    return rgb


def overlay_png(ov: OverlaySlices, labels: Sequence[int]) -> bytes:
    """One case, three orientations side by side with a small caption each, as PNG bytes (Pillow)."""
    from PIL import Image, ImageDraw

    panels = [overlay_panel(ov, a, labels) for a in range(3)]
    gap, head = 8, 14
    h = max(p.shape[0] for p in panels) + head
    w = sum(p.shape[1] for p in panels) + gap * 2
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[head:head + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    x = 0
    for a, p in enumerate(panels):
        draw.text((x + 2, 1), f"{ov.planes[a]}  axis {a}  slice {ov.slices[a]}", fill=(40, 40, 40))
        x += p.shape[1] + gap
    buf = io.BytesIO()
    im.save(buf, format="png", optimize=False, compress_level=6)
    return buf.getvalue()


def overlay_page(overlays: Sequence[OverlaySlices], pngs: Sequence[bytes], nets: Sequence[str]) -> Figure:
    """Several cases on one PDF page, one row each (the same pictures as in the HTML)."""
    import matplotlib.image as mpimg

    fig = new_figure(8.5, 2.7 * len(overlays) + 0.6)
    axes = fig.subplots(len(overlays), 1, squeeze=False)[:, 0]
    for ax, ov, png in zip(axes, overlays, pngs, strict=True):
        ax.imshow(mpimg.imread(io.BytesIO(png), format="png"), interpolation="nearest")
        ax.set_title(ov.title, fontsize=8)
        ax.axis("off")
    handles = [Line2D([], [], color=REF_COLOR, lw=1.6)]
    handles += [Line2D([], [], color=net_color(j), lw=1.3, ls="--") for j in range(len(nets))]
    fig.legend(handles, ["reference", *nets], loc="lower center", ncol=1 + len(nets), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.97, bottom=0.5 / fig.get_figheight(), hspace=0.2)
    return fig


def paired_plot(dice: Mapping[str, Mapping[int, Sequence[float]]], labels: Sequence[int],
                label_names: Mapping[int, str], metric_title: str = "Dice") -> Figure:
    """Per-case values per network, one line per case joining the networks (paired view), one panel per label."""
    nets = list(dice)
    fig = new_figure(max(3.0, 1.2 * len(nets) + 1.5) * len(labels), 3.6)
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    x = np.arange(len(nets))
    for ax, lab in zip(axes, labels, strict=True):
        mat = np.array([np.asarray(dice[n][lab], dtype=float) for n in nets])  # networks x cases
        for c in range(mat.shape[1]):
            ax.plot(x, mat[:, c], color="#888888", alpha=0.35, lw=0.8, marker=None)
        for j in range(len(nets)):
            jitter = (np.random.default_rng(j).random(mat.shape[1]) - 0.5) * 0.08
            ax.scatter(x[j] + jitter, mat[j], s=10, color=net_color(j), zorder=3)
            finite = mat[j][np.isfinite(mat[j])]
            if finite.size:
                ax.hlines(np.median(finite), x[j] - 0.25, x[j] + 0.25, color="black", lw=2, zorder=4)
        ax.set_xticks(x)
        ax.set_xticklabels(nets, fontsize=8, rotation=15)
        ax.set_xlim(-0.5, len(nets) - 0.5)
        ax.set_title(f"{label_names[lab]}: per-case {metric_title}", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def table_figure(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], note: str = "") -> Figure:
    """A table rendered as a figure, for PDF pages (A4 landscape-ish)."""
    fig = new_figure(11.0, min(8.0, 1.2 + 0.26 * (len(rows) + 1)))
    ax = fig.add_axes((0.02, 0.02 if not note else 0.08, 0.96, 0.86 if not note else 0.8))
    ax.axis("off")
    if rows:
        heads = ["\n".join(c.split(" ")) if len(c) > 9 else c for c in columns]  # long headers: one word a line
        tab = ax.table(cellText=[list(r) for r in rows], colLabels=heads, loc="upper center", cellLoc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(7 if len(columns) < 12 else 6)
        tab.auto_set_column_width(list(range(len(columns))))
        tab.scale(1, 1.15)
        lines = max(h.count("\n") + 1 for h in heads)
        for (row, _), cell in tab.get_celld().items():
            if row == 0:
                cell.set_height(cell.get_height() * (0.3 + 0.7 * lines))
    fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.02, 0.02, note, fontsize=7, wrap=True)
    return fig


def text_figure(title: str, lines: Sequence[str]) -> Figure:
    """A page of plain text (run details, policies), for the PDF."""
    fig = new_figure(11.0, 8.0)
    fig.text(0.03, 0.95, title, fontsize=14, weight="bold", va="top")
    fig.text(0.03, 0.89, "\n".join(lines), fontsize=8, va="top", family="monospace", wrap=True)
    return fig


def training_curves(epochs: Sequence[int], train_loss: Sequence[float], val_loss: Sequence[float],
                    pseudo_dice: Sequence[Sequence[float]], ema: Sequence[float], lrs: Sequence[float]) -> Figure:
    """Loss (left) and pseudo Dice (right, per class, mean, EMA) against epoch, learning rate below."""
    fig = new_figure(10.0, 6.0)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    ax_loss, ax_dice, ax_lr = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    ep = np.asarray(epochs)
    ax_loss.plot(ep[: len(train_loss)], train_loss, color="tab:blue", label="train loss")
    ax_loss.plot(ep[: len(val_loss)], val_loss, color="tab:red", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("Loss", fontsize=10)
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    pd = np.array([list(r) for r in pseudo_dice], dtype=float) if len(pseudo_dice) else np.zeros((0, 0))
    for c in range(pd.shape[1] if pd.ndim == 2 else 0):
        ax_dice.plot(ep[: len(pd)], pd[:, c], lw=0.9, alpha=0.7, label=f"class {c + 1}")
    if pd.size:
        ax_dice.plot(ep[: len(pd)], np.nanmean(pd, axis=1), color="black", ls=":", label="mean")
    if len(ema):
        ax_dice.plot(ep[: len(ema)], ema, color="tab:green", lw=2, label="EMA of mean")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_title("Pseudo Dice (validation patches)", fontsize=10)
    ax_dice.legend(fontsize=7)
    ax_dice.grid(alpha=0.3)
    if len(lrs):
        ax_lr.plot(ep[: len(lrs)], lrs, color="tab:purple")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_dice, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.set_title("Learning rate", fontsize=9)
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fmt(x: float | int | None, digits: int = 3) -> str:
    """Numbers for tables: NaN shown as 'NaN', integers as such."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else ""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not math.isfinite(float(x)):
        return "NaN" if math.isnan(float(x)) else str(x)
    return f"{float(x):.{digits}f}"
