// Selective scan (Mamba-1 recurrence) on the CPU: forward and backward, with mamba_ssm's epilogue fused.
//
//   dt_t = softplus(delta_t + bias)      (bias and softplus optional)
//   h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
//   y_t  = (sum_n C_t[n] * h_t[n] + D * u_t) * silu(z_t)      (D and z optional)
//
// Vectorised over channels: the unit of work is a block of W = 8 (AVX-512: 16) channels of one batch item (a block
// never straddles a group of B/C; each thread takes a contiguous range of blocks, token-major ones a group's
// blocks chunk by chunk, see fwd_run), lane j of every vector is channel c0 + j, so the state is n vectors of W lanes,
// B_t[k] and C_t[k] are broadcasts and y_t needs no horizontal sum. Every tensor is read and written
// through its strides, so the token-major (b, l, d) activations of a network need no transposed copies,
// and the bias/softplus/D/z element-wise passes (and their backward) happen inside the scan.
// The forward keeps h only at chunk boundaries; the backward, vectorised over the same channel blocks,
// recomputes each chunk from its boundary state and runs the adjoint recurrence in reverse (see bwd_chunk).
// Optionally delta is low-rank: given dtw (d, r), the delta input is (b, g*r, l) and delta = dtw @ dt per
// group is formed as it is read (load_delta), with its gradients reduced inside the backward, so that no
// (b, d, l) delta or ddelta is ever written (Mamba's dt_proj inside the scan).
#include <torch/extension.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <vector>

#include "vec_math.h"

namespace {

using medmamba_vec::fast_exp;
using medmamba_vec::fast_sigmoid;
using medmamba_vec::fast_softplus;

constexpr int64_t kChunk = 64;
// Lanes per vector: 16 channels in one 512-bit register where the build targets AVX-512 (kernels/cpu.py builds
// that variant on CPUs that have it), else 8 (AVX2). A block of W channels is one task.
#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
constexpr int kAlign = 4 * W;  // bytes of one vector: rows of W lanes are aligned to it
constexpr int64_t kMaxState = 256;
constexpr int64_t kMaxRank = 64;  // rank of a low-rank delta (dt_proj inside the scan)

struct Seq {  // element (b, c, t) of a (b, d, l) tensor, any strides
  float* p;
  int64_t sb, sc, st;
  float& at(int64_t b, int64_t c, int64_t t) const { return p[b * sb + c * sc + t * st]; }
};

Seq seq_of(const torch::Tensor& x) {
  return {x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)};
}

// (b, d, l) output in the layout of `like`: token-major when its channels are the fastest axis.
torch::Tensor empty_as(const torch::Tensor& like) {
  if (like.stride(1) == 1 && like.size(1) > 1) {
    return torch::empty({like.size(0), like.size(2), like.size(1)}, like.options()).transpose(1, 2);
  }
  return torch::empty({like.size(0), like.size(1), like.size(2)}, like.options());
}

struct Problem {
  int64_t b, d, l, n, g, dpg, bpg, nblk, nchunks;
  int64_t r;  // 0: dt is delta (b, d, l); else dt is the low-rank input (b, g*r, l) and delta = dtw @ dt per group
  Seq u, dt, z;
  const float* dtw;  // (d, r) when r > 0
  const float *Bp, *Cp;  // (b, g, n, l), any strides
  int64_t Bs[4], Cs[4];
  const float *A, *D, *bias;
  bool has_z, softplus;

  // channels [c0, c0 + w) of group gi form block `blk` (blocks are numbered group-major)
  void block(int64_t blk, int64_t& gi, int64_t& c0, int& w) const {
    gi = blk / bpg;
    c0 = gi * dpg + (blk % bpg) * W;
    w = static_cast<int>(std::min<int64_t>(W, (gi + 1) * dpg - c0));
  }
  float B(int64_t bi, int64_t gi, int64_t k, int64_t t) const {
    return Bp[bi * Bs[0] + gi * Bs[1] + k * Bs[2] + t * Bs[3]];
  }
  float C(int64_t bi, int64_t gi, int64_t k, int64_t t) const {
    return Cp[bi * Cs[0] + gi * Cs[1] + k * Cs[2] + t * Cs[3]];
  }
};

Problem make_problem(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                     const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                     const torch::Tensor& z, const torch::Tensor& bias, bool softplus, const torch::Tensor& dtw) {
  for (const auto* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->device().is_cpu(), "scan expects float32 CPU tensors");
  }
  TORCH_CHECK(A.is_contiguous() && A.dim() == 2, "A must be a contiguous (d, n) tensor");
  TORCH_CHECK(u.dim() == 3 && B.dim() == 4 && C.sizes() == B.sizes(), "bad shapes");
  const int64_t r = dtw.numel() ? dtw.size(1) : 0;
  if (r > 0) {
    TORCH_CHECK(dtw.dim() == 2 && dtw.is_contiguous() && dtw.size(0) == u.size(1) && r <= kMaxRank &&
                    dtw.scalar_type() == torch::kFloat32, "the delta projection must be a contiguous (d, r <= 64)");
    TORCH_CHECK(delta.dim() == 3 && delta.size(0) == u.size(0) && delta.size(1) == B.size(1) * r &&
                    delta.size(2) == u.size(2), "a low-rank delta must be (b, g*r, l)");
  } else {
    TORCH_CHECK(delta.sizes() == u.sizes(), "bad shapes");
  }
  Problem p{};
  p.b = u.size(0);
  p.d = u.size(1);
  p.l = u.size(2);
  p.n = A.size(1);
  p.g = B.size(1);
  TORCH_CHECK(p.n <= kMaxState, "state size above 256 is not supported");
  TORCH_CHECK(p.d % p.g == 0, "channels must be divisible by groups");
  p.dpg = p.d / p.g;
  p.bpg = (p.dpg + W - 1) / W;
  p.nblk = p.g * p.bpg;
  p.nchunks = (p.l + kChunk - 1) / kChunk;
  p.r = r;
  p.dtw = r > 0 ? dtw.data_ptr<float>() : nullptr;
  p.u = seq_of(u);
  p.dt = seq_of(delta);
  p.Bp = B.data_ptr<float>();
  p.Cp = C.data_ptr<float>();
  for (int i = 0; i < 4; ++i) {
    p.Bs[i] = B.stride(i);
    p.Cs[i] = C.stride(i);
  }
  p.A = A.data_ptr<float>();
  p.D = D.numel() ? D.data_ptr<float>() : nullptr;
  p.bias = bias.numel() ? bias.data_ptr<float>() : nullptr;
  p.has_z = z.numel() > 0;
  p.z = p.has_z ? seq_of(z) : Seq{nullptr, 0, 0, 0};
  p.softplus = softplus;
  return p;
}

// Per-block constants: lane channels (masked lanes repeat the last real channel and are never stored),
// A's rows, D, the delta bias and the delta projection's rows.
template <int64_t N>
struct Block {
  int64_t gi, c0, ch[W];
  int w;
  alignas(kAlign) float a[N > 0 ? N : kMaxState][W];
  alignas(kAlign) float Dv[W], bv[W];
  alignas(kAlign) float wdt[kMaxRank][W];

  Block(const Problem& p, int64_t blk) {
    const int64_t n = N > 0 ? N : p.n;
    p.block(blk, gi, c0, w);
    for (int j = 0; j < W; ++j) {
      ch[j] = c0 + std::min(j, w - 1);
      Dv[j] = p.D != nullptr ? p.D[ch[j]] : 0.f;
      bv[j] = p.bias != nullptr ? p.bias[ch[j]] : 0.f;
    }
    for (int64_t k = 0; k < n; ++k)
      for (int j = 0; j < W; ++j) a[k][j] = p.A[ch[j] * p.n + k];
    for (int64_t q = 0; q < p.r; ++q)
      for (int j = 0; j < W; ++j) wdt[q][j] = p.dtw[ch[j] * p.r + q];
  }
};

#if defined(__AVX2__)
// In-register transpose of an 8x8 tile of floats (r[m] becomes column m).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], q[8];
  for (int m = 0; m < 8; m += 2) {
    t[m] = _mm256_unpacklo_ps(r[m], r[m + 1]);
    t[m + 1] = _mm256_unpackhi_ps(r[m], r[m + 1]);
  }
  for (int m = 0; m < 8; m += 4) {
    q[m] = _mm256_shuffle_ps(t[m], t[m + 2], _MM_SHUFFLE(1, 0, 1, 0));
    q[m + 1] = _mm256_shuffle_ps(t[m], t[m + 2], _MM_SHUFFLE(3, 2, 3, 2));
    q[m + 2] = _mm256_shuffle_ps(t[m + 1], t[m + 3], _MM_SHUFFLE(1, 0, 1, 0));
    q[m + 3] = _mm256_shuffle_ps(t[m + 1], t[m + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(q[m], q[m + 4], 0x20);
    r[m + 4] = _mm256_permute2f128_ps(q[m], q[m + 4], 0x31);
  }
}
#endif

// The chunk's values of one (b, d, l) tensor for the W lanes, as rows of W (masked lanes repeat the last real
// channel). Token-major tensors (channels the fastest axis) with a full block give one contiguous W-vector per
// step; channel-major ones (time the fastest axis) are read 8 steps x 8 lanes at a time and transposed in
// registers; anything else walks each lane.
template <int64_t N>
void load_rows(const Seq& s, int64_t bi, const Block<N>& bk, int64_t t0, int64_t len, float (*dst)[W]) {
  const float* base = s.p + bi * s.sb + t0 * s.st;
  if (s.sc == 1 && bk.w == W) {
    for (int64_t i = 0; i < len; ++i) {
#pragma omp simd
      for (int j = 0; j < W; ++j) dst[i][j] = base[bk.c0 + i * s.st + j];
    }
    return;
  }
  int64_t i0 = 0;
#if defined(__AVX2__)
  if (s.st == 1) {
    for (; i0 + 8 <= len; i0 += 8) {
      for (int jb = 0; jb < W; jb += 8) {
        __m256 r[8];
        for (int m = 0; m < 8; ++m) r[m] = _mm256_loadu_ps(base + bk.ch[jb + m] * s.sc + i0);
        transpose8(r);
        for (int m = 0; m < 8; ++m) _mm256_store_ps(&dst[i0 + m][jb], r[m]);
      }
    }
  }
#endif
  for (int j = 0; j < W; ++j) {
    const float* src = base + bk.ch[j] * s.sc;
    for (int64_t i = i0; i < len; ++i) dst[i][j] = src[i * s.st];
  }
}

// The inverse of load_rows for the block's w real lanes.
template <int64_t N>
void store_rows(const Seq& s, int64_t bi, const Block<N>& bk, int64_t t0, int64_t len, const float (*src)[W]) {
  float* base = s.p + bi * s.sb + t0 * s.st;
  if (s.sc == 1 && bk.w == W) {
    for (int64_t i = 0; i < len; ++i) {
#pragma omp simd
      for (int j = 0; j < W; ++j) base[bk.c0 + i * s.st + j] = src[i][j];
    }
    return;
  }
  int64_t i0 = 0;
#if defined(__AVX2__)
  if (s.st == 1) {
    for (; i0 + 8 <= len; i0 += 8) {
      for (int jb = 0; jb < bk.w; jb += 8) {
        __m256 r[8];
        for (int m = 0; m < 8; ++m) r[m] = _mm256_load_ps(&src[i0 + m][jb]);
        transpose8(r);
        for (int m = 0; m < 8 && jb + m < bk.w; ++m) _mm256_storeu_ps(base + (bk.c0 + jb + m) * s.sc + i0, r[m]);
      }
    }
  }
#endif
  for (int j = 0; j < bk.w; ++j) {
    float* dst = base + (bk.c0 + j) * s.sc;
    for (int64_t i = i0; i < len; ++i) dst[i * s.st] = src[i][j];
  }
}

// The chunk's raw delta (before softplus) for the W lanes: read, or with a low-rank delta computed as
// bias + dtw @ dt from the group's r rows, so that no (b, d, l) delta exists in memory.
template <int64_t N>
void load_delta(const Problem& p, const Block<N>& bk, int64_t bi, int64_t t0, int64_t len, float (*dts)[W]) {
  if (p.r == 0) {
    load_rows(p.dt, bi, bk, t0, len, dts);
    for (int64_t i = 0; i < len; ++i)
      for (int j = 0; j < W; ++j) dts[i][j] += bk.bv[j];
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    for (int j = 0; j < W; ++j) dts[i][j] = bk.bv[j];
    for (int64_t q = 0; q < p.r; ++q) {
      const float v = p.dt.at(bi, bk.gi * p.r + q, t0 + i);
#pragma omp simd
      for (int j = 0; j < W; ++j) dts[i][j] += bk.wdt[q][j] * v;
    }
  }
}

// One chunk of one block: the state h (n vectors of W lanes) advanced from t0 over the chunk, y written.
template <int64_t N>
void fwd_chunk(const Problem& p, const Block<N>& bk, int64_t bi, int64_t t0, float (*hio)[W], const Seq& y,
               float* ck) {
  const int64_t n = N > 0 ? N : p.n;
  alignas(kAlign) float h[N > 0 ? N : kMaxState][W];  // a local copy: see bwd_chunk
  std::copy_n(&hio[0][0], n * W, &h[0][0]);
  if (ck != nullptr) {
    for (int64_t k = 0; k < n; ++k)
      for (int j = 0; j < W; ++j) ck[k * W + j] = h[k][j];
  }
  const int64_t t1 = std::min(p.l, t0 + kChunk), len = t1 - t0;
  // The chunk's inputs for the W lanes first (one strided walk per lane), softplus and the z gate in
  // loops over len*W values that vectorise; the scan then reads contiguous W-vectors per step.
  alignas(kAlign) float dts[kChunk][W], us[kChunk][W], gate[kChunk][W], ys[kChunk][W];
  load_delta(p, bk, bi, t0, len, dts);
  load_rows(p.u, bi, bk, t0, len, us);
  if (p.softplus) {
    float* f = &dts[0][0];
#pragma omp simd
    for (int64_t q = 0; q < len * W; ++q) f[q] = fast_softplus(f[q]);
  }
  if (p.has_z) {
    load_rows(p.z, bi, bk, t0, len, gate);
    float* f = &gate[0][0];
#pragma omp simd
    for (int64_t q = 0; q < len * W; ++q) f[q] *= fast_sigmoid(f[q]);  // silu(z)
  }
  for (int64_t i = 0; i < len; ++i) {
    const int64_t t = t0 + i;
    alignas(kAlign) float duv[W], acc[W], acc2[W];
    for (int j = 0; j < W; ++j) {
      duv[j] = dts[i][j] * us[i][j];
      acc[j] = acc2[j] = 0.f;
    }
    // two partial sums over the state (even, odd k), then D u: closer to a pairwise sum than one chain
    for (int64_t k = 0; k < n; ++k) {
      const float Bk = p.B(bi, bk.gi, k, t), Ck = p.C(bi, bk.gi, k, t);
      float* sum = (k & 1) ? acc2 : acc;
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        h[k][j] = fast_exp(dts[i][j] * bk.a[k][j]) * h[k][j] + duv[j] * Bk;
        sum[j] += Ck * h[k][j];
      }
    }
    for (int j = 0; j < W; ++j) ys[i][j] = (acc[j] + acc2[j]) + bk.Dv[j] * us[i][j];
    if (p.has_z) {
      for (int j = 0; j < W; ++j) ys[i][j] *= gate[i][j];
    }
  }
  store_rows(y, bi, bk, t0, len, ys);
  std::copy_n(&h[0][0], n * W, &hio[0][0]);
}

template <int64_t N>
struct FwdState {
  alignas(kAlign) float h[N > 0 ? N : kMaxState][W];
};

// Blocks [blo, bhi) of one batch item and group, chunks outer and blocks inner: a chunk's rows of a token-major
// tensor (all the group's channels of kChunk steps) are read from memory once for all blocks, where one
// block at a time would stream each tensor once per block (a W-lane row is one cache line of a longer row).
// ck: the checkpoints of block blo (per block nchunks * n * W floats, block-major).
template <int64_t N>
void fwd_run(const Problem& p, int64_t bi, int64_t blo, int64_t bhi, const Seq& y, float* ck, float* last) {
  const int64_t n = N > 0 ? N : p.n, nb = bhi - blo, per_block = p.nchunks * n * W;
  std::vector<Block<N>> bks;
  bks.reserve(nb);
  for (int64_t blk = blo; blk < bhi; ++blk) bks.emplace_back(p, blk);
  std::vector<FwdState<N>> st(nb);  // value-initialised: h_0 = 0
  for (int64_t c = 0; c < p.nchunks; ++c) {
    for (int64_t q = 0; q < nb; ++q) {
      fwd_chunk(p, bks[q], bi, c * kChunk, st[q].h, y, ck != nullptr ? ck + q * per_block + c * n * W : nullptr);
    }
  }
  for (int64_t q = 0; q < nb; ++q) {
    const Block<N>& bk = bks[q];
    for (int64_t k = 0; k < n; ++k)
      for (int j = 0; j < bk.w; ++j) last[(bi * p.d + bk.c0 + j) * n + k] = st[q].h[k][j];
  }
}

// Splits a thread's contiguous range of tasks [lo, hi) (task = batch item * nblk + block, blocks group-major)
// into runs of blocks of one batch item and group, calling f(bi, blo, bhi, first task, whole group in range).
// Runs are single blocks unless the input is token-major: channel-major rows are contiguous in time for each
// block alone, so there is no shared row to read once.
template <typename F>
void for_runs(const Problem& p, int64_t lo, int64_t hi, F&& f) {
  const bool together = p.u.sc == 1;
  for (int64_t task = lo; task < hi;) {
    const int64_t g0 = task / p.bpg * p.bpg, end = std::min(hi, g0 + p.bpg);  // the group's blocks in range
    const bool whole = g0 >= lo && g0 + p.bpg <= hi;
    const int64_t bi = task / p.nblk;
    for (; task < end; task = together ? end : task + 1) {
      const int64_t stop = together ? end : task + 1;
      f(bi, task % p.nblk, task % p.nblk + (stop - task), task, whole);
    }
  }
}

struct Grads {
  Seq du, ddt, dz, dy;
  Seq y;  // the forward's output, recomputed on the way (p == nullptr: not asked for)
  float *dA, *dD, *dbias;  // (b, d, n), (b, d), (b, d)
  float* ddtw;  // low-rank delta: (b, d, r)
};

// Where one group's blocks add their dB, dC (l, n) and low-rank d dt (l, r): every block of a group adds to the
// same rows (the sums over channels), so a group is either one thread's alone (the outputs themselves) or shared
// between threads (then each thread adds into its own zeroed copy, summed into the outputs at the end).
struct GroupSums {
  float *dB, *dC, *dtl;
};

// out[k] += sum over the W lanes of v[k], for k < n: the channel reduction of dB_t / dC_t. With AVX2, eight
// rows at a time through horizontal adds (9 shuffles/adds for 8 sums; a 16-lane row is first folded to 8 lanes
// by adding its two halves); elsewhere plain loops.
inline void add_lane_sums(const float (*v)[W], int64_t n, float* out) {
  int64_t k = 0;
#if defined(__AVX2__)
  auto row = [&](int64_t i) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    const __m512 x = _mm512_load_ps(v[i]);
    return _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1));
#else
    static_assert(W == 8, "a 16-lane row needs AVX-512DQ to fold");
    return _mm256_load_ps(v[i]);
#endif
  };
  for (; k + 8 <= n; k += 8) {
    const __m256 t0 = _mm256_hadd_ps(row(k), row(k + 1));
    const __m256 t1 = _mm256_hadd_ps(row(k + 2), row(k + 3));
    const __m256 t2 = _mm256_hadd_ps(row(k + 4), row(k + 5));
    const __m256 t3 = _mm256_hadd_ps(row(k + 6), row(k + 7));
    const __m256 lo = _mm256_hadd_ps(t0, t1), hi = _mm256_hadd_ps(t2, t3);
    const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
    _mm256_storeu_ps(out + k, _mm256_add_ps(_mm256_loadu_ps(out + k), s));
  }
#endif
  for (; k < n; ++k) {
    float s = 0.f;
    for (int j = 0; j < W; ++j) s += v[k][j];
    out[k] += s;
  }
}

// Per-thread buffers of the backward, lanes last: the chunk's recomputed states h_{t0..t1} and decays
// exp(dt_t A) (shared by the blocks of a run: one block's chunk at a time), one step's dB_t / dC_t terms
// before the channel reduction, and the chunk's sums over the run's channels (dB, dC: kChunk x n; the
// low-rank d dt: kChunk x r), added to the group's rows once per chunk.
struct BwdWork {
  std::vector<float> buf;
  float (*hs)[W];   // (kChunk + 1) * n rows
  float (*dec)[W];  // kChunk * n rows
  float (*dbv)[W];  // n rows (one step)
  float (*dcv)[W];  // n rows
  float (*dwv)[W];  // kMaxRank rows: one step's d dt terms of a low-rank delta
  std::vector<float> cdB, cdC, cdt;
  explicit BwdWork(int64_t n, int64_t r)
      : buf(((2 * kChunk + 1) * n + 2 * n + kMaxRank) * W + W), cdB(kChunk * n), cdC(kChunk * n), cdt(kChunk * r) {
    auto base = reinterpret_cast<uintptr_t>(buf.data());
    float* f = reinterpret_cast<float*>((base + kAlign - 1) & ~uintptr_t(kAlign - 1));  // aligned rows
    hs = reinterpret_cast<float (*)[W]>(f);
    dec = hs + (kChunk + 1) * n;
    dbv = dec + kChunk * n;
    dcv = dbv + n;
    dwv = dcv + n;
  }
};

// What a block of the backward carries from one chunk to the one before it.
template <int64_t N>
struct BwdState {
  // an_next: the decays of the first step after the chunk (its successor's), for the adjoint's last step
  alignas(kAlign) float g[N > 0 ? N : kMaxState][W], an_next[N > 0 ? N : kMaxState][W],
      dAacc[N > 0 ? N : kMaxState][W];
  alignas(kAlign) float dDacc[W], dbacc[W], dWacc[kMaxRank][W];

  explicit BwdState(const Problem& p) {
    const int64_t n = N > 0 ? N : p.n;
    for (int64_t k = 0; k < n; ++k)
      for (int j = 0; j < W; ++j) g[k][j] = an_next[k][j] = dAacc[k][j] = 0.f;
    for (int64_t q = 0; q < p.r; ++q)
      for (int j = 0; j < W; ++j) dWacc[q][j] = 0.f;
    for (int j = 0; j < W; ++j) dDacc[j] = dbacc[j] = 0.f;
  }
};

// One chunk of the backward of one block of W channels, vectorised over the channels like the forward: the
// state is n vectors of W lanes, B_t[k] and C_t[k] are broadcasts, and du_t / ddelta_t accumulate lane-wise (no sums
// over the state per step). Only dB_t and dC_t need a sum over the block's channels: one reduction of n
// vectors per step each (add_lane_sums). bwd_run walks the chunks right to left (ck: this chunk's boundary
// state); each takes two passes:
// 1. forward over the chunk: the states h_t are recomputed from the chunk's boundary state (keeping them and
//    the decays exp(dt_t A), so the adjoint needs no second exp), and with h_t at hand, the terms that need
//    only h_t are done there: dC_t = sum over channels of dy_t h_t, and y_t for the z gate's gradient (and
//    for a caller that wants y back);
// 2. backward over the chunk: the adjoint recurrence
//      g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t
//    with du_t, ddelta_t, dA and dB_t from it. The ddelta term through B is u_t sum_k g_t[k] B_t[k], the same
//    sum as du_t's, so it costs nothing per state.
// Masked lanes (a block narrower than W) get dy = 0, so they add nothing to dB/dC.
// B and C must have the state as their fastest axis here (scan_bwd checks it).
template <int64_t N, bool kWantY>
void bwd_chunk(const Problem& p, const Block<N>& bk, BwdState<N>& st, int64_t bi, int64_t c, const float* ck,
               const Grads& gr, const GroupSums& sc, BwdWork& wk) {
  const int64_t n = N > 0 ? N : p.n;
  const float* Bg = p.Bp + bi * p.Bs[0] + bk.gi * p.Bs[1];
  const float* Cg = p.Cp + bi * p.Cs[0] + bk.gi * p.Cs[1];
  // the block's carried state as locals for the chunk, which the compiler then knows apart from the work buffers
  alignas(kAlign) float g[N > 0 ? N : kMaxState][W], an_next[N > 0 ? N : kMaxState][W],
      dAacc[N > 0 ? N : kMaxState][W];
  alignas(kAlign) float dDacc[W], dbacc[W], live[W], dWacc[kMaxRank][W];
  for (int j = 0; j < W; ++j) live[j] = j < bk.w ? 1.f : 0.f;  // masked lanes: 0
  std::copy_n(&st.g[0][0], n * W, &g[0][0]);
  std::copy_n(&st.an_next[0][0], n * W, &an_next[0][0]);
  std::copy_n(&st.dAacc[0][0], n * W, &dAacc[0][0]);
  std::copy_n(&st.dWacc[0][0], p.r * W, &dWacc[0][0]);
  std::copy_n(st.dDacc, W, dDacc);
  std::copy_n(st.dbacc, W, dbacc);
  float (*hs)[W] = wk.hs;
  float (*dec)[W] = wk.dec;
  const int64_t t0 = c * kChunk, t1 = std::min(p.l, t0 + kChunk), len = t1 - t0;
  // dys: dy, then (z gate) dy silu(z), the gradient at the gate's input y_t
  alignas(kAlign) float dts[kChunk][W], dsp[kChunk][W], us[kChunk][W], zs[kChunk][W], zsg[kChunk][W],
      dy0[kChunk][W], dys[kChunk][W], dus[kChunk][W], ddts[kChunk][W], dzs[kChunk][W], yo[kChunk][W];
  load_delta(p, bk, bi, t0, len, dts);
  load_rows(p.u, bi, bk, t0, len, us);
  load_rows(gr.dy, bi, bk, t0, len, dy0);
  if (bk.w < W) {
    for (int64_t i = 0; i < len; ++i)
      for (int j = 0; j < W; ++j) dy0[i][j] *= live[j];
  }
  if (p.softplus) {
    float* f = &dts[0][0];
    float* s = &dsp[0][0];
#pragma omp simd
    for (int64_t q = 0; q < len * W; ++q) {
      s[q] = fast_sigmoid(f[q]);  // d softplus / d raw
      f[q] = fast_softplus(f[q]);
    }
  }
  if (p.has_z) {
    load_rows(p.z, bi, bk, t0, len, zs);
    const float* f = &zs[0][0];
    const float* d0 = &dy0[0][0];
    float* s = &zsg[0][0];
    float* d = &dys[0][0];
#pragma omp simd
    for (int64_t q = 0; q < len * W; ++q) {
      s[q] = fast_sigmoid(f[q]);
      d[q] = d0[q] * f[q] * s[q];
    }
  }
  const float (*dyg)[W] = p.has_z ? dys : dy0;  // the gradient at y_t before the gate (no copy without z)
  // pass 1: h_{t0} .. h_{t1-1} from the chunk's boundary state, with dC_t and y_t on the way
  for (int64_t k = 0; k < n; ++k)
    for (int j = 0; j < W; ++j) hs[k][j] = ck[k * W + j];  // the chunk's boundary state
  for (int64_t i = 0; i < len; ++i) {
    const float* Bt = Bg + (t0 + i) * p.Bs[3];
    const float* Ct = Cg + (t0 + i) * p.Cs[3];
    alignas(kAlign) float duv[W], yp[W], yp2[W];
    for (int j = 0; j < W; ++j) {
      duv[j] = dts[i][j] * us[i][j];
      yp[j] = bk.Dv[j] * us[i][j];
      yp2[j] = 0.f;
    }
    const float (*hp)[W] = hs + i * n;
    float (*hn)[W] = hs + (i + 1) * n;
    float (*dc)[W] = dec + i * n;
    auto state = [&](int64_t k, float* sum) MEDMAMBA_INLINE_LAMBDA {  // as in fwd_chunk
      const float Bk = Bt[k], Ck = Ct[k];
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        dc[k][j] = fast_exp(dts[i][j] * bk.a[k][j]);
        const float h = dc[k][j] * hp[k][j] + duv[j] * Bk;
        hn[k][j] = h;
        wk.dcv[k][j] = dyg[i][j] * h;
        if constexpr (kWantY) sum[j] += Ck * h;
      }
    };
    int64_t k = 0;
    for (; k + 1 < n; k += 2) {
      state(k, yp);
      state(k + 1, yp2);
    }
    if (k < n) state(k, yp);
    add_lane_sums(wk.dcv, n, sc.dC + i * n);
    if constexpr (kWantY) {
      if (p.has_z) {
#pragma omp simd
        for (int j = 0; j < W; ++j) {
          const float zt = zs[i][j], sg = zsg[i][j], out = yp[j] + yp2[j];
          dzs[i][j] = dy0[i][j] * out * sg * (1.0f + zt * (1.0f - sg));
          yo[i][j] = out * zt * sg;
        }
      } else {
        for (int j = 0; j < W; ++j) yo[i][j] = yp[j] + yp2[j];
      }
    }
  }
  // pass 2: the adjoint, right to left
  for (int64_t i = len - 1; i >= 0; --i) {
    const int64_t t = t0 + i;
    const float* Bt = Bg + t * p.Bs[3];
    const float* Ct = Cg + t * p.Cs[3];
    const float (*hprev)[W] = hs + i * n;
    const float (*dc)[W] = dec + i * n;
    const float (*dn)[W] = i + 1 < len ? dec + (i + 1) * n : an_next;  // decays of step t + 1
    alignas(kAlign) float dyp[W], dtu[W], du_acc[W], dta_acc[W];
    for (int j = 0; j < W; ++j) {
      dyp[j] = dyg[i][j];
      dDacc[j] += dyp[j] * us[i][j];
      dtu[j] = dts[i][j] * us[i][j];
      du_acc[j] = dta_acc[j] = 0.f;
    }
    for (int64_t k = 0; k < n; ++k) {
      const float Bk = Bt[k], Ck = Ct[k];
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const float gk = dn[k][j] * g[k][j] + Ck * dyp[j];
        const float gq = gk * dc[k][j] * hprev[k][j];  // through the decay of step t
        wk.dbv[k][j] = gk * dtu[j];
        du_acc[j] += gk * Bk;
        dta_acc[j] += bk.a[k][j] * gq;
        dAacc[k][j] += dts[i][j] * gq;
        g[k][j] = gk;
      }
    }
    add_lane_sums(wk.dbv, n, sc.dB + i * n);
#pragma omp simd
    for (int j = 0; j < W; ++j) {
      const float raw = us[i][j] * du_acc[j] + dta_acc[j];  // d/d dt of dt B u and of exp(dt A)
      const float ddt = p.softplus ? raw * dsp[i][j] : raw;
      dbacc[j] += ddt * live[j];
      ddts[i][j] = ddt;
      dus[i][j] = du_acc[j] * dts[i][j] + dyp[j] * bk.Dv[j];
    }
    if (p.r > 0) {  // delta = dtw @ dt: d dtw += ddelta dt^T (lane-wise), d dt = dtw^T ddelta (over channels)
      for (int64_t q = 0; q < p.r; ++q) {
        const float v = p.dt.at(bi, bk.gi * p.r + q, t);
#pragma omp simd
        for (int j = 0; j < W; ++j) {
          const float dl = ddts[i][j] * live[j];
          dWacc[q][j] += dl * v;
          wk.dwv[q][j] = bk.wdt[q][j] * dl;
        }
      }
      add_lane_sums(wk.dwv, p.r, sc.dtl + i * p.r);
    }
  }
  store_rows(gr.du, bi, bk, t0, len, dus);
  if (p.r == 0) store_rows(gr.ddt, bi, bk, t0, len, ddts);
  if (p.has_z) store_rows(gr.dz, bi, bk, t0, len, dzs);
  if (gr.y.p != nullptr) store_rows(gr.y, bi, bk, t0, len, yo);
  std::copy_n(&g[0][0], n * W, &st.g[0][0]);
  std::copy_n(&dec[0][0], n * W, &st.an_next[0][0]);  // the decays of step t0, for the chunk before
  std::copy_n(&dAacc[0][0], n * W, &st.dAacc[0][0]);
  std::copy_n(&dWacc[0][0], p.r * W, &st.dWacc[0][0]);
  std::copy_n(dDacc, W, st.dDacc);
  std::copy_n(dbacc, W, st.dbacc);
}

// Blocks [blo, bhi) of one batch item and group, chunks right to left and blocks inner (as fwd_run, so that a
// chunk's rows are read once for all blocks); the chunk's dB/dC/d dt sums over the run's channels are added
// to `sums` (the group's rows, or this thread's copy of them) once per chunk.
template <int64_t N, bool kWantY>
void bwd_run(const Problem& p, int64_t bi, int64_t blo, int64_t bhi, const float* ck, const Grads& gr,
             const GroupSums& sums, BwdWork& wk) {
  const int64_t n = N > 0 ? N : p.n, nb = bhi - blo, per_block = p.nchunks * n * W;
  std::vector<Block<N>> bks;
  bks.reserve(nb);
  for (int64_t blk = blo; blk < bhi; ++blk) bks.emplace_back(p, blk);
  std::vector<BwdState<N>> st;
  st.reserve(nb);
  for (int64_t q = 0; q < nb; ++q) st.emplace_back(p);
  for (int64_t c = p.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, len = std::min(p.l, t0 + kChunk) - t0;
    // the chunk's rows of the sums; a lone block adds to them directly (a chunk buffer measured ~4% slower so)
    const GroupSums rows{sums.dB + t0 * n, sums.dC + t0 * n, p.r > 0 ? sums.dtl + t0 * p.r : nullptr};
    const bool buffered = nb > 1;
    if (buffered) {
      std::fill(wk.cdB.begin(), wk.cdB.end(), 0.f);
      std::fill(wk.cdC.begin(), wk.cdC.end(), 0.f);
      std::fill(wk.cdt.begin(), wk.cdt.end(), 0.f);
    }
    const GroupSums dst = buffered ? GroupSums{wk.cdB.data(), wk.cdC.data(), wk.cdt.data()} : rows;
    for (int64_t q = 0; q < nb; ++q)
      bwd_chunk<N, kWantY>(p, bks[q], st[q], bi, c, ck + q * per_block + c * n * W, gr, dst, wk);
    if (!buffered) continue;
#pragma omp simd
    for (int64_t q = 0; q < len * n; ++q) {
      rows.dB[q] += wk.cdB[q];
      rows.dC[q] += wk.cdC[q];
    }
    for (int64_t q = 0; q < len * p.r; ++q) rows.dtl[q] += wk.cdt[q];
  }
  for (int64_t q = 0; q < nb; ++q) {
    const Block<N>& bk = bks[q];
    for (int j = 0; j < bk.w; ++j) {
      const int64_t row = bi * p.d + bk.c0 + j;
      for (int64_t k = 0; k < n; ++k) gr.dA[row * n + k] = st[q].dAacc[k][j];
      gr.dD[row] = st[q].dDacc[j];
      gr.dbias[row] = st[q].dbacc[j];
      for (int64_t qq = 0; qq < p.r; ++qq) gr.ddtw[row * p.r + qq] = st[q].dWacc[qq][j];
    }
  }
}

template <typename F16, typename F8, typename F0>
void dispatch_n(int64_t n, F16&& f16, F8&& f8, F0&& f0) {
  if (n == 16) f16();
  else if (n == 8) f8();
  else f0();
}

}  // namespace

// Returns y (layout of u), the last state (b, d, n), and the chunk-boundary states for the backward.
std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                    torch::Tensor C, torch::Tensor D, torch::Tensor z, torch::Tensor bias,
                                    bool softplus, bool save_checkpoints, torch::Tensor dtw) {
  const Problem p = make_problem(u, delta, A, B, C, D, z, bias, softplus, dtw);
  auto y = empty_as(u);
  auto last = torch::empty({p.b, p.d, p.n}, u.options());
  auto ckpt = torch::empty({save_checkpoints ? p.b * p.nblk * p.nchunks * p.n * W : 0}, u.options());
  const Seq ys = seq_of(y);
  float* plast = last.data_ptr<float>();
  float* pck = save_checkpoints ? ckpt.data_ptr<float>() : nullptr;
  const int64_t per_block = p.nchunks * p.n * W;

#pragma omp parallel
  {
    // contiguous, even ranges of tasks per thread, each walked as runs of blocks of one group (fwd_run)
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t ntask = p.b * p.nblk, lo = ntask * tid / nt, hi = ntask * (tid + 1) / nt;
    for_runs(p, lo, hi, [&](int64_t bi, int64_t blo, int64_t bhi, int64_t task, bool) {
      float* ck = pck != nullptr ? pck + task * per_block : nullptr;
      dispatch_n(
          p.n, [&] { fwd_run<16>(p, bi, blo, bhi, ys, ck, plast); },
          [&] { fwd_run<8>(p, bi, blo, bhi, ys, ck, plast); }, [&] { fwd_run<0>(p, bi, blo, bhi, ys, ck, plast); });
    });
  }
  return {y, last, ckpt};
}

// Returns du, ddelta, dA (d, n), dB (b, g, l, n), dC (b, g, l, n), dD (d), dz, dbias (d), with `return_y`
// the forward's output y (layout of u), recomputed here so that a fused caller need not keep it, and with a
// low-rank delta (dtw (d, r) given, delta the (b, g*r, l) input) its gradient as (b, g, l, r) and dtw's (d, r);
// ddelta is then empty.
std::vector<torch::Tensor> scan_bwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                    torch::Tensor C, torch::Tensor D, torch::Tensor z, torch::Tensor bias,
                                    bool softplus, torch::Tensor ckpt, torch::Tensor dy, bool return_y,
                                    torch::Tensor dtw) {
  const Problem p = make_problem(u, delta, A, B, C, D, z, bias, softplus, dtw);
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == torch::kFloat32, "bad output gradient");
  TORCH_CHECK(B.stride(2) == 1 && C.stride(2) == 1, "the backward needs B and C with the state axis contiguous");
  auto du = empty_as(u);
  auto ddelta = p.r == 0 ? empty_as(delta) : torch::empty({0}, u.options());
  auto ddtl = torch::zeros({p.b, p.g, p.l, p.r}, u.options());
  auto ddtw = torch::empty({p.b, p.d, p.r}, u.options());
  auto dz = p.has_z ? empty_as(z) : torch::empty({0}, u.options());
  auto y = return_y ? empty_as(u) : torch::empty({0}, u.options());
  auto dB = torch::zeros({p.b, p.g, p.l, p.n}, u.options());
  auto dC = torch::zeros({p.b, p.g, p.l, p.n}, u.options());
  auto dA = torch::empty({p.b, p.d, p.n}, u.options());
  auto dD = torch::empty({p.b, p.d}, u.options());
  auto dbias = torch::empty({p.b, p.d}, u.options());
  const int64_t ln = p.l * p.n, lr = p.l * p.r, ntask = p.b * p.nblk;
  float *pdB = dB.data_ptr<float>(), *pdC = dC.data_ptr<float>(), *pdtl = ddtl.data_ptr<float>();
  const float* pck = ckpt.data_ptr<float>();

#pragma omp parallel
  {
    // Tasks (one block of one batch item, numbered group-major) in contiguous, even ranges per thread, as a
    // static schedule would: at most the first and last group of a range are shared with another thread.
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t lo = ntask * tid / nt, hi = ntask * (tid + 1) / nt;
    Grads gr{seq_of(du), p.r == 0 ? seq_of(ddelta) : Seq{nullptr, 0, 0, 0}, p.has_z ? seq_of(dz) : Seq{nullptr, 0, 0, 0},
             seq_of(dy), return_y ? seq_of(y) : Seq{nullptr, 0, 0, 0}, dA.data_ptr<float>(), dD.data_ptr<float>(),
             dbias.data_ptr<float>(), ddtw.data_ptr<float>()};
    BwdWork wk(p.n, p.r);
    std::vector<std::pair<int64_t, std::vector<float>>> shared;  // (group, this thread's dB | dC | d dt sums)
    for_runs(p, lo, hi, [&](int64_t bi, int64_t blo, int64_t bhi, int64_t task, bool whole) {
      const int64_t grp = task / p.bpg;
      GroupSums sums{pdB + grp * ln, pdC + grp * ln, p.r > 0 ? pdtl + grp * lr : nullptr};
      if (!whole) {  // the group is shared with another thread
        if (shared.empty() || shared.back().first != grp)
          shared.emplace_back(grp, std::vector<float>(2 * ln + lr, 0.f));
        float* own = shared.back().second.data();
        sums = {own, own + ln, p.r > 0 ? own + 2 * ln : nullptr};
      }
      const float* ck = pck + task * p.nchunks * p.n * W;
      if (p.has_z || return_y) {  // y is recomputed in the backward's first pass
        dispatch_n(
            p.n, [&] { bwd_run<16, true>(p, bi, blo, bhi, ck, gr, sums, wk); },
            [&] { bwd_run<8, true>(p, bi, blo, bhi, ck, gr, sums, wk); },
            [&] { bwd_run<0, true>(p, bi, blo, bhi, ck, gr, sums, wk); });
      } else {
        dispatch_n(
            p.n, [&] { bwd_run<16, false>(p, bi, blo, bhi, ck, gr, sums, wk); },
            [&] { bwd_run<8, false>(p, bi, blo, bhi, ck, gr, sums, wk); },
            [&] { bwd_run<0, false>(p, bi, blo, bhi, ck, gr, sums, wk); });
      }
    });
#pragma omp critical
    for (const auto& [grp, own] : shared) {
      for (int64_t q = 0; q < ln; ++q) {
        pdB[grp * ln + q] += own[q];
        pdC[grp * ln + q] += own[ln + q];
      }
      for (int64_t q = 0; q < lr; ++q) pdtl[grp * lr + q] += own[2 * ln + q];
    }
  }
  return {du, ddelta, dA.sum(0), dB, dC, dD.sum(0), dz, dbias.sum(0), y, p.r > 0 ? ddtl : torch::empty({0}, u.options()),
          ddtw.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward with fused bias/softplus/D/z (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward with fused bias/softplus/D/z (CPU)");
}
