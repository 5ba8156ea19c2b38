// CPU kernel of lpc_fast::log_likelihood_grad (schema in lpc_fast/_schemas.py): per data point, the
// pixel log-likelihood summed over everything but the batch dimension, its derivative with respect
// to the decoder output, and the per-point sum of its derivative with respect to log sigma, in one
// pass (csrc/include/likelihood_math.h has the maths).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>

#include "check_message.h"
#include "likelihood_math.h"

namespace lpc_fast {
namespace cpu {
namespace {

#define LIK_INLINE inline __attribute__((always_inline))

// Elements per parallel chunk: digits-sized batches (4096 pixels) run on one thread.
constexpr int64_t kGrainElements = 32768;
// Elements per vector pass of the float path (scratch arrays on the stack).
constexpr int64_t kChunk = 256;

// ---------------------------------------------------------------------------------------------
// float32: a branch-free element function the compiler vectorises (inline exp and log instead of
// library calls, selects instead of branches), compiled for AVX2+FMA and for baseline x86-64 and
// chosen at run time. Pixels in the discretised Gaussian's far tail (z_b > LikTail<float>, rare)
// are recomputed afterwards by the scalar header function. float64 runs the scalar header
// function with the C library's erfc throughout (the float64 contract is 1e-10 relative).

// The selects below compute both sides; without this the compiler may not speculate a floating
// operation that could raise an exception and leaves the loop scalar. Nothing here reads the
// floating-point exception flags.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

LIK_INLINE int32_t lik_as_int(float x) {
  int32_t i;
  memcpy(&i, &x, sizeof(i));
  return i;
}

LIK_INLINE float lik_as_float(int32_t i) {
  float x;
  memcpy(&x, &i, sizeof(x));
  return x;
}

// e^x, x clamped to [-87, 88] (results in the normal range): n = round(x / ln 2) by the
// magic-number trick, r = x - n ln 2 with ln 2 in two parts, Cephes' degree-5 polynomial for
// e^r, and 2^n from the exponent bits. About 1 ulp.
LIK_INLINE float lik_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  return y * lik_as_float((static_cast<int32_t>(n) + 127) << 23);
}

// Natural log of a positive normal float (the same Cephes form as langevin_cpu.cpp's).
LIK_INLINE float lik_log(float x) {
  const int32_t bits = lik_as_int(x);
  int32_t e = (bits >> 23) - 127;
  int32_t mbits = (bits & 0x007fffff) | 0x3f800000;
  const int32_t big = mbits > 0x3fb504f3;
  mbits -= big << 23;
  e += big;
  const float f = lik_as_float(mbits) - 1.0f;
  const float ef = static_cast<float>(e);
  const float f2 = f * f;
  float poly = 7.0376836292e-2f;
  poly = poly * f - 1.1514610310e-1f;
  poly = poly * f + 1.1676998740e-1f;
  poly = poly * f - 1.2420140846e-1f;
  poly = poly * f + 1.4249322787e-1f;
  poly = poly * f - 1.6668057665e-1f;
  poly = poly * f + 2.0000714765e-1f;
  poly = poly * f - 2.4999993993e-1f;
  poly = poly * f + 3.3333331174e-1f;
  float y = poly * f * f2;
  y += -2.12194440e-4f * ef;
  y += -0.5f * f2;
  return (f + y) + 0.693359375f * ef;
}

// erfc(z) and e^{-z^2} (likelihood_math.h's float form, with the inline exponential).
LIK_INLINE float lik_erfc_exp_fast(float z, float* e) {
  const float az = z < 0.0f ? -z : z;
  const float t = 1.0f / (1.0f + 0.5f * az);
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
  *e = lik_exp(-z * z);
  const float r = *e * t * q;
  return z < 0.0f ? 2.0f - r : r;
}

template <int64_t KIND, bool SIGMOID>
LIK_INLINE void lik_element_fast(const LikParams<float>& p, float x, float o, float* value,
                                 float* d_out, float* d_ls, float* zb_out) {
  constexpr float kTwoOverSqrtPi = 1.1283791670955125739f;
  constexpr float kLn2 = 0.69314718055994530942f;
  if (KIND == kBernoulli) {
    const float ao = o < 0.0f ? -o : o;
    const float y = lik_exp(-ao);
    const float u = 1.0f + y;
    // log1p(y) = log(u) y / (u - 1), exact where u rounds to 1 (Goldberg's trick).
    const float l1p = u == 1.0f ? y : lik_log(u) * (y / (u - 1.0f));
    *value = x * o - (o > 0.0f ? o : 0.0f) - l1p;
    // sigmoid(o) = 1 / (1 + e^{-o}) = e^{o} / (1 + e^{o}): from y = e^{-|o|} either way.
    *d_out = x - (o >= 0.0f ? 1.0f / u : y / u);
    *d_ls = 0.0f;
    *zb_out = 0.0f;
    return;
  }
  float link = o, d_link = 1.0f;
  if (SIGMOID) {
    // s = 1 / (1 + e^{-o}) and 1 - s = e^{-o} s, from one exponential (no cancellation either way).
    const float e = lik_exp(-o);
    const float s = 1.0f / (1.0f + e);
    link = s;
    d_link = s * (e * s);
  }
  if (KIND == kGaussian) {
    const float r = (x - link) * p.inv_sigma;
    *value = -0.5f * r * r - p.log_sigma - 0.91893853320467274178f;
    *d_out = r * p.inv_sigma * d_link;
    *d_ls = r * r - 1.0f;
    *zb_out = 0.0f;
    return;
  }
  const float m = 2.0f * link - 1.0f;
  float xc = x < 0.0f ? 0.0f : x;
  xc = xc > 1.0f ? 1.0f : xc;
  const float level = (xc * p.levels + 12582912.0f) - 12582912.0f;  // round half to even
  const float y = 2.0f * level / p.levels - 1.0f;
  const float c = y - m;
  const bool bottom = level <= 0.0f;
  const bool top = level >= p.levels;
  const bool edge = bottom || top;
  const float hu = p.half * p.u;
  const float ac = c < 0.0f ? -c : c;
  const float zb = bottom ? (-c - p.half) * p.u : (top ? (c - p.half) * p.u : ac * p.u - hu);
  const float sign = bottom ? -1.0f : (top ? 1.0f : (c > 0.0f ? 1.0f : -1.0f));
  const float zbm = zb > LikTail<float>::value ? LikTail<float>::value : zb;
  float zam = zb + 2.0f * hu;
  zam = zam > LikTail<float>::clamp ? LikTail<float>::clamp : zam;
  float pb, pa;
  const float eb = lik_erfc_exp_fast(zbm, &pb);
  const float ea = lik_erfc_exp_fast(zam, &pa);
  pa = edge ? 0.0f : pa;
  float two_p = eb - (edge ? 0.0f : ea);
  two_p = two_p < 1.17549435e-38f ? 1.17549435e-38f : two_p;
  const float inv = 1.0f / two_p;
  *value = lik_log(two_p) - kLn2;
  *d_out = sign * kTwoOverSqrtPi * p.u * ((pb - pa) * inv) * 2.0f * d_link;
  *d_ls = -kTwoOverSqrtPi * ((zam * pa - zbm * pb) * inv);
  *zb_out = zb;
}

template <int64_t KIND, bool SIGMOID>
LIK_INLINE void lik_chunk_fast(const LikParams<float>& p, const float* x, const float* o,
                               float* grad_out, float* value, float* d_ls, float* zb, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    lik_element_fast<KIND, SIGMOID>(p, x[i], o[i], &value[i], &grad_out[i], &d_ls[i], &zb[i]);
  }
}

template <int64_t KIND, bool SIGMOID>
LIK_INLINE void lik_rows_fast(const LikParams<float>& p, const float* x, const float* o,
                              float* log_prob, float* grad_out, float* grad_ls, int64_t r0,
                              int64_t r1, int64_t row_len) {
  alignas(64) float value[kChunk];
  alignas(64) float d_ls[kChunk];
  alignas(64) float zb[kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    double value_sum = 0.0, ls_sum = 0.0;
    for (int64_t start = 0; start < row_len; start += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, row_len - start);
      const int64_t base = r * row_len + start;
      lik_chunk_fast<KIND, SIGMOID>(p, x + base, o + base, grad_out + base, value, d_ls, zb, n);
      for (int64_t i = 0; i < n; ++i) {
        if (KIND == kDiscretisedGaussian && zb[i] > LikTail<float>::value) {
          likelihood_element<float>(p, x[base + i], o[base + i], &value[i], &grad_out[base + i],
                                    &d_ls[i]);
        }
        value_sum += static_cast<double>(value[i]);
        ls_sum += static_cast<double>(d_ls[i]);
      }
    }
    log_prob[r] = static_cast<float>(value_sum);
    grad_ls[r] = static_cast<float>(ls_sum);
  }
}

using FastRowsFn = void (*)(const LikParams<float>&, const float*, const float*, float*, float*,
                            float*, int64_t, int64_t, int64_t);

template <int64_t KIND, bool SIGMOID>
__attribute__((flatten)) void lik_rows_baseline(const LikParams<float>& p, const float* x,
                                                const float* o, float* lp, float* go, float* gls,
                                                int64_t r0, int64_t r1, int64_t row_len) {
  lik_rows_fast<KIND, SIGMOID>(p, x, o, lp, go, gls, r0, r1, row_len);
}

#if defined(__x86_64__) || defined(__i386__)
template <int64_t KIND, bool SIGMOID>
__attribute__((target("avx2,fma"),
               flatten)) void lik_rows_avx2(const LikParams<float>& p, const float* x,
                                            const float* o, float* lp, float* go, float* gls,
                                            int64_t r0, int64_t r1, int64_t row_len) {
  lik_rows_fast<KIND, SIGMOID>(p, x, o, lp, go, gls, r0, r1, row_len);
}

bool lik_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

template <int64_t KIND, bool SIGMOID>
FastRowsFn pick_rows_fn() {
#if defined(__x86_64__) || defined(__i386__)
  if (lik_has_avx2()) return &lik_rows_avx2<KIND, SIGMOID>;
#endif
  return &lik_rows_baseline<KIND, SIGMOID>;
}

FastRowsFn rows_fn_float(int64_t kind, bool sigmoid) {
  if (kind == kBernoulli) return pick_rows_fn<kBernoulli, false>();
  if (kind == kGaussian)
    return sigmoid ? pick_rows_fn<kGaussian, true>() : pick_rows_fn<kGaussian, false>();
  return sigmoid ? pick_rows_fn<kDiscretisedGaussian, true>()
                 : pick_rows_fn<kDiscretisedGaussian, false>();
}

void likelihood_rows_float(const LikParams<float>& p, const float* x, const float* o,
                           float* log_prob, float* grad_out, float* grad_ls, int64_t rows,
                           int64_t row_len) {
  const FastRowsFn fn = rows_fn_float(p.kind, p.sigmoid);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_len));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    fn(p, x, o, log_prob, grad_out, grad_ls, r0, r1, row_len);
  });
}

#pragma GCC pop_options

// float64: the scalar header function.
void likelihood_rows_double(const LikParams<double>& p, const double* x, const double* o,
                            double* log_prob, double* grad_out, double* grad_ls, int64_t rows,
                            int64_t row_len) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_len));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * row_len;
      double value_sum = 0.0, ls_sum = 0.0;
      for (int64_t i = 0; i < row_len; ++i) {
        double value, d_out, d_ls;
        likelihood_element<double>(p, x[base + i], o[base + i], &value, &d_out, &d_ls);
        grad_out[base + i] = d_out;
        value_sum += value;
        ls_sum += d_ls;
      }
      log_prob[r] = value_sum;
      grad_ls[r] = ls_sum;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_likelihood_grad(
    const at::Tensor& x, const at::Tensor& out, const std::optional<at::Tensor>& log_sigma,
    double log_sigma_value, int64_t kind, bool sigmoid, int64_t num_levels) {
  LPC_CHECK(out.device().is_cpu() && x.device().is_cpu(),
            "lpc_fast::log_likelihood_grad (CPU): x and out must be CPU tensors");
  LPC_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
            "lpc_fast::log_likelihood_grad: out must be float32 or float64, got ",
            out.scalar_type());
  LPC_CHECK(x.scalar_type() == out.scalar_type(),
            "lpc_fast::log_likelihood_grad: x must have out's dtype (", out.scalar_type(),
            "), got ", x.scalar_type());
  LPC_CHECK(x.sizes() == out.sizes(), "lpc_fast::log_likelihood_grad: x must have out's shape ",
            out.sizes(), ", got ", x.sizes());
  LPC_CHECK(out.dim() >= 1, "lpc_fast::log_likelihood_grad: out must have a batch dimension");
  LPC_CHECK(kind >= 0 && kind <= 2,
            "lpc_fast::log_likelihood_grad: kind must be 0 (discretised Gaussian), 1 (Gaussian) "
            "or 2 (Bernoulli), got ",
            kind);
  LPC_CHECK(kind != kDiscretisedGaussian || num_levels >= 2,
            "lpc_fast::log_likelihood_grad: num_levels must be >= 2, got ", num_levels);
  double ls = log_sigma_value;
  if (log_sigma.has_value()) {
    LPC_CHECK(log_sigma->numel() == 1 && log_sigma->is_floating_point(),
              "lpc_fast::log_likelihood_grad: log_sigma must be a one-element floating tensor");
    ls = log_sigma->item<double>();
  }
  const auto xc = x.contiguous();
  const auto oc = out.contiguous();
  const int64_t rows = out.size(0);
  const int64_t row_len = rows == 0 ? 0 : out.numel() / rows;
  auto log_prob = at::empty({rows}, out.options());
  auto grad_out = at::empty(out.sizes(), out.options());
  auto grad_ls = at::empty({rows}, out.options());
  if (out.scalar_type() == at::kDouble) {
    likelihood_rows_double(make_lik_params<double>(kind, sigmoid, ls, num_levels),
                           xc.data_ptr<double>(), oc.data_ptr<double>(),
                           log_prob.data_ptr<double>(), grad_out.data_ptr<double>(),
                           grad_ls.data_ptr<double>(), rows, row_len);
  } else {
    likelihood_rows_float(make_lik_params<float>(kind, sigmoid, ls, num_levels),
                          xc.data_ptr<float>(), oc.data_ptr<float>(), log_prob.data_ptr<float>(),
                          grad_out.data_ptr<float>(), grad_ls.data_ptr<float>(), rows, row_len);
  }
  return {log_prob, grad_out, grad_ls};
}

}  // namespace cpu
}  // namespace lpc_fast

// The schema comes from the op table (lpc_fast/_schemas.py); only the kernel is attached here.
TORCH_LIBRARY_IMPL(lpc_fast, CPU, m) {
  m.impl("log_likelihood_grad", &lpc_fast::cpu::log_likelihood_grad);
}
