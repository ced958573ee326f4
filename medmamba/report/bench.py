"""Report speed benchmark: `python -m medmamba.report.bench [--cases 60] [--pdf]`.

Predictions are NOT model outputs: they are Hippocampus reference labels perturbed on purpose (per-label
dilation/erosion, 1-2 voxel shifts, a spurious blob, a dropped component), two "networks" of different
quality, so the report has realistic errors to show. With the MSD Task04_Hippocampus data absent, the
same perturbations are applied to synthetic two-label volumes of Hippocampus size (36 x 50 x 35).
Prints a table: phase, seconds, and the ratio to the 30 s target for 60 cases.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

HIPPOCAMPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "Task04_Hippocampus"
TARGET_S = 30.0


def perturb(label_map: np.ndarray, rng: np.random.Generator, strength: int) -> np.ndarray:
    """A plausible wrong segmentation: per-label morphology, a shift, sometimes a spurious or missing blob."""
    out = np.zeros_like(label_map)
    ball = ndimage.generate_binary_structure(3, 1)
    for lab in [int(v) for v in np.unique(label_map) if v != 0]:
        m = label_map == lab
        op = rng.integers(0, 3)
        if op == 0 and strength > 0:
            m = ndimage.binary_dilation(m, ball, iterations=int(rng.integers(1, strength + 1)))
        elif op == 1 and strength > 0:
            eroded = ndimage.binary_erosion(m, ball, iterations=int(rng.integers(1, strength + 1)))
            m = eroded if eroded.any() else m
        shift = [int(s) for s in rng.integers(-strength, strength + 1, size=3)] if strength > 0 else [0, 0, 0]
        m = ndimage.shift(m.astype(np.uint8), shift, order=0, mode="constant").astype(bool)
        out[m & (out == 0)] = lab
    if strength > 1 and rng.random() < 0.5:  # spurious blob far from the structure (a FP component)
        c = [int(rng.integers(3, s - 3)) for s in out.shape]
        blob = np.zeros(out.shape, dtype=bool)
        blob[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = True
        out[blob & (label_map == 0)] = int(rng.integers(1, max(int(label_map.max()), 1) + 1))
    return out


def synthetic_case(rng: np.random.Generator, shape: tuple[int, int, int] = (36, 50, 35)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of Hippocampus size: two adjacent ellipsoids (labels 1 and 2) in noise."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cz, cy, cx = (s / 2 + rng.uniform(-3, 3) for s in shape)
    body = ((z - cz) / 7) ** 2 + ((y - cy) / 14) ** 2 + ((x - cx) / 6) ** 2 <= 1
    lab = np.zeros(shape, dtype=np.uint8)
    lab[body & (y < cy)] = 1
    lab[body & (y >= cy)] = 2
    img = (lab * 40 + rng.normal(100, 15, shape)).astype(np.float32)
    return img, lab


def make_dataset(root: Path, n_cases: int, seed: int = 0, networks: dict[str, int] | None = None
                 ) -> tuple[Path, dict[str, Path], Path, str]:
    """labels/, images/ and one perturbed prediction folder per network under root; returns their paths."""
    networks = networks or {"netA": 1, "netB": 2}
    rng = np.random.default_rng(seed)
    ref_dir, img_dir = root / "labels", root / "images"
    pred_dirs = {name: root / f"pred_{name}" for name in networks}
    for d in (ref_dir, img_dir, *pred_dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
    real = sorted((HIPPOCAMPUS / "labelsTr").glob("hippocampus_*.nii.gz")) if HIPPOCAMPUS.is_dir() else []
    source = f"MSD Task04_Hippocampus labels ({HIPPOCAMPUS})" if real else "synthetic Hippocampus-sized volumes"
    if real:  # label names (Anterior, Posterior) are read from dataset.json next to the labels folder
        shutil.copyfile(HIPPOCAMPUS / "dataset.json", root / "dataset.json")
    for i in range(n_cases):
        if real:
            src = real[i % len(real)]
            case = src.name[: -len(".nii.gz")] + (f"_r{i // len(real)}" if i >= len(real) else "")
            ref_img = sitk.ReadImage(str(src))
            lab = sitk.GetArrayFromImage(ref_img)
            shutil.copyfile(src, ref_dir / f"{case}.nii.gz")
            shutil.copyfile(HIPPOCAMPUS / "imagesTr" / src.name, img_dir / f"{case}_0000.nii.gz")
        else:
            case = f"synth_{i:03d}"
            img, lab = synthetic_case(rng)
            ref_img = sitk.GetImageFromArray(lab)
            sitk.WriteImage(ref_img, str(ref_dir / f"{case}.nii.gz"))
            im = sitk.GetImageFromArray(img)
            im.CopyInformation(ref_img)
            sitk.WriteImage(im, str(img_dir / f"{case}_0000.nii.gz"))
        for name, strength in networks.items():
            p = sitk.GetImageFromArray(perturb(lab, rng, strength).astype(np.uint8))
            p.CopyInformation(ref_img)
            sitk.WriteImage(p, str(pred_dirs[name] / f"{case}.nii.gz"))
    return ref_dir, pred_dirs, img_dir, source


def make_large(root: Path, n_cases: int, seed: int = 0) -> Path:
    """CT-sized cases (512 x 512 x 120 voxels) with three organ-like ellipsoids, predictions perturbed."""
    rng = np.random.default_rng(seed)
    shape = (120, 512, 512)
    for sub in ("labels", "pred", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(n_cases):
        lab = np.zeros(shape, dtype=np.uint8)
        for label, (cz, cy, cx, rz, ry, rx) in enumerate([(60, 200, 180, 30, 80, 60), (50, 300, 330, 20, 50, 50),
                                                           (80, 260, 260, 12, 30, 30)], start=1):
            cz, cy, cx = int(cz + rng.integers(-5, 6)), int(cy + rng.integers(-10, 11)), int(cx + rng.integers(-10, 11))
            lab[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = label
        pred = perturb(lab, rng, 2)
        for sub, arr in (("labels", lab), ("pred", pred), ("images", (lab * 50 + 40).astype(np.int16))):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((0.8, 0.8, 2.5))
            name = f"ct_{i:03d}" + ("_0000" if sub == "images" else "")
            sitk.WriteImage(img, str(root / sub / f"{name}.nii.gz"))
    return root


def main(argv: list[str] | None = None) -> None:
    from medmamba.report import build_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--pdf", action="store_true", help="also time the PDF")
    ap.add_argument("--keep", type=Path, default=None, help="write data and reports here and keep them")
    ap.add_argument("--large", type=int, default=0, metavar="N",
                    help="also time N synthetic CT-sized cases (512 x 512 x 120, 0.8 x 0.8 x 2.5 mm, 3 labels)")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="medmamba_report_bench_"))
    try:
        ref, preds, imgs, source = make_dataset(root / "data", args.cases)
        t = time.perf_counter()
        import monai.metrics  # noqa: F401  (torch + MONAI import, paid once per process)

        import_s = time.perf_counter() - t
        rows: list[tuple[str, float, float, float, float]] = []
        for label, nets, pdf in [("1 network, HTML+CSV+JSON", {"netA": preds["netA"]}, False),
                                 ("2 networks compared, HTML+CSV+JSON", preds, False)] + \
                                ([("1 network, + PDF", {"netA": preds["netA"]}, True)] if args.pdf else []):
            t = time.perf_counter()
            res = build_report(ref, nets, root / f"out_{len(rows)}", images_dir=imgs, pdf=pdf)
            total = time.perf_counter() - t
            rt = res.data.manifest["runtime_s"]
            rows.append((label, rt["metrics"], rt["figures"], rt.get("pdf", 0.0), total))
        if args.large:
            big = make_large(root / "large", args.large)
            t = time.perf_counter()
            res = build_report(big / "labels", {"net": big / "pred"}, root / "out_large", images_dir=big / "images")
            total = time.perf_counter() - t
            rt = res.data.manifest["runtime_s"]
            rows.append((f"{args.large} CT-sized cases, 3 labels", rt["metrics"], rt["figures"], 0.0, total))
        print(f"Report benchmark: {args.cases} cases, 2 labels, predictions = perturbed labels of {source}")
        print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")
        print(f"one-time import of torch + MONAI (paid once per process, not in the rows below): {import_s:.2f} s")
        print(f"{'run':<38}{'metrics s':>10}{'figures s':>10}{'pdf s':>8}{'total s':>9}{'total/30s':>10}")
        for label, m, f, p, tot in rows:
            ratio = f"{tot / TARGET_S * (60 / args.cases):>10.2f}" if "CT-sized" not in label else f"{'-':>10}"
            print(f"{label:<38}{m:>10.2f}{f:>10.2f}{p:>8.2f}{tot:>9.2f}{ratio}")
        print("(total/30s is scaled to 60 cases; below 1.00 meets the target)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
