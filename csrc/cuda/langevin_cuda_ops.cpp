// CUDA kernels of the lpc_fast dispatcher ops (schemas in csrc/bindings.cpp, docs/ARCHITECTURE.md).
//
// Torch glue only: argument checks, dtype mapping, contiguous copies and the current stream. The
// kernels live in langevin_cuda.cu behind the torch-free launchers of langevin_cuda.h. Argument
// rules and messages mirror the CPU kernels so that both devices reject the same calls.
#ifdef LPC_FAST_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../include/check_message.h"
#include "../include/langevin_math.h"
#include "langevin_cuda.h"

namespace lpc_fast {
namespace cuda {
namespace {

void check_cuda_tensor(const at::Tensor& t, const char* name, const at::Tensor& z) {
  LPC_CHECK(t.is_cuda(), "lpc_fast CUDA kernel: ", name, " must be a CUDA tensor, got ",
            t.device());
  LPC_CHECK(t.device() == z.device(), "lpc_fast CUDA kernel: ", name, " is on ", t.device(),
            " but z is on ", z.device());
}

ScalarKind scalar_kind(c10::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kDouble:
      return ScalarKind::kFloat64;
    default:
      break;
  }
  LPC_CHECK(false, "lpc_fast: z must be float16, bfloat16, float32 or float64, got ", t);
}

void check_step_inputs(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& v) {
  check_cuda_tensor(z, "z", z);
  check_cuda_tensor(grad, "grad", z);
  check_cuda_tensor(v, "v", z);
  (void)scalar_kind(z.scalar_type());
  LPC_CHECK(grad.scalar_type() == z.scalar_type(), "lpc_fast: grad must have z's dtype (",
            z.scalar_type(), "), got ", grad.scalar_type());
  LPC_CHECK(v.scalar_type() == at::kFloat, "lpc_fast: v must be float32, got ", v.scalar_type());
  LPC_CHECK(grad.sizes() == z.sizes(), "lpc_fast: grad must have z's shape ", z.sizes(), ", got ",
            grad.sizes());
  LPC_CHECK(v.sizes() == z.sizes(), "lpc_fast: v must have z's shape ", z.sizes(), ", got ",
            v.sizes());
}

// The kernels compute the bias correction on the device; this host check gives the same error
// as the CPU kernels for a step where it is undefined (the capturable variant cannot check: its
// step lives on the device).
void check_bias_corr(double beta, int64_t step, bool bias_correction, bool precondition) {
  if (!precondition) return;
  const double c = bias_correction_factor(beta, step, bias_correction);
  LPC_CHECK(std::isfinite(c),
            "lpc_fast: bias correction 1 / (1 - beta^step) is undefined for beta=", beta,
            ", step=", step, " (use step >= 1 and beta < 1, or bias_correction=False)");
}

StepParams make_params(double step_size, double beta, double eps, double temperature,
                       bool bias_correction, bool precondition, double weight_decay) {
  StepParams p;
  p.step_size = step_size;
  p.beta = beta;
  p.eps = eps;
  p.temperature = temperature;
  p.bias_correction = bias_correction;
  p.precondition = precondition;
  p.weight_decay = weight_decay;
  return p;
}

void check_launch(cudaError_t err, const char* what) {
  LPC_CHECK(err == cudaSuccess, "lpc_fast: CUDA launch of ", what,
            " failed: ", cudaGetErrorString(err));
}

uint64_t as_u64(int64_t x) { return static_cast<uint64_t>(x); }

// ---------------------------------------------------------------------------------------------
// Dispatcher kernels.

void langevin_step_(at::Tensor z, const at::Tensor& grad, at::Tensor v, int64_t step,
                    double step_size, double beta, double eps, double temperature,
                    bool bias_correction, bool precondition, double weight_decay, int64_t seed,
                    int64_t offset) {
  check_step_inputs(z, grad, v);
  check_bias_corr(beta, step, bias_correction, precondition);
  if (z.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  at::Tensor vc = v.contiguous();
  check_launch(
      launch_step_inplace(zc.mutable_data_ptr(), gc.const_data_ptr(), vc.mutable_data_ptr<float>(),
                          z.numel(), scalar_kind(z.scalar_type()),
                          make_params(step_size, beta, eps, temperature, bias_correction,
                                      precondition, weight_decay),
                          step, as_u64(seed), as_u64(offset), c10::cuda::getCurrentCUDAStream()),
      "langevin_step_");
  if (!zc.is_same(z)) z.copy_(zc);
  if (precondition && !vc.is_same(v)) v.copy_(vc);
}

void langevin_step_state_(at::Tensor z, const at::Tensor& grad, at::Tensor v, at::Tensor state,
                          double step_size, double beta, double eps, double temperature,
                          bool bias_correction, bool precondition, double weight_decay) {
  check_step_inputs(z, grad, v);
  check_cuda_tensor(state, "state", z);
  LPC_CHECK(state.scalar_type() == at::kLong, "lpc_fast: state must be int64, got ",
            state.scalar_type());
  LPC_CHECK(state.dim() == 1 && state.size(0) == 3,
            "lpc_fast: state must have shape (3,) holding [seed, offset, step], got ",
            state.sizes());
  // The kernels write the state in place: a copy would lose the advance.
  LPC_CHECK(state.is_contiguous(), "lpc_fast: state must be contiguous");
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  at::Tensor vc = v.contiguous();
  // An empty z still advances the state (offset += 0, step += 1), like the CPU kernel.
  check_launch(launch_step_state_inplace(zc.numel() ? zc.mutable_data_ptr() : nullptr,
                                         gc.numel() ? gc.const_data_ptr() : nullptr,
                                         vc.numel() ? vc.mutable_data_ptr<float>() : nullptr,
                                         state.mutable_data_ptr<int64_t>(), z.numel(),
                                         scalar_kind(z.scalar_type()),
                                         make_params(step_size, beta, eps, temperature,
                                                     bias_correction, precondition, weight_decay),
                                         c10::cuda::getCurrentCUDAStream()),
               "langevin_step_state_");
  if (!zc.is_same(z)) z.copy_(zc);
  if (precondition && !vc.is_same(v)) v.copy_(vc);
}

std::tuple<at::Tensor, at::Tensor> langevin_fwd(const at::Tensor& z, const at::Tensor& grad,
                                                const at::Tensor& v, int64_t step, double step_size,
                                                double beta, double eps, double temperature,
                                                bool bias_correction, bool precondition,
                                                double weight_decay, int64_t seed, int64_t offset) {
  check_step_inputs(z, grad, v);
  check_bias_corr(beta, step, bias_correction, precondition);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor z_new = at::empty(z.sizes(), z.options());
  // Without preconditioning v' = v and the kernel leaves v_new alone.
  at::Tensor v_new =
      precondition ? at::empty(v.sizes(), v.options()) : v.clone(at::MemoryFormat::Contiguous);
  if (z.numel() == 0) return {z_new, v_new};
  const at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor vc = v.contiguous();
  check_launch(
      launch_forward(zc.const_data_ptr(), gc.const_data_ptr(), vc.const_data_ptr<float>(),
                     z_new.mutable_data_ptr(), v_new.mutable_data_ptr<float>(), z.numel(),
                     scalar_kind(z.scalar_type()),
                     make_params(step_size, beta, eps, temperature, bias_correction, precondition,
                                 weight_decay),
                     step, as_u64(seed), as_u64(offset), c10::cuda::getCurrentCUDAStream()),
      "langevin_fwd");
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
  check_cuda_tensor(grad_z_new, "grad_z_new", z);
  LPC_CHECK(grad_z_new.sizes() == z.sizes(), "lpc_fast: grad_z_new must have z's shape ", z.sizes(),
            ", got ", grad_z_new.sizes());
  LPC_CHECK(grad_z_new.is_floating_point(), "lpc_fast: grad_z_new must be floating point");
  const bool has_gv = grad_v_new.has_value() && grad_v_new->defined();
  if (has_gv) {
    check_cuda_tensor(*grad_v_new, "grad_v_new", z);
    LPC_CHECK(grad_v_new->sizes() == z.sizes(), "lpc_fast: grad_v_new must have z's shape ",
              z.sizes(), ", got ", grad_v_new->sizes());
    LPC_CHECK(grad_v_new->is_floating_point(), "lpc_fast: grad_v_new must be floating point");
  }
  check_bias_corr(beta, step, bias_correction, precondition);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor grad_z = at::empty(z.sizes(), z.options());
  at::Tensor grad_grad = at::empty(z.sizes(), z.options());
  if (z.numel() == 0) return {grad_z, grad_grad};
  const at::Tensor gzc = grad_z_new.to(z.scalar_type()).contiguous();
  // v' does not depend on s without preconditioning: its cotangent is unused then.
  at::Tensor gvc;
  if (has_gv && precondition) gvc = grad_v_new->to(at::kFloat).contiguous();
  const at::Tensor zc = z.contiguous();
  const at::Tensor gc = grad.contiguous();
  const at::Tensor vc = v.contiguous();
  check_launch(
      launch_backward(gzc.const_data_ptr(), gvc.defined() ? gvc.const_data_ptr<float>() : nullptr,
                      zc.const_data_ptr(), gc.const_data_ptr(), vc.const_data_ptr<float>(),
                      grad_z.mutable_data_ptr(), grad_grad.mutable_data_ptr(), z.numel(),
                      scalar_kind(z.scalar_type()),
                      make_params(step_size, beta, eps, temperature, bias_correction, precondition,
                                  weight_decay),
                      step, as_u64(seed), as_u64(offset), c10::cuda::getCurrentCUDAStream()),
      "langevin_bwd");
  return {grad_z, grad_grad};
}

// Multi-tensor step: contiguous copies where needed, one table launch (launch_step_foreach).
void step_foreach(at::TensorList zs, at::TensorList grads, at::TensorList vs, int64_t step,
                  const StepParams& params, uint64_t seed, uint64_t offset, at::Tensor* state) {
  LPC_CHECK(grads.size() == zs.size(), "lpc_fast: grads must hold one tensor per tensor of zs (",
            zs.size(), "), got ", grads.size());
  LPC_CHECK(vs.size() == zs.size(), "lpc_fast: vs must hold one tensor per tensor of zs (",
            zs.size(), "), got ", vs.size());
  const at::Tensor& first = state != nullptr ? *state : zs[0];
  for (size_t i = 0; i < zs.size(); ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    check_cuda_tensor(zs[i], ("zs" + idx).c_str(), first);
    check_cuda_tensor(grads[i], ("grads" + idx).c_str(), first);
    check_cuda_tensor(vs[i], ("vs" + idx).c_str(), first);
    (void)scalar_kind(zs[i].scalar_type());
    LPC_CHECK(grads[i].scalar_type() == zs[i].scalar_type(), "lpc_fast: grads", idx,
              " must have zs", idx, "'s dtype (", zs[i].scalar_type(), "), got ",
              grads[i].scalar_type());
    LPC_CHECK(vs[i].scalar_type() == at::kFloat, "lpc_fast: vs", idx, " must be float32, got ",
              vs[i].scalar_type());
    LPC_CHECK(grads[i].sizes() == zs[i].sizes() && vs[i].sizes() == zs[i].sizes(),
              "lpc_fast: grads", idx, " and vs", idx, " must have zs", idx, "'s shape ",
              zs[i].sizes());
  }
  if (state == nullptr) {
    check_bias_corr(params.beta, step, params.bias_correction, params.precondition);
  }
  const c10::cuda::CUDAGuard guard(first.device());
  std::vector<at::Tensor> zc, gc, vc;
  std::vector<ForeachTensor> table;
  zc.reserve(zs.size());
  gc.reserve(zs.size());
  vc.reserve(zs.size());
  table.reserve(zs.size());
  for (size_t i = 0; i < zs.size(); ++i) {
    zc.push_back(zs[i].contiguous());
    gc.push_back(grads[i].contiguous());
    vc.push_back(vs[i].contiguous());
    const bool empty = zs[i].numel() == 0;
    table.push_back(ForeachTensor{empty ? nullptr : zc.back().mutable_data_ptr(),
                                  empty ? nullptr : gc.back().const_data_ptr(),
                                  empty ? nullptr : vc.back().mutable_data_ptr<float>(),
                                  zs[i].numel(), scalar_kind(zs[i].scalar_type())});
  }
  check_launch(
      launch_step_foreach(table.data(), static_cast<int>(table.size()), params, step, seed, offset,
                          state != nullptr ? state->mutable_data_ptr<int64_t>() : nullptr,
                          c10::cuda::getCurrentCUDAStream()),
      "langevin_step_foreach_");
  for (size_t i = 0; i < zs.size(); ++i) {
    if (!zc[i].is_same(zs[i])) zs[i].copy_(zc[i]);
    if (params.precondition && !vc[i].is_same(vs[i])) vs[i].copy_(vc[i]);
  }
}

void langevin_step_foreach_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                            int64_t step, double step_size, double beta, double eps,
                            double temperature, bool bias_correction, bool precondition,
                            double weight_decay, int64_t seed, int64_t offset) {
  if (zs.empty() && grads.empty() && vs.empty()) return;
  step_foreach(
      zs, grads, vs, step,
      make_params(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay),
      as_u64(seed), as_u64(offset), nullptr);
}

void langevin_step_foreach_state_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                                  at::Tensor state, double step_size, double beta, double eps,
                                  double temperature, bool bias_correction, bool precondition,
                                  double weight_decay) {
  LPC_CHECK(state.is_cuda(), "lpc_fast CUDA kernel: state must be a CUDA tensor, got ",
            state.device());
  LPC_CHECK(state.scalar_type() == at::kLong, "lpc_fast: state must be int64, got ",
            state.scalar_type());
  LPC_CHECK(state.dim() == 1 && state.size(0) == 3,
            "lpc_fast: state must have shape (3,) holding [seed, offset, step], got ",
            state.sizes());
  LPC_CHECK(state.is_contiguous(), "lpc_fast: state must be contiguous");
  step_foreach(
      zs, grads, vs, 0,
      make_params(step_size, beta, eps, temperature, bias_correction, precondition, weight_decay),
      0, 0, &state);
}

void philox_normal_(at::Tensor out, int64_t seed, int64_t offset) {
  LPC_CHECK(out.is_cuda(), "lpc_fast CUDA kernel: out must be a CUDA tensor, got ", out.device());
  LPC_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
            "lpc_fast: philox_normal_ needs a float32 or float64 tensor, got ", out.scalar_type());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor oc = out.contiguous();
  check_launch(
      launch_philox_normal(oc.mutable_data_ptr(), oc.numel(), scalar_kind(oc.scalar_type()),
                           as_u64(seed), as_u64(offset), c10::cuda::getCurrentCUDAStream()),
      "philox_normal_");
  if (!oc.is_same(out)) out.copy_(oc);
}

void philox_uint32_(at::Tensor out, int64_t seed, int64_t offset) {
  LPC_CHECK(out.is_cuda(), "lpc_fast CUDA kernel: out must be a CUDA tensor, got ", out.device());
  LPC_CHECK(out.scalar_type() == at::kLong, "lpc_fast: philox_uint32_ needs an int64 tensor, got ",
            out.scalar_type());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor oc = out.contiguous();
  check_launch(launch_philox_uint32(oc.mutable_data_ptr<int64_t>(), oc.numel(), as_u64(seed),
                                    as_u64(offset), c10::cuda::getCurrentCUDAStream()),
               "philox_uint32_");
  if (!oc.is_same(out)) out.copy_(oc);
}

}  // namespace
}  // namespace cuda
}  // namespace lpc_fast

TORCH_LIBRARY_IMPL(lpc_fast, CUDA, m) {
  m.impl("langevin_step_", &lpc_fast::cuda::langevin_step_);
  m.impl("langevin_step_state_", &lpc_fast::cuda::langevin_step_state_);
  m.impl("langevin_fwd", &lpc_fast::cuda::langevin_fwd);
  m.impl("langevin_bwd", &lpc_fast::cuda::langevin_bwd);
  m.impl("langevin_step_foreach_", &lpc_fast::cuda::langevin_step_foreach_);
  m.impl("langevin_step_foreach_state_", &lpc_fast::cuda::langevin_step_foreach_state_);
  m.impl("philox_normal_", &lpc_fast::cuda::philox_normal_);
  m.impl("philox_uint32_", &lpc_fast::cuda::philox_uint32_);
}

#endif  // LPC_FAST_WITH_CUDA
