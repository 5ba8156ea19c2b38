// CUDA kernel of lpc_fast::log_likelihood_grad: one block per data point, the pixels of a row
// strided over its threads (the maths in csrc/include/likelihood_math.h), the row's sums reduced
// in double in shared memory.
#include <cuda_runtime.h>

#include <cstdint>

#include "../include/likelihood_math.h"
#include "likelihood_cuda.h"

namespace lpc_fast {
namespace cuda {
namespace {

constexpr int kLikThreads = 256;

template <typename T>
__global__ void log_likelihood_grad_kernel(const T* __restrict__ x, const T* __restrict__ out,
                                           T* __restrict__ log_prob, T* __restrict__ grad_out,
                                           T* __restrict__ grad_ls, const void* log_sigma,
                                           bool log_sigma_f64, double log_sigma_value, int64_t kind,
                                           bool sigmoid, int64_t num_levels, int64_t row_len) {
  double ls = log_sigma_value;
  if (log_sigma != nullptr) {
    ls = log_sigma_f64 ? static_cast<const double*>(log_sigma)[0]
                       : static_cast<double>(static_cast<const float*>(log_sigma)[0]);
  }
  const LikParams<T> p = make_lik_params<T>(kind, sigmoid, ls, num_levels);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * row_len;
  double value_sum = 0.0, ls_sum = 0.0;
  for (int64_t i = threadIdx.x; i < row_len; i += blockDim.x) {
    T value, d_out, d_ls;
    likelihood_element<T>(p, x[base + i], out[base + i], &value, &d_out, &d_ls);
    grad_out[base + i] = d_out;
    value_sum += static_cast<double>(value);
    ls_sum += static_cast<double>(d_ls);
  }
  __shared__ double s_value[kLikThreads];
  __shared__ double s_ls[kLikThreads];
  s_value[threadIdx.x] = value_sum;
  s_ls[threadIdx.x] = ls_sum;
  __syncthreads();
  for (int width = kLikThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) {
      s_value[threadIdx.x] += s_value[threadIdx.x + width];
      s_ls[threadIdx.x] += s_ls[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    log_prob[blockIdx.x] = static_cast<T>(s_value[0]);
    grad_ls[blockIdx.x] = static_cast<T>(s_ls[0]);
  }
}

}  // namespace

cudaError_t launch_log_likelihood_grad(const void* x, const void* out, void* log_prob,
                                       void* grad_out, void* grad_log_sigma, bool f64,
                                       const void* log_sigma, bool log_sigma_f64,
                                       double log_sigma_value, int64_t kind, bool sigmoid,
                                       int64_t num_levels, int64_t rows, int64_t row_len,
                                       cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (rows > 2147483647LL) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(rows));
  if (f64) {
    log_likelihood_grad_kernel<double><<<grid, kLikThreads, 0, stream>>>(
        static_cast<const double*>(x), static_cast<const double*>(out),
        static_cast<double*>(log_prob), static_cast<double*>(grad_out),
        static_cast<double*>(grad_log_sigma), log_sigma, log_sigma_f64, log_sigma_value, kind,
        sigmoid, num_levels, row_len);
  } else {
    log_likelihood_grad_kernel<float><<<grid, kLikThreads, 0, stream>>>(
        static_cast<const float*>(x), static_cast<const float*>(out), static_cast<float*>(log_prob),
        static_cast<float*>(grad_out), static_cast<float*>(grad_log_sigma), log_sigma,
        log_sigma_f64, log_sigma_value, kind, sigmoid, num_levels, row_len);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lpc_fast
