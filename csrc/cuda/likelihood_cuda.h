// Host-side launcher of the CUDA kernel of lpc_fast::log_likelihood_grad (torch-free, like
// langevin_cuda.h, so that `nvcc -c likelihood_cuda.cu` compile-checks it anywhere).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lpc_fast {
namespace cuda {

// One block per row (data point) of `rows` x `row_len` contiguous elements of x and out (float32
// when f64 is false, else float64); writes log_prob[rows], grad_out[rows * row_len] and
// grad_log_sigma[rows] in the same dtype. log_sigma (nullable) is read on the device: float32 when
// log_sigma_f64 is false; when null, log_sigma_value is used. Returns the launch's error.
cudaError_t launch_log_likelihood_grad(const void* x, const void* out, void* log_prob,
                                       void* grad_out, void* grad_log_sigma, bool f64,
                                       const void* log_sigma, bool log_sigma_f64,
                                       double log_sigma_value, int64_t kind, bool sigmoid,
                                       int64_t num_levels, int64_t rows, int64_t row_len,
                                       cudaStream_t stream);

}  // namespace cuda
}  // namespace lpc_fast
