// Python module lpc_fast._C and the CPU kernels of the lpc_fast dispatcher ops (schemas in
// lpc_fast/_schemas.py). CUDA kernels register themselves in csrc/cuda when built.
#include <torch/extension.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace lpc_fast {
namespace cpu {
// Defined in langevin_cpu.cpp. Seeds and offsets are int64 carrying uint64 bits.
void langevin_step_(at::Tensor z, const at::Tensor& grad, at::Tensor v, int64_t step,
                    double step_size, double beta, double eps, double temperature,
                    bool bias_correction, bool precondition, double weight_decay, int64_t seed,
                    int64_t offset);
void langevin_step_state_(at::Tensor z, const at::Tensor& grad, at::Tensor v, at::Tensor state,
                          double step_size, double beta, double eps, double temperature,
                          bool bias_correction, bool precondition, double weight_decay);
std::tuple<at::Tensor, at::Tensor> langevin_fwd(const at::Tensor& z, const at::Tensor& grad,
                                                const at::Tensor& v, int64_t step, double step_size,
                                                double beta, double eps, double temperature,
                                                bool bias_correction, bool precondition,
                                                double weight_decay, int64_t seed, int64_t offset);
std::tuple<at::Tensor, at::Tensor> langevin_bwd(const at::Tensor& grad_z_new,
                                                const std::optional<at::Tensor>& grad_v_new,
                                                const at::Tensor& z, const at::Tensor& grad,
                                                const at::Tensor& v, int64_t step, double step_size,
                                                double beta, double eps, double temperature,
                                                bool bias_correction, bool precondition,
                                                double weight_decay, int64_t seed, int64_t offset);
void langevin_step_foreach_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                            int64_t step, double step_size, double beta, double eps,
                            double temperature, bool bias_correction, bool precondition,
                            double weight_decay, int64_t seed, int64_t offset);
void langevin_step_foreach_state_(at::TensorList zs, at::TensorList grads, at::TensorList vs,
                                  at::Tensor state, double step_size, double beta, double eps,
                                  double temperature, bool bias_correction, bool precondition,
                                  double weight_decay);
void philox_normal_(at::Tensor out, int64_t seed, int64_t offset);
void philox_uint32_(at::Tensor out, int64_t seed, int64_t offset);
std::string simd_level();
std::string detected_simd_level();
std::string set_simd_level(const std::string& name);
}  // namespace cpu
}  // namespace lpc_fast

namespace {
bool with_cuda() {
#ifdef LPC_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Formats numbers the way TORCH_CHECK and ATen's inline checks do (c10::str: an ostringstream and
// its num_put facet, instantiated in this library). setup.py compares the result with Python's
// after a build: a wrong or empty result means this library runs against a second copy of
// libstdc++ (see csrc/include/check_message.h).
std::string stream_format_probe(int64_t n, double x) { return c10::str(n, " ", x); }
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lpc_fast C++ kernels (the ops live in torch.ops.lpc_fast)";
  m.def("simd_level", &lpc_fast::cpu::simd_level,
        "Instruction set the CPU kernels run with: 'avx512', 'avx2' or 'baseline'.");
  m.def("cpu_capabilities", &lpc_fast::cpu::detected_simd_level,
        "Best instruction set this CPU supports among the compiled variants.");
  m.def("set_simd_level", &lpc_fast::cpu::set_simd_level, py::arg("level"),
        "Run the CPU kernels with a lower instruction set (testing); returns the previous one.");
  m.def("with_cuda", &with_cuda, "Whether CUDA kernels were compiled into this build.");
  m.def("_stream_format_probe", &stream_format_probe, py::arg("n"), py::arg("x"),
        "c10::str(n, ' ', x) formatted in this library (a build check: see setup.py).");
}

// The op schemas are defined from Python (lpc_fast/_schemas.py, the one op table) before this
// module is loaded; here only kernels are attached. The dispatcher checks each kernel's C++
// signature against its schema and refuses a mismatch when the module is imported.
TORCH_LIBRARY_IMPL(lpc_fast, CPU, m) {
  m.impl("langevin_step_", &lpc_fast::cpu::langevin_step_);
  m.impl("langevin_step_state_", &lpc_fast::cpu::langevin_step_state_);
  m.impl("langevin_fwd", &lpc_fast::cpu::langevin_fwd);
  m.impl("langevin_bwd", &lpc_fast::cpu::langevin_bwd);
  m.impl("langevin_step_foreach_", &lpc_fast::cpu::langevin_step_foreach_);
  m.impl("langevin_step_foreach_state_", &lpc_fast::cpu::langevin_step_foreach_state_);
  m.impl("philox_normal_", &lpc_fast::cpu::philox_normal_);
  m.impl("philox_uint32_", &lpc_fast::cpu::philox_uint32_);
}
