// Selective scan (Mamba-1 recurrence) on the CPU: forward and backward, with mamba_ssm's epilogue fused.
//
//   dt_t = softplus(delta_t + bias)      (bias and softplus optional)
//   h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
//   y_t  = (sum_n C_t[n] * h_t[n] + D * u_t) * silu(z_t)      (D and z optional)
//
// Vectorised over channels: one OpenMP task owns a block of W = 8 channels of one batch item (a block never
// straddles a group of B/C), lane j of every vector is channel c0 + j, so the state is n vectors of W lanes,
// B_t[k] and C_t[k] are broadcasts and y_t needs no horizontal sum. Every tensor is read and written
// through its strides, so the token-major (b, l, d) activations of a network need no transposed copies,
// and the bias/softplus/D/z element-wise passes (and their backward) happen inside the scan.
// The forward keeps h only at chunk boundaries; the backward recomputes each chunk from its boundary state
// and runs the adjoint recurrence in reverse, one channel at a time (see bwd_channel).
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;
constexpr int W = 8;
constexpr int64_t kMaxState = 256;

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
  Seq u, dt, z;
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
                     const torch::Tensor& z, const torch::Tensor& bias, bool softplus) {
  for (const auto* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->device().is_cpu(), "scan expects float32 CPU tensors");
  }
  TORCH_CHECK(A.is_contiguous() && A.dim() == 2, "A must be a contiguous (d, n) tensor");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && B.dim() == 4 && C.sizes() == B.sizes(), "bad shapes");
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
// A's rows, D and the delta bias.
template <int64_t N>
struct Block {
  int64_t gi, c0, ch[W];
  int w;
  alignas(32) float a[N > 0 ? N : kMaxState][W];
  alignas(32) float Dv[W], bv[W];

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
  }
};

template <int64_t N>
void fwd_block(const Problem& p, int64_t bi, int64_t blk, const Seq& y, float* ck, float* last) {
  const int64_t n = N > 0 ? N : p.n;
  const Block<N> bk(p, blk);
  alignas(32) float h[N > 0 ? N : kMaxState][W];
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
    alignas(32) float dts[kChunk][W], us[kChunk][W], gate[kChunk][W], ys[kChunk][W];
    for (int j = 0; j < W; ++j) {
      for (int64_t i = 0; i < len; ++i) {
        dts[i][j] = p.dt.at(bi, bk.ch[j], t0 + i) + bk.bv[j];
        us[i][j] = p.u.at(bi, bk.ch[j], t0 + i);
      }
    }
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
      alignas(32) float duv[W], acc[W], acc2[W];
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
  float *dB, *dC;  // this thread's (b, g, l, n) accumulators: channels of a group would race on shared ones
  float *dA, *dD, *dbias;  // (b, d, n), (b, d), (b, d)
};

// Adjoint state of one channel, carried from chunk to chunk (right to left).
template <int64_t N>
struct ChannelAdjoint {
  alignas(32) float g[N > 0 ? N : kMaxState], an[N > 0 ? N : kMaxState], dA[N > 0 ? N : kMaxState];
  float dD = 0.f, db = 0.f;
};

// The backward runs one channel at a time, vectorised over the state (unlike the forward): its reductions
// over channels (dB, dC) then become plain vector adds, and only du and ddelta need a sum over n per step.
// The caller walks the chunks right to left and, within a chunk, the channels of one 8-channel block, so
// the cache lines of token-major (b, l, d) tensors fetched for one channel serve the next ones too.
// B and C must have the state as their fastest axis here (scan_bwd checks it).
template <int64_t N>
void bwd_chunk(const Problem& p, int64_t bi, int64_t ci, int64_t c, const float* ck, const Grads& gr, float* hs,
               ChannelAdjoint<N>& st) {
  const int64_t n = N > 0 ? N : p.n;
  const int64_t gi = ci / p.dpg;
  const float Dc = p.D != nullptr ? p.D[ci] : 0.f, bc = p.bias != nullptr ? p.bias[ci] : 0.f;
  const float* Ac = p.A + ci * p.n;
  const float* Bg = p.Bp + bi * p.Bs[0] + gi * p.Bs[1];
  const float* Cg = p.Cp + bi * p.Cs[0] + gi * p.Cs[1];
  float* dBg = gr.dB + (bi * p.g + gi) * p.l * n;
  float* dCg = gr.dC + (bi * p.g + gi) * p.l * n;
  alignas(32) float a[N > 0 ? N : kMaxState];
  for (int64_t k = 0; k < n; ++k) a[k] = Ac[k];
  const int64_t t0 = c * kChunk, t1 = std::min(p.l, t0 + kChunk), len = t1 - t0;
  // per-step scalars of the chunk first, in loops over time that vectorise (softplus, the sigmoids)
  alignas(32) float dts[kChunk], dsp[kChunk], us[kChunk], zs[kChunk], zsg[kChunk];
  for (int64_t i = 0; i < len; ++i) {
    dts[i] = p.dt.at(bi, ci, t0 + i) + bc;
    us[i] = p.u.at(bi, ci, t0 + i);
  }
  if (p.softplus) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      dsp[i] = scan_sigmoid(dts[i]);  // d softplus / d raw
      dts[i] = scan_softplus(dts[i]);
    }
  }
  if (p.has_z) {
    for (int64_t i = 0; i < len; ++i) zs[i] = p.z.at(bi, ci, t0 + i);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) zsg[i] = scan_sigmoid(zs[i]);
  }
  for (int64_t k = 0; k < n; ++k) hs[k] = ck[(c * n + k) * W];  // the state before the chunk
  for (int64_t i = 0; i < len; ++i) {  // recompute h_{t0} .. h_{t1-1}
    const float dt = dts[i], dut = dt * us[i];
    const float* Bt = Bg + (t0 + i) * p.Bs[3];
    const float* hp = hs + i * n;
    float* hn = hs + (i + 1) * n;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) hn[k] = scan_exp(dt * a[k]) * hp[k] + dut * Bt[k];
  }
  float* g = st.g;
  float* an = st.an;
  float* dA = st.dA;
  for (int64_t i = len - 1; i >= 0; --i) {
    const int64_t t = t0 + i;
    const float dt = dts[i], ut = us[i];
    const float* Bt = Bg + t * p.Bs[3];
    const float* Ct = Cg + t * p.Cs[3];
    const float* hprev = hs + i * n;
    const float* hcur = hs + (i + 1) * n;
    float dyp = gr.dy.at(bi, ci, t);
    if (p.has_z) {
      const float zt = zs[i], sg = zsg[i];
      float yp = Dc * ut;
#pragma omp simd reduction(+ : yp)
      for (int64_t k = 0; k < n; ++k) yp += Ct[k] * hcur[k];
      gr.dz.at(bi, ci, t) = dyp * yp * sg * (1.0f + zt * (1.0f - sg));
      dyp *= zt * sg;
    }
    st.dD += dyp * ut;
    float* dBt = dBg + t * n;
    float* dCt = dCg + t * n;
    float du_acc = 0.f, ddt_acc = 0.f;
#pragma omp simd reduction(+ : du_acc, ddt_acc)
    for (int64_t k = 0; k < n; ++k) {
      const float gk = an[k] * g[k] + Ct[k] * dyp;
      const float dAt = scan_exp(dt * a[k]);
      dCt[k] += dyp * hcur[k];
      du_acc += gk * Bt[k];
      dBt[k] += gk * dt * ut;
      ddt_acc += gk * (ut * Bt[k] + a[k] * dAt * hprev[k]);
      dA[k] += gk * dt * dAt * hprev[k];
      g[k] = gk;
      an[k] = dAt;
    }
    const float ddt = p.softplus ? ddt_acc * dsp[i] : ddt_acc;
    st.db += ddt;
    gr.du.at(bi, ci, t) = du_acc * dt + dyp * Dc;
    gr.ddt.at(bi, ci, t) = ddt;
  }
}

template <int64_t N>
void bwd_block(const Problem& p, int64_t bi, int64_t blk, const float* ck_block, const Grads& gr, float* hs) {
  const int64_t n = N > 0 ? N : p.n;
  int64_t gi, c0;
  int w;
  p.block(blk, gi, c0, w);
  std::vector<ChannelAdjoint<N>> st(w);
  for (auto& s : st)
    for (int64_t k = 0; k < n; ++k) s.g[k] = s.an[k] = s.dA[k] = 0.f;
  for (int64_t c = p.nchunks - 1; c >= 0; --c)
    for (int j = 0; j < w; ++j) bwd_chunk<N>(p, bi, c0 + j, c, ck_block + j, gr, hs, st[j]);
  for (int j = 0; j < w; ++j) {
    const int64_t row = bi * p.d + c0 + j;
    for (int64_t k = 0; k < n; ++k) gr.dA[row * n + k] = st[j].dA[k];
    gr.dD[row] = st[j].dD;
    gr.dbias[row] = st[j].db;
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
                                    bool softplus, bool save_checkpoints) {
  const Problem p = make_problem(u, delta, A, B, C, D, z, bias, softplus);
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

// Returns du, ddelta, dA (d, n), dB (b, g, l, n), dC (b, g, l, n), dD (d), dz, dbias (d).
std::vector<torch::Tensor> scan_bwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                    torch::Tensor C, torch::Tensor D, torch::Tensor z, torch::Tensor bias,
                                    bool softplus, torch::Tensor ckpt, torch::Tensor dy) {
  const Problem p = make_problem(u, delta, A, B, C, D, z, bias, softplus);
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == torch::kFloat32, "bad output gradient");
  TORCH_CHECK(B.stride(2) == 1 && C.stride(2) == 1, "the backward needs B and C with the state axis contiguous");
  const int n_threads = omp_get_max_threads();
  auto du = empty_as(u);
  auto ddelta = empty_as(delta);
  auto dz = p.has_z ? empty_as(z) : torch::empty({0}, u.options());
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
    Grads gr{seq_of(du), seq_of(ddelta), p.has_z ? seq_of(dz) : Seq{nullptr, 0, 0, 0}, seq_of(dy),
             dB_acc.data_ptr<float>() + tid * thread_stride, dC_acc.data_ptr<float>() + tid * thread_stride,
             dA.data_ptr<float>(), dD.data_ptr<float>(), dbias.data_ptr<float>()};
    std::vector<float> hs((kChunk + 1) * p.n);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < p.b * p.nblk; ++task) {
      const int64_t bi = task / p.nblk, blk = task % p.nblk;
      const float* ck = pck + task * p.nchunks * p.n * W;
      dispatch_n(
          p.n, [&] { bwd_block<16>(p, bi, blk, ck, gr, hs.data()); },
          [&] { bwd_block<8>(p, bi, blk, ck, gr, hs.data()); }, [&] { bwd_block<0>(p, bi, blk, ck, gr, hs.data()); });
    }
  }
  return {du, ddelta, dA.sum(0), dB_acc.sum(0), dC_acc.sum(0), dD.sum(0), dz, dbias.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward with fused bias/softplus/D/z (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward with fused bias/softplus/D/z (CPU)");
}
