// Selective scan (Mamba-1 recurrence) on the CPU: forward and backward, with mamba_ssm's epilogue fused.
//
//   dt_t = softplus(delta_t + bias)      (bias and softplus optional)
//   h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
//   y_t  = (sum_n C_t[n] * h_t[n] + D * u_t) * silu(z_t)      (D and z optional)
//
// Vectorised over channels: one OpenMP task owns a block of W = 8 (AVX-512: 16) channels of one batch item (a block never
// straddles a group of B/C), lane j of every vector is channel c0 + j, so the state is n vectors of W lanes,
// B_t[k] and C_t[k] are broadcasts and y_t needs no horizontal sum. Every tensor is read and written
// through its strides, so the token-major (b, l, d) activations of a network need no transposed copies,
// and the bias/softplus/D/z element-wise passes (and their backward) happen inside the scan.
// The forward keeps h only at chunk boundaries; the backward, vectorised over the same channel blocks,
// recomputes each chunk from its boundary state and runs the adjoint recurrence in reverse (see bwd_block).
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

namespace {

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

// exp(x) from plain arithmetic so that GCC inlines it and vectorises it with the loop around it: the scan
// is bound by exp (l*d*n of them), and an out-of-line libm/libmvec call per step costs ~2x. Range reduction
// x = k ln2 + r with ln2 split in two (Cody-Waite), e^r by Cephes' degree-5 minimax polynomial on
// |r| <= ln2/2, 2^k built in the exponent bits. Max relative error ~2 ulp for x in [-87, 88]; inputs
// beyond are clamped (e^-87 ~ 1.6e-38, so decays underflow to ~0 just as expf's denormals would).
inline float scan_exp(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float scan_sigmoid(float x) { return 1.0f / (1.0f + scan_exp(-x)); }

// softplus(x) = max(x, 0) + log1p(e^-|x|), the log1p as 2 atanh(s) with s = y / (2 + y) <= 1/3 (odd series
// to s^13, error < 1e-8): vectorisable, unlike log1pf.
inline float scan_softplus(float x) {
  const float y = scan_exp(-std::fabs(x));
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return std::fmax(x, 0.0f) + 2.0f * s * p;
}

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

// The chunk's raw delta (before softplus) for the W lanes: read, or with a low-rank delta computed as
// bias + dtw @ dt from the group's r rows, so that no (b, d, l) delta exists in memory.
template <int64_t N>
void load_delta(const Problem& p, const Block<N>& bk, int64_t bi, int64_t t0, int64_t len, float (*dts)[W]) {
  if (p.r == 0) {
    for (int j = 0; j < W; ++j)
      for (int64_t i = 0; i < len; ++i) dts[i][j] = p.dt.at(bi, bk.ch[j], t0 + i) + bk.bv[j];
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

template <int64_t N>
void fwd_block(const Problem& p, int64_t bi, int64_t blk, const Seq& y, float* ck, float* last) {
  const int64_t n = N > 0 ? N : p.n;
  const Block<N> bk(p, blk);
  alignas(kAlign) float h[N > 0 ? N : kMaxState][W];
  for (int64_t k = 0; k < n; ++k)
    for (int j = 0; j < W; ++j) h[k][j] = 0.f;
  for (int64_t t0 = 0; t0 < p.l; t0 += kChunk) {
    if (ck != nullptr) {
      float* dst = ck + (t0 / kChunk) * n * W;
      for (int64_t k = 0; k < n; ++k)
        for (int j = 0; j < W; ++j) dst[k * W + j] = h[k][j];
    }
    const int64_t t1 = std::min(p.l, t0 + kChunk), len = t1 - t0;
    // The chunk's inputs for the W lanes first (one strided walk per lane), softplus and the z gate in
    // loops over len*W values that vectorise; the scan then reads contiguous W-vectors per step.
    alignas(kAlign) float dts[kChunk][W], us[kChunk][W], gate[kChunk][W], ys[kChunk][W];
    load_delta(p, bk, bi, t0, len, dts);
    for (int j = 0; j < W; ++j)
      for (int64_t i = 0; i < len; ++i) us[i][j] = p.u.at(bi, bk.ch[j], t0 + i);
    if (p.softplus) {
      float* f = &dts[0][0];
#pragma omp simd
      for (int64_t q = 0; q < len * W; ++q) f[q] = scan_softplus(f[q]);
    }
    if (p.has_z) {
      for (int j = 0; j < W; ++j)
        for (int64_t i = 0; i < len; ++i) gate[i][j] = p.z.at(bi, bk.ch[j], t0 + i);
      float* f = &gate[0][0];
#pragma omp simd
      for (int64_t q = 0; q < len * W; ++q) f[q] *= scan_sigmoid(f[q]);  // silu(z)
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
          h[k][j] = scan_exp(dts[i][j] * bk.a[k][j]) * h[k][j] + duv[j] * Bk;
          sum[j] += Ck * h[k][j];
        }
      }
      for (int j = 0; j < W; ++j) ys[i][j] = (acc[j] + acc2[j]) + bk.Dv[j] * us[i][j];
      if (p.has_z) {
        for (int j = 0; j < W; ++j) ys[i][j] *= gate[i][j];
      }
    }
    for (int j = 0; j < bk.w; ++j)
      for (int64_t i = 0; i < len; ++i) y.at(bi, bk.c0 + j, t0 + i) = ys[i][j];
  }
  for (int64_t k = 0; k < n; ++k)
    for (int j = 0; j < bk.w; ++j) last[(bi * p.d + bk.c0 + j) * n + k] = h[k][j];
}

struct Grads {
  Seq du, ddt, dz, dy;
  Seq y;  // the forward's output, recomputed on the way (p == nullptr: not asked for)
  float *dB, *dC;  // this thread's (b, g, l, n) accumulators: blocks of a group would race on shared ones
  float *dA, *dD, *dbias;  // (b, d, n), (b, d), (b, d)
  float *ddtl, *ddtw;  // low-rank delta: this thread's (b, g, l, r) accumulator, and (b, d, r)
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
// exp(dt_t A), and one step's dB_t / dC_t terms before the channel reduction.
struct BwdWork {
  std::vector<float> buf;
  float (*hs)[W];   // (kChunk + 1) * n rows
  float (*dec)[W];  // kChunk * n rows
  float (*dbv)[W];  // n rows (one step)
  float (*dcv)[W];  // n rows
  float (*dwv)[W];  // kMaxRank rows: one step's d dt terms of a low-rank delta
  explicit BwdWork(int64_t n) : buf(((2 * kChunk + 1) * n + 2 * n + kMaxRank) * W + W) {
    auto base = reinterpret_cast<uintptr_t>(buf.data());
    float* f = reinterpret_cast<float*>((base + kAlign - 1) & ~uintptr_t(kAlign - 1));  // aligned rows
    hs = reinterpret_cast<float (*)[W]>(f);
    dec = hs + (kChunk + 1) * n;
    dbv = dec + kChunk * n;
    dcv = dbv + n;
    dwv = dcv + n;
  }
};

// The backward of one block of W channels, vectorised over the channels like the forward: the state is n
// vectors of W lanes, B_t[k] and C_t[k] are broadcasts, and du_t / ddelta_t accumulate lane-wise (no sums
// over the state per step). Only dB_t and dC_t need a sum over the block's channels: one reduction of n
// vectors per step (add_lane_sums). Chunks are walked right to left; each is first recomputed from its
// boundary state (keeping the decays, so the adjoint needs no second exp), then the adjoint recurrence
//   g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t
// runs in reverse. Masked lanes (a block narrower than W) get dy = 0, so they add nothing to dB/dC.
// B and C must have the state as their fastest axis here (scan_bwd checks it).
template <int64_t N>
void bwd_block(const Problem& p, int64_t bi, int64_t blk, const float* ck, const Grads& gr, BwdWork& wk) {
  const int64_t n = N > 0 ? N : p.n;
  const Block<N> bk(p, blk);
  const float* Bg = p.Bp + bi * p.Bs[0] + bk.gi * p.Bs[1];
  const float* Cg = p.Cp + bi * p.Cs[0] + bk.gi * p.Cs[1];
  float* dBg = gr.dB + (bi * p.g + bk.gi) * p.l * n;
  float* dCg = gr.dC + (bi * p.g + bk.gi) * p.l * n;
  alignas(kAlign) float g[N > 0 ? N : kMaxState][W], an[N > 0 ? N : kMaxState][W], dAacc[N > 0 ? N : kMaxState][W];
  alignas(kAlign) float dDacc[W], dbacc[W], live[W], dWacc[kMaxRank][W];
  for (int64_t k = 0; k < n; ++k)
    for (int j = 0; j < W; ++j) g[k][j] = an[k][j] = dAacc[k][j] = 0.f;
  for (int64_t q = 0; q < p.r; ++q)
    for (int j = 0; j < W; ++j) dWacc[q][j] = 0.f;
  float* dtlg = p.r > 0 ? gr.ddtl + (bi * p.g + bk.gi) * p.l * p.r : nullptr;
  for (int j = 0; j < W; ++j) {
    dDacc[j] = dbacc[j] = 0.f;
    live[j] = j < bk.w ? 1.f : 0.f;
  }
  float (*hs)[W] = wk.hs;
  float (*dec)[W] = wk.dec;
  for (int64_t c = p.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = std::min(p.l, t0 + kChunk), len = t1 - t0;
    alignas(kAlign) float dts[kChunk][W], dsp[kChunk][W], us[kChunk][W], zs[kChunk][W], zsg[kChunk][W],
        dys[kChunk][W], dus[kChunk][W], ddts[kChunk][W], dzs[kChunk][W], yo[kChunk][W];
    const bool want_y = gr.y.p != nullptr;
    load_delta(p, bk, bi, t0, len, dts);
    for (int j = 0; j < W; ++j) {
      for (int64_t i = 0; i < len; ++i) {
        us[i][j] = p.u.at(bi, bk.ch[j], t0 + i);
        dys[i][j] = gr.dy.at(bi, bk.ch[j], t0 + i) * live[j];
      }
    }
    if (p.softplus) {
      float* f = &dts[0][0];
      float* s = &dsp[0][0];
#pragma omp simd
      for (int64_t q = 0; q < len * W; ++q) {
        s[q] = scan_sigmoid(f[q]);  // d softplus / d raw
        f[q] = scan_softplus(f[q]);
      }
    }
    if (p.has_z) {
      for (int j = 0; j < W; ++j)
        for (int64_t i = 0; i < len; ++i) zs[i][j] = p.z.at(bi, bk.ch[j], t0 + i);
      const float* f = &zs[0][0];
      float* s = &zsg[0][0];
#pragma omp simd
      for (int64_t q = 0; q < len * W; ++q) s[q] = scan_sigmoid(f[q]);
    }
    // recompute h_{t0} .. h_{t1-1} from the chunk's boundary state, keeping each step's decays
    const float* cks = ck + c * n * W;
    for (int64_t k = 0; k < n; ++k)
      for (int j = 0; j < W; ++j) hs[k][j] = cks[k * W + j];
    for (int64_t i = 0; i < len; ++i) {
      const float* Bt = Bg + (t0 + i) * p.Bs[3];
      alignas(kAlign) float duv[W];
      for (int j = 0; j < W; ++j) duv[j] = dts[i][j] * us[i][j];
      const float (*hp)[W] = hs + i * n;
      float (*hn)[W] = hs + (i + 1) * n;
      float (*dc)[W] = dec + i * n;
      for (int64_t k = 0; k < n; ++k) {
        const float Bk = Bt[k];
#pragma omp simd
        for (int j = 0; j < W; ++j) {
          dc[k][j] = scan_exp(dts[i][j] * bk.a[k][j]);
          hn[k][j] = dc[k][j] * hp[k][j] + duv[j] * Bk;
        }
      }
    }
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      const float* Bt = Bg + t * p.Bs[3];
      const float* Ct = Cg + t * p.Cs[3];
      const float (*hprev)[W] = hs + i * n;
      const float (*hcur)[W] = hs + (i + 1) * n;
      const float (*dc)[W] = dec + i * n;
      alignas(kAlign) float dyp[W], dtu[W], du_acc[W], ddt_acc[W];
      for (int j = 0; j < W; ++j) dyp[j] = dys[i][j];
      if (p.has_z || want_y) {
        alignas(kAlign) float yp[W], yp2[W];
        for (int j = 0; j < W; ++j) {
          yp[j] = bk.Dv[j] * us[i][j];
          yp2[j] = 0.f;
        }
        for (int64_t k = 0; k < n; ++k) {
          const float Ck = Ct[k];
          float* sum = (k & 1) ? yp2 : yp;
#pragma omp simd
          for (int j = 0; j < W; ++j) sum[j] += Ck * hcur[k][j];
        }
        if (p.has_z) {
#pragma omp simd
          for (int j = 0; j < W; ++j) {
            const float zt = zs[i][j], sg = zsg[i][j], out = yp[j] + yp2[j];
            dzs[i][j] = dyp[j] * out * sg * (1.0f + zt * (1.0f - sg));
            dyp[j] *= zt * sg;
            yo[i][j] = out * zt * sg;
          }
        } else {
          for (int j = 0; j < W; ++j) yo[i][j] = yp[j] + yp2[j];
        }
      }
      for (int j = 0; j < W; ++j) {
        dDacc[j] += dyp[j] * us[i][j];
        dtu[j] = dts[i][j] * us[i][j];
        du_acc[j] = ddt_acc[j] = 0.f;
      }
      for (int64_t k = 0; k < n; ++k) {
        const float Bk = Bt[k], Ck = Ct[k];
#pragma omp simd
        for (int j = 0; j < W; ++j) {
          const float gk = an[k][j] * g[k][j] + Ck * dyp[j];
          const float gq = gk * dc[k][j] * hprev[k][j];  // through the decay of step t
          wk.dbv[k][j] = gk * dtu[j];
          wk.dcv[k][j] = dyp[j] * hcur[k][j];
          du_acc[j] += gk * Bk;
          ddt_acc[j] += gk * us[i][j] * Bk + bk.a[k][j] * gq;
          dAacc[k][j] += dts[i][j] * gq;
          g[k][j] = gk;
          an[k][j] = dc[k][j];
        }
      }
      add_lane_sums(wk.dbv, n, dBg + t * n);
      add_lane_sums(wk.dcv, n, dCg + t * n);
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const float ddt = p.softplus ? ddt_acc[j] * dsp[i][j] : ddt_acc[j];
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
        add_lane_sums(wk.dwv, p.r, dtlg + t * p.r);
      }
    }
    for (int j = 0; j < bk.w; ++j) {
      for (int64_t i = 0; i < len; ++i) gr.du.at(bi, bk.c0 + j, t0 + i) = dus[i][j];
      if (p.r == 0)
        for (int64_t i = 0; i < len; ++i) gr.ddt.at(bi, bk.c0 + j, t0 + i) = ddts[i][j];
      if (p.has_z)
        for (int64_t i = 0; i < len; ++i) gr.dz.at(bi, bk.c0 + j, t0 + i) = dzs[i][j];
      if (want_y)
        for (int64_t i = 0; i < len; ++i) gr.y.at(bi, bk.c0 + j, t0 + i) = yo[i][j];
    }
  }
  for (int j = 0; j < bk.w; ++j) {
    const int64_t row = bi * p.d + bk.c0 + j;
    for (int64_t k = 0; k < n; ++k) gr.dA[row * n + k] = dAacc[k][j];
    gr.dD[row] = dDacc[j];
    gr.dbias[row] = dbacc[j];
    for (int64_t q = 0; q < p.r; ++q) gr.ddtw[row * p.r + q] = dWacc[q][j];
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

#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < p.b * p.nblk; ++task) {
    const int64_t bi = task / p.nblk, blk = task % p.nblk;
    float* ck = pck != nullptr ? pck + task * per_block : nullptr;
    dispatch_n(
        p.n, [&] { fwd_block<16>(p, bi, blk, ys, ck, plast); }, [&] { fwd_block<8>(p, bi, blk, ys, ck, plast); },
        [&] { fwd_block<0>(p, bi, blk, ys, ck, plast); });
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
  const int n_threads = omp_get_max_threads();
  auto du = empty_as(u);
  auto ddelta = p.r == 0 ? empty_as(delta) : torch::empty({0}, u.options());
  auto ddtl_acc = torch::zeros({p.r > 0 ? n_threads : 0, p.b, p.g, p.l, p.r}, u.options());
  auto ddtw = torch::empty({p.b, p.d, p.r}, u.options());
  auto dz = p.has_z ? empty_as(z) : torch::empty({0}, u.options());
  auto y = return_y ? empty_as(u) : torch::empty({0}, u.options());
  auto dB_acc = torch::zeros({n_threads, p.b, p.g, p.l, p.n}, u.options());
  auto dC_acc = torch::zeros({n_threads, p.b, p.g, p.l, p.n}, u.options());
  auto dA = torch::empty({p.b, p.d, p.n}, u.options());
  auto dD = torch::empty({p.b, p.d}, u.options());
  auto dbias = torch::empty({p.b, p.d}, u.options());
  const int64_t thread_stride = p.b * p.g * p.l * p.n;
  const float* pck = ckpt.data_ptr<float>();

#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    Grads gr{seq_of(du), p.r == 0 ? seq_of(ddelta) : Seq{nullptr, 0, 0, 0}, p.has_z ? seq_of(dz) : Seq{nullptr, 0, 0, 0}, seq_of(dy),
             return_y ? seq_of(y) : Seq{nullptr, 0, 0, 0}, dB_acc.data_ptr<float>() + tid * thread_stride, dC_acc.data_ptr<float>() + tid * thread_stride,
             dA.data_ptr<float>(), dD.data_ptr<float>(), dbias.data_ptr<float>(),
             p.r > 0 ? ddtl_acc.data_ptr<float>() + tid * p.b * p.g * p.l * p.r : nullptr, ddtw.data_ptr<float>()};
    BwdWork wk(p.n);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < p.b * p.nblk; ++task) {
      const int64_t bi = task / p.nblk, blk = task % p.nblk;
      const float* ck = pck + task * p.nchunks * p.n * W;
      dispatch_n(
          p.n, [&] { bwd_block<16>(p, bi, blk, ck, gr, wk); }, [&] { bwd_block<8>(p, bi, blk, ck, gr, wk); },
          [&] { bwd_block<0>(p, bi, blk, ck, gr, wk); });
    }
  }
  return {du, ddelta, dA.sum(0), dB_acc.sum(0), dC_acc.sum(0), dD.sum(0), dz, dbias.sum(0), y,
          p.r > 0 ? ddtl_acc.sum(0) : ddtl_acc, ddtw.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward with fused bias/softplus/D/z (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward with fused bias/softplus/D/z (CPU)");
}
