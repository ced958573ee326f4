// Element-wise math that GCC inlines and vectorises with the loop around it (shared by the CPU kernels of
// kernels/csrc; part of every kernel's cache key): exp, sigmoid and softplus from plain arithmetic. An
// out-of-line libm/libmvec call per element cost the scan ~2x; in the causal conv, std::exp in the SiLU was
// part of a forward that fell from 19 to ~10 ms with fast_sigmoid and the k = 4 path (docs/benchmarks.md).
#pragma once
#include <cmath>
#include <cstdint>

namespace medmamba_vec {

// Always inlined: called out of line (GCC's inliner gives up in a large function), they cannot vectorise with
// the loop around them (the scan's backward ran ~1.7x slower so).
#define MEDMAMBA_INLINE inline __attribute__((always_inline))
#define MEDMAMBA_INLINE_LAMBDA __attribute__((always_inline))

// exp(x): the scan is bound by exp (l*d*n of them). Range reduction
// x = k ln2 + r with ln2 split in two (Cody-Waite), e^r by Cephes' degree-5 minimax polynomial on
// |r| <= ln2/2, 2^k built in the exponent bits. Max relative error ~2 ulp for x in [-87, 88]; inputs
// beyond are clamped (e^-87 ~ 1.6e-38, so decays underflow to ~0 just as expf's denormals would).
MEDMAMBA_INLINE float fast_exp(float x) {
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

MEDMAMBA_INLINE float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// softplus(x) = max(x, 0) + log1p(e^-|x|), the log1p as 2 atanh(s) with s = y / (2 + y) <= 1/3 (odd series
// to s^13, error < 1e-8): vectorisable, unlike log1pf.
MEDMAMBA_INLINE float fast_softplus(float x) {
  const float y = fast_exp(-std::fabs(x));
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

}  // namespace medmamba_vec
