// Selective scan (Mamba-1 recurrence) on the CPU: forward and backward.
//
// h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = sum_n C_t[n] * h_t[n]
//
// One OpenMP task per (batch, channel); the state h[n] lives in registers/L1 and the inner loop over n is
// vectorised, exp included (scan_exp below is inlined into the loop instead of calling libm per lane).
// The forward keeps h only at chunk boundaries; the backward recomputes each chunk from its boundary state
// and runs the adjoint recurrence in reverse.
// B and C arrive transposed as (b, g, l, n) so each time step reads n contiguous floats.
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;

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

struct Dims {
  int64_t b, d, l, n, g, dpg;  // dpg = channels per group
};

Dims dims_of(const torch::Tensor& u, const torch::Tensor& A, const torch::Tensor& Bt) {
  Dims s{u.size(0), u.size(1), u.size(2), A.size(1), Bt.size(1), 0};
  TORCH_CHECK(s.d % s.g == 0, "channels must be divisible by groups");
  s.dpg = s.d / s.g;
  return s;
}

}  // namespace

// One (batch, channel) sequence. N > 0 fixes the state size at compile time (16 in every preset), so the
// loop over n unrolls into whole vectors; N == 0 is the generic path.
template <int64_t N>
void fwd_channel(const float* uu, const float* dd, const float* Ad, const float* Bg, const float* Cg, float* yy,
                 float* ck, float* last, int64_t l, int64_t n_rt) {
  const int64_t n = N > 0 ? N : n_rt;
  alignas(64) float h[N > 0 ? N : 256];
  alignas(64) float a[N > 0 ? N : 256];
  for (int64_t k = 0; k < n; ++k) { h[k] = 0.f; a[k] = Ad[k]; }
  for (int64_t t0 = 0; t0 < l; t0 += kChunk) {
    if (ck != nullptr) {
      for (int64_t k = 0; k < n; ++k) ck[(t0 / kChunk) * n + k] = h[k];
    }
    const int64_t t1 = std::min(l, t0 + kChunk);
    for (int64_t t = t0; t < t1; ++t) {
      const float dt = dd[t], du = dt * uu[t];
      const float* Bt_ = Bg + t * n;
      const float* Ct_ = Cg + t * n;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < n; ++k) {
        h[k] = scan_exp(dt * a[k]) * h[k] + du * Bt_[k];
        acc += Ct_[k] * h[k];
      }
      yy[t] = acc;
    }
  }
  for (int64_t k = 0; k < n; ++k) last[k] = h[k];
}

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor Ct, bool save_checkpoints) {
  const Dims s = dims_of(u, A, Bt);
  TORCH_CHECK(s.n <= 256, "state size above 256 is not supported");
  auto y = torch::empty_like(u);
  auto last = torch::empty({s.b, s.d, s.n}, u.options());
  const int64_t n_chunks = (s.l + kChunk - 1) / kChunk;
  auto ckpt = save_checkpoints ? torch::empty({s.b, s.d, n_chunks, s.n}, u.options()) : torch::empty({0}, u.options());
  const float* pu = u.data_ptr<float>();
  const float* pdt = delta.data_ptr<float>();
  const float* pA = A.data_ptr<float>();
  const float* pB = Bt.data_ptr<float>();
  const float* pC = Ct.data_ptr<float>();
  float* py = y.data_ptr<float>();
  float* plast = last.data_ptr<float>();
  float* pck = save_checkpoints ? ckpt.data_ptr<float>() : nullptr;
  const int64_t n = s.n;

#pragma omp parallel for schedule(static)
  for (int64_t bd = 0; bd < s.b * s.d; ++bd) {
    const int64_t bi = bd / s.d, di = bd % s.d, gi = di / s.dpg;
    const int64_t goff = (bi * s.g + gi) * s.l * n;
    float* ck = pck != nullptr ? pck + bd * n_chunks * n : nullptr;
    const auto args = std::make_tuple(pu + bd * s.l, pdt + bd * s.l, pA + di * n, pB + goff, pC + goff,
                                      py + bd * s.l, ck, plast + bd * n, s.l, n);
    if (n == 16) std::apply(fwd_channel<16>, args);
    else if (n == 8) std::apply(fwd_channel<8>, args);
    else std::apply(fwd_channel<0>, args);
  }
  return {y, last, ckpt};
}

// Returns du, ddelta, dA, dBt (b, g, l, n), dCt (b, g, l, n).
std::vector<torch::Tensor> scan_bwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor Ct, torch::Tensor ckpt, torch::Tensor dy) {
  const Dims s = dims_of(u, A, Bt);
  const int64_t n = s.n;
  const int64_t n_chunks = (s.l + kChunk - 1) / kChunk;
  const int n_threads = omp_get_max_threads();
  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(u);
  auto dA_per = torch::zeros({s.b * s.d, n}, u.options());
  // per-thread accumulators for the group-shared B and C gradients (channels of a group race otherwise)
  auto dB_acc = torch::zeros({n_threads, s.b, s.g, s.l, n}, u.options());
  auto dC_acc = torch::zeros({n_threads, s.b, s.g, s.l, n}, u.options());
  const float* pu = u.data_ptr<float>();
  const float* pdt = delta.data_ptr<float>();
  const float* pA = A.data_ptr<float>();
  const float* pB = Bt.data_ptr<float>();
  const float* pC = Ct.data_ptr<float>();
  const float* pck = ckpt.data_ptr<float>();
  const float* pdy = dy.data_ptr<float>();
  float* pdu = du.data_ptr<float>();
  float* pddt = ddelta.data_ptr<float>();
  float* pdA = dA_per.data_ptr<float>();
  float* pdB = dB_acc.data_ptr<float>();
  float* pdC = dC_acc.data_ptr<float>();
  const int64_t thread_stride = s.b * s.g * s.l * n;

#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    std::vector<float> hs((kChunk + 1) * n);
#pragma omp for schedule(static)
    for (int64_t bd = 0; bd < s.b * s.d; ++bd) {
      const int64_t bi = bd / s.d, di = bd % s.d, gi = di / s.dpg;
      const float* uu = pu + bd * s.l;
      const float* dd = pdt + bd * s.l;
      const float* dyy = pdy + bd * s.l;
      const float* Ad = pA + di * n;
      const int64_t goff = (bi * s.g + gi) * s.l * n;
      const float* Bg = pB + goff;
      const float* Cg = pC + goff;
      float* dBg = pdB + tid * thread_stride + goff;
      float* dCg = pdC + tid * thread_stride + goff;
      float* dAd = pdA + bd * n;
      float g[256], a_next[256], a[256];
      for (int64_t k = 0; k < n; ++k) { g[k] = 0.f; a_next[k] = 0.f; a[k] = Ad[k]; }
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kChunk, t1 = std::min(s.l, t0 + kChunk);
        // recompute h_{t0-1} .. h_{t1-1}; hs[0] is the state before the chunk
        const float* h0 = pck + (bd * n_chunks + c) * n;
        for (int64_t k = 0; k < n; ++k) hs[k] = h0[k];
        for (int64_t t = t0; t < t1; ++t) {
          const float dt = dd[t], dut = dt * uu[t];
          const float* Bt_ = Bg + t * n;
          float* hp = &hs[(t - t0) * n];
          float* hn = &hs[(t - t0 + 1) * n];
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) hn[k] = scan_exp(dt * a[k]) * hp[k] + dut * Bt_[k];
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const float dt = dd[t], ut = uu[t], dyt = dyy[t];
          const float* Bt_ = Bg + t * n;
          const float* Ct_ = Cg + t * n;
          const float* hprev = &hs[(t - t0) * n];
          const float* hcur = &hs[(t - t0 + 1) * n];
          float* dBt_ = dBg + t * n;
          float* dCt_ = dCg + t * n;
          float du_acc = 0.f, ddt_acc = 0.f;
#pragma omp simd reduction(+ : du_acc, ddt_acc)
          for (int64_t k = 0; k < n; ++k) {
            const float gk = a_next[k] * g[k] + Ct_[k] * dyt;
            const float dAt = scan_exp(dt * a[k]);
            dCt_[k] += dyt * hcur[k];
            du_acc += gk * dt * Bt_[k];
            dBt_[k] += gk * dt * ut;
            const float ah = a[k] * dAt * hprev[k];
            ddt_acc += gk * (ut * Bt_[k] + ah);
            dAd[k] += gk * dt * dAt * hprev[k];
            g[k] = gk;
            a_next[k] = dAt;
          }
          pdu[bd * s.l + t] = du_acc;
          pddt[bd * s.l + t] = ddt_acc;
        }
      }
    }
  }
  auto dA = dA_per.view({s.b, s.d, n}).sum(0);
  return {du, ddelta, dA, dB_acc.sum(0), dC_acc.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "selective scan forward (CPU)");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (CPU)");
}
