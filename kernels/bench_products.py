"""Token products on this machine: torch.mm (MKL) against oneDNN's products and the compiled weight gradient.

    python -m medmamba.kernels.bench_products [--threads 2] [--repeats 11]

Rows are the products of a Mamba mixer over many tokens (m tokens, k inputs, n outputs): x @ W^T (forward and
input gradient, `token_matmul`) and g^T @ x (weight gradient, `weight_grad`), at the token counts and widths of
the Hippocampus plan's stages (179,200 tokens = batch 2 of 40 x 56 x 40). Each row times both paths alternately
in this run (median of --repeats) and prints their ratio; the paths are chosen as in training, so rows where
a path falls back to torch.mm read ~1.0x.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch

from medmamba.allocator import active_allocator, reexec_with_allocator
from medmamba.kernels import fused

#: (m, k, n) of the products; the weight gradient of a row is (n, k) summed over m.
SHAPES = ((179_200, 32, 128), (179_200, 64, 34), (179_200, 34, 64), (179_200, 64, 32), (179_200, 32, 64),
          (22_400, 64, 256), (22_400, 128, 64), (2_800, 128, 512))


def _paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of a and b, called alternately (so both see the same machine)."""
    a(), b()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _with_mkl(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        saved = os.environ.get(fused.PRODUCTS_ENV)
        os.environ[fused.PRODUCTS_ENV] = "mkl"
        try:
            return fn()
        finally:
            if saved is None:
                os.environ.pop(fused.PRODUCTS_ENV)
            else:
                os.environ[fused.PRODUCTS_ENV] = saved
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args()
    reexec_with_allocator()  # as the medmamba command: without tcmalloc, page faults of the outputs dominate
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"token products, {args.threads} thread(s), allocator {active_allocator()}, median of {args.repeats}; "
          "GFLOP/s of the compiled path")
    print(f"{'product':14s} {'m':>8s} {'k':>4s} {'n':>4s} {'torch.mm (ms)':>14s} {'compiled (ms)':>14s} "
          f"{'ratio':>6s} {'GFLOP/s':>8s}")
    for m, k, n in SHAPES:
        x, w, g = (torch.randn(*s, generator=gen) for s in ((m, k), (n, k), (m, n)))
        flops = 2 * m * k * n / 1e9
        cases: tuple[tuple[str, Callable[[], object]], ...] = (
            ("x @ W^T", functools.partial(fused.token_matmul, x, w)),
            ("g @ W", functools.partial(fused.token_matmul, g, w.t())),
            ("g^T @ x", functools.partial(fused.weight_grad, g, x)))
        for name, fn in cases:
            fast, mkl = _paired(fn, _with_mkl(fn), args.repeats)
            print(f"{name:14s} {m:8d} {k:4d} {n:4d} {mkl * 1e3:14.2f} {fast * 1e3:14.2f} {fast / mkl:5.2f}x "
                  f"{flops / fast:8.0f}")


if __name__ == "__main__":
    main()
