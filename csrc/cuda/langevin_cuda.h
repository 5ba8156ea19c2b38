// Host-side launchers of the CUDA Langevin kernels.
//
// Deliberately free of torch headers: the kernels take raw device pointers, element counts and a
// stream, so `nvcc -c langevin_cuda.cu` compile-checks them on any machine with a CUDA toolkit.
// The torch glue (argument checks, dtype mapping, the current stream) is langevin_cuda_ops.cpp.
//
// Element i of every kernel is the i-th element of contiguous buffers; its noise is word i % 4 of
// Philox4x32-10 at counter offset + i / 4 (the RNG contract), so results never depend on the launch
// configuration. Every launcher returns the launch's cudaError_t (cudaSuccess when n == 0).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lpc_fast {
namespace cuda {

// Storage type of z / grad (and their outputs). v and v_new are always float32.
enum class ScalarKind : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// The scalar hyper-parameters of one step, as given to the op (double precision on the host;
// kernels round them to their compute type).
struct StepParams {
  double step_size = 0.0;
  double beta = 0.99;
  double eps = 1e-3;
  double temperature = 1.0;
  bool bias_correction = true;
  bool precondition = true;
  double weight_decay = 0.0;  // lambda in s = grad + lambda z; the term is skipped at 0
};

// z <- z', v <- v' in place, with step, seed and offset given by the host.
cudaError_t launch_step_inplace(void* z, const void* grad, float* v, int64_t n, ScalarKind kind,
                                const StepParams& params, int64_t step, uint64_t seed,
                                uint64_t offset, cudaStream_t stream);

// Capturable variant: step, seed and offset are read on the device from
// state = [seed, offset, step] (int64, same bits as the uint64 values). After the update a second
// kernel on the same stream advances offset by ceil(n / 4) and step by 1, so a CUDA graph of this
// call replays with fresh noise and the right bias correction.
cudaError_t launch_step_state_inplace(void* z, const void* grad, float* v, int64_t* state,
                                      int64_t n, ScalarKind kind, const StepParams& params,
                                      cudaStream_t stream);

// One tensor of a multi-tensor step: z and v are updated in place.
struct ForeachTensor {
  void* z;
  const void* grad;
  float* v;
  int64_t n;
  ScalarKind kind;
};

// The step on every tensor of the list, apex multi-tensor-apply style: each launch carries a
// table of up to kForeachMaxTensors tensors and kForeachMaxBlocks blocks (a chunk of
// kForeachChunk elements of one tensor per block) in its kernel-argument struct; longer lists and
// larger tensors take several launches, each filling the table anew. Tensor i draws its noise at
// offset + sum_{j<i} ceil(n_j / 4), so the result is bit-identical to one launch_step_inplace per
// tensor in order. With `state` non-null, seed, offset and step are read from
// state = [seed, offset, step] on the device and a final one-thread kernel advances offset by the
// sum of the increments and step by 1 (also for an empty list). Returns the first error.
constexpr int kForeachMaxTensors = 24;
constexpr int kForeachMaxBlocks = 320;
constexpr int64_t kForeachChunk = 4096;
cudaError_t launch_step_foreach(const ForeachTensor* tensors, int count, const StepParams& params,
                                int64_t step, uint64_t seed, uint64_t offset, int64_t* state,
                                cudaStream_t stream);

// Functional forward: (z_out, v_out) = step(z, grad, v). Outputs may alias the inputs. Without
// preconditioning v' = v and v_out is not written: the caller copies v if it needs a new tensor.
cudaError_t launch_forward(const void* z, const void* grad, const float* v, void* z_out,
                           float* v_out, int64_t n, ScalarKind kind, const StepParams& params,
                           int64_t step, uint64_t seed, uint64_t offset, cudaStream_t stream);

// Vector-Jacobian product of the forward map w.r.t. (z, grad). grad_v_new may be null (a zero
// cotangent). grad_z_new, z, grad, grad_z and grad_grad share `kind`; grad_v_new and v are float32.
cudaError_t launch_backward(const void* grad_z_new, const float* grad_v_new, const void* z,
                            const void* grad, const float* v, void* grad_z, void* grad_grad,
                            int64_t n, ScalarKind kind, const StepParams& params, int64_t step,
                            uint64_t seed, uint64_t offset, cudaStream_t stream);

// Standard normals of the RNG contract; kind must be kFloat32 or kFloat64.
cudaError_t launch_philox_normal(void* out, int64_t n, ScalarKind kind, uint64_t seed,
                                 uint64_t offset, cudaStream_t stream);

// The raw uint32 stream, widened to int64 (values in [0, 2^32)).
cudaError_t launch_philox_uint32(int64_t* out, int64_t n, uint64_t seed, uint64_t offset,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace lpc_fast
