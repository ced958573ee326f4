// Selective scan (Mamba-1 recurrence) on the CPU: forward and backward.
//
// h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = sum_n C_t[n] * h_t[n]
//
// One OpenMP task per (batch, channel); the state h[n] lives in registers/L1 and the inner loop over n is
// vectorised (exp through libmvec with -ffast-math). The forward keeps h only at chunk boundaries; the
// backward recomputes each chunk from its boundary state and runs the adjoint recurrence in reverse.
// B and C arrive transposed as (b, g, l, n) so each time step reads n contiguous floats.
#include <torch/extension.h>
#include <omp.h>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;

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

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor Ct, bool save_checkpoints) {
  const Dims s = dims_of(u, A, Bt);
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
    const float* uu = pu + bd * s.l;
    const float* dd = pdt + bd * s.l;
    const float* Ad = pA + di * n;
    const float* Bg = pB + (bi * s.g + gi) * s.l * n;
    const float* Cg = pC + (bi * s.g + gi) * s.l * n;
    float* yy = py + bd * s.l;
    float h[256];
    float a[256];
    for (int64_t k = 0; k < n; ++k) { h[k] = 0.f; a[k] = Ad[k]; }
    for (int64_t t = 0; t < s.l; ++t) {
      if (pck != nullptr && t % kChunk == 0) {
        float* dst = pck + (bd * n_chunks + t / kChunk) * n;
        for (int64_t k = 0; k < n; ++k) dst[k] = h[k];
      }
      const float dt = dd[t], du = dt * uu[t];
      const float* Bt_ = Bg + t * n;
      const float* Ct_ = Cg + t * n;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < n; ++k) {
        h[k] = std::exp(dt * a[k]) * h[k] + du * Bt_[k];
        acc += Ct_[k] * h[k];
      }
      yy[t] = acc;
    }
    for (int64_t k = 0; k < n; ++k) plast[bd * n + k] = h[k];
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
          for (int64_t k = 0; k < n; ++k) hn[k] = std::exp(dt * a[k]) * hp[k] + dut * Bt_[k];
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
            const float dAt = std::exp(dt * a[k]);
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
