"""Triton backend of the selective scan: chunk-parallel over the sequence, forward and backward.

3D volumes give few channels and very long sequences (d ~ 32..384, l ~ 32768), so one program per channel
block would leave most of a GPU idle. The sequence is cut into chunks of CHUNK steps and every
(batch, channel block, chunk) gets a program, in three stages:
  1. each chunk is scanned from a zero state (its local end state E_c); its decay over the chunk is
     P_c = exp(A * sum_t delta_t);
  2. a short carry pass over chunks gives each chunk's true start state X_c = P_{c-1} X_{c-1} + E_{c-1};
  3. each chunk is rescanned from X_c, writing y (and, when a gradient is needed, the states h_t).
The backward does the same in reverse for the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} (its
carry uses the same P_c), then forms every gradient from g and the stored states. Weight gradients
(dA, dB, dC) are written per program and reduced with torch (deterministic, no atomics).

Memory: the backward keeps the states h (b, d, l, n) in fp32; mamba_ssm's CUDA kernel recomputes them
per chunk in shared memory instead (a possible refinement). Import this module lazily: TRITON_INTERPRET
must be set before it is imported for the CPU interpreter to be used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64


@triton.jit
def _channel_block(pdb, A_ptr, D, N, BD: tl.constexpr, NP: tl.constexpr):
    """Offsets and masks of one block of BD channels (state padded to NP), and its rows of A."""
    offs_d = pdb * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    dmask = offs_d < D
    nmask = offs_n < N
    mask2 = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask2, other=0.0)
    return offs_d, offs_n, dmask, nmask, mask2, A


@triton.jit
def _chunk_program(A_ptr, L, D, N, G, DPG, NC, BD: tl.constexpr, NP: tl.constexpr):
    """What a (batch, channel block, chunk) program of the forward and the reverse pass both start from: its
    ids, channel block, offsets of its per-chunk states and of its u/delta rows and its group's B/C rows."""
    pb = tl.program_id(0)
    pdb = tl.program_id(1)
    pc = tl.program_id(2)
    offs_d, offs_n, dmask, nmask, mask2, A = _channel_block(pdb, A_ptr, D, N, BD, NP)
    gi = (pdb * BD) // DPG
    state_off = ((pb * D + offs_d[:, None]) * NC + pc) * N + offs_n[None, :]
    row = (pb * D + offs_d) * L  # (BD,)
    grow = ((pb * G + gi) * N + offs_n) * L  # (NP,)
    return pb, pdb, pc, offs_d, offs_n, dmask, nmask, mask2, A, state_off, row, grow


@triton.jit
def _scan_chunk_fwd(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, x0_ptr, y_ptr, end_ptr, hist_ptr,
                    L, D, N, G, DPG, NC,
                    BD: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
                    WRITE_Y: tl.constexpr, WRITE_HIST: tl.constexpr):
    """Scan one chunk of one channel block from the start state x0[b, d, c, :]."""
    pb, pdb, pc, offs_d, offs_n, dmask, nmask, mask2, A, state_off, row, grow = _chunk_program(
        A_ptr, L, D, N, G, DPG, NC, BD, NP)
    h = tl.load(x0_ptr + state_off, mask=mask2, other=0.0)
    t0 = pc * CHUNK
    for i in range(0, CHUNK):
        t = t0 + i
        tm = (offs_d * 0 + t) < L
        tn = (offs_n * 0 + t) < L
        dt = tl.load(dt_ptr + row + t, mask=dmask & tm, other=0.0)
        uu = tl.load(u_ptr + row + t, mask=dmask & tm, other=0.0)
        Bt = tl.load(B_ptr + grow + t, mask=nmask & tn, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
        if WRITE_Y:
            Ct = tl.load(C_ptr + grow + t, mask=nmask & tn, other=0.0)
            y = tl.sum(h * Ct[None, :], axis=1)
            tl.store(y_ptr + row + t, y, mask=dmask & tm)
        if WRITE_HIST:
            hoff = ((pb * D + offs_d[:, None]) * L + t) * N + offs_n[None, :]
            tl.store(hist_ptr + hoff, h, mask=mask2 & tm[:, None])
    tl.store(end_ptr + state_off, h, mask=mask2)


@triton.jit
def _carry(end_ptr, dtsum_ptr, A_ptr, x_ptr, D, N, NC,
           BD: tl.constexpr, NP: tl.constexpr, REVERSE: tl.constexpr):
    """x_c = exp(A * S_{c-1}) x_{c-1} + E_{c-1} over chunks (reverse: x_c = exp(A S_{c+1}) x_{c+1} + E_{c+1})."""
    pb = tl.program_id(0)
    pdb = tl.program_id(1)
    offs_d, offs_n, dmask, _, mask2, A = _channel_block(pdb, A_ptr, D, N, BD, NP)
    x = tl.zeros([BD, NP], dtype=tl.float32)
    for i in range(0, NC):
        c = i
        if REVERSE:
            c = NC - 1 - i
        off = ((pb * D + offs_d[:, None]) * NC + c) * N + offs_n[None, :]
        tl.store(x_ptr + off, x, mask=mask2)
        e = tl.load(end_ptr + off, mask=mask2, other=0.0)
        s = tl.load(dtsum_ptr + (pb * D + offs_d) * NC + c, mask=dmask, other=0.0)
        x = tl.exp(s[:, None] * A) * x + e


@triton.jit
def _scan_chunk_bwd(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, q0_ptr, zend_ptr, hist_ptr,
                    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr,
                    L, D, N, G, DPG, NC, NDB,
                    BD: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr, FULL: tl.constexpr):
    """Reverse pass over one chunk with incoming adjoint q0 (= exp(delta_{t1} A) g_{t1}).

    FULL=False only returns exp(delta_{t0} A) g_{t0} from a zero incoming adjoint (stage 1); FULL=True
    writes du, ddelta (without the D and z terms) and per-program partial dA, dB, dC.
    """
    pb, pdb, pc, offs_d, offs_n, dmask, nmask, mask2, A, state_off, row, grow = _chunk_program(
        A_ptr, L, D, N, G, DPG, NC, BD, NP)
    q = tl.load(q0_ptr + state_off, mask=mask2, other=0.0)
    dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
    prow = ((pb * NDB + pdb) * N + offs_n) * L  # partial dB/dC rows of this program's channel block
    t0 = pc * CHUNK
    for i in range(0, CHUNK):
        t = t0 + CHUNK - 1 - i
        tm = (offs_d * 0 + t) < L
        tn = (offs_n * 0 + t) < L
        dt = tl.load(dt_ptr + row + t, mask=dmask & tm, other=0.0)
        dyt = tl.load(dy_ptr + row + t, mask=dmask & tm, other=0.0)
        Ct = tl.load(C_ptr + grow + t, mask=nmask & tn, other=0.0)
        dA_t = tl.exp(dt[:, None] * A)
        g = Ct[None, :] * dyt[:, None] + q
        g = tl.where(mask2 & tm[:, None], g, 0.0)
        if FULL:
            uu = tl.load(u_ptr + row + t, mask=dmask & tm, other=0.0)
            Bt = tl.load(B_ptr + grow + t, mask=nmask & tn, other=0.0)
            hcur = tl.load(hist_ptr + ((pb * D + offs_d[:, None]) * L + t) * N + offs_n[None, :],
                           mask=mask2 & tm[:, None], other=0.0)
            pm = (offs_d * 0 + t) > 0
            hprev = tl.load(hist_ptr + ((pb * D + offs_d[:, None]) * L + t - 1) * N + offs_n[None, :],
                            mask=mask2 & (tm & pm)[:, None], other=0.0)
            du = tl.sum(g * Bt[None, :], axis=1) * dt
            ah = A * dA_t * hprev
            ddt = tl.sum(g * (uu[:, None] * Bt[None, :] + ah), axis=1)
            tl.store(du_ptr + row + t, du, mask=dmask & tm)
            tl.store(ddt_ptr + row + t, ddt, mask=dmask & tm)
            dA_acc += g * dt[:, None] * dA_t * hprev
            dB = tl.sum(g * (dt * uu)[:, None], axis=0)
            dC = tl.sum(hcur * dyt[:, None], axis=0)
            tl.store(dB_ptr + prow + t, dB, mask=nmask & tn)
            tl.store(dC_ptr + prow + t, dC, mask=nmask & tn)
        q = dA_t * g
    if FULL:
        tl.store(dA_ptr + state_off, dA_acc, mask=mask2)
    else:
        tl.store(zend_ptr + state_off, q, mask=mask2)


def _block_d(dpg: int) -> int:
    """Channel block size: a power of two <= 16 that divides the channels per group (blocks never straddle groups)."""
    bd = 16
    while dpg % bd:
        bd //= 2
    return bd


def _setup(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> dict:
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    bd = _block_d(d // g)
    nc = triton.cdiv(length, CHUNK)
    return {"b": b, "d": d, "l": length, "g": g, "n": n, "bd": bd, "ndb": triton.cdiv(d, bd), "nc": nc,
            "np": triton.next_power_of_2(n)}


def _carry_pass(ends: torch.Tensor, dtsum: torch.Tensor, A: torch.Tensor, s: dict, reverse: bool) -> torch.Tensor:
    starts = torch.empty_like(ends)
    _carry[(s["b"], s["ndb"])](ends, dtsum, A, starts, s["d"], s["n"], s["nc"], BD=s["bd"], NP=s["np"],
                               REVERSE=reverse)
    return starts


def _chunk_sums(delta: torch.Tensor, s: dict) -> torch.Tensor:
    pad = s["nc"] * CHUNK - s["l"]
    return torch.nn.functional.pad(delta, (0, pad)).view(s["b"], s["d"], s["nc"], CHUNK).sum(-1).contiguous()


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        s = _setup(u, A, B)
        grid = (s["b"], s["ndb"], s["nc"])
        state = torch.zeros(s["b"], s["d"], s["nc"], s["n"], device=u.device, dtype=torch.float32)
        ends = torch.empty_like(state)
        y = torch.empty_like(u)
        need_grad = any(ctx.needs_input_grad)
        hist = u.new_empty((s["b"], s["d"], s["l"], s["n"])) if need_grad else u.new_empty(1)
        args = (s["l"], s["d"], s["n"], s["g"], s["d"] // s["g"], s["nc"])
        _scan_chunk_fwd[grid](u, delta, A, B, C, state, y, ends, hist, *args, BD=s["bd"], NP=s["np"], CHUNK=CHUNK,
                              WRITE_Y=False, WRITE_HIST=False)
        dtsum = _chunk_sums(delta, s)
        starts = _carry_pass(ends, dtsum, A, s, reverse=False)
        _scan_chunk_fwd[grid](u, delta, A, B, C, starts, y, ends, hist, *args, BD=s["bd"], NP=s["np"], CHUNK=CHUNK,
                              WRITE_Y=True, WRITE_HIST=need_grad)
        last = ends[:, :, -1].contiguous()
        ctx.save_for_backward(u, delta, A, B, C, hist, dtsum)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, hist, dtsum = ctx.saved_tensors
        dy = dy.contiguous()
        s = _setup(u, A, B)
        grid = (s["b"], s["ndb"], s["nc"])
        zeros = torch.zeros(s["b"], s["d"], s["nc"], s["n"], device=u.device, dtype=torch.float32)
        zloc = torch.empty_like(zeros)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA_part = torch.empty_like(zeros)
        dB_part = u.new_empty((s["b"], s["ndb"], s["n"], s["l"]))
        dC_part = torch.empty_like(dB_part)
        args = (s["l"], s["d"], s["n"], s["g"], s["d"] // s["g"], s["nc"], s["ndb"])
        common = (u, delta, A, B, C, dy)
        outs = (du, ddt, dA_part, dB_part, dC_part)
        _scan_chunk_bwd[grid](*common, zeros, zloc, hist, *outs, *args, BD=s["bd"], NP=s["np"], CHUNK=CHUNK,
                              FULL=False)
        q_in = _carry_pass(zloc, dtsum, A, s, reverse=True)
        _scan_chunk_bwd[grid](*common, q_in, zloc, hist, *outs, *args, BD=s["bd"], NP=s["np"], CHUNK=CHUNK,
                              FULL=True)
        dA = dA_part.sum(dim=(0, 2))
        per_group = s["d"] // s["g"] // s["bd"]
        dB = dB_part.view(s["b"], s["g"], per_group, s["n"], s["l"]).sum(2)
        dC = dC_part.view(s["b"], s["g"], per_group, s["n"], s["l"]).sum(2)
        return du, ddt, dA, dB, dC


def scan_core_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (b,d,l) inputs, A (d,n), B/C (b,g,n,l) -> (y (b,d,l), last state (b,d,n)) via Triton."""
    return _TritonScan.apply(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous())
