// CUDA kernels of the fused Langevin step (LPC.md §2) and the Philox noise contract (§5).
//
// No torch headers on purpose: everything here takes raw pointers, so `nvcc -c` compile-checks
// this file on any machine with a CUDA toolkit. The maths is shared with the CPU kernels through
// langevin_math.h and philox.h; this file only adds memory access and launch logic.
//
// Work decomposition: a thread owns a "chunk" of kEpt consecutive elements, kEpt a multiple of 4
// so that chunks start on Philox counter boundaries (element i uses word i % 4 of counter
// offset + i / 4) and one Philox evaluation gives four normals. A chunk is 16 bytes of z for
// fp32 (4 elements) and fp16/bf16 (8 elements) and 32 bytes for fp64 (4 elements), so full chunks
// are read and written with 16-byte vector accesses when every pointer is 16-byte aligned; the
// last, partial chunk (and everything when some pointer is misaligned) uses scalar accesses.
// Indices are int64 throughout: tensors may exceed 2^31 elements. The noise depends only on the
// element index, never on the grid, so any launch configuration gives the same result.
//
// Precision: fp16/bf16/fp32 compute in fp32, fp64 in double; precise logf/sinf/cosf/sqrtf (this
// file must not be built with --use_fast_math, which would swap in approximate intrinsics).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../include/langevin_math.h"
#include "../include/philox.h"
#include "langevin_cuda.h"

namespace lpc_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Enough resident blocks to fill every SM; the grid-stride loop covers the rest.
constexpr int kBlocksPerSm = 8;

// ---------------------------------------------------------------------------------------------
// Storage <-> compute conversions. Explicit intrinsics because torch builds define
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__ (no implicit casts).
// ---------------------------------------------------------------------------------------------

template <typename S>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};

__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }

template <typename S>
__device__ __forceinline__ S from_compute(typename Compute<S>::type x);
template <>
__device__ __forceinline__ __half from_compute<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_compute<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_compute<double>(double x) {
  return x;
}

// Elements per thread for storage type S: 16 bytes of S, at least one Philox counter (4).
template <typename S>
struct Chunk {
  static constexpr int kEpt = (16 / sizeof(S)) < 4 ? 4 : (16 / sizeof(S));
  static_assert(kEpt % 4 == 0, "a chunk must cover whole Philox counters");
  static_assert((kEpt * sizeof(S)) % 16 == 0, "a chunk must be whole 16-byte vectors");
};

// ---------------------------------------------------------------------------------------------
// Chunk loads and stores: 16-byte vectors for a full chunk on aligned pointers, else scalars.
// ---------------------------------------------------------------------------------------------

template <typename S, int N>
struct alignas(16) Regs {
  S v[N];
};

template <typename S, int N>
__device__ __forceinline__ void load_chunk(const S* p, int64_t base, int count, bool vec,
                                           Regs<S, N>& r) {
  static_assert((N * sizeof(S)) % 16 == 0, "vector access needs whole 16-byte words");
  if (vec && count == N) {
    const uint4* src = reinterpret_cast<const uint4*>(p + base);
    uint4* dst = reinterpret_cast<uint4*>(r.v);
#pragma unroll
    for (int w = 0; w < static_cast<int>(N * sizeof(S) / 16); ++w) dst[w] = src[w];
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      // Lanes past the end get a harmless zero; their results are never stored.
      r.v[e] = e < count ? p[base + e] : from_compute<S>(0);
    }
  }
}

template <typename S, int N>
__device__ __forceinline__ void store_chunk(S* p, int64_t base, int count, bool vec,
                                            const Regs<S, N>& r) {
  if (vec && count == N) {
    uint4* dst = reinterpret_cast<uint4*>(p + base);
    const uint4* src = reinterpret_cast<const uint4*>(r.v);
#pragma unroll
    for (int w = 0; w < static_cast<int>(N * sizeof(S) / 16); ++w) dst[w] = src[w];
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      if (e < count) p[base + e] = r.v[e];
    }
  }
}

// The kEpt normals of a chunk starting at element `base` (a multiple of 4): counters
// base / 4 .. base / 4 + kEpt / 4 - 1 of the call.
template <int N>
__device__ __forceinline__ void chunk_normals(uint64_t seed, uint64_t offset, int64_t base,
                                              float (&out)[N]) {
#pragma unroll
  for (int g = 0; g < N / 4; ++g) {
    philox_normal4_f32(seed, offset, static_cast<uint64_t>(base / 4 + g), &out[4 * g]);
  }
}

template <int N>
__device__ __forceinline__ void chunk_normals(uint64_t seed, uint64_t offset, int64_t base,
                                              double (&out)[N]) {
#pragma unroll
  for (int g = 0; g < N / 4; ++g) {
    philox_normal4_f64(seed, offset, static_cast<uint64_t>(base / 4 + g), &out[4 * g]);
  }
}

// At temperature 0 the noise term is sqrt(0) * noise = 0 for any finite noise (|noise| < 6), so
// deterministic predictive coding skips Philox entirely; the result is unchanged.
template <typename C, int N>
__device__ __forceinline__ void chunk_noise(bool needed, uint64_t seed, uint64_t offset,
                                            int64_t base, C (&out)[N]) {
  if (needed) {
    chunk_normals(seed, offset, base, out);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = C(0);
  }
}

// Grid-stride iteration over chunks with 64-bit indices.
struct ChunkRange {
  int64_t first;
  int64_t stride;
};

__device__ __forceinline__ ChunkRange chunk_range() {
  return ChunkRange{static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                    static_cast<int64_t>(gridDim.x) * blockDim.x};
}

__device__ __forceinline__ int chunk_count(int64_t base, int64_t n, int ept) {
  const int64_t left = n - base;
  return left < ept ? static_cast<int>(left) : ept;
}

// Per-call scalars of a step. With `state` non-null the kernel takes seed, offset and step from
// device memory (capturable mode) and derives the bias correction itself.
struct StepArgs {
  double step_size, beta, eps, temperature, weight_decay;
  bool bias_correction, precondition;
  int64_t step;
  uint64_t seed, offset;
  const int64_t* state;  // [seed, offset, step] or null
};

template <typename C>
__device__ __forceinline__ StepCoeffs<C> resolve(const StepArgs& a, uint64_t& seed,
                                                 uint64_t& offset) {
  int64_t step = a.step;
  seed = a.seed;
  offset = a.offset;
  if (a.state != nullptr) {
    // Every thread reads the same three words; only the advance kernel writes them, and it runs
    // after this one on the stream.
    seed = static_cast<uint64_t>(a.state[0]);
    offset = static_cast<uint64_t>(a.state[1]);
    step = a.state[2];
  }
  const double c = a.precondition ? bias_correction_factor(a.beta, step, a.bias_correction) : 1.0;
  return make_step_coeffs<C>(a.step_size, a.beta, a.eps, a.temperature, c, a.weight_decay);
}

// The forward update of the `count` elements of one sub-chunk starting at `base`: the body that
// step_kernel and the multi-tensor kernel share. z_out / v_out may alias z / v.
template <typename S, bool kPrecondition, bool kPriorGrad, typename C>
__device__ __forceinline__ void step_chunk(const S* z, const S* __restrict__ grad, const float* v,
                                           S* z_out, float* v_out, int64_t base, int count,
                                           bool vec, bool noise_needed, uint64_t seed,
                                           uint64_t offset, const StepCoeffs<C>& k) {
  constexpr int N = Chunk<S>::kEpt;
  Regs<S, N> zr, gr;
  Regs<float, N> vr;
  load_chunk(z, base, count, vec, zr);
  load_chunk(grad, base, count, vec, gr);
  if (kPrecondition) load_chunk(v, base, count, vec, vr);
  C noise[N];
  chunk_noise(noise_needed, seed, offset, base, noise);
  Regs<S, N> zo;
  Regs<float, N> vo;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    C z_new;
    float v_new;
    const float v_in = kPrecondition ? vr.v[e] : 0.0f;
    langevin_forward<C>(to_compute(zr.v[e]), to_compute(gr.v[e]), v_in, noise[e], k, kPrecondition,
                        kPriorGrad, z_new, v_new);
    zo.v[e] = from_compute<S>(z_new);
    vo.v[e] = v_new;
  }
  store_chunk(z_out, base, count, vec, zo);
  if (kPrecondition) store_chunk(v_out, base, count, vec, vo);
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// Forward step; z_out / v_out may alias z / v (the in-place op): each element is read and then
// written by the same thread, so no __restrict__ on these pointers.
template <typename S, bool kPrecondition, bool kPriorGrad>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const S* z, const S* __restrict__ grad, const float* v, S* z_out, float* v_out,
                int64_t n, StepArgs args, bool vec) {
  using C = typename Compute<S>::type;
  constexpr int N = Chunk<S>::kEpt;
  uint64_t seed, offset;
  const StepCoeffs<C> k = resolve<C>(args, seed, offset);
  const int64_t chunks = (n + N - 1) / N;
  const ChunkRange range = chunk_range();
  for (int64_t c = range.first; c < chunks; c += range.stride) {
    const int64_t base = c * N;
    const int count = chunk_count(base, n, N);
    // Without preconditioning v' = v: nothing to write (out of place, the caller copies v).
    step_chunk<S, kPrecondition, kPriorGrad>(z, grad, v, z_out, v_out, base, count, vec,
                                             args.temperature != 0.0, seed, offset, k);
  }
}

template <typename S, bool kPrecondition, bool kPriorGrad>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const S* __restrict__ grad_z_new, const float* __restrict__ grad_v_new,
                    const S* __restrict__ z, const S* __restrict__ grad,
                    const float* __restrict__ v, S* __restrict__ grad_z, S* __restrict__ grad_grad,
                    int64_t n, StepArgs args, bool vec) {
  using C = typename Compute<S>::type;
  constexpr int N = Chunk<S>::kEpt;
  uint64_t seed, offset;
  const StepCoeffs<C> k = resolve<C>(args, seed, offset);
  const int64_t chunks = (n + N - 1) / N;
  const ChunkRange range = chunk_range();
  for (int64_t c = range.first; c < chunks; c += range.stride) {
    const int64_t base = c * N;
    const int count = chunk_count(base, n, N);
    Regs<S, N> gzr, zr, gr;
    Regs<float, N> gvr, vr;
    load_chunk(grad_z_new, base, count, vec, gzr);
    load_chunk(z, base, count, vec, zr);
    load_chunk(grad, base, count, vec, gr);
    C noise[N];
    if (kPrecondition) {
      load_chunk(v, base, count, vec, vr);
      if (grad_v_new != nullptr) {
        load_chunk(grad_v_new, base, count, vec, gvr);
      } else {
#pragma unroll
        for (int e = 0; e < N; ++e) gvr.v[e] = 0.0f;
      }
      chunk_noise(args.temperature != 0.0, seed, offset, base, noise);
    } else {
      // The ULA backward is linear in the cotangent: no state and no noise involved.
#pragma unroll
      for (int e = 0; e < N; ++e) {
        vr.v[e] = 0.0f;
        gvr.v[e] = 0.0f;
        noise[e] = C(0);
      }
    }
    Regs<S, N> gzo, ggo;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      C gz_out, gg_out;
      langevin_backward<C>(to_compute(gzr.v[e]), static_cast<C>(gvr.v[e]), to_compute(zr.v[e]),
                           to_compute(gr.v[e]), vr.v[e], noise[e], k, kPrecondition, kPriorGrad,
                           gz_out, gg_out);
      gzo.v[e] = from_compute<S>(gz_out);
      ggo.v[e] = from_compute<S>(gg_out);
    }
    store_chunk(grad_z, base, count, vec, gzo);
    store_chunk(grad_grad, base, count, vec, ggo);
  }
}

// Advances the capturable state after a step: a separate launch because the step kernel's blocks
// all read the state, and no block could write it without racing the others.
__global__ void advance_state_kernel(int64_t* state, uint64_t increment) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    // Unsigned arithmetic: the offset is a uint64 counter that wraps modulo 2^64.
    state[1] = static_cast<int64_t>(static_cast<uint64_t>(state[1]) + increment);
    state[2] = state[2] + 1;
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    normal_kernel(S* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, bool vec) {
  constexpr int N = Chunk<S>::kEpt;
  const int64_t chunks = (n + N - 1) / N;
  const ChunkRange range = chunk_range();
  for (int64_t c = range.first; c < chunks; c += range.stride) {
    const int64_t base = c * N;
    const int count = chunk_count(base, n, N);
    S noise[N];
    chunk_normals(seed, offset, base, noise);
    Regs<S, N> r;
#pragma unroll
    for (int e = 0; e < N; ++e) r.v[e] = noise[e];
    store_chunk(out, base, count, vec, r);
  }
}

__global__ void __launch_bounds__(kThreads)
    uint32_kernel(int64_t* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, bool vec) {
  constexpr int N = 4;  // one counter: 32 bytes of int64 output
  const int64_t chunks = (n + N - 1) / N;
  const ChunkRange range = chunk_range();
  for (int64_t c = range.first; c < chunks; c += range.stride) {
    const int64_t base = c * N;
    const int count = chunk_count(base, n, N);
    const PhiloxWords w = philox_block(seed, offset, static_cast<uint64_t>(c));
    Regs<int64_t, N> r;
    r.v[0] = static_cast<int64_t>(w.x0);
    r.v[1] = static_cast<int64_t>(w.x1);
    r.v[2] = static_cast<int64_t>(w.x2);
    r.v[3] = static_cast<int64_t>(w.x3);
    store_chunk(out, base, count, vec, r);
  }
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor step: a table of tensors and of (tensor, chunk) blocks passed by value.
// ---------------------------------------------------------------------------------------------

struct ForeachTable {
  void* z[kForeachMaxTensors];
  const void* grad[kForeachMaxTensors];
  float* v[kForeachMaxTensors];
  int64_t n[kForeachMaxTensors];
  uint64_t rel_offset[kForeachMaxTensors];  // counters before this tensor in the whole list
  int kind[kForeachMaxTensors];
  bool vec[kForeachMaxTensors];
  unsigned char block_tensor[kForeachMaxBlocks];
  int block_chunk[kForeachMaxBlocks];  // chunk of kForeachChunk elements within the tensor
};
static_assert(sizeof(ForeachTable) + sizeof(StepArgs) < 4000, "kernel arguments must fit 4 KB");
static_assert(kForeachChunk % 8 == 0, "a chunk must start on a whole sub-chunk of every dtype");

// One chunk of one tensor: step_kernel's loop body over the sub-chunks of the chunk, with element
// indices relative to the tensor (so the noise counters are the single-tensor kernel's).
template <typename S, bool kPrecondition, bool kPriorGrad>
__device__ __forceinline__ void foreach_chunk(const ForeachTable& t, int row,
                                              const StepArgs& args) {
  using C = typename Compute<S>::type;
  constexpr int N = Chunk<S>::kEpt;
  uint64_t seed, offset;
  const StepCoeffs<C> k = resolve<C>(args, seed, offset);
  offset += t.rel_offset[row];  // wraps modulo 2^64 like the counters
  S* z = static_cast<S*>(t.z[row]);
  const S* grad = static_cast<const S*>(t.grad[row]);
  float* v = t.v[row];
  const int64_t n = t.n[row];
  const bool vec = t.vec[row];
  const int64_t start = static_cast<int64_t>(t.block_chunk[blockIdx.x]) * kForeachChunk;
  const int64_t stop = start + kForeachChunk < n ? start + kForeachChunk : n;
  for (int64_t base = start + static_cast<int64_t>(threadIdx.x) * N; base < stop;
       base += static_cast<int64_t>(blockDim.x) * N) {
    const int count = chunk_count(base, n, N);
    step_chunk<S, kPrecondition, kPriorGrad>(z, grad, v, z, v, base, count, vec,
                                             args.temperature != 0.0, seed, offset, k);
  }
}

template <bool kPrecondition, bool kPriorGrad>
__global__ void __launch_bounds__(kThreads)
    foreach_kernel(const ForeachTable table, StepArgs args) {
  const int row = table.block_tensor[blockIdx.x];
  switch (static_cast<ScalarKind>(table.kind[row])) {
    case ScalarKind::kFloat16:
      foreach_chunk<__half, kPrecondition, kPriorGrad>(table, row, args);
      break;
    case ScalarKind::kBFloat16:
      foreach_chunk<__nv_bfloat16, kPrecondition, kPriorGrad>(table, row, args);
      break;
    case ScalarKind::kFloat32:
      foreach_chunk<float, kPrecondition, kPriorGrad>(table, row, args);
      break;
    case ScalarKind::kFloat64:
      foreach_chunk<double, kPrecondition, kPriorGrad>(table, row, args);
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------------------------

bool aligned16(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Multiprocessor count of the current device, queried once per device (launches are hot).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  const bool cached = device >= 0 && device < kMaxDevices;
  int sms = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (sms > 0) return sms;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  if (cached) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Blocks of `Kernel` (kThreads threads each) that one multiprocessor holds at once, as its
// registers allow (48 registers: 5 of 8 for the float32 step), queried once per kernel and device;
// kBlocksPerSm where the query fails (then a launch error, if any, is reported by the launch).
template <auto Kernel>
int resident_blocks() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return kBlocksPerSm;
  const bool cached = device >= 0 && device < kMaxDevices;
  int blocks = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (blocks > 0) return blocks;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, kThreads, 0) != cudaSuccess ||
      blocks <= 0) {
    (void)cudaGetLastError();  // not the launch's error
    return kBlocksPerSm;
  }
  if (cached) cache[device].store(blocks, std::memory_order_relaxed);
  return blocks;
}

// Grid of `Kernel` for `chunks` work items: at most one full wave of resident blocks. A larger
// grid would run its last blocks as a second, partly filled wave (the grid-stride loops give every
// block the same share of chunks); the loops make any grid size correct.
template <auto Kernel>
unsigned int grid_for(int64_t chunks) {
  int sms = sm_count();
  if (sms <= 0) sms = 132;  // a failed query only costs occupancy; the launch reports real errors
  const int64_t cap = static_cast<int64_t>(sms) * resident_blocks<Kernel>();
  const int64_t need = (chunks + kThreads - 1) / kThreads;
  const int64_t blocks = need < cap ? need : cap;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

template <typename S, bool kPrecondition, bool kPriorGrad>
cudaError_t launch_step_typed(const void* z, const void* grad, const float* v, void* z_out,
                              float* v_out, int64_t n, const StepArgs& args, cudaStream_t stream) {
  const bool vec =
      aligned16(z) && aligned16(grad) && aligned16(v) && aligned16(z_out) && aligned16(v_out);
  const int64_t chunks = (n + Chunk<S>::kEpt - 1) / Chunk<S>::kEpt;
  step_kernel<S, kPrecondition, kPriorGrad>
      <<<grid_for<step_kernel<S, kPrecondition, kPriorGrad>>(chunks), kThreads, 0, stream>>>(
          static_cast<const S*>(z), static_cast<const S*>(grad), v, static_cast<S*>(z_out), v_out,
          n, args, vec);
  return cudaGetLastError();
}

template <typename S, bool kPrecondition, bool kPriorGrad>
cudaError_t launch_backward_typed(const void* gz, const float* gv, const void* z, const void* grad,
                                  const float* v, void* grad_z, void* grad_grad, int64_t n,
                                  const StepArgs& args, cudaStream_t stream) {
  const bool vec = aligned16(gz) && aligned16(gv) && aligned16(z) && aligned16(grad) &&
                   aligned16(v) && aligned16(grad_z) && aligned16(grad_grad);
  const int64_t chunks = (n + Chunk<S>::kEpt - 1) / Chunk<S>::kEpt;
  backward_kernel<S, kPrecondition, kPriorGrad>
      <<<grid_for<backward_kernel<S, kPrecondition, kPriorGrad>>(chunks), kThreads, 0, stream>>>(
          static_cast<const S*>(gz), gv, static_cast<const S*>(z), static_cast<const S*>(grad), v,
          static_cast<S*>(grad_z), static_cast<S*>(grad_grad), n, args, vec);
  return cudaGetLastError();
}

// Instantiates F<S, precondition, prior_grad = (weight_decay != 0)> for the runtime flags (both are
// hot-loop branches that would otherwise be evaluated per element).
template <typename S, template <typename, bool, bool> class F, typename... A>
cudaError_t dispatch_flags(bool precondition, bool prior_grad, A&&... a) {
  if (precondition) {
    return prior_grad ? F<S, true, true>::run(a...) : F<S, true, false>::run(a...);
  }
  return prior_grad ? F<S, false, true>::run(a...) : F<S, false, false>::run(a...);
}

template <template <typename, bool, bool> class F, typename... A>
cudaError_t dispatch(ScalarKind kind, bool precondition, bool prior_grad, A&&... a) {
  switch (kind) {
    case ScalarKind::kFloat16:
      return dispatch_flags<__half, F>(precondition, prior_grad, a...);
    case ScalarKind::kBFloat16:
      return dispatch_flags<__nv_bfloat16, F>(precondition, prior_grad, a...);
    case ScalarKind::kFloat32:
      return dispatch_flags<float, F>(precondition, prior_grad, a...);
    case ScalarKind::kFloat64:
      return dispatch_flags<double, F>(precondition, prior_grad, a...);
  }
  return cudaErrorInvalidValue;
}

template <typename S, bool P, bool G>
struct StepLauncher {
  template <typename... A>
  static cudaError_t run(A&&... a) {
    return launch_step_typed<S, P, G>(a...);
  }
};

template <typename S, bool P, bool G>
struct BackwardLauncher {
  template <typename... A>
  static cudaError_t run(A&&... a) {
    return launch_backward_typed<S, P, G>(a...);
  }
};

StepArgs make_args(const StepParams& p, int64_t step, uint64_t seed, uint64_t offset,
                   const int64_t* state) {
  StepArgs a;
  a.step_size = p.step_size;
  a.beta = p.beta;
  a.eps = p.eps;
  a.temperature = p.temperature;
  a.bias_correction = p.bias_correction;
  a.precondition = p.precondition;
  a.weight_decay = p.weight_decay;
  a.step = step;
  a.seed = seed;
  a.offset = offset;
  a.state = state;
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public launchers (langevin_cuda.h)
// ---------------------------------------------------------------------------------------------

cudaError_t launch_forward(const void* z, const void* grad, const float* v, void* z_out,
                           float* v_out, int64_t n, ScalarKind kind, const StepParams& params,
                           int64_t step, uint64_t seed, uint64_t offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const StepArgs args = make_args(params, step, seed, offset, nullptr);
  return dispatch<StepLauncher>(kind, params.precondition, params.weight_decay != 0.0, z, grad, v,
                                z_out, v_out, n, args, stream);
}

cudaError_t launch_step_inplace(void* z, const void* grad, float* v, int64_t n, ScalarKind kind,
                                const StepParams& params, int64_t step, uint64_t seed,
                                uint64_t offset, cudaStream_t stream) {
  return launch_forward(z, grad, v, z, v, n, kind, params, step, seed, offset, stream);
}

cudaError_t launch_step_state_inplace(void* z, const void* grad, float* v, int64_t* state,
                                      int64_t n, ScalarKind kind, const StepParams& params,
                                      cudaStream_t stream) {
  if (n <= 0) {
    // An empty step still consumes a step (ceil(0 / 4) = 0 counters), matching eager loops.
    advance_state_kernel<<<1, 1, 0, stream>>>(state, 0);
    return cudaGetLastError();
  }
  const StepArgs args = make_args(params, 0, 0, 0, state);
  const void* zc = z;
  const cudaError_t err =
      dispatch<StepLauncher>(kind, params.precondition, params.weight_decay != 0.0, zc, grad,
                             static_cast<const float*>(v), z, v, n, args, stream);
  if (err != cudaSuccess) return err;
  advance_state_kernel<<<1, 1, 0, stream>>>(state, philox_offset_increment(n));
  return cudaGetLastError();
}

namespace {
cudaError_t launch_foreach_table(const ForeachTable& table, int blocks, const StepParams& p,
                                 const StepArgs& args, cudaStream_t stream) {
  if (p.precondition) {
    if (p.weight_decay != 0.0) {
      foreach_kernel<true, true><<<blocks, kThreads, 0, stream>>>(table, args);
    } else {
      foreach_kernel<true, false><<<blocks, kThreads, 0, stream>>>(table, args);
    }
  } else if (p.weight_decay != 0.0) {
    foreach_kernel<false, true><<<blocks, kThreads, 0, stream>>>(table, args);
  } else {
    foreach_kernel<false, false><<<blocks, kThreads, 0, stream>>>(table, args);
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_step_foreach(const ForeachTensor* tensors, int count, const StepParams& params,
                                int64_t step, uint64_t seed, uint64_t offset, int64_t* state,
                                cudaStream_t stream) {
  const StepArgs args = make_args(params, step, seed, offset, state);
  ForeachTable table;
  int rows = 0, blocks = 0;
  uint64_t rel = 0;
  for (int i = 0; i < count; ++i) {
    const ForeachTensor& t = tensors[i];
    const uint64_t tensor_rel = rel;
    rel += philox_offset_increment(t.n);
    if (t.n <= 0) continue;
    const int64_t chunks = (t.n + kForeachChunk - 1) / kForeachChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (c == 0 || rows == 0) {
        // A new row for this tensor (again after a launch emptied the table).
        table.z[rows] = t.z;
        table.grad[rows] = t.grad;
        table.v[rows] = t.v;
        table.n[rows] = t.n;
        table.rel_offset[rows] = tensor_rel;
        table.kind[rows] = static_cast<int>(t.kind);
        table.vec[rows] = aligned16(t.z) && aligned16(t.grad) && aligned16(t.v);
        ++rows;
      }
      table.block_tensor[blocks] = static_cast<unsigned char>(rows - 1);
      table.block_chunk[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last = i == count - 1 && c == chunks - 1;
      if (blocks == kForeachMaxBlocks || (rows == kForeachMaxTensors && c == chunks - 1) || last) {
        const cudaError_t err = launch_foreach_table(table, blocks, params, args, stream);
        if (err != cudaSuccess) return err;
        blocks = 0;
        // The row of a tensor with chunks left stays as row 0 of the next table.
        if (c != chunks - 1) {
          table.z[0] = table.z[rows - 1];
          table.grad[0] = table.grad[rows - 1];
          table.v[0] = table.v[rows - 1];
          table.n[0] = table.n[rows - 1];
          table.rel_offset[0] = table.rel_offset[rows - 1];
          table.kind[0] = table.kind[rows - 1];
          table.vec[0] = table.vec[rows - 1];
          rows = 1;
        } else {
          rows = 0;
        }
      }
    }
  }
  if (blocks > 0) {  // the last tensors were empty: flush what is left
    const cudaError_t err = launch_foreach_table(table, blocks, params, args, stream);
    if (err != cudaSuccess) return err;
  }
  if (state != nullptr) {
    advance_state_kernel<<<1, 1, 0, stream>>>(state, rel);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t launch_backward(const void* grad_z_new, const float* grad_v_new, const void* z,
                            const void* grad, const float* v, void* grad_z, void* grad_grad,
                            int64_t n, ScalarKind kind, const StepParams& params, int64_t step,
                            uint64_t seed, uint64_t offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const StepArgs args = make_args(params, step, seed, offset, nullptr);
  return dispatch<BackwardLauncher>(kind, params.precondition, params.weight_decay != 0.0,
                                    grad_z_new, grad_v_new, z, grad, v, grad_z, grad_grad, n, args,
                                    stream);
}

cudaError_t launch_philox_normal(void* out, int64_t n, ScalarKind kind, uint64_t seed,
                                 uint64_t offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const bool vec = aligned16(out);
  if (kind == ScalarKind::kFloat32) {
    normal_kernel<float><<<grid_for<normal_kernel<float>>((n + 3) / 4), kThreads, 0, stream>>>(
        static_cast<float*>(out), n, seed, offset, vec);
  } else if (kind == ScalarKind::kFloat64) {
    normal_kernel<double><<<grid_for<normal_kernel<double>>((n + 3) / 4), kThreads, 0, stream>>>(
        static_cast<double*>(out), n, seed, offset, vec);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_philox_uint32(int64_t* out, int64_t n, uint64_t seed, uint64_t offset,
                                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  uint32_kernel<<<grid_for<uint32_kernel>((n + 3) / 4), kThreads, 0, stream>>>(out, n, seed, offset,
                                                                               aligned16(out));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lpc_fast
