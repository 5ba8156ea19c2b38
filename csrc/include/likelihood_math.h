// Per-element pixel log-likelihoods and their derivatives, for host and device (no torch headers).
//
// The maths of lpc_fast/models/likelihoods.py, element by element, in a compute type T (float for
// float32 tensors, double for float64). Each element gives the log-likelihood of one pixel, its
// derivative with respect to the decoder output `o` and its derivative with respect to the shared
// log sigma. Kinds (the `kind` argument of the log_likelihood_grad op):
//   0 discretised Gaussian on [-1, 1]: m = 2 link(o) - 1, s = 2 sigma, level k = round(clamp(x) K),
//     y = 2k/K - 1, P = Phi((y + 1/K - m)/s) - Phi((y - 1/K - m)/s), edge bins extended to +-inf;
//   1 Gaussian: loc = link(o), log N(x; loc, sigma^2);
//   2 Bernoulli with logits o: x o - softplus(o) (x in [0, 1] allowed).
//
// Discretised Gaussian in erfc units (u = 1 / (s sqrt 2)): a pixel's (mirrored) bin has bounds
// z_b <= z_a with 2P = erfc(z_b) - erfc(z_a):
//   interior: t = |y - m| u, z_b = t - u/K, z_a = t + u/K, sign = sign(y - m);
//   bottom (k = 0): z_b = (m - y - 1/K) u, z_a = +inf, sign = -1;
//   top (k = K): z_b = (y - 1/K - m) u, z_a = +inf, sign = +1.
// Mirroring keeps z_a >= 0, so erfc(z_a) never rounds against a value near 2.
//   dL/dm = sign (2u / sqrt(pi)) (e^{-z_b^2} - e^{-z_a^2}) / (2P)
//   dL/dlog sigma = -(2 / sqrt(pi)) (z_a e^{-z_a^2} - z_b e^{-z_b^2}) / (2P)
// Far in the tail (z_b > kTail<T>, where erfc(z_b) would soon leave the normal range) every
// quantity is scaled by e^{-z_b^2}: 2P / e^{-z_b^2} = erfcx(z_b) - r erfcx(z_a) with
// r = e^{-(z_a - z_b)(z_a + z_b)}, (z_a - z_b) taken exactly from the bin width, which neither
// underflows nor cancels.
#pragma once

#include <math.h>
#include <stdint.h>

#include "philox.h"

namespace lpc_fast {

enum LikelihoodKind : int64_t { kDiscretisedGaussian = 0, kGaussian = 1, kBernoulli = 2 };

// Start of the scaled tail form: erfc there is still far above the smallest normal number
// (float: erfc(7.5) = 2.7e-26; double: erfc(25) = 8e-274).
template <typename T>
struct LikTail;
// clamp: where the main path's far bound z_a is clamped. erfc and e^{-z^2} there are still normal
// numbers (float: erfc(9) = 4.1e-37; double: erfc(26) = 5.7e-296), at least 1e-11 (float) and
// 1e-21 (double) times those at any main-path z_b, so the clamp changes nothing above rounding, and
// keeps the math functions out of their slow underflowing range.
template <>
struct LikTail<float> {
  static constexpr float value = 7.5f;
  static constexpr float clamp = 9.0f;
};
template <>
struct LikTail<double> {
  static constexpr double value = 25.0;
  static constexpr double clamp = 26.0;
};

// erfcx(x) = e^{x^2} erfc(x) for x >= 7.5 from its asymptotic series
// (1 / (x sqrt(pi))) sum_n (-1)^n (2n - 1)!! / (2x^2)^n, summed to n = 10. The first omitted term
// bounds the error: 21!! / (2x^2)^11 = 4e-13 relative at x = 7.5 (float's tail) and 1e-24 at
// x = 25 (double's tail), both below rounding.
template <typename T>
LPC_HD T lik_erfcx_asymptotic(T x) {
  const T inv2x2 = T(0.5) / (x * x);
  T term = T(1);
  T sum = T(1);
  for (int n = 1; n <= 10; ++n) {
    term *= -T(2 * n - 1) * inv2x2;
    sum += term;
  }
  return sum / (x * T(1.7724538509055160273));  // sqrt(pi)
}

// erfc(z) and e^{-z^2} together. double: the C library's erfc (about 1 ulp). float: erfc(|z|) =
// e^{-z^2} t Q(t) with t = 1 / (1 + |z| / 2), Q a degree-11 polynomial fitted (Chebyshev, on
// t in (0, 1], i.e. all z >= 0) to erfcx(z) / t from 30-digit values (build_tools/fit_erfcx.py):
// 1.2e-8 relative in exact arithmetic, 2.2e-7 evaluated in float; the exponential is shared with
// the density term, which is what makes the float path cheap.
LPC_HD double lik_erfc_exp(double z, double* e) {
  *e = exp(-z * z);
  return erfc(z);
}

LPC_HD float lik_erfc_exp(float z, float* e) {
  const float t = 1.0f / (1.0f + 0.5f * fabsf(z));
  float q = -0.002859576245431149f;
  q = q * t + 0.0589348671324021f;
  q = q * t - 0.2721382047227024f;
  q = q * t + 0.5439222578442553f;
  q = q * t - 0.4968506840512776f;
  q = q * t + 0.15460752921613055f;
  q = q * t - 0.06693088122449069f;
  q = q * t + 0.09512101608049207f;
  q = q * t + 0.1751073087142687f;
  q = q * t + 0.24689817769864353f;
  q = q * t + 0.2820933958195232f;
  q = q * t + 0.28209479712579f;
  *e = expf(-z * z);
  const float r = *e * t * q;
  return z < 0.0f ? 2.0f - r : r;
}

template <typename T>
struct LikParams {
  int64_t kind;
  bool sigmoid;  // link: sigmoid, else identity (Gaussian kinds)
  T log_sigma;   // Gaussian kinds
  T inv_sigma;   // Gaussian: e^{-log sigma}
  T u;           // discretised: 1 / (2 sigma sqrt 2)
  T levels;      // discretised: K = num_levels - 1
  T half;        // discretised: 1 / K (half a bin on [-1, 1])
};

template <typename T>
LPC_HD LikParams<T> make_lik_params(int64_t kind, bool sigmoid, double log_sigma,
                                    int64_t num_levels) {
  LikParams<T> p;
  p.kind = kind;
  p.sigmoid = sigmoid;
  p.log_sigma = static_cast<T>(log_sigma);
  p.inv_sigma = static_cast<T>(exp(-log_sigma));
  const double k = static_cast<double>(num_levels - 1);
  p.levels = static_cast<T>(k);
  p.half = static_cast<T>(1.0 / k);
  p.u = static_cast<T>(exp(-(log_sigma + 0.69314718055994530942)) * 0.70710678118654752440);
  return p;
}

// sigmoid(o) and 1 - sigmoid(o), each without cancellation.
template <typename T>
LPC_HD void lik_sigmoid(T o, T* s, T* one_minus_s) {
  *s = T(1) / (T(1) + exp(-o));
  *one_minus_s = T(1) / (T(1) + exp(o));
}

template <typename T>
LPC_HD void lik_discretised(const LikParams<T>& p, T x, T m, T* value, T* d_m, T* d_ls) {
  const T xc = fmin(fmax(x, T(0)), T(1));
  const T level = rint(xc * p.levels);
  const T y = T(2) * level / p.levels - T(1);
  const T c = y - m;
  const bool bottom = level <= T(0);
  const bool top = level >= p.levels;
  const bool edge = bottom || top;
  const T hu = p.half * p.u;
  T zb, sign;
  if (bottom) {
    zb = (-c - p.half) * p.u;
    sign = T(-1);
  } else if (top) {
    zb = (c - p.half) * p.u;
    sign = T(1);
  } else {
    zb = fabs(c) * p.u - hu;
    sign = c > T(0) ? T(1) : T(-1);
  }
  const T za = zb + T(2) * hu;  // interior only
  T gm, gs;
  if (zb > LikTail<T>::value) {
    T scaled = lik_erfcx_asymptotic(zb);
    T one_minus_r = T(1);
    T za_r = T(0);
    if (!edge) {
      const T prod = T(2) * hu * (za + zb);
      const T r = exp(-prod);
      scaled -= r * lik_erfcx_asymptotic(za);
      one_minus_r = -expm1(-prod);
      za_r = za * r;
    }
    *value = log(scaled) - zb * zb - T(0.69314718055994530942);
    gm = one_minus_r / scaled;
    gs = (za_r - zb) / scaled;
  } else {
    T pb, pa = T(0), za_pa = T(0);
    T two_p = lik_erfc_exp(zb, &pb);
    if (!edge) {
      const T za_main = fmin(za, LikTail<T>::clamp);
      two_p -= lik_erfc_exp(za_main, &pa);
      za_pa = za_main * pa;
    }
    *value = log(two_p) - T(0.69314718055994530942);
    gm = (pb - pa) / two_p;
    gs = (za_pa - zb * pb) / two_p;
  }
  *d_m = sign * T(1.1283791670955125739) * p.u * gm;  // 2 / sqrt(pi)
  *d_ls = -T(1.1283791670955125739) * gs;
}

// One pixel: log-likelihood, d/d(decoder output), d/d(log sigma).
template <typename T>
LPC_HD void likelihood_element(const LikParams<T>& p, T x, T o, T* value, T* d_out, T* d_ls) {
  if (p.kind == kBernoulli) {
    // x o - softplus(o), softplus(o) = max(o, 0) + log1p(e^{-|o|}).
    *value = x * o - fmax(o, T(0)) - log1p(exp(-fabs(o)));
    T s, one_minus_s;
    lik_sigmoid(o, &s, &one_minus_s);
    *d_out = x - s;
    *d_ls = T(0);
    return;
  }
  T link = o, d_link = T(1);
  if (p.sigmoid) {
    T s, one_minus_s;
    lik_sigmoid(o, &s, &one_minus_s);
    link = s;
    d_link = s * one_minus_s;
  }
  if (p.kind == kGaussian) {
    const T r = (x - link) * p.inv_sigma;
    *value = T(-0.5) * r * r - p.log_sigma - T(0.91893853320467274178);  // log(2 pi) / 2
    *d_out = r * p.inv_sigma * d_link;
    *d_ls = r * r - T(1);
    return;
  }
  T d_m;
  lik_discretised(p, x, T(2) * link - T(1), value, &d_m, d_ls);
  *d_out = d_m * T(2) * d_link;
}

}  // namespace lpc_fast
