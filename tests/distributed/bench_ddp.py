"""Wall time of `medmamba train --nproc 2` against one process at the same global batch (docs/benchmarks.md).

    python tests/distributed/bench_ddp.py WORKDIR [DATASET]

WORKDIR must hold a planned dataset (e.g. `medmamba dataset synth Tiny --cases 6 --size 32` + `medmamba
plan Tiny`). Each configuration trains 1 epoch of K1 and of K2 iterations as whole CLI subprocesses; the
per-iteration time is the difference over K2 - K1, so start-up cancels out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

K1, K2 = 2, 12
CONFIGS = (("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1), ("1 process x 2 threads", 1, 2))


def run(workdir: str, dataset: str, nproc: int, threads: int, iterations: int, fold: int) -> float:
    """Seconds for one `medmamba train` subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "medmamba.cli", "train", dataset, "--fold", str(fold), "--epochs", "1",
           "--iterations", str(iterations), "--no-validate", "--workdir", workdir, "--nproc", str(nproc)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, encoding="utf-8")
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    workdir, dataset = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "Tiny")
    print("| configuration | K1 iterations (s) | K2 iterations (s) | per iteration (s) |")
    for label, nproc, threads in CONFIGS:
        t1 = run(workdir, dataset, nproc, threads, K1, 0)
        t2 = run(workdir, dataset, nproc, threads, K2, 1)
        print(f"| {label} | {t1:.1f} | {t2:.1f} | {(t2 - t1) / (K2 - K1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
