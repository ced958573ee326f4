"""Selective-scan and mLSTM speed on this machine, every number measured in one run.

    python -m medmamba.kernels.bench [--length 32768] [--channels 128] [--skip-ref-backward]

Problem as in the issue: b=1, d=128, n=16, l=32768 (one 32^3 volume). Speed-ups are relative to the
per-step PyTorch reference measured in the same run. The floor is the time to evaluate the same number
of exp() calls with torch.exp on cache-resident buffers (the scan is exp-bound, not memory-bound).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from medmamba.kernels import selective_scan


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def exp_floor(n_exp: int, threads: int) -> float:
    torch.set_num_threads(threads)
    buf = torch.randn(1 << 16) * -0.1
    out = torch.empty_like(buf)
    reps = max(1, n_exp // buf.numel())
    return _time(lambda: [torch.exp(buf, out=out) for _ in range(reps)], 2)


def scan_rows(b: int, d: int, n: int, length: int, skip_ref_backward: bool) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g)
    delta = F.softplus(torch.randn(b, d, length, generator=g) - 4.0)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, n, length, generator=g)
    C = torch.randn(b, n, length, generator=g)

    def fwd(backend):
        return lambda: selective_scan(u, delta, A, B, C, backend=backend)

    def fwd_bwd(backend):
        def run():
            uu = u.detach().requires_grad_()
            dd = delta.detach().requires_grad_()
            selective_scan(uu, dd, A, B, C, backend=backend).sum().backward()
        return run

    rows = []
    torch.set_num_threads(1)
    ref_f = _time(fwd("ref"), 1)
    ref_fb = float("nan") if skip_ref_backward else _time(fwd_bwd("ref"), 1)
    rows.append(("ref (per-step PyTorch loop)", 1, ref_f, ref_fb))
    rows.append(("fallback (chunked PyTorch)", 1, _time(fwd("fallback"), 1), _time(fwd_bwd("fallback"), 1)))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows.append(("cpu (compiled C++/OpenMP)", threads, _time(fwd("cpu"), 3), _time(fwd_bwd("cpu"), 3)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--skip-ref-backward", action="store_true", help="the reference backward takes minutes")
    args = p.parse_args()
    b, d, n, length = 1, args.channels, args.state, args.length
    rows = scan_rows(b, d, n, length, args.skip_ref_backward)
    ref_f, ref_fb = rows[0][2], rows[0][3]
    n_exp = b * d * n * length
    floors = {t: exp_floor(n_exp, t) for t in (1, 2)}
    print(f"selective scan, b={b} d={d} n={n} l={length} ({n_exp / 1e6:.1f}M state updates)")
    head = ("variant", "thr", "fwd (s)", "vs ref", "vs floor", "fwd+bwd (s)", "vs ref")
    print(f"{head[0]:32s} {head[1]:>3s} {head[2]:>9s} {head[3]:>8s} {head[4]:>9s} {head[5]:>12s} {head[6]:>8s}")
    for name, thr, f, fb in rows:
        print(f"{name:32s} {thr:3d} {f:9.4f} {ref_f / f:7.1f}x {f / floors[thr]:8.2f}x {fb:12.4f} "
              f"{ref_fb / fb:7.1f}x")
    for t, fl in floors.items():
        print(f"{'floor: same number of exp()':32s} {t:3d} {fl:9.4f} {ref_f / fl:7.1f}x")


if __name__ == "__main__":
    main()
