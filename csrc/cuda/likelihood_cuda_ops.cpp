// CUDA glue of lpc_fast::log_likelihood_grad (schema in lpc_fast/_schemas.py): argument checks
// mirroring the CPU kernel (csrc/likelihood_cpu.cpp), contiguous inputs, the current stream.
#ifdef LPC_FAST_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../include/check_message.h"
#include "likelihood_cuda.h"

namespace lpc_fast {
namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_likelihood_grad(
    const at::Tensor& x, const at::Tensor& out, const std::optional<at::Tensor>& log_sigma,
    double log_sigma_value, int64_t kind, bool sigmoid, int64_t num_levels) {
  LPC_CHECK(out.is_cuda() && x.device() == out.device(),
            "lpc_fast::log_likelihood_grad (CUDA): x and out must be CUDA tensors on one device");
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
  LPC_CHECK(kind != 0 || num_levels >= 2,
            "lpc_fast::log_likelihood_grad: num_levels must be >= 2, got ", num_levels);
  const void* ls_ptr = nullptr;
  bool ls_f64 = false;
  at::Tensor ls;
  if (log_sigma.has_value()) {
    ls = *log_sigma;
    LPC_CHECK(ls.numel() == 1 && ls.device() == out.device() &&
                  (ls.scalar_type() == at::kFloat || ls.scalar_type() == at::kDouble),
              "lpc_fast::log_likelihood_grad: log_sigma must be a one-element float32 or float64 "
              "tensor on out's device");
    ls = ls.contiguous();
    ls_ptr = ls.const_data_ptr();
    ls_f64 = ls.scalar_type() == at::kDouble;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const auto xc = x.contiguous();
  const auto oc = out.contiguous();
  const int64_t rows = out.size(0);
  const int64_t row_len = rows == 0 ? 0 : out.numel() / rows;
  auto log_prob = at::empty({rows}, out.options());
  auto grad_out = at::empty(out.sizes(), out.options());
  auto grad_ls = at::empty({rows}, out.options());
  const cudaError_t err = launch_log_likelihood_grad(
      xc.const_data_ptr(), oc.const_data_ptr(), log_prob.mutable_data_ptr(),
      grad_out.mutable_data_ptr(), grad_ls.mutable_data_ptr(), out.scalar_type() == at::kDouble,
      ls_ptr, ls_f64, log_sigma_value, kind, sigmoid, num_levels, rows, row_len,
      c10::cuda::getCurrentCUDAStream());
  LPC_CHECK(err == cudaSuccess,
            "lpc_fast::log_likelihood_grad: CUDA launch failed: ", cudaGetErrorString(err));
  return {log_prob, grad_out, grad_ls};
}

}  // namespace cuda
}  // namespace lpc_fast

TORCH_LIBRARY_IMPL(lpc_fast, CUDA, m) {
  m.impl("log_likelihood_grad", &lpc_fast::cuda::log_likelihood_grad);
}

#endif  // LPC_FAST_WITH_CUDA
