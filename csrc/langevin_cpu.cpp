// CPU kernels of the lpc_fast dispatcher ops: the fused Langevin update (in place, capturable,
// functional), its backward, and the raw Philox streams.
//
// Work is cut into blocks of kBlock elements (kBlockCounters Philox counters). Every block runs
// the same fixed-length SIMD loops, the last partial block included (through padded buffers), so
// an element's result depends only on its index and the instruction set, never on how
// at::parallel_for splits the range or on the thread count.
//
// The hot loops are compiled three times (AVX-512, AVX2+FMA, baseline x86-64) via target
// attributes on thin entry points whose bodies are always_inline templates; the level is chosen
// once at run time with __builtin_cpu_supports, so the library never executes an instruction the
// CPU lacks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "check_message.h"
#include "langevin_math.h"
#include "philox.h"

namespace lpc_fast {
namespace cpu {
namespace {

#define LPC_CPU_INLINE inline __attribute__((always_inline))
// Entry points inline everything they call (the header's functions included): a Philox or
// Box–Muller call left out of line would stop the vectoriser.
#define LPC_FLATTEN __attribute__((flatten))

#if defined(__x86_64__) || defined(__i386__)
#define LPC_X86 1
#define LPC_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c"))) LPC_FLATTEN
#define LPC_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,f16c"))) LPC_FLATTEN
#else
#define LPC_X86 0
#endif

// Instruction sets the hot loops are compiled for; also the template argument kIsa of the block
// templates, so that code written for one set (the AVX2 Philox below) is instantiated only there.
enum SimdLevel : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// 64 counters (256 elements) per block: four AVX-512 registers per Philox word, whose
// independent multiply chains overlap (16 counters per block ran 25% slower).
constexpr int kBlockCounters = 64;
constexpr int kBlock = kBlockCounters * kPhiloxLanes;
// Elements per parallel task below which threading costs more than it saves.
constexpr int64_t kGrainElements = 1 << 15;
constexpr int64_t kGrainBlocks = kGrainElements / kBlock;

// ---------------------------------------------------------------------------------------------
// Branch-free float math for Box–Muller. Inputs are restricted (log: [1e-7, 1); sincos: the
// angle in [0, 2 pi)), which keeps the range reduction short. Errors are about 1 ulp (log) and
// 1e-7 absolute (sin, cos): normals stay within 1e-6 of the float64 reference.

LPC_CPU_INLINE int32_t as_int(float x) {
  int32_t i;
  memcpy(&i, &x, sizeof(i));
  return i;
}

LPC_CPU_INLINE float as_float(int32_t i) {
  float x;
  memcpy(&x, &i, sizeof(x));
  return x;
}

// Natural log of a positive normal float: x = m 2^e with m in (sqrt(1/2), sqrt(2)], then
// log(m) = f - f^2/2 + f^3 P(f) with f = m - 1 (Cephes' minimax polynomial) and ln 2 split in
// two parts so that e ln 2 adds without rounding error.
LPC_CPU_INLINE float log_positive(float x) {
  const int32_t bits = as_int(x);
  int32_t e = (bits >> 23) - 127;
  int32_t mbits = (bits & 0x007fffff) | 0x3f800000;  // m in [1, 2)
  const int32_t big = mbits > 0x3fb504f3;            // m > sqrt(2): halve m, bump e
  mbits -= big << 23;
  e += big;
  const float f = as_float(mbits) - 1.0f;
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

// sin and cos of theta in [0, 2 pi): theta = j pi/2 + x with |x| <= pi/4 (Cody–Waite with a
// three-part pi/2, exact for j <= 4), polynomials on x, then the quadrant's swap and signs as
// bit operations.
LPC_CPU_INLINE void sincos_angle(float theta, float& sin_out, float& cos_out) {
  // Round to nearest by the 1.5 * 2^23 trick (needs no SSE4.1 and keeps the loop branch-free).
  const float j = (theta * 0.63661977236758134f + 12582912.0f) - 12582912.0f;
  float x = theta - j * 1.5703125f;
  x = x - j * 4.837512969970703125e-4f;
  x = x - j * 7.54978995489188216e-8f;
  const float z = x * x;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * x + x;
  const float c =
      ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
  const int32_t q = static_cast<int32_t>(j);
  const int32_t swap = -(q & 1);  // all ones in odd quadrants: sin <-> cos
  const int32_t si = as_int(s);
  const int32_t ci = as_int(c);
  const int32_t sin_bits = (si & ~swap) | (ci & swap);
  const int32_t cos_bits = (ci & ~swap) | (si & swap);
  // sin is negative in quadrants 2, 3; cos in quadrants 1, 2.
  sin_out = as_float(sin_bits ^ static_cast<int32_t>(static_cast<uint32_t>(q & 2) << 30));
  cos_out = as_float(cos_bits ^ static_cast<int32_t>(static_cast<uint32_t>((q + 1) & 2) << 30));
}

// The same two functions in double for the float64 path (libm calls would not vectorise).
// log: m in (sqrt(1/2), sqrt(2)], log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172,
// whose odd series to s^23 is below 1e-17; e ln 2 with fdlibm's two-part ln 2. sin / cos: Taylor
// series to x^17 / x^18 on |x| <= pi/4 (remainder < 1e-19), three-part pi/2 reduction. A few
// ulp in all.

LPC_CPU_INLINE int64_t as_int(double x) {
  int64_t i;
  memcpy(&i, &x, sizeof(i));
  return i;
}

LPC_CPU_INLINE double as_double(int64_t i) {
  double x;
  memcpy(&x, &i, sizeof(x));
  return x;
}

LPC_CPU_INLINE double log_positive(double x) {
  const int64_t bits = as_int(x);
  int64_t e = (bits >> 52) - 1023;
  int64_t mbits = (bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL;  // m in [1, 2)
  const int64_t big = as_double(mbits) > 1.41421356237309514547;         // m > sqrt(2)
  mbits -= big << 52;
  e += big;
  const double m = as_double(mbits);
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double poly = 1.0 / 23;
  poly = poly * s2 + 1.0 / 21;
  poly = poly * s2 + 1.0 / 19;
  poly = poly * s2 + 1.0 / 17;
  poly = poly * s2 + 1.0 / 15;
  poly = poly * s2 + 1.0 / 13;
  poly = poly * s2 + 1.0 / 11;
  poly = poly * s2 + 1.0 / 9;
  poly = poly * s2 + 1.0 / 7;
  poly = poly * s2 + 1.0 / 5;
  poly = poly * s2 + 1.0 / 3;
  const double log_m = 2.0 * s + 2.0 * s * s2 * poly;
  // e as a double through the 1.5 * 2^52 trick: no int64 -> double instruction below AVX-512.
  const double ef = as_double(e + 0x4338000000000000LL) - 6755399441055744.0;
  return ef * 6.93147180369123816490e-01 + (log_m + ef * 1.90821492927058770002e-10);
}

LPC_CPU_INLINE void sincos_angle(double theta, double& sin_out, double& cos_out) {
  const double shifted = theta * 0.63661977236758134308 + 6755399441055744.0;
  const double j = shifted - 6755399441055744.0;
  double x = theta - j * 1.57079632673412561417e+00;
  x = x - j * 6.07710050630396597660e-11;
  x = x - j * 2.02226624871116645580e-21;
  const double z = x * x;
  double ps = -1.0 / 355687428096000.0;  // -1/17!
  ps = ps * z + 1.0 / 1307674368000.0;   // 1/15!
  ps = ps * z - 1.0 / 6227020800.0;
  ps = ps * z + 1.0 / 39916800.0;
  ps = ps * z - 1.0 / 362880.0;
  ps = ps * z + 1.0 / 5040.0;
  ps = ps * z - 1.0 / 120.0;
  ps = ps * z + 1.0 / 6.0;
  const double sn = x - x * z * ps;
  double pc = 1.0 / 6402373705728000.0;  // 1/18!
  pc = pc * z - 1.0 / 20922789888000.0;  // -1/16!
  pc = pc * z + 1.0 / 87178291200.0;
  pc = pc * z - 1.0 / 479001600.0;
  pc = pc * z + 1.0 / 3628800.0;
  pc = pc * z - 1.0 / 40320.0;
  pc = pc * z + 1.0 / 720.0;
  pc = pc * z - 1.0 / 24.0;
  const double cs = 1.0 - 0.5 * z - z * z * pc;
  const int64_t q = as_int(shifted);  // the low mantissa bits hold j: only q & 3 is used
  const int64_t swap = -(q & 1);
  const int64_t si = as_int(sn);
  const int64_t ci = as_int(cs);
  const int64_t sin_bits = (si & ~swap) | (ci & swap);
  const int64_t cos_bits = (ci & ~swap) | (si & swap);
  sin_out = as_double(sin_bits ^ static_cast<int64_t>(static_cast<uint64_t>(q & 2) << 62));
  cos_out = as_double(cos_bits ^ static_cast<int64_t>(static_cast<uint64_t>((q + 1) & 2) << 62));
}

// ---------------------------------------------------------------------------------------------
// One block of the stream: counters j0 .. j0 + kBlockCounters - 1 (relative to offset).

#if LPC_X86
// Philox4x32-10 on eight counters per AVX2 register. AVX2 has no 32x32 -> 64-bit multiply of all
// eight lanes, and the plain loop's uint64 products made the compiler widen and repack the words
// every round (3.3x slower): here vpmuludq multiplies the even lanes, and the odd lanes after a
// 32-bit shift, and two blends put the high and low halves back in place. Bit-identical to
// philox4x32_10 (the tests compare the uint32 stream with the other backends and the reference).
__attribute__((target("avx2"))) LPC_CPU_INLINE void mul_hi_lo_avx2(__m256i a, __m256i m,
                                                                   __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Out of line: the always_inline templates that call it carry no target attribute of their own, and
// one call per block of 256 elements costs nothing measurable.
__attribute__((target("avx2"), noinline)) void philox_words_block_avx2(
    uint64_t seed, uint64_t offset, uint64_t j0, uint32_t (&w)[4][kBlockCounters]) {
  constexpr int kVectors = kBlockCounters / 8;
  const __m256i round_a = _mm256_set1_epi32(static_cast<int32_t>(kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int32_t>(kPhiloxRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);
  __m256i c0[kVectors], c1[kVectors], c2[kVectors], c3[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    // Counter offset + j0 + 8v + lane as two words: the low word's carry (an unsigned compare,
    // done signed after flipping the sign bits) goes into the high word.
    uint32_t lo, hi;
    philox_counter_words(offset, j0 + 8u * static_cast<uint64_t>(v), lo, hi);
    const __m256i base = _mm256_set1_epi32(static_cast<int32_t>(lo));
    const __m256i low = _mm256_add_epi32(base, lane);
    const __m256i carry =
        _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(low, sign));
    c0[v] = low;
    c1[v] = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int32_t>(hi)), carry);
    c2[v] = _mm256_setzero_si256();
    c3[v] = _mm256_setzero_si256();
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int32_t>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int32_t>(k1));
    for (int v = 0; v < kVectors; ++v) {
      __m256i hi_a, lo_a, hi_b, lo_b;
      mul_hi_lo_avx2(c0[v], round_a, hi_a, lo_a);
      mul_hi_lo_avx2(c2[v], round_b, hi_b, lo_b);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1[v]), key0);
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3[v]), key1);
      c1[v] = lo_b;
      c3[v] = lo_a;
    }
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  for (int v = 0; v < kVectors; ++v) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[0][8 * v]), c0[v]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[1][8 * v]), c1[v]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[2][8 * v]), c2[v]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&w[3][8 * v]), c3[v]);
  }
}
#endif

template <int kIsa>
LPC_CPU_INLINE void philox_words_block(uint64_t seed, uint64_t offset, uint64_t j0,
                                       uint32_t (&w)[4][kBlockCounters]) {
#if LPC_X86
  if constexpr (kIsa == kAvx2) {
    philox_words_block_avx2(seed, offset, j0, w);
    return;
  }
#endif
  // AVX-512 has full-width 32x32 -> 64-bit multiplies, and the baseline has no vector multiply
  // worth hand-writing: the vectoriser's code of the plain loop is used there.
#pragma omp simd
  for (int c = 0; c < kBlockCounters; ++c) {
    const PhiloxWords r = philox_block(seed, offset, j0 + static_cast<uint64_t>(c));
    w[0][c] = r.x0;
    w[1][c] = r.x1;
    w[2][c] = r.x2;
    w[3][c] = r.x3;
  }
}

// kBlock normals in element order (element 4c + lane from counter c, word lane): the overloads
// normal_block<kIsa>(seed, offset, j0, float* or double* out) below.

// Box–Muller of one word pair with the branch-free float math above.
LPC_CPU_INLINE void box_muller_fast(uint32_t w1, uint32_t w2, float& n0, float& n1) {
  // box_muller_inputs' clamp as a bit select: GCC 12 will not if-convert the ternary here.
  const float u1 = uint32_to_uniform(w1);
  const int32_t low = -static_cast<int32_t>(u1 < kBoxMullerU1Min);
  const float a = as_float((as_int(u1) & ~low) | (as_int(kBoxMullerU1Min) & low));
  const float theta = kTwoPiF * uint32_to_uniform(w2);
  float sn, cs;
  const float r = sqrtf(-2.0f * log_positive(a));
  sincos_angle(theta, sn, cs);
  n0 = r * cs;
  n1 = r * sn;
}

template <int kIsa>
LPC_CPU_INLINE void normal_block(uint64_t seed, uint64_t offset, uint64_t j0, float* out) {
  alignas(64) uint32_t w[4][kBlockCounters];
  philox_words_block<kIsa>(seed, offset, j0, w);
  alignas(64) float n[4][kBlockCounters];
#pragma omp simd
  for (int c = 0; c < kBlockCounters; ++c) {
    box_muller_fast(w[0][c], w[1][c], n[0][c], n[1][c]);
    box_muller_fast(w[2][c], w[3][c], n[2][c], n[3][c]);
  }
  for (int c = 0; c < kBlockCounters; ++c) {
    for (int l = 0; l < 4; ++l) out[4 * c + l] = n[l][c];
  }
}

// Box–Muller in double from the bit-exact float32 inputs (the float64 compute path).
LPC_CPU_INLINE void box_muller_fast(uint32_t w1, uint32_t w2, double& n0, double& n1) {
  const float u1 = uint32_to_uniform(w1);
  const int32_t low = -static_cast<int32_t>(u1 < kBoxMullerU1Min);
  const float a = as_float((as_int(u1) & ~low) | (as_int(kBoxMullerU1Min) & low));
  const double theta = static_cast<double>(kTwoPiF * uint32_to_uniform(w2));
  double sn, cs;
  const double r = sqrt(-2.0 * log_positive(static_cast<double>(a)));
  sincos_angle(theta, sn, cs);
  n0 = r * cs;
  n1 = r * sn;
}

template <int kIsa>
LPC_CPU_INLINE void normal_block(uint64_t seed, uint64_t offset, uint64_t j0, double* out) {
  alignas(64) uint32_t w[4][kBlockCounters];
  philox_words_block<kIsa>(seed, offset, j0, w);
  alignas(64) double n[4][kBlockCounters];
#pragma omp simd
  for (int c = 0; c < kBlockCounters; ++c) {
    box_muller_fast(w[0][c], w[1][c], n[0][c], n[1][c]);
    box_muller_fast(w[2][c], w[3][c], n[2][c], n[3][c]);
  }
  for (int c = 0; c < kBlockCounters; ++c) {
    for (int l = 0; l < 4; ++l) out[4 * c + l] = n[l][c];
  }
}

// ---------------------------------------------------------------------------------------------
// Storage <-> compute conversions.

template <typename T, typename S>
LPC_CPU_INLINE T load(S x) {
  return static_cast<T>(x);
}

template <typename S, typename T>
LPC_CPU_INLINE S store(T x) {
  return static_cast<S>(x);
}

// ---------------------------------------------------------------------------------------------
// Kernel arguments (raw pointers to contiguous buffers; hyper-parameters in double).

struct StepArgs {
  c10::ScalarType dtype;
  int64_t n;
  const void* z;
  const void* grad;
  const float* v;
  void* z_out;
  float* v_out;  // written only when preconditioning
  double step_size, beta, eps, temperature, bias_corr, weight_decay;
  bool precondition, prior_grad;  // prior_grad: weight_decay != 0
  bool noisy;                     // temperature != 0: the noise term exists
  uint64_t seed, offset;
};

struct BackwardArgs {
  c10::ScalarType dtype;
  int64_t n;
  const void* gz;
  const float* gv;  // may be null (zero cotangent)
  const void* z;
  const void* grad;
  const float* v;
  void* grad_z;
  void* grad_grad;
  double step_size, beta, eps, temperature, bias_corr, weight_decay;
  bool precondition, prior_grad;  // prior_grad: weight_decay != 0
  bool noisy;  // the noise enters the backward (preconditioned and temperature != 0)
  uint64_t seed, offset;
};

struct StreamArgs {
  int64_t n;
  void* out;  // float, double or int64
  c10::ScalarType dtype;
  uint64_t seed, offset;
};

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename S, typename T, bool kPre, bool kPrior>
LPC_CPU_INLINE void forward_block(const S* z, const S* g, const float* v, const T* noise, S* zo,
                                  float* vo, const StepCoeffs<T>& k) {
#pragma omp simd
  for (int i = 0; i < kBlock; ++i) {
    T zn;
    float vn;
    langevin_forward<T>(load<T>(z[i]), load<T>(g[i]), v[i], noise[i], k, kPre, kPrior, zn, vn);
    zo[i] = store<S>(zn);
    if (kPre) vo[i] = vn;
  }
}

template <int kIsa, typename S, typename T, bool kPre, bool kPrior>
LPC_CPU_INLINE void forward_range(const StepArgs& a, int64_t b0, int64_t b1) {
  const StepCoeffs<T> k =
      make_step_coeffs<T>(a.step_size, a.beta, a.eps, a.temperature, a.bias_corr, a.weight_decay);
  const S* z = static_cast<const S*>(a.z);
  const S* g = static_cast<const S*>(a.grad);
  S* zo = static_cast<S*>(a.z_out);
  alignas(64) T noise[kBlock];
  if (!a.noisy) std::fill(noise, noise + kBlock, T(0));
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * kBlock;
    if (a.noisy)
      normal_block<kIsa>(a.seed, a.offset, static_cast<uint64_t>(b) * kBlockCounters, noise);
    const int64_t len = std::min<int64_t>(kBlock, a.n - e0);
    if (len == kBlock) {
      forward_block<S, T, kPre, kPrior>(z + e0, g + e0, a.v + e0, noise, zo + e0,
                                        kPre ? a.v_out + e0 : nullptr, k);
    } else {
      // The last block runs the same loop on zero-padded copies.
      S zb[kBlock] = {}, gb[kBlock] = {}, zob[kBlock];
      float vb[kBlock] = {}, vob[kBlock];
      std::copy(z + e0, z + e0 + len, zb);
      std::copy(g + e0, g + e0 + len, gb);
      std::copy(a.v + e0, a.v + e0 + len, vb);
      forward_block<S, T, kPre, kPrior>(zb, gb, vb, noise, zob, vob, k);
      std::copy(zob, zob + len, zo + e0);
      if (kPre) std::copy(vob, vob + len, a.v_out + e0);
    }
  }
}

template <int kIsa, typename S, typename T>
LPC_CPU_INLINE void forward_flags(const StepArgs& a, int64_t b0, int64_t b1) {
  if (a.precondition) {
    if (a.prior_grad) {
      forward_range<kIsa, S, T, true, true>(a, b0, b1);
    } else {
      forward_range<kIsa, S, T, true, false>(a, b0, b1);
    }
  } else {
    if (a.prior_grad) {
      forward_range<kIsa, S, T, false, true>(a, b0, b1);
    } else {
      forward_range<kIsa, S, T, false, false>(a, b0, b1);
    }
  }
}

template <int kIsa>
LPC_CPU_INLINE void forward_any(const StepArgs& a, int64_t b0, int64_t b1) {
  switch (a.dtype) {
    case at::kFloat:
      forward_flags<kIsa, float, float>(a, b0, b1);
      break;
    case at::kDouble:
      forward_flags<kIsa, double, double>(a, b0, b1);
      break;
    case at::kHalf:
      forward_flags<kIsa, c10::Half, float>(a, b0, b1);
      break;
    case at::kBFloat16:
      forward_flags<kIsa, c10::BFloat16, float>(a, b0, b1);
      break;
    default:
      break;  // rejected by the argument checks
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename S, typename T, bool kPre, bool kPrior, bool kHasGv>
LPC_CPU_INLINE void backward_block(const S* gz, const float* gv, const S* z, const S* g,
                                   const float* v, const T* noise, S* gzo, S* ggo,
                                   const StepCoeffs<T>& k) {
#pragma omp simd
  for (int i = 0; i < kBlock; ++i) {
    T rz, rg;
    const T gvi = kHasGv ? static_cast<T>(gv[i]) : T(0);
    langevin_backward<T>(load<T>(gz[i]), gvi, load<T>(z[i]), load<T>(g[i]), v[i], noise[i], k, kPre,
                         kPrior, rz, rg);
    gzo[i] = store<S>(rz);
    ggo[i] = store<S>(rg);
  }
}

template <int kIsa, typename S, typename T, bool kPre, bool kPrior, bool kHasGv>
LPC_CPU_INLINE void backward_range(const BackwardArgs& a, int64_t b0, int64_t b1) {
  const StepCoeffs<T> k =
      make_step_coeffs<T>(a.step_size, a.beta, a.eps, a.temperature, a.bias_corr, a.weight_decay);
  const S* gz = static_cast<const S*>(a.gz);
  const S* z = static_cast<const S*>(a.z);
  const S* g = static_cast<const S*>(a.grad);
  S* gzo = static_cast<S*>(a.grad_z);
  S* ggo = static_cast<S*>(a.grad_grad);
  alignas(64) T noise[kBlock];
  if (!a.noisy) std::fill(noise, noise + kBlock, T(0));
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * kBlock;
    if (a.noisy)
      normal_block<kIsa>(a.seed, a.offset, static_cast<uint64_t>(b) * kBlockCounters, noise);
    const int64_t len = std::min<int64_t>(kBlock, a.n - e0);
    if (len == kBlock) {
      backward_block<S, T, kPre, kPrior, kHasGv>(gz + e0, kHasGv ? a.gv + e0 : nullptr, z + e0,
                                                 g + e0, a.v + e0, noise, gzo + e0, ggo + e0, k);
    } else {
      S gzb[kBlock] = {}, zb[kBlock] = {}, gb[kBlock] = {}, gzob[kBlock], ggob[kBlock];
      float gvb[kBlock] = {}, vb[kBlock] = {};
      std::copy(gz + e0, gz + e0 + len, gzb);
      std::copy(z + e0, z + e0 + len, zb);
      std::copy(g + e0, g + e0 + len, gb);
      std::copy(a.v + e0, a.v + e0 + len, vb);
      if (kHasGv) std::copy(a.gv + e0, a.gv + e0 + len, gvb);
      backward_block<S, T, kPre, kPrior, kHasGv>(gzb, gvb, zb, gb, vb, noise, gzob, ggob, k);
      std::copy(gzob, gzob + len, gzo + e0);
      std::copy(ggob, ggob + len, ggo + e0);
    }
  }
}

template <int kIsa, typename S, typename T, bool kPre, bool kPrior>
LPC_CPU_INLINE void backward_gv(const BackwardArgs& a, int64_t b0, int64_t b1) {
  if (a.gv != nullptr) {
    backward_range<kIsa, S, T, kPre, kPrior, true>(a, b0, b1);
  } else {
    backward_range<kIsa, S, T, kPre, kPrior, false>(a, b0, b1);
  }
}

template <int kIsa, typename S, typename T>
LPC_CPU_INLINE void backward_flags(const BackwardArgs& a, int64_t b0, int64_t b1) {
  if (a.precondition) {
    if (a.prior_grad) {
      backward_gv<kIsa, S, T, true, true>(a, b0, b1);
    } else {
      backward_gv<kIsa, S, T, true, false>(a, b0, b1);
    }
  } else {
    // Without preconditioning the backward is linear in gz alone (no noise, no v).
    if (a.prior_grad) {
      backward_range<kIsa, S, T, false, true, false>(a, b0, b1);
    } else {
      backward_range<kIsa, S, T, false, false, false>(a, b0, b1);
    }
  }
}

template <int kIsa>
LPC_CPU_INLINE void backward_any(const BackwardArgs& a, int64_t b0, int64_t b1) {
  switch (a.dtype) {
    case at::kFloat:
      backward_flags<kIsa, float, float>(a, b0, b1);
      break;
    case at::kDouble:
      backward_flags<kIsa, double, double>(a, b0, b1);
      break;
    case at::kHalf:
      backward_flags<kIsa, c10::Half, float>(a, b0, b1);
      break;
    case at::kBFloat16:
      backward_flags<kIsa, c10::BFloat16, float>(a, b0, b1);
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Raw streams.

template <int kIsa>
LPC_CPU_INLINE void stream_any(const StreamArgs& a, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * kBlock;
    const int64_t len = std::min<int64_t>(kBlock, a.n - e0);
    const uint64_t j0 = static_cast<uint64_t>(b) * kBlockCounters;
    if (a.dtype == at::kLong) {
      alignas(64) uint32_t w[4][kBlockCounters];
      philox_words_block<kIsa>(a.seed, a.offset, j0, w);
      alignas(64) int64_t buf[kBlock];
      for (int c = 0; c < kBlockCounters; ++c) {
        for (int l = 0; l < 4; ++l) buf[4 * c + l] = w[l][c];
      }
      std::copy(buf, buf + len, static_cast<int64_t*>(a.out) + e0);
    } else if (a.dtype == at::kFloat) {
      alignas(64) float buf[kBlock];
      normal_block<kIsa>(a.seed, a.offset, j0, buf);
      std::copy(buf, buf + len, static_cast<float*>(a.out) + e0);
    } else {
      alignas(64) double buf[kBlock];
      normal_block<kIsa>(a.seed, a.offset, j0, buf);
      std::copy(buf, buf + len, static_cast<double*>(a.out) + e0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Instruction-set variants and run-time selection.

#if LPC_X86
LPC_TARGET_AVX512 void forward_avx512(const StepArgs& a, int64_t b0, int64_t b1) {
  forward_any<kAvx512>(a, b0, b1);
}
LPC_TARGET_AVX2 void forward_avx2(const StepArgs& a, int64_t b0, int64_t b1) {
  forward_any<kAvx2>(a, b0, b1);
}
LPC_TARGET_AVX512 void backward_avx512(const BackwardArgs& a, int64_t b0, int64_t b1) {
  backward_any<kAvx512>(a, b0, b1);
}
LPC_TARGET_AVX2 void backward_avx2(const BackwardArgs& a, int64_t b0, int64_t b1) {
  backward_any<kAvx2>(a, b0, b1);
}
LPC_TARGET_AVX512 void stream_avx512(const StreamArgs& a, int64_t b0, int64_t b1) {
  stream_any<kAvx512>(a, b0, b1);
}
LPC_TARGET_AVX2 void stream_avx2(const StreamArgs& a, int64_t b0, int64_t b1) {
  stream_any<kAvx2>(a, b0, b1);
}
#endif
LPC_FLATTEN void forward_baseline(const StepArgs& a, int64_t b0, int64_t b1) {
  forward_any<kBaseline>(a, b0, b1);
}
LPC_FLATTEN void backward_baseline(const BackwardArgs& a, int64_t b0, int64_t b1) {
  backward_any<kBaseline>(a, b0, b1);
}
LPC_FLATTEN void stream_baseline(const StreamArgs& a, int64_t b0, int64_t b1) {
  stream_any<kBaseline>(a, b0, b1);
}

const char* const kSimdNames[] = {"baseline", "avx2", "avx512"};

int detect_simd_level() {
#if LPC_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("f16c")) {
    return kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c")) {
    return kAvx2;
  }
#endif
  return kBaseline;
}

std::atomic<int>& active_level() {
  static std::atomic<int> level{detect_simd_level()};
  return level;
}

template <typename Args>
using RangeFn = void (*)(const Args&, int64_t, int64_t);

template <typename Args>
void run_blocks(const Args& a, RangeFn<Args> avx512, RangeFn<Args> avx2, RangeFn<Args> base) {
  const int64_t nblocks = (a.n + kBlock - 1) / kBlock;
  if (nblocks == 0) return;
  RangeFn<Args> fn = base;
  const int level = active_level().load();
  if (level == kAvx512 && avx512 != nullptr) fn = avx512;
  if (level == kAvx2 && avx2 != nullptr) fn = avx2;
  at::parallel_for(0, nblocks, kGrainBlocks, [&](int64_t b0, int64_t b1) { fn(a, b0, b1); });
}

#if LPC_X86
#define LPC_VARIANTS(name) name##_avx512, name##_avx2, name##_baseline
#else
#define LPC_VARIANTS(name) nullptr, nullptr, name##_baseline
#endif

// ---------------------------------------------------------------------------------------------
// Argument checks and tensor plumbing.

bool is_supported_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_cpu(const at::Tensor& t, const char* name) {
  LPC_CHECK(t.device().is_cpu(), "lpc_fast CPU kernel: ", name, " must be a CPU tensor, got ",
            t.device());
}

void check_step_inputs(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& v) {
  check_cpu(z, "z");
  check_cpu(grad, "grad");
  check_cpu(v, "v");
  LPC_CHECK(is_supported_dtype(z.scalar_type()),
            "lpc_fast: z must be float16, bfloat16, float32 or float64, got ", z.scalar_type());
  LPC_CHECK(grad.scalar_type() == z.scalar_type(), "lpc_fast: grad must have z's dtype (",
            z.scalar_type(), "), got ", grad.scalar_type());
  LPC_CHECK(v.scalar_type() == at::kFloat, "lpc_fast: v must be float32, got ", v.scalar_type());
  LPC_CHECK(grad.sizes() == z.sizes(), "lpc_fast: grad must have z's shape ", z.sizes(), ", got ",
            grad.sizes());
  LPC_CHECK(v.sizes() == z.sizes(), "lpc_fast: v must have z's shape ", z.sizes(), ", got ",
            v.sizes());
}

double checked_bias_corr(double beta, int64_t step, bool bias_correction, bool precondition) {
  if (!precondition) return 1.0;
  const double c = bias_correction_factor(beta, step, bias_correction);
  LPC_CHECK(std::isfinite(c),
            "lpc_fast: bias correction 1 / (1 - beta^step) is undefined for beta=", beta,
            ", step=", step, " (use step >= 1 and beta < 1, or bias_correction=False)");
  return c;
}

uint64_t as_u64(int64_t x) { return static_cast<uint64_t>(x); }

// z and v updated in place; non-contiguous tensors go through contiguous copies.
void step_inplace_impl(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& v,
                       int64_t step, double step_size, double beta, double eps, double temperature,
                       bool bias_correction, bool precondition, double weight_decay, uint64_t seed,
                       uint64_t offset) {
  check_step_inputs(z, grad, v);
  const double c = checked_bias_corr(beta, step, bias_correction, precondition);
  if (z.numel() == 0) return;
  const at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor vc = v.contiguous();
  StepArgs a{z.scalar_type(),
             z.numel(),
             zc.const_data_ptr(),
             gc.const_data_ptr(),
             vc.const_data_ptr<float>(),
             zc.mutable_data_ptr(),
             vc.mutable_data_ptr<float>(),
             step_size,
             beta,
             eps,
             temperature,
             c,
             weight_decay,
             precondition,
             weight_decay != 0.0,
             temperature != 0.0,
             seed,
             offset};
  run_blocks(a, LPC_VARIANTS(forward));
  if (!zc.is_same(z)) z.copy_(zc);
  if (precondition && !vc.is_same(v)) v.copy_(vc);
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor step: every tensor's blocks in one at::parallel_for region. Tensor t draws its
// noise at offset + sum_{j<t} philox_offset_increment(n_j) (lpc_fast.rng.foreach_offsets), and a
// block's result depends only on its index within its tensor, so the result is bit-identical to
// one single-tensor call per tensor in that order.

// "z" -> "zs[3]": the name of an element of the op's list arguments.
std::string list_item(const char* name, size_t i) {
  return std::string(name) + "s[" + std::to_string(i) + "]";
}

void check_foreach_inputs(at::TensorList zs, at::TensorList grads, at::TensorList vs) {
  LPC_CHECK(grads.size() == zs.size(), "lpc_fast: grads must hold one tensor per tensor of zs (",
            zs.size(), "), got ", grads.size());
  LPC_CHECK(vs.size() == zs.size(), "lpc_fast: vs must hold one tensor per tensor of zs (",
            zs.size(), "), got ", vs.size());
  for (size_t i = 0; i < zs.size(); ++i) {
    const std::string z = list_item("z", i), g = list_item("grad", i), v = list_item("v", i);
    check_cpu(zs[i], z.c_str());
    check_cpu(grads[i], g.c_str());
    check_cpu(vs[i], v.c_str());
    LPC_CHECK(is_supported_dtype(zs[i].scalar_type()), "lpc_fast: ", z,
              " must be float16, bfloat16, float32 or float64, got ", zs[i].scalar_type());
    LPC_CHECK(grads[i].scalar_type() == zs[i].scalar_type(), "lpc_fast: ", g, " must have ", z,
              "'s dtype (", zs[i].scalar_type(), "), got ", grads[i].scalar_type());
    LPC_CHECK(vs[i].scalar_type() == at::kFloat, "lpc_fast: ", v, " must be float32, got ",
              vs[i].scalar_type());
    LPC_CHECK(grads[i].sizes() == zs[i].sizes(), "lpc_fast: ", g, " must have ", z, "'s shape ",
              zs[i].sizes(), ", got ", grads[i].sizes());
    LPC_CHECK(vs[i].sizes() == zs[i].sizes(), "lpc_fast: ", v, " must have ", z, "'s shape ",
              zs[i].sizes(), ", got ", vs[i].sizes());
  }
}

// Returns the counters consumed (the sum of the tensors' increments).
uint64_t step_foreach_impl(at::TensorList zs, at::TensorList grads, at::TensorList vs, int64_t step,
                           double step_size, double beta, double eps, double temperature,
                           bool bias_correction, bool precondition, double weight_decay,
                           uint64_t seed, uint64_t offset) {
  check_foreach_inputs(zs, grads, vs);
  const double c = checked_bias_corr(beta, step, bias_correction, precondition);
  const size_t count = zs.size();
  std::vector<at::Tensor> zc, vc, gc;
  std::vector<StepArgs> args;
  std::vector<size_t> index;         // tensor of args[k]
  std::vector<int64_t> first_block;  // first global block of args[k]; one extra entry at the end
  zc.reserve(count);
  vc.reserve(count);
  gc.reserve(count);
  args.reserve(count);
  index.reserve(count);
  first_block.reserve(count + 1);
  uint64_t consumed = 0;
  int64_t blocks = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t n = zs[i].numel();
    const uint64_t tensor_offset = offset + consumed;  // wraps modulo 2^64 like the counters
    consumed += philox_offset_increment(n);
    if (n == 0) continue;
    zc.push_back(zs[i].contiguous());
    gc.push_back(grads[i].contiguous());
    vc.push_back(vs[i].contiguous());
    args.push_back(StepArgs{zs[i].scalar_type(), n, zc.back().const_data_ptr(),
                            gc.back().const_data_ptr(), vc.back().const_data_ptr<float>(),
                            zc.back().mutable_data_ptr(), vc.back().mutable_data_ptr<float>(),
                            step_size, beta, eps, temperature, c, weight_decay, precondition,
                            weight_decay != 0.0, temperature != 0.0, seed, tensor_offset});
    index.push_back(i);
    first_block.push_back(blocks);
    blocks += (n + kBlock - 1) / kBlock;
  }
  first_block.push_back(blocks);
  if (blocks == 0) return consumed;
  RangeFn<StepArgs> fn = forward_baseline;
#if LPC_X86
  const int level = active_level().load();
  if (level == kAvx512) fn = forward_avx512;
  if (level == kAvx2) fn = forward_avx2;
#endif
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    // The tensor holding global block b0, then one call per tensor the range touches.
    size_t k =
        std::upper_bound(first_block.begin(), first_block.end(), b0) - first_block.begin() - 1;
    while (b0 < b1) {
      const int64_t end = std::min(b1, first_block[k + 1]);
      fn(args[k], b0 - first_block[k], end - first_block[k]);
      b0 = end;
      ++k;
    }
  });
  for (size_t k = 0; k < args.size(); ++k) {
    const size_t i = index[k];
    if (!zc[k].is_same(zs[i])) zs[i].copy_(zc[k]);
    if (precondition && !vc[k].is_same(vs[i])) vs[i].copy_(vc[k]);
  }
  return consumed;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Dispatcher kernels.

void langevin_step_(at::Tensor z, const at::Tensor& grad, at::Tensor v, int64_t step,
                    double step_size, double beta, double eps, double temperature,
                    bool bias_correction, bool precondition, double weight_decay, int64_t seed,
                    int64_t offset) {
  step_inplace_impl(z, grad, v, step, step_size, beta, eps, temperature, bias_correction,
                    precondition, weight_decay, as_u64(seed), as_u64(offset));
}

void langevin_step_state_(at::Tensor z, const at::Tensor& grad, at::Tensor v, at::Tensor state,
                          double step_size, double beta, double eps, double temperature,
                          bool bias_correction, bool precondition, double weight_decay) {
  check_cpu(state, "state");
  LPC_CHECK(state.scalar_type() == at::kLong, "lpc_fast: state must be int64, got ",
            state.scalar_type());
  LPC_CHECK(state.dim() == 1 && state.size(0) == 3,
            "lpc_fast: state must have shape (3,) holding [seed, offset, step], got ",
            state.sizes());
  // An empty z still counts as one step (offset += 0, step += 1), as on every backend: a captured
  // loop's step count must not depend on the batch being empty.
  check_step_inputs(z, grad, v);
  auto s = state.accessor<int64_t, 1>();
  const uint64_t seed = as_u64(s[0]);
  const uint64_t offset = as_u64(s[1]);
  const int64_t step = s[2];
  if (z.numel() > 0) {
    step_inplace_impl(z, grad, v, step, step_size, beta, eps, temperature, bias_correction,
                      precondition, weight_decay, seed, offset);
  }
  s[1] = static_cast<int64_t>(offset + philox_offset_increment(z.numel()));
  s[2] = step + 1;
}

void langevin_step_foreach_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                            int64_t step, double step_size, double beta, double eps,
                            double temperature, bool bias_correction, bool precondition,
                            double weight_decay, int64_t seed, int64_t offset) {
  step_foreach_impl(zs, grads, vs, step, step_size, beta, eps, temperature, bias_correction,
                    precondition, weight_decay, as_u64(seed), as_u64(offset));
}

void langevin_step_foreach_state_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                                  at::Tensor state, double step_size, double beta, double eps,
                                  double temperature, bool bias_correction, bool precondition,
                                  double weight_decay) {
  check_cpu(state, "state");
  LPC_CHECK(state.scalar_type() == at::kLong, "lpc_fast: state must be int64, got ",
            state.scalar_type());
  LPC_CHECK(state.dim() == 1 && state.size(0) == 3,
            "lpc_fast: state must have shape (3,) holding [seed, offset, step], got ",
            state.sizes());
  auto s = state.accessor<int64_t, 1>();
  const uint64_t offset = as_u64(s[1]);
  const int64_t step = s[2];
  // One call is one step, even for empty lists or tensors (offset += 0, step += 1).
  const uint64_t consumed =
      step_foreach_impl(zs, grads, vs, step, step_size, beta, eps, temperature, bias_correction,
                        precondition, weight_decay, as_u64(s[0]), offset);
  s[1] = static_cast<int64_t>(offset + consumed);
  s[2] = step + 1;
}

std::tuple<at::Tensor, at::Tensor> langevin_fwd(const at::Tensor& z, const at::Tensor& grad,
                                                const at::Tensor& v, int64_t step, double step_size,
                                                double beta, double eps, double temperature,
                                                bool bias_correction, bool precondition,
                                                double weight_decay, int64_t seed, int64_t offset) {
  check_step_inputs(z, grad, v);
  const double c = checked_bias_corr(beta, step, bias_correction, precondition);
  at::Tensor z_new = at::empty(z.sizes(), z.options());
  at::Tensor v_new =
      precondition ? at::empty(v.sizes(), v.options()) : v.clone(at::MemoryFormat::Contiguous);
  if (z.numel() == 0) return {z_new, v_new};
  const at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor vc = v.contiguous();
  StepArgs a{z.scalar_type(),
             z.numel(),
             zc.const_data_ptr(),
             gc.const_data_ptr(),
             vc.const_data_ptr<float>(),
             z_new.mutable_data_ptr(),
             v_new.mutable_data_ptr<float>(),
             step_size,
             beta,
             eps,
             temperature,
             c,
             weight_decay,
             precondition,
             weight_decay != 0.0,
             temperature != 0.0,
             as_u64(seed),
             as_u64(offset)};
  run_blocks(a, LPC_VARIANTS(forward));
  return {z_new, v_new};
}

std::tuple<at::Tensor, at::Tensor> langevin_bwd(const at::Tensor& grad_z_new,
                                                const std::optional<at::Tensor>& grad_v_new,
                                                const at::Tensor& z, const at::Tensor& grad,
                                                const at::Tensor& v, int64_t step, double step_size,
                                                double beta, double eps, double temperature,
                                                bool bias_correction, bool precondition,
                                                double weight_decay, int64_t seed, int64_t offset) {
  check_step_inputs(z, grad, v);
  check_cpu(grad_z_new, "grad_z_new");
  LPC_CHECK(grad_z_new.sizes() == z.sizes(), "lpc_fast: grad_z_new must have z's shape ", z.sizes(),
            ", got ", grad_z_new.sizes());
  LPC_CHECK(grad_z_new.is_floating_point(), "lpc_fast: grad_z_new must be floating point");
  const bool has_gv = grad_v_new.has_value() && grad_v_new->defined();
  if (has_gv) {
    check_cpu(*grad_v_new, "grad_v_new");
    LPC_CHECK(grad_v_new->sizes() == z.sizes(), "lpc_fast: grad_v_new must have z's shape ",
              z.sizes(), ", got ", grad_v_new->sizes());
    LPC_CHECK(grad_v_new->is_floating_point(), "lpc_fast: grad_v_new must be floating point");
  }
  const double c = checked_bias_corr(beta, step, bias_correction, precondition);
  at::Tensor grad_z = at::empty(z.sizes(), z.options());
  at::Tensor grad_grad = at::empty(z.sizes(), z.options());
  if (z.numel() == 0) return {grad_z, grad_grad};
  const at::Tensor gzc = grad_z_new.to(z.scalar_type()).contiguous();
  at::Tensor gvc;
  if (has_gv && precondition) gvc = grad_v_new->to(at::kFloat).contiguous();
  const at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor vc = v.contiguous();
  BackwardArgs a{z.scalar_type(),
                 z.numel(),
                 gzc.const_data_ptr(),
                 gvc.defined() ? gvc.const_data_ptr<float>() : nullptr,
                 zc.const_data_ptr(),
                 gc.const_data_ptr(),
                 vc.const_data_ptr<float>(),
                 grad_z.mutable_data_ptr(),
                 grad_grad.mutable_data_ptr(),
                 step_size,
                 beta,
                 eps,
                 temperature,
                 c,
                 weight_decay,
                 precondition,
                 weight_decay != 0.0,
                 precondition && temperature != 0.0,
                 as_u64(seed),
                 as_u64(offset)};
  run_blocks(a, LPC_VARIANTS(backward));
  return {grad_z, grad_grad};
}

namespace {
void fill_stream(const at::Tensor& out, uint64_t seed, uint64_t offset) {
  if (out.numel() == 0) return;
  at::Tensor oc = out.contiguous();
  StreamArgs a{oc.numel(), oc.mutable_data_ptr(), oc.scalar_type(), seed, offset};
  run_blocks(a, LPC_VARIANTS(stream));
  if (!oc.is_same(out)) out.copy_(oc);
}
}  // namespace

void philox_normal_(at::Tensor out, int64_t seed, int64_t offset) {
  check_cpu(out, "out");
  LPC_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
            "lpc_fast: philox_normal_ needs a float32 or float64 tensor, got ", out.scalar_type());
  fill_stream(out, as_u64(seed), as_u64(offset));
}

void philox_uint32_(at::Tensor out, int64_t seed, int64_t offset) {
  check_cpu(out, "out");
  LPC_CHECK(out.scalar_type() == at::kLong, "lpc_fast: philox_uint32_ needs an int64 tensor, got ",
            out.scalar_type());
  fill_stream(out, as_u64(seed), as_u64(offset));
}

// ---------------------------------------------------------------------------------------------
// Introspection and testing hooks.

std::string simd_level() { return kSimdNames[active_level().load()]; }

std::string detected_simd_level() { return kSimdNames[detect_simd_level()]; }

// Restricts the kernels to a lower instruction set (to test every variant on one machine).
// Returns the previous level. Raises for unknown names or levels the CPU lacks.
std::string set_simd_level(const std::string& name) {
  int want = -1;
  for (int i = 0; i < 3; ++i) {
    if (name == kSimdNames[i]) want = i;
  }
  LPC_CHECK(want >= 0, "lpc_fast: unknown SIMD level '", name,
            "' (expected baseline, avx2 or avx512)");
  LPC_CHECK(want <= detect_simd_level(), "lpc_fast: this CPU does not support ", name,
            " (best: ", kSimdNames[detect_simd_level()], ")");
  return kSimdNames[active_level().exchange(want)];
}

}  // namespace cpu
}  // namespace lpc_fast
