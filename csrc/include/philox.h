// The RNG contract of lpc_fast (LPC.md §5, lpc_fast/rng.py) for C++ host and CUDA device code.
//
// Element i of a call with (seed, offset) takes output word i % 4 of Philox4x32-10 evaluated at
// the 64-bit counter offset + i / 4 (split into two uint32 words, c2 = c3 = 0) under the key
// (seed mod 2^32, seed / 2^32). This is the layout of Triton's tl.randn4x, so every backend
// produces the same uint32 stream bit for bit. Uniforms use Triton's uint32 -> float map and
// normals Box–Muller on the word pairs (0, 1) and (2, 3).
//
// No torch headers and nothing from std:: that the device lacks, so CUDA kernels include this too.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LPC_HD __host__ __device__ __forceinline__
#else
#define LPC_HD inline
#endif

namespace lpc_fast {

// Random123's Philox4x32 constants (Weyl key increments and round multipliers).
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
// Each counter yields four words, hence four elements.
constexpr int kPhiloxLanes = 4;

// Triton's uint32 -> [0, 1) scale (the largest float with (2^31 - 1) * scale < 1).
constexpr float kUintToUniformScale = 4.6566127342e-10f;
// Lower clamp of the Box–Muller radius uniform: keeps log() finite (|normal| <= 5.68).
constexpr float kBoxMullerU1Min = 1.0e-7f;
// 2*pi rounded to float, as Triton's pair_uniform_to_normal uses it.
constexpr float kTwoPiF = 6.28318530717958647692f;

struct PhiloxWords {
  uint32_t x0, x1, x2, x3;
};

// One Philox round. The 32x32 -> 64-bit products are written as uint64 multiplies so that a
// vectorising compiler maps them to widening SIMD multiplies.
LPC_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                         uint32_t k1) {
  const uint64_t pa = static_cast<uint64_t>(c0) * kPhiloxRoundA;
  const uint64_t pb = static_cast<uint64_t>(c2) * kPhiloxRoundB;
  const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(pb);
  c3 = static_cast<uint32_t>(pa);
  c0 = n0;
  c2 = n2;
}

// Philox4x32-10 of the counter (c0, c1, c2, c3) under key (k0, k1). The rounds are spelled out
// (not a loop) so that the whole function is straight-line code inside SIMD loops.
LPC_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  philox_round(c0, c1, c2, c3, k0, k1);
  philox_round(c0, c1, c2, c3, k0 + 1u * kPhiloxKeyA, k1 + 1u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 2u * kPhiloxKeyA, k1 + 2u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 3u * kPhiloxKeyA, k1 + 3u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 4u * kPhiloxKeyA, k1 + 4u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 5u * kPhiloxKeyA, k1 + 5u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 6u * kPhiloxKeyA, k1 + 6u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 7u * kPhiloxKeyA, k1 + 7u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 8u * kPhiloxKeyA, k1 + 8u * kPhiloxKeyB);
  philox_round(c0, c1, c2, c3, k0 + 9u * kPhiloxKeyA, k1 + 9u * kPhiloxKeyB);
  return PhiloxWords{c0, c1, c2, c3};
}

// The two uint32 counter words of counter number j of a call: offset + j modulo 2^64, the low
// word's carry going into the high word (Triton's layout with 32-bit counter words).
LPC_HD void philox_counter_words(uint64_t offset, uint64_t j, uint32_t& c0, uint32_t& c1) {
  const uint64_t c = offset + j;  // unsigned arithmetic wraps modulo 2^64
  c0 = static_cast<uint32_t>(c);
  c1 = static_cast<uint32_t>(c >> 32);
}

// The four words of counter number j for (seed, offset): elements 4j .. 4j + 3 of the stream.
LPC_HD PhiloxWords philox_block(uint64_t seed, uint64_t offset, uint64_t j) {
  uint32_t c0, c1;
  philox_counter_words(offset, j, c0, c1);
  return philox4x32_10(c0, c1, 0u, 0u, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Triton's uint32 -> float uniform in [0, 1): reinterpret as int32, fold negatives with ~x
// (x ^ (x >> 31) is that fold without a branch), convert and scale. Bit-exact float32.
LPC_HD float uint32_to_uniform(uint32_t u) {
  const int32_t s = static_cast<int32_t>(u);
  const int32_t folded = s ^ (s >> 31);
  return static_cast<float>(folded) * kUintToUniformScale;
}

// The bit-exact float32 inputs of Box–Muller: the clamped radius uniform and the angle
// (a float32 product, as in Triton).
LPC_HD void box_muller_inputs(float u1, float u2, float& u1_clamped, float& theta) {
  u1_clamped = u1 > kBoxMullerU1Min ? u1 : kBoxMullerU1Min;
  theta = kTwoPiF * u2;
}

// Box–Muller in float: n0 = r cos(theta), n1 = r sin(theta), r = sqrt(-2 log u1).
LPC_HD void box_muller_f32(float u1, float u2, float& n0, float& n1) {
  float a, theta;
  box_muller_inputs(u1, u2, a, theta);
  const float r = sqrtf(-2.0f * logf(a));
  n0 = r * cosf(theta);
  n1 = r * sinf(theta);
}

// Box–Muller in double from the same float32 uniforms and angle (the float64 compute path and
// the value rng.philox_normal_reference evaluates).
LPC_HD void box_muller_f64(float u1, float u2, double& n0, double& n1) {
  float a, theta;
  box_muller_inputs(u1, u2, a, theta);
  const double r = sqrt(-2.0 * log(static_cast<double>(a)));
  n0 = r * cos(static_cast<double>(theta));
  n1 = r * sin(static_cast<double>(theta));
}

// The four normals of counter number j (elements 4j .. 4j + 3), float or double.
LPC_HD void philox_normal4_f32(uint64_t seed, uint64_t offset, uint64_t j, float out[4]) {
  const PhiloxWords w = philox_block(seed, offset, j);
  box_muller_f32(uint32_to_uniform(w.x0), uint32_to_uniform(w.x1), out[0], out[1]);
  box_muller_f32(uint32_to_uniform(w.x2), uint32_to_uniform(w.x3), out[2], out[3]);
}

LPC_HD void philox_normal4_f64(uint64_t seed, uint64_t offset, uint64_t j, double out[4]) {
  const PhiloxWords w = philox_block(seed, offset, j);
  box_muller_f64(uint32_to_uniform(w.x0), uint32_to_uniform(w.x1), out[0], out[1]);
  box_muller_f64(uint32_to_uniform(w.x2), uint32_to_uniform(w.x3), out[2], out[3]);
}

// Counters one call consumes: ceil(n / 4).
LPC_HD uint64_t philox_offset_increment(int64_t n) {
  return static_cast<uint64_t>((n + kPhiloxLanes - 1) / kPhiloxLanes);
}

}  // namespace lpc_fast
