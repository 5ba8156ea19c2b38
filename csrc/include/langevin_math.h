// The per-element Langevin update of LPC.md §2 and its exact backward, for host and device.
//
// These are lpc_fast/reference.py's formulas, element by element, in a compute type T (float for
// float16 / bfloat16 / float32 tensors, double for float64). With the drive
// s = grad + weight_decay z (a Gaussian prior of precision weight_decay; weight_decay = 1 is the
// N(0, I) prior of LPC, and the term is skipped, not multiplied by 0, when weight_decay = 0):
//   preconditioned:  v' = beta v + (1 - beta) s^2,  q = sqrt(c v'),  p = 1 / (eps + q)
//   plain ULA:       p = 1, v' = v (state untouched)
//   z' = z - step_size p s + sqrt(2 step_size temperature p) noise
// where c = 1 / (1 - beta^step) with bias correction, else 1. beta = 1 without bias correction
// gives v' = v exactly: a frozen preconditioner.
//
// Backward (vector-Jacobian product w.r.t. z and grad; v is not differentiable):
//   dq/ds = c (1 - beta) s / q   (0 where q = 0: the subgradient at the kink)
//   dp/ds = -p^2 dq/ds
//   dz'/ds = -step_size (p + s dp/ds) + sqrt(2 step_size temperature) noise dp/ds / (2 sqrt(p))
//   dv'/ds = 2 (1 - beta) s
//   grad_s = gz' dz'/ds + gv' dv'/ds;  grad_grad = grad_s;  grad_z = gz' + weight_decay grad_s
//
// Kernels compute the scalar coefficients once per call with make_step_coeffs (in double, then
// rounded to T, as the reference does in Python floats) and call the per-element functions.
// Written branch-free where it matters so that CPU compilers vectorise the callers' loops.
#pragma once

#include <math.h>
#include <stdint.h>

#include "philox.h"

namespace lpc_fast {

// 1 / (1 - beta^step) with bias correction, else 1 (double, like the reference's Python float).
LPC_HD double bias_correction_factor(double beta, int64_t step, bool bias_correction) {
  return bias_correction ? 1.0 / (1.0 - pow(beta, static_cast<double>(step))) : 1.0;
}

// The loop-invariant coefficients of one step in the compute type T.
template <typename T>
struct StepCoeffs {
  T step_size;           // eta
  T beta;                // second-moment decay
  T one_minus_beta;      // 1 - beta, rounded once from double
  T eps;                 // lambda in p = 1 / (lambda + sqrt(v_hat))
  T bias_corr;           // c = 1 / (1 - beta^step) or 1
  T noise_var;           // 2 eta temperature: the noise variance before preconditioning
  T noise_scale;         // sqrt(2 eta temperature), used by the backward
  T two_one_minus_beta;  // 2 (1 - beta) = dv'/ds / s
  T weight_decay;        // lambda in s = grad + lambda z (= ds/dz)
};

template <typename T>
LPC_HD StepCoeffs<T> make_step_coeffs(double step_size, double beta, double eps, double temperature,
                                      double bias_corr, double weight_decay) {
  StepCoeffs<T> k;
  k.step_size = static_cast<T>(step_size);
  k.beta = static_cast<T>(beta);
  k.one_minus_beta = static_cast<T>(1.0 - beta);
  k.eps = static_cast<T>(eps);
  k.bias_corr = static_cast<T>(bias_corr);
  k.noise_var = static_cast<T>(2.0 * step_size * temperature);
  k.noise_scale = static_cast<T>(sqrt(2.0 * step_size * temperature));
  k.two_one_minus_beta = static_cast<T>(2.0 * (1.0 - beta));
  k.weight_decay = static_cast<T>(weight_decay);
  return k;
}

// The drive s: the energy gradient, plus the Gaussian prior's gradient lambda z when prior_grad
// (that is, when weight_decay != 0).
template <typename T>
LPC_HD T langevin_drive(T z, T grad, const StepCoeffs<T>& k, bool prior_grad) {
  return prior_grad ? grad + k.weight_decay * z : grad;
}

// Forward of one element. v and v_new are the float32 state; the update itself runs in T.
// precondition and prior_grad (weight_decay != 0) are usually compile-time constants at the call
// site, so the branches fold away after inlining.
template <typename T>
LPC_HD void langevin_forward(T z, T grad, float v, T noise, const StepCoeffs<T>& k,
                             bool precondition, bool prior_grad, T& z_new, float& v_new) {
  const T s = langevin_drive(z, grad, k, prior_grad);
  T p = T(1);
  v_new = v;
  if (precondition) {
    const T vn = k.beta * static_cast<T>(v) + k.one_minus_beta * s * s;
    p = T(1) / (k.eps + sqrt(vn * k.bias_corr));
    v_new = static_cast<float>(vn);
  }
  z_new = z - k.step_size * p * s + sqrt(k.noise_var * p) * noise;
}

// Backward of one element: cotangents gz (of z') and gv (of v'; pass 0 when absent) give
// grad_z and grad_grad. noise must be the forward's noise.
template <typename T>
LPC_HD void langevin_backward(T gz, T gv, T z, T grad, float v, T noise, const StepCoeffs<T>& k,
                              bool precondition, bool prior_grad, T& grad_z, T& grad_grad) {
  const T s = langevin_drive(z, grad, k, prior_grad);
  T grad_s;
  if (precondition) {
    const T vn = k.beta * static_cast<T>(v) + k.one_minus_beta * s * s;
    const T q = sqrt(vn * k.bias_corr);
    const T p = T(1) / (k.eps + q);
    // Branch-free q = 0 rule: pos is exactly 1 or 0, and q + (1 - pos) is q or 1.
    const T pos = static_cast<T>(q > T(0));
    const T dq_ds = pos * (k.bias_corr * k.one_minus_beta * s / (q + (T(1) - pos)));
    const T dp_ds = -p * p * dq_ds;
    const T dz_ds =
        -k.step_size * (p + s * dp_ds) + k.noise_scale * noise * dp_ds / (T(2) * sqrt(p));
    grad_s = gz * dz_ds + gv * (k.two_one_minus_beta * s);
  } else {
    grad_s = -k.step_size * gz;
  }
  grad_grad = grad_s;
  grad_z = prior_grad ? gz + k.weight_decay * grad_s : gz;
}

}  // namespace lpc_fast
