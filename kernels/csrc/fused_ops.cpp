// Fused CPU kernels around the selective scan: what the causal_conv1d package does on GPUs, on token-major
// (b, l, d) activations.
//
//   out[b, t, c] = act(bias[c] + sum_j w[c, j] * x[b, t - (k - 1) + j, c])      (x = 0 before t = 0)
//   act = SiLU or identity
//
// PyTorch's formulation (pad + k shifted multiply-adds + SiLU) writes k + 2 full-size temporaries forward
// and about 3k backward; here the forward reads x once and writes out once, and the backward reads x and
// dout once and writes dx once (the pre-activation is recomputed, not stored). Channels are the innermost
// loop (contiguous in token-major tensors), so GCC vectorises every loop over 8 lanes; x may be a strided
// view (e.g. the first half of in_proj's output) as long as its channels are contiguous.
// Threads take (batch, block of kTokens tokens) tiles; dw/dbias are reduced per thread in double.
// Further down: kernels for the (b, c, D, H, W) maps around the token mixers (depthwise 3D conv weight gradient,
// max pooling, trilinear resampling) and the route gathers of multi-route scans.
#include <torch/extension.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "vec_math.h"

namespace {

using medmamba_vec::fast_sigmoid;

constexpr int64_t kTokens = 128;
constexpr int64_t kAhead = 24;

struct View3 {  // element (b, t, c) of a (b, l, d) tensor whose channels are contiguous
  const float* p;
  int64_t sb, st;
  const float* row(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};

View3 view_of(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32, "expected a float32 (b, l, d) tensor");
  TORCH_CHECK(x.stride(2) == 1 || x.size(2) == 1, "channels must be contiguous (token-major layout)");
  return {x.data_ptr<float>(), x.stride(0), x.stride(1)};
}

// pre-activation of one token row into acc[0..d): bias + sum_j w_j * x[t - (k-1) + j]
inline void conv_row(const View3& x, int64_t b, int64_t t, const float* wt, const float* bias, int64_t d,
                     int64_t k, float* acc) {
  if (k == 4 && t >= 3) {  // mamba's d_conv: one pass over the channels
    const float *x0 = x.row(b, t - 3), *x1 = x.row(b, t - 2), *x2 = x.row(b, t - 1), *x3 = x.row(b, t);
    const float *w0 = wt, *w1 = wt + d, *w2 = wt + 2 * d, *w3 = wt + 3 * d;
    // prefetch the row kAhead tokens on: the forward on the mixer's strided (2, 89,600, 64) view took 17 ms
    // without, 11 ms with (1 thread; the hardware prefetcher does not follow the 2d-float token stride)
    const char* ahead = reinterpret_cast<const char*>(x3 + kAhead * x.st);
    for (int64_t off = 0; off < d * 4; off += 64) __builtin_prefetch(ahead + off);
#pragma omp simd
    for (int64_t c = 0; c < d; ++c)
      acc[c] = (bias != nullptr ? bias[c] : 0.0f) + w0[c] * x0[c] + w1[c] * x1[c] + w2[c] * x2[c] + w3[c] * x3[c];
    return;
  }
  if (bias != nullptr) {
    std::copy(bias, bias + d, acc);
  } else {
    std::fill(acc, acc + d, 0.0f);
  }
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = t - (k - 1) + j;
    if (s < 0) continue;
    const float* xr = x.row(b, s);
    const float* wr = wt + j * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) acc[c] += wr[c] * xr[c];
  }
}

// weight (d, k) -> (k, d), so that every tap is a contiguous vector over channels
std::vector<float> taps_major(const torch::Tensor& weight) {
  auto w = weight.contiguous();
  const int64_t d = w.size(0), k = w.size(1);
  std::vector<float> wt(static_cast<size_t>(k * d));
  const float* wp = w.data_ptr<float>();
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < k; ++j) wt[j * d + c] = wp[c * k + j];
  return wt;
}

torch::Tensor causal_conv_fwd(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, bool silu) {
  const View3 xv = view_of(x);
  const int64_t nb = x.size(0), l = x.size(1), d = x.size(2), k = weight.size(1);
  TORCH_CHECK(weight.size(0) == d, "weight must be (d, k)");
  auto out = torch::empty({nb, l, d}, x.options());
  float* op = out.data_ptr<float>();
  const auto wt = taps_major(weight);
  const float* bp = bias.numel() ? bias.contiguous().data_ptr<float>() : nullptr;
  const int64_t tiles = (l + kTokens - 1) / kTokens;
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < nb * tiles; ++job) {
    const int64_t b = job / tiles, t0 = (job % tiles) * kTokens, t1 = std::min(l, t0 + kTokens);
    for (int64_t t = t0; t < t1; ++t) {
      float* o = op + (b * l + t) * d;
      conv_row(xv, b, t, wt.data(), bp, d, k, o);
      if (silu) {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) o[c] = o[c] * fast_sigmoid(o[c]);
      }
    }
  }
  return out;
}

// dx[s] = sum_j w_j * g[s + (k-1) - j]; dw_j += g[t] * x[t - (k-1) + j]; dbias += g[t]; g = dout * act'(pre)
std::vector<torch::Tensor> causal_conv_bwd(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                           torch::Tensor dout, bool silu) {
  const View3 xv = view_of(x);
  const View3 gv = view_of(dout);
  const int64_t nb = x.size(0), l = x.size(1), d = x.size(2), k = weight.size(1);
  auto dx = torch::empty({nb, l, d}, x.options());
  float* dxp = dx.data_ptr<float>();
  const auto wt = taps_major(weight);
  const float* bp = bias.numel() ? bias.contiguous().data_ptr<float>() : nullptr;
  const int64_t tiles = (l + kTokens - 1) / kTokens;
  const int nthreads = omp_get_max_threads();
  std::vector<double> part(static_cast<size_t>(nthreads) * (k + 1) * d, 0.0);  // per thread: dw (k, d), dbias
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    double* mine = part.data() + static_cast<size_t>(tid) * (k + 1) * d;
    const int64_t halo = k - 1;
    std::vector<float> g(static_cast<size_t>((kTokens + halo) * d));
    std::vector<float> acc(static_cast<size_t>((k + 1) * d));
#pragma omp for schedule(static)
    for (int64_t job = 0; job < nb * tiles; ++job) {
      const int64_t b = job / tiles, t0 = (job % tiles) * kTokens, t1 = std::min(l, t0 + kTokens);
      const int64_t te = std::min(l, t1 + halo);  // g is needed up to t1 + k - 2 for dx of this tile
      for (int64_t t = t0; t < te; ++t) {
        float* gr = g.data() + (t - t0) * d;
        const float* dr = gv.row(b, t);
        if (silu) {
          conv_row(xv, b, t, wt.data(), bp, d, k, gr);
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) {
            const float s = fast_sigmoid(gr[c]);
            gr[c] = dr[c] * s * (1.0f + gr[c] * (1.0f - s));
          }
        } else {
          std::copy(dr, dr + d, gr);
        }
      }
      std::fill(acc.begin(), acc.end(), 0.0f);  // this tile's dw and dbias in float, then into double
      for (int64_t s = t0; s < t1; ++s) {
        float* o = dxp + (b * l + s) * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t t = s + halo - j;
          if (t >= l) continue;
          const float* gr = g.data() + (t - t0) * d;
          const float* wr = wt.data() + j * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) o[c] += wr[c] * gr[c];
        }
        const float* gr = g.data() + (s - t0) * d;  // token s as the output position: dw and dbias
        for (int64_t j = 0; j < k; ++j) {
          const int64_t src = s - halo + j;
          if (src < 0) continue;
          const float* xr = xv.row(b, src);
          float* aw = acc.data() + j * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) aw[c] += gr[c] * xr[c];
        }
        float* ab = acc.data() + k * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) ab[c] += gr[c];
      }
      for (int64_t i = 0; i < (k + 1) * d; ++i) mine[i] += acc[i];
    }
  }
  auto dw = torch::zeros({d, k}, weight.options());
  auto db = torch::zeros({d}, weight.options());
  float* dwp = dw.data_ptr<float>();
  float* dbp = db.data_ptr<float>();
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = 0; j <= k; ++j) {
      double sum = 0.0;
      for (int th = 0; th < nthreads; ++th) sum += part[(static_cast<size_t>(th) * (k + 1) + j) * d + c];
      if (j < k) {
        dwp[c * k + j] = static_cast<float>(sum);
      } else {
        dbp[c] = static_cast<float>(sum);
      }
    }
  }
  return {dx, dw, db};
}

// kLanes outputs of one row of a depthwise conv, summed over all kd * kh * kw taps in registers: src is the
// padded plane at the output row's first source row, sz / sy the padded plane's slice and row strides.
template <int64_t kLanes>
inline void dw_block(const float* src, int64_t sz, int64_t sy, const float* w, int64_t kd, int64_t kh, int64_t kw,
                     float b0, float* out) {
  float v[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) v[l] = b0;
  for (int64_t a = 0; a < kd; ++a) {
    for (int64_t b = 0; b < kh; ++b) {
      const float* row = src + a * sz + b * sy;
      for (int64_t e = 0; e < kw; ++e) {
        const float wt = w[(a * kh + b) * kw + e];
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) v[l] += wt * row[e + l];
      }
    }
  }
  for (int64_t l = 0; l < kLanes; ++l) out[l] = v[l];
}

// Depthwise 3D conv, stride 1, 'same' padding (odd kernels), of a contiguous (b, c, D, H, W) map:
//   out[n, c, z, y, i] = bias[c] + sum_{a,b,e} w[c, a, b, e] * x[n, c, z + a - pd, y + b - ph, i + e - pw]
// A thread copies one plane at a time into a zero-bordered buffer (rows padded to whole blocks of 8; 468 KB
// at LightM-UNet's full resolution, L2-resident), so that every tap is an unconditional vectorised
// multiply-add: no edge cases, no scalar remainders (rows of 40 floats are 2.5 AVX-512 vectors; cutting them
// per tap left most of the work scalar). Outputs are summed in blocks of 16 (then 8) lanes in registers.
// Why: mkldnn reorders a channel-first map before its depthwise conv (18-22 ms on (2, 32, 40, 56, 40) at 2
// threads, for 0.3 GFLOP; this kernel 7.2 ms). The input gradient is the same conv with the kernel flipped
// (kernels/fused.py).
torch::Tensor depthwise_conv3d_fwd(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 5D");
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == x.size(1) && weight.size(1) == 1 && weight.is_contiguous() &&
              weight.scalar_type() == torch::kFloat32, "weight: contiguous float32 (c, 1, kd, kh, kw)");
  const int64_t kd = weight.size(2), kh = weight.size(3), kw = weight.size(4);
  TORCH_CHECK(kd % 2 == 1 && kh % 2 == 1 && kw % 2 == 1, "odd kernel sizes only");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.numel() == x.size(1) && bias.scalar_type() == torch::kFloat32), "bias: (c,)");
  const int64_t nb = x.size(0), nc = x.size(1), D = x.size(2), H = x.size(3), Wd = x.size(4);
  const int64_t pd = kd / 2, ph = kh / 2, pw = kw / 2, taps = kd * kh * kw, plane = D * H * Wd;
  const int64_t Wv = (Wd + 7) / 8 * 8;  // output row width computed: whole blocks of 8
  const int64_t Dp = D + 2 * pd, Hp = H + 2 * ph, Wp = Wv + kw - 1;  // padded plane
  auto out = torch::empty_like(x);
  const auto bc = bias.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = has_bias ? bc.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> padded(static_cast<size_t>(Dp * Hp * Wp), 0.0f), acc(static_cast<size_t>(Wv));
    float* pp = padded.data();
    float* ac = acc.data();
#pragma omp for schedule(static)
    for (int64_t p = 0; p < nb * nc; ++p) {
      const int64_t c = p % nc;
      const float* xc = xp + p * plane;
      for (int64_t z = 0; z < D; ++z)  // the interior; the border stays zero
        for (int64_t y = 0; y < H; ++y)
          std::copy(xc + (z * H + y) * Wd, xc + (z * H + y + 1) * Wd, pp + ((z + pd) * Hp + y + ph) * Wp + pw);
      const float* wc = wp + c * taps;
      const float b0 = has_bias ? bp[c] : 0.0f;
      for (int64_t z = 0; z < D; ++z) {
        for (int64_t y = 0; y < H; ++y) {
          const float* base = pp + (z * Hp + y) * Wp;
          int64_t i0 = 0;  // blocks of 16 outputs, then one of 8 if the row needs it
          for (; i0 + 16 <= Wv; i0 += 16) dw_block<16>(base + i0, Hp * Wp, Wp, wc, kd, kh, kw, b0, ac + i0);
          if (i0 < Wv) dw_block<8>(base + i0, Hp * Wp, Wp, wc, kd, kh, kw, b0, ac + i0);
          std::copy(ac, ac + Wd, op + p * plane + (z * H + y) * Wd);
        }
      }
    }
  }
  return out;
}

// Weight and bias gradients of a depthwise 3D conv (stride 1, 'same' padding of odd kernels):
//   dw[c, a, b, e] = sum_{n, z, y, x} g[n, c, z, y, x] * x[n, c, z + a - pa, y + b - pb, x + e - pe]
//   dbias[c] = sum g[n, c, ...]
// One thread per channel; per output row (z, y) every tap's products are accumulated lane-wise over the row's
// positions into a per-tap row buffer (kd*kh*kw rows of w floats, L1-resident), so the inner loop is a plain
// vectorised multiply-add with no horizontal sum; the buffers are summed (in double) once per channel.
// mkldnn's depthwise weight gradient took 3.3x the forward on LightM-UNet's full-resolution maps.
std::vector<torch::Tensor> depthwise_conv3d_wgrad(torch::Tensor x, torch::Tensor g, int64_t kd, int64_t kh,
                                                  int64_t kw) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 5D");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == torch::kFloat32 && g.is_contiguous(), "g must match x");
  TORCH_CHECK(kd % 2 == 1 && kh % 2 == 1 && kw % 2 == 1, "odd kernel sizes only");
  const int64_t nb = x.size(0), nc = x.size(1), D = x.size(2), H = x.size(3), Wd = x.size(4);
  const int64_t pd = kd / 2, ph = kh / 2, pw = kw / 2, taps = kd * kh * kw, plane = D * H * Wd;
  auto dw = torch::empty({nc, 1, kd, kh, kw}, x.options());
  auto db = torch::empty({nc}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* dwp = dw.data_ptr<float>();
  float* dbp = db.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>((taps + 1) * Wd));  // per tap a row of lane sums; last: dbias
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nc; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      float* ab = acc.data() + taps * Wd;
      for (int64_t n = 0; n < nb; ++n) {
        const float* xc = xp + (n * nc + c) * plane;
        const float* gc = gp + (n * nc + c) * plane;
        for (int64_t z = 0; z < D; ++z) {
          for (int64_t y = 0; y < H; ++y) {
            const float* gr = gc + (z * H + y) * Wd;
#pragma omp simd
            for (int64_t i = 0; i < Wd; ++i) ab[i] += gr[i];
            for (int64_t a = 0; a < kd; ++a) {
              const int64_t zz = z + a - pd;
              if (zz < 0 || zz >= D) continue;
              for (int64_t b = 0; b < kh; ++b) {
                const int64_t yy = y + b - ph;
                if (yy < 0 || yy >= H) continue;
                const float* xr = xc + (zz * H + yy) * Wd;
                for (int64_t e = 0; e < kw; ++e) {
                  const int64_t shift = e - pw;  // x position i reads source i + shift
                  const int64_t lo = std::max<int64_t>(0, -shift), hi = std::min(Wd, Wd - shift);
                  float* at = acc.data() + ((a * kh + b) * kw + e) * Wd;
                  const float* xs = xr + shift;
#pragma omp simd
                  for (int64_t i = lo; i < hi; ++i) at[i] += gr[i] * xs[i];
                }
              }
            }
          }
        }
      }
      for (int64_t t = 0; t <= taps; ++t) {
        double sum = 0.0;
        for (int64_t i = 0; i < Wd; ++i) sum += acc[t * Wd + i];
        if (t < taps) {
          dwp[c * taps + t] = static_cast<float>(sum);
        } else {
          dbp[c] = static_cast<float>(sum);
        }
      }
    }
  }
  return {dw, db};
}

// Max pooling of a contiguous (b, c, D, H, W) map with stride = kernel and no padding (a U-Net's down-sampling),
// with PyTorch's semantics: windows visited in (d, h, w) order, a value replaces the maximum when greater or NaN,
// index = d * H * W + h * W + w in the input plane, so aten's max_pool3d_with_indices_backward applies. Every
// output row is a vectorised pass of maxima over kd * kh * kw strided input rows (why: kernels/fused.py).
std::vector<torch::Tensor> max_pool3d_fwd(torch::Tensor x, int64_t kd, int64_t kh, int64_t kw) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 5D");
  TORCH_CHECK(kd >= 1 && kh >= 1 && kw >= 1, "kernel sizes must be positive");
  const int64_t planes = x.size(0) * x.size(1), D = x.size(2), H = x.size(3), Wd = x.size(4);
  const int64_t od = D / kd, oh = H / kh, ow = Wd / kw;
  TORCH_CHECK(od > 0 && oh > 0 && ow > 0, "kernel larger than the input");
  auto out = torch::empty({x.size(0), x.size(1), od, oh, ow}, x.options());
  auto idx = torch::empty({x.size(0), x.size(1), od, oh, ow}, x.options().dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t z = 0; z < od; ++z) {
      const float* xc = xp + p * D * H * Wd;
      for (int64_t y = 0; y < oh; ++y) {
        float* best = op + ((p * od + z) * oh + y) * ow;
        int64_t* where = ip + ((p * od + z) * oh + y) * ow;
        for (int64_t i = 0; i < ow; ++i) {
          best[i] = -std::numeric_limits<float>::infinity();
          where[i] = ((z * kd) * H + y * kh) * Wd + i * kw;
        }
        for (int64_t a = 0; a < kd; ++a) {
          for (int64_t b = 0; b < kh; ++b) {
            const int64_t row = ((z * kd + a) * H + (y * kh + b)) * Wd;
            const float* xr = xc + row;
            for (int64_t e = 0; e < kw; ++e) {
#pragma omp simd
              for (int64_t i = 0; i < ow; ++i) {
                const float v = xr[i * kw + e];
                // NaN test on the bits: the build's -ffast-math lets the compiler assume v == v
                const bool nan = (__builtin_bit_cast(uint32_t, v) & 0x7fffffffu) > 0x7f800000u;
                const bool take = (v > best[i]) || nan;
                best[i] = take ? v : best[i];
                where[i] = take ? row + i * kw + e : where[i];
              }
            }
          }
        }
      }
    }
  }
  return {out, idx};
}

// Trilinear resampling of contiguous (b, c, D, H, W) maps to a given size, align_corners=False, with PyTorch's
// source coordinates: src = max((dst + 0.5) * in / out - 0.5, 0), neighbours floor(src) and the next one (the
// last is clamped), weights 1 - f and f. Each output row blends four input rows along d and h into an L1 row
// buffer (vectorised), then interpolates along w from it (why: kernels/fused.py). The backward runs the same
// steps transposed, one input plane per thread.
struct Axis {  // per output index: the two source indices and their weights
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

Axis axis_of(int64_t in, int64_t out) {
  Axis a;
  a.i0.resize(out); a.i1.resize(out); a.w0.resize(out); a.w1.resize(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    float src = (static_cast<float>(o) + 0.5f) * scale - 0.5f;
    src = src < 0.0f ? 0.0f : src;
    const int64_t i = std::min(static_cast<int64_t>(src), in - 1);
    const float f = src - static_cast<float>(i);
    a.i0[o] = i;
    a.i1[o] = i + (i < in - 1 ? 1 : 0);
    a.w1[o] = f;
    a.w0[o] = 1.0f - f;
  }
  return a;
}

// The four input rows (offsets in a plane) that output row (z, y) blends, and their weights.
struct Corners {
  int64_t off[4];
  float w[4];
};

inline Corners corners_of(const Axis& ad, const Axis& ah, int64_t z, int64_t y, int64_t H, int64_t Wd) {
  const int64_t zs[2] = {ad.i0[z], ad.i1[z]}, ys[2] = {ah.i0[y], ah.i1[y]};
  const float wz[2] = {ad.w0[z], ad.w1[z]}, wy[2] = {ah.w0[y], ah.w1[y]};
  Corners c{};
  for (int q = 0; q < 4; ++q) {
    c.off[q] = (zs[q >> 1] * H + ys[q & 1]) * Wd;
    c.w[q] = wz[q >> 1] * wy[q & 1];
  }
  return c;
}

torch::Tensor upsample_trilinear_fwd(torch::Tensor x, int64_t od, int64_t oh, int64_t ow) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 5D");
  const int64_t planes = x.size(0) * x.size(1), D = x.size(2), H = x.size(3), Wd = x.size(4);
  auto out = torch::empty({x.size(0), x.size(1), od, oh, ow}, x.options());
  const Axis ad = axis_of(D, od), ah = axis_of(H, oh), aw = axis_of(Wd, ow);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(Wd));
#pragma omp for schedule(static) collapse(2)
    for (int64_t p = 0; p < planes; ++p) {
      for (int64_t z = 0; z < od; ++z) {
        const float* xc = xp + p * D * H * Wd;
        for (int64_t y = 0; y < oh; ++y) {
          const Corners cn = corners_of(ad, ah, z, y, H, Wd);
          const float *r0 = xc + cn.off[0], *r1 = xc + cn.off[1], *r2 = xc + cn.off[2], *r3 = xc + cn.off[3];
          float* rb = row.data();
#pragma omp simd
          for (int64_t i = 0; i < Wd; ++i)
            rb[i] = cn.w[0] * r0[i] + cn.w[1] * r1[i] + cn.w[2] * r2[i] + cn.w[3] * r3[i];
          float* orow = op + ((p * od + z) * oh + y) * ow;
          for (int64_t i = 0; i < ow; ++i) orow[i] = aw.w0[i] * rb[aw.i0[i]] + aw.w1[i] * rb[aw.i1[i]];
        }
      }
    }
  }
  return out;
}

torch::Tensor upsample_trilinear_bwd(torch::Tensor g, int64_t D, int64_t H, int64_t Wd) {
  TORCH_CHECK(g.dim() == 5 && g.scalar_type() == torch::kFloat32 && g.is_contiguous(), "g: contiguous float32 5D");
  const int64_t planes = g.size(0) * g.size(1), od = g.size(2), oh = g.size(3), ow = g.size(4);
  auto dx = torch::zeros({g.size(0), g.size(1), D, H, Wd}, g.options());
  const Axis ad = axis_of(D, od), ah = axis_of(H, oh), aw = axis_of(Wd, ow);
  const float* gp = g.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(Wd));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      float* dc = dp + p * D * H * Wd;
      for (int64_t z = 0; z < od; ++z) {
        for (int64_t y = 0; y < oh; ++y) {
          const float* grow = gp + ((p * od + z) * oh + y) * ow;
          float* rb = row.data();
          std::fill(row.begin(), row.end(), 0.0f);
          for (int64_t i = 0; i < ow; ++i) {
            rb[aw.i0[i]] += aw.w0[i] * grow[i];
            rb[aw.i1[i]] += aw.w1[i] * grow[i];
          }
          const Corners cn = corners_of(ad, ah, z, y, H, Wd);
          // the four rows may coincide at clamped edges: accumulate one after the other, not fused
          for (int q = 0; q < 4; ++q) {
            float* r = dc + cn.off[q];
            for (int64_t i = 0; i < Wd; ++i) r[i] += cn.w[q] * rb[i];
          }
        }
      }
    }
  }
  return dx;
}

// out[b, s, r] = x[b, r, s] for a (b, R, S) tensor with contiguous rows (any row and batch strides, e.g. one half
// of a projection's output): the copy between channel-major maps (b, c, L) and token-major rows (b, L, c), either
// way. PyTorch's strided copy_ walks one side element by element: 4.7 / 12 ms there and back at LightM-UNet's
// full resolution (2 threads) against 1.3 ms for a plain copy; here 8 x 8 tiles are transposed in registers
// (AVX; scalar where the tile is cut or the build has no AVX2), 2.3 ms both ways. Threads take (batch, block of
// 32 destination rows).
#if defined(__AVX2__)
inline void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[k]: rows k of the two 4 x 4 quarters (columns 0-3 | 4-7), from the interleaved pairs
  const __m256 u0 = _mm256_shuffle_ps(t[0], t[2], 0x44), u1 = _mm256_shuffle_ps(t[0], t[2], 0xEE),
               u2 = _mm256_shuffle_ps(t[1], t[3], 0x44), u3 = _mm256_shuffle_ps(t[1], t[3], 0xEE),
               u4 = _mm256_shuffle_ps(t[4], t[6], 0x44), u5 = _mm256_shuffle_ps(t[4], t[6], 0xEE),
               u6 = _mm256_shuffle_ps(t[5], t[7], 0x44), u7 = _mm256_shuffle_ps(t[5], t[7], 0xEE);
  _mm256_storeu_ps(dst + 0 * ds, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

torch::Tensor transpose_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && (x.stride(2) == 1 || x.size(2) == 1),
              "x: float32 (b, R, S) with contiguous rows");
  const int64_t nb = x.size(0), R = x.size(1), S = x.size(2), sb = x.stride(0), sr = x.stride(1);
  auto out = torch::empty({nb, S, R}, x.options());
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (S + kBlock - 1) / kBlock;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t j = 0; j < blocks; ++j) {
      const float* src = xp + b * sb;
      float* dst = op + b * S * R;
      const int64_t s0 = j * kBlock, s1 = std::min(S, s0 + kBlock);
      int64_t s = s0;
#if defined(__AVX2__)
      const int64_t r_full = R - R % 8;
      for (; s + 8 <= s1; s += 8)
        for (int64_t r = 0; r < r_full; r += 8) transpose8x8(src + r * sr + s, sr, dst + s * R + r, R);
      for (int64_t q = s0; q < s; ++q)  // the rows of a cut tile
        for (int64_t r = r_full; r < R; ++r) dst[q * R + r] = src[r * sr + q];
#endif
      for (; s < s1; ++s)  // the columns of a cut tile
        for (int64_t r = 0; r < R; ++r) dst[s * R + r] = src[r * sr + s];
    }
  }
  return out;
}

// LayerNorm over the channels of contiguous token rows (rows, c), optionally of a residual sum:
//   y = x + s * skip (skip given) or y = x;   out = (y - mean) * rstd * w + b
// Why: PyTorch's CPU LayerNorm runs at ~3x its memory time on LightM-UNet's c = 32 rows, and the RVM layer's
// skip sum (s * t, then + m) costs two more full passes forward and three backward. y is not stored: the
// backward recomputes it from x and skip. Each row sits in L1 for its passes; threads take blocks of rows.
std::vector<torch::Tensor> token_norm_fwd(torch::Tensor x, torch::Tensor skip, double s, torch::Tensor w,
                                          torch::Tensor bias, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.is_contiguous() && x.dim() >= 2, "x: contiguous float32 rows");
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const bool has_skip = skip.numel() > 0;
  TORCH_CHECK(!has_skip || (skip.sizes() == x.sizes() && skip.is_contiguous() &&
                            skip.scalar_type() == torch::kFloat32), "skip: like x");
  TORCH_CHECK(w.numel() == c && bias.numel() == c && w.is_contiguous() && bias.is_contiguous(), "w, bias: (c,)");
  auto out = torch::empty_like(x);
  auto mean = torch::empty({rows}, x.options()), rstd = torch::empty({rows}, x.options());
  const float *xp = x.data_ptr<float>(), *kp = has_skip ? skip.data_ptr<float>() : nullptr;
  const float *wp = w.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float *op = out.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const float sf = static_cast<float>(s), inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel
  {
    std::vector<float> y(c);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* xr = xp + i * c;
      float sum = 0.0f;
      if (has_skip) {
        const float* kr = kp + i * c;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < c; ++k) {
          y[k] = xr[k] + sf * kr[k];
          sum += y[k];
        }
      } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < c; ++k) {
          y[k] = xr[k];
          sum += y[k];
        }
      }
      const float mu = sum * inv_c;
      float var = 0.0f;
#pragma omp simd reduction(+ : var)
      for (int64_t k = 0; k < c; ++k) var += (y[k] - mu) * (y[k] - mu);
      const float r = 1.0f / std::sqrt(var * inv_c + static_cast<float>(eps));
      float* orow = op + i * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) orow[k] = (y[k] - mu) * r * wp[k] + bp[k];
      mp[i] = mu;
      rp[i] = r;
    }
  }
  return {out, mean, rstd};
}

// Its backward, from the row statistics: with xh = (y - mean) * rstd and g = dout * w,
//   dy = rstd * (g - mean_c(g) - xh * mean_c(g * xh)),  dw = sum_rows dout * xh,  db = sum_rows dout;
// with a skip also dskip = s * dy and ds = sum dy * skip. dw, db and ds are summed per block of 64 rows in
// float, then per thread in double.
struct NormGrads {
  std::vector<double> dw, db;
  double ds = 0.0;
};

template <bool kSkip>
void token_norm_rows(const float* __restrict__ gp, const float* __restrict__ xp, const float* __restrict__ kp,
                     float sf, const float* __restrict__ wp, const float* __restrict__ mp,
                     const float* __restrict__ rp, float* __restrict__ dxp, float* __restrict__ dkp, int64_t rows,
                     int64_t c, NormGrads& total) {
  constexpr int64_t kRowsPerSum = 64;
  const int64_t blocks = (rows + kRowsPerSum - 1) / kRowsPerSum;
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel
  {
    std::vector<float> buf(4 * c);
    float *__restrict__ xh = buf.data(), *__restrict__ g = xh + c, *__restrict__ bdw = g + c, *__restrict__ bdb = bdw + c;
    NormGrads mine{std::vector<double>(c, 0.0), std::vector<double>(c, 0.0), 0.0};
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      for (int64_t k = 0; k < c; ++k) bdw[k] = bdb[k] = 0.0f;
      float bds = 0.0f;
      for (int64_t i = blk * kRowsPerSum; i < std::min(rows, (blk + 1) * kRowsPerSum); ++i) {
        const float *xr = xp + i * c, *gr = gp + i * c, *kr = kSkip ? kp + i * c : nullptr;
        const float mu = mp[i], r = rp[i];
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
        for (int64_t k = 0; k < c; ++k) {
          float y = xr[k];
          if constexpr (kSkip) y += sf * kr[k];
          const float h = (y - mu) * r, gk = gr[k] * wp[k];
          xh[k] = h;
          g[k] = gk;
          a += gk;
          b += gk * h;
          bdw[k] += gr[k] * h;
          bdb[k] += gr[k];
        }
        a *= inv_c;
        b *= inv_c;
        float* dxr = dxp + i * c;
        if constexpr (kSkip) {
          float* dkr = dkp + i * c;
#pragma omp simd reduction(+ : bds)
          for (int64_t k = 0; k < c; ++k) {
            const float dy = r * (g[k] - a - xh[k] * b);
            dxr[k] = dy;
            dkr[k] = sf * dy;
            bds += dy * kr[k];
          }
        } else {
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) dxr[k] = r * (g[k] - a - xh[k] * b);
        }
      }
      for (int64_t k = 0; k < c; ++k) {
        mine.dw[k] += bdw[k];
        mine.db[k] += bdb[k];
      }
      mine.ds += bds;
    }
#pragma omp critical
    {
      for (int64_t k = 0; k < c; ++k) {
        total.dw[k] += mine.dw[k];
        total.db[k] += mine.db[k];
      }
      total.ds += mine.ds;
    }
  }
}

std::vector<torch::Tensor> token_norm_bwd(torch::Tensor dout, torch::Tensor x, torch::Tensor skip, double s,
                                          torch::Tensor w, torch::Tensor mean, torch::Tensor rstd) {
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.is_contiguous() && dout.scalar_type() == torch::kFloat32,
              "dout: contiguous float32 like x");
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const bool has_skip = skip.numel() > 0;
  auto dx = torch::empty_like(x);
  auto dskip = has_skip ? torch::empty_like(x) : torch::empty({0}, x.options());
  NormGrads total{std::vector<double>(c, 0.0), std::vector<double>(c, 0.0), 0.0};
  const float sf = static_cast<float>(s);
  if (has_skip)
    token_norm_rows<true>(dout.data_ptr<float>(), x.data_ptr<float>(), skip.data_ptr<float>(), sf,
                          w.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr<float>(),
                          dskip.data_ptr<float>(), rows, c, total);
  else
    token_norm_rows<false>(dout.data_ptr<float>(), x.data_ptr<float>(), nullptr, sf, w.data_ptr<float>(),
                           mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr<float>(), nullptr, rows, c,
                           total);
  auto dw = torch::empty({c}, x.options()), db = torch::empty({c}, x.options());
  for (int64_t k = 0; k < c; ++k) {
    dw.data_ptr<float>()[k] = static_cast<float>(total.dw[k]);
    db.data_ptr<float>()[k] = static_cast<float>(total.db[k]);
  }
  auto ds = torch::full({1}, static_cast<float>(total.ds), x.options());
  return {dx, dskip, ds, dw, db};
}

// dst row r (r < rows, rows of l floats) = (kAdd: +=) src row r (stride sr between rows, sl between elements)
// read at idx[0..l): kRows rows at a time, so that each index is loaded once per kRows elements.
constexpr int64_t kRows = 8;
template <bool kAdd>
void gather_rows(const float* src, int64_t sr, int64_t sl, const int64_t* idx, int64_t l, int64_t rows, float* dst) {
  auto put = [](float& d, float v) {
    if constexpr (kAdd) d += v;
    else d = v;
  };
  if (rows == kRows) {
    for (int64_t i = 0; i < l; ++i) {
      const float* s = src + idx[i] * sl;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) put(dst[r * l + i], s[r * sr]);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < l; ++i) put(dst[r * l + i], src[r * sr + idx[i] * sl]);
}

// Route gathers of multi-route scans. out[b, k, ch, i] = x[b, k or 0, ch, index[k, i]]: every (b, k, ch) row
// gathers from one row of x (l floats, cache-resident) with the same index row, i.e. a permutation read.
// An output given by the caller (a contiguous float32 tensor of the result's shape, e.g. one batch item's
// slice of a larger result) is written in place; else a new one is returned.
torch::Tensor output_like(const std::optional<torch::Tensor>& given, at::IntArrayRef shape, const torch::Tensor& x) {
  if (!given.has_value()) return torch::empty(shape, x.options());
  TORCH_CHECK(given->sizes() == shape && given->is_contiguous() && given->scalar_type() == torch::kFloat32,
              "out must be a contiguous float32 tensor of the result's shape");
  return *given;
}

torch::Tensor route_gather(torch::Tensor x, torch::Tensor index, std::optional<torch::Tensor> given) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "x must be float32 (b, K or 1, c, l)");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == torch::kInt64 && index.is_contiguous(), "bad index");
  const int64_t nb = x.size(0), kx = x.size(1), c = x.size(2), l = x.size(3), K = index.size(0);
  TORCH_CHECK(index.size(1) == l && (kx == 1 || kx == K), "index does not match x");
  auto out = output_like(given, {nb, K, c, l}, x);
  const float* xp = x.data_ptr<float>();
  const int64_t sb = x.stride(0), sk = kx == 1 ? 0 : x.stride(1), sc = x.stride(2), sl = x.stride(3);
  const int64_t* ip = index.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  if (sc == 1 && sl != 1) {
    // Token-major x (a network's (b, l, c) activations seen as (b, c, l)): row by row, every element would
    // be its own cache miss. Tiles of kTile route positions instead: their kTile source tokens (c floats
    // each, contiguous) stay in L1 while each channel's kTile outputs are written as one contiguous run.
    constexpr int64_t kTile = 16;
    const int64_t ntile = (l + kTile - 1) / kTile;
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < nb * K * ntile; ++task) {
      const int64_t b = task / (K * ntile), k = (task / ntile) % K, i0 = (task % ntile) * kTile;
      const int64_t n = std::min(kTile, l - i0);
      const float* base = xp + b * sb + k * sk;
      const float* src[kTile];
      for (int64_t t = 0; t < n; ++t) src[t] = base + ip[k * l + i0 + t] * sl;
      float* dst = op + (b * K + k) * c * l + i0;
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t t = 0; t < n; ++t) dst[ch * l + t] = src[t][ch];
    }
    return out;
  }
  // Channel-major x: kRows channel rows of one route at a time, so that each index is read once for kRows
  // gathered elements (one row at a time read it per element: ~3 memory operations per element).
  const int64_t nrb = (c + kRows - 1) / kRows;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < nb * K * nrb; ++task) {
    const int64_t b = task / (K * nrb), k = (task / nrb) % K, c0 = (task % nrb) * kRows;
    const int64_t* idx = ip + k * l;
    gather_rows<false>(xp + b * sb + k * sk + c0 * sc, sc, sl, idx, l, std::min(kRows, c - c0),
                       op + ((b * K + k) * c + c0) * l);
  }
  return out;
}

// sum_k of route_gather(g, index)[:, k]: the adjoint of reading one map along K routes (index = the inverses)
torch::Tensor route_gather_sum(torch::Tensor g, torch::Tensor index, std::optional<torch::Tensor> given) {
  TORCH_CHECK(g.dim() == 4 && g.scalar_type() == torch::kFloat32, "g must be float32 (b, K, c, l)");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == torch::kInt64 && index.is_contiguous(), "bad index");
  const int64_t nb = g.size(0), K = g.size(1), c = g.size(2), l = g.size(3);
  TORCH_CHECK(index.size(0) == K && index.size(1) == l, "index does not match g");
  auto out = output_like(given, {nb, c, l}, g);
  const float* gp = g.data_ptr<float>();
  const int64_t sb = g.stride(0), sk = g.stride(1), sc = g.stride(2), sl = g.stride(3);
  const int64_t* ip = index.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t nrb = (c + kRows - 1) / kRows;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < nb * nrb; ++task) {
    const int64_t b = task / nrb, c0 = (task % nrb) * kRows;
    const int64_t rows = std::min(kRows, c - c0);
    float* dst = op + (b * c + c0) * l;
    gather_rows<false>(gp + b * sb + c0 * sc, sc, sl, ip, l, rows, dst);  // route 0 writes, the others add
    for (int64_t k = 1; k < K; ++k) gather_rows<true>(gp + b * sb + k * sk + c0 * sc, sc, sl, ip + k * l, l, rows, dst);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("causal_conv_fwd", &causal_conv_fwd, "causal depthwise conv1d (+SiLU) on token-major (b, l, d), CPU");
  m.def("causal_conv_bwd", &causal_conv_bwd, "its backward: dx, dweight, dbias (pre-activation recomputed)");
  m.def("depthwise_conv3d_fwd", &depthwise_conv3d_fwd, "depthwise 3D conv, stride 1, same padding, contiguous map");
  m.def("depthwise_conv3d_wgrad", &depthwise_conv3d_wgrad, "weight and bias gradients of a depthwise 3D conv");
  m.def("max_pool3d_fwd", &max_pool3d_fwd, "max pooling, stride = kernel, of a contiguous 5D map: out, indices");
  m.def("upsample_trilinear_fwd", &upsample_trilinear_fwd, "trilinear resize, align_corners=False, contiguous 5D");
  m.def("upsample_trilinear_bwd", &upsample_trilinear_bwd, "its backward: the input gradient");
  m.def("transpose_rows", &transpose_rows, "out[b, s, r] = x[b, r, s]: (b, R, S) with contiguous rows -> contiguous (b, S, R)");
  m.def("token_norm_fwd", &token_norm_fwd, "LayerNorm over the channels of token rows, of x or x + s * skip");
  m.def("token_norm_bwd", &token_norm_bwd, "its backward: dx, dskip, ds, dw, db (y recomputed)");
  m.def("route_gather", &route_gather, "out[b,k,c,i] = x[b,k|0,c,index[k,i]] (multi-route scans, CPU)",
        py::arg("x"), py::arg("index"), py::arg("out") = py::none());
  m.def("route_gather_sum", &route_gather_sum, "sum_k g[b,k,c,index[k,i]]: adjoint of reading along K routes",
        py::arg("g"), py::arg("index"), py::arg("out") = py::none());
}
