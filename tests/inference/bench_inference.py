"""Benchmark of hospital-inference options on CPU: input validation cost, default vs --fast vs --tta.

Usage: OMP_NUM_THREADS=1 python tests/inference/bench_inference.py MODEL_DIR IMAGE [--size 96] [--repeats 2]
Prints a markdown table; ratios are measured in the same run, on the same volume (the image resampled
tiled to SIZE^3 at its own spacing so the sliding window has many tiles).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from medmamba.bundle import export_bundle
    from medmamba.io import read_case
    from medmamba.model_folder import load_bundle
    from medmamba.predict import predict_folder

    work = Path(tempfile.mkdtemp(prefix="bench_inf_"))
    src = sitk.ReadImage(str(a.image))
    # tile the image to SIZE^3 at its own spacing: nnU-Net keeps the grid, so the window really slides
    arr = sitk.GetArrayFromImage(src)
    reps = [-(-a.size // n) for n in arr.shape]
    big = sitk.GetImageFromArray(np.tile(arr, reps)[: a.size, : a.size, : a.size].astype(np.float32))
    big.SetSpacing(src.GetSpacing())
    big.SetOrigin(src.GetOrigin())
    big.SetDirection(src.GetDirection())
    (work / "in").mkdir()
    sitk.WriteImage(big, str(work / "in" / "case_0000.nii.gz"))
    rows = []

    def best(fn):
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_read = best(lambda: read_case([work / "in" / "case_0000.nii.gz"]))
    t_sitk = best(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(work / "in" / "case_0000.nii.gz"))))
    rows.append(("read: SimpleITK only", t_sitk))
    rows.append(("read: validated (header, truncation, NaN checks)", t_read))
    for label, kw in (("predict default (step 0.5, no TTA)", {}), ("predict --fast (step 0.7, no TTA)",
                                                                   {"fast": True}),
                      ("predict --tta (step 0.5, mirroring)", {"tta": True})):
        seconds = []
        for r in range(a.repeats):
            res = predict_folder(work / "in", work / f"out_{len(rows)}_{r}", a.model_dir, tta=kw.get("tta"),
                                 device="cpu", fast=kw.get("fast", False))
            seconds.append(res.seconds["case"])
        rows.append((label, min(seconds)))
    bundle, _, _ = export_bundle(a.model_dir, work / "bundle")
    rows.append(("bundle: verify SHA256 + load weights", best(lambda: load_bundle(bundle))))
    base = rows[2][1]
    print(f"volume {a.size}^3 ({a.size ** 3:,} voxels), best of {a.repeats}\n")
    print("| step | seconds | vs default predict |\n|---|---:|---:|")
    for label, s in rows:
        print(f"| {label} | {s:.3f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
