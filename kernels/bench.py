"""Selective-scan and mLSTM speed on this machine, every number measured in one run.

    python -m medmamba.kernels.bench [--length 32768] [--channels 128] [--skip-ref-backward] [--skip-mlstm]

Problem as in the issue: b=1, d=128, n=16, l=32768 (one 32^3 volume). Speed-ups are relative to the
per-step PyTorch reference measured in the same run. The floor is the time to evaluate the same number
of exp() calls with torch.exp on cache-resident buffers (the scan is exp-bound, not memory-bound).

mLSTM rows (b=1, 2 heads, head dim 32, forward+backward): each case runs in a fresh subprocess so its peak
resident memory (peak RSS during the call minus RSS before it) belongs to that case alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from medmamba.kernels import mlstm_chunkwise, mlstm_parallel, selective_scan


def _time(fn, repeats: int, warmup: bool = True) -> float:
    """Best of `repeats` runs; the slow reference skips the warm-up (its first run is no different)."""
    if warmup:
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


def scan_rows(b: int, d: int, n: int, length: int, skip_ref_backward: bool, bwd_length: int) -> list[tuple]:
    """Times per variant. The autograd graph of ref (32768 steps) does not fit next to other jobs at full
    length, so ref's and the fallback's forward+backward are measured at `bwd_length` and scaled linearly
    (both cost linear in l); rows say so."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g)
    delta = F.softplus(torch.randn(b, d, length, generator=g) - 4.0)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, n, length, generator=g)
    C = torch.randn(b, n, length, generator=g)

    def fwd(backend):
        return lambda: selective_scan(u, delta, A, B, C, backend=backend)

    def fwd_bwd(backend, upto=length):
        def run():
            uu = u[..., :upto].detach().requires_grad_()
            dd = delta[..., :upto].detach().requires_grad_()
            selective_scan(uu, dd, A, B[..., :upto], C[..., :upto], backend=backend).sum().backward()
        return run

    short = min(bwd_length, length)
    scale = length / short

    rows = []
    torch.set_num_threads(1)
    ref_f = _time(fwd("ref"), 1, warmup=False)
    ref_fb = float("nan") if skip_ref_backward else _time(fwd_bwd("ref", short), 1, warmup=False) * scale
    note = f" [f+b: l={short} x{scale:g}]" if scale != 1 else ""
    rows.append(("ref (per-step PyTorch loop)" + note, 1, ref_f, ref_fb))
    rows.append(("fallback (chunked PyTorch)" + note, 1, _time(fwd("fallback"), 1),
                 _time(fwd_bwd("fallback", short), 1) * scale))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows.append(("cpu (compiled C++/OpenMP)", threads, _time(fwd("cpu"), 3), _time(fwd_bwd("cpu"), 3)))
    return rows


def mlstm_case(form: str, length: int, heads: int = 2, dh: int = 32, chunk: int = 64) -> dict:
    """One mLSTM forward+backward in this process: time and peak RSS growth (run it in a fresh process)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, dh, generator=g).requires_grad_() for _ in range(3))
    ig = torch.randn(1, heads, length, generator=g).requires_grad_()
    fg = (torch.randn(1, heads, length, generator=g) + 3).requires_grad_()
    fn = mlstm_parallel if form == "parallel" else lambda *t: mlstm_chunkwise(*t, chunk=chunk)
    before = reset_peak_rss_kib()
    t0 = time.perf_counter()
    out = fn(q, k, v, ig, fg)
    t1 = time.perf_counter()
    out.sum().backward()
    t2 = time.perf_counter()
    return {"fwd": t1 - t0, "fwd_bwd": t2 - t0, "peak_mib": (peak_rss_kib() - before) / 1024}


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="utf-8"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss_kib() -> int:
    """Current RSS, after resetting the process's peak RSS to it (Linux clear_refs "5").

    ru_maxrss is no good here: after fork+exec it starts at the parent's peak, so a child of a big bench
    process reports no growth at all. VmHWM belongs to this process image and can be reset.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return _status_kib("VmRSS") or 0
    except OSError:
        return peak_rss_kib()  # no reset here: growth is then measured from the peak so far


def peak_rss_kib() -> int:
    """This process image's peak RSS (VmHWM; ru_maxrss only where /proc is missing, see reset_peak_rss_kib)."""
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def mlstm_rows(threads: int) -> list[tuple]:
    rows = []
    for form, length in (("parallel", 4096), ("chunkwise", 4096), ("chunkwise", 32768)):
        cmd = [sys.executable, "-m", "medmamba.kernels.bench", "--mlstm-case", f"{form}:{length}",
               "--threads", str(threads)]
        res = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True, encoding="utf-8").stdout.splitlines()[-1])
        rows.append((form, length, res))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--skip-ref-backward", action="store_true", help="the reference backward takes minutes")
    p.add_argument("--bwd-length", type=int, default=4096,
                   help="length at which ref/fallback forward+backward is measured, then scaled to --length")
    p.add_argument("--skip-mlstm", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="threads for the mLSTM rows")
    p.add_argument("--mlstm-case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mlstm_case:
        torch.set_num_threads(args.threads)
        form, length = args.mlstm_case.split(":")
        print(json.dumps(mlstm_case(form, int(length))))
        return
    b, d, n, length = 1, args.channels, args.state, args.length
    # mLSTM subprocesses first: run after the reference's big autograd graph was freed, the l=32768 case
    # took 3x longer (the system was still reclaiming that memory), which is not the kernel's cost
    rows_m = None if args.skip_mlstm else mlstm_rows(args.threads)
    rows = scan_rows(b, d, n, length, args.skip_ref_backward, args.bwd_length)
    ref_f, ref_fb = rows[0][2], rows[0][3]
    n_exp = b * d * n * length
    floors = {t: exp_floor(n_exp, t) for t in (1, 2)}
    print(f"selective scan, b={b} d={d} n={n} l={length} ({n_exp / 1e6:.1f}M state updates)")
    head = ("variant", "thr", "fwd (s)", "vs ref", "vs floor", "fwd+bwd (s)", "vs ref")
    print(f"{head[0]:48s} {head[1]:>3s} {head[2]:>9s} {head[3]:>8s} {head[4]:>9s} {head[5]:>12s} {head[6]:>8s}")
    for name, thr, f, fb in rows:
        print(f"{name:48s} {thr:3d} {f:9.4f} {ref_f / f:7.1f}x {f / floors[thr]:8.2f}x {fb:12.4f} "
              f"{ref_fb / fb:7.1f}x")
    for t, fl in floors.items():
        print(f"{'floor: same number of exp()':48s} {t:3d} {fl:9.4f} {ref_f / fl:7.1f}x")
    if rows_m is None:
        return
    print(f"\nmLSTM, b=1 heads=2 dh=32 chunk=64, {args.threads} thread(s), forward+backward")
    print(f"{'form':10s} {'l':>6s} {'fwd (s)':>8s} {'fwd+bwd (s)':>12s} {'peak MiB':>9s} {'mem vs parallel':>16s}")
    par = rows_m[0][2]
    for form, length, r in rows_m:
        ratio = f"{r['peak_mib'] / par['peak_mib']:.3f}x" if length == 4096 and par['peak_mib'] > 0 else "-"
        print(f"{form:10s} {length:6d} {r['fwd']:8.3f} {r['fwd_bwd']:12.3f} {r['peak_mib']:9.1f} {ratio:>16s}")


if __name__ == "__main__":
    main()
