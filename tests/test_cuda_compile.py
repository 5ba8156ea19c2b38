"""GPU-free checks of the CUDA sources and of the CUDA build switch.

* ``csrc/cuda/langevin_cuda.cu`` has no torch headers, so nvcc compiles it anywhere: for sm_80
  and sm_90, with the macros torch's extension build adds (no implicit half conversions).
* Its PTX must use precise math (no ``--use_fast_math`` approximations) and 16-byte vector
  accesses, the two properties the kernel design relies on.
* The torch glue ``langevin_cuda_ops.cpp`` is syntax-checked against the installed torch headers.
* ``LPC_FAST_CUDA=1`` must fail loudly, naming the reason, when CUDA cannot be built.

Running the kernels needs a GPU: see ``tests/gpu``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CU_SOURCE = ROOT / "csrc" / "cuda" / "langevin_cuda.cu"
GLUE_SOURCE = ROOT / "csrc" / "cuda" / "langevin_cuda_ops.cpp"
INCLUDE = ROOT / "csrc" / "include"

# The flags torch's CUDAExtension passes to nvcc for every .cu file; the kernels must compile
# under them (they forbid implicit half <-> float conversions).
try:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS as TORCH_NVCC_FLAGS
except ImportError:  # pragma: no cover - older torch layouts
    TORCH_NVCC_FLAGS = [
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
    ]


def _load_toolkit_module():
    path = ROOT / "build_tools" / "cuda_toolkit.py"
    spec = importlib.util.spec_from_file_location("_lpc_fast_cuda_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cuda_toolkit = _load_toolkit_module()


def _find_toolkit():
    """The toolkit setup.py would build with (see build_tools/cuda_toolkit.py), or None."""
    try:
        return cuda_toolkit.find_toolkit()
    except cuda_toolkit.ToolkitNotFound:
        return None


TOOLKIT = _find_toolkit()
NVCC = TOOLKIT.nvcc if TOOLKIT is not None else None
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="no CUDA toolkit found (set CUDA_HOME)")


def _nvcc(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-std=c++17", "-O3", *TORCH_NVCC_FLAGS, "-I", str(INCLUDE), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _own_warnings(output: str) -> list[str]:
    """Warnings that point at this project's sources (toolkit headers are not ours to fix)."""
    return [line for line in output.splitlines() if "warning" in line.lower() and "csrc" in line]


@pytest.fixture(scope="module")
def kernel_objects(tmp_path_factory):
    """nvcc -c of the kernels per architecture, compiled once and shared by the tests below."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    cache: dict[str, tuple[Path, str]] = {}

    def compile_for(arch: str) -> tuple[Path, str]:
        if arch not in cache:
            obj = out_dir / f"langevin_cuda_{arch}.o"
            args = [
                "-c",
                f"-arch={arch}",
                "-Xcompiler",
                "-Wall,-Wextra,-fPIC",
                str(CU_SOURCE),
                "-o",
                str(obj),
            ]
            proc = _nvcc(args, out_dir)
            cache[arch] = (obj, proc.stdout + proc.stderr)
        return cache[arch]

    return compile_for


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_kernels_compile(arch: str, kernel_objects) -> None:
    obj, output = kernel_objects(arch)
    assert obj.stat().st_size > 0
    assert _own_warnings(output) == []


@needs_nvcc
def test_cuda_kernels_ptx_precise_math_and_vector_access(tmp_path: Path) -> None:
    ptx_path = tmp_path / "langevin_cuda.ptx"
    _nvcc(["-ptx", "-arch=sm_90", str(CU_SOURCE), "-o", str(ptx_path)], tmp_path)
    ptx = ptx_path.read_text()
    # --use_fast_math (or __sincosf/__logf) would show up as approximate PTX instructions; the
    # normals must match the float64 reference to 1e-5, which those cannot promise.
    for approx in ("sin.approx", "cos.approx", "lg2.approx", "ex2.approx", "sqrt.approx", "rsqrt.approx"):
        assert approx not in ptx, f"approximate math instruction {approx} in the kernels"
    # Full chunks are moved with 16-byte accesses (4 x u32 words or 2 x f64).
    assert "ld.global.v4.u32" in ptx or "ld.global.nc.v4.u32" in ptx
    assert "st.global.v4.u32" in ptx or "st.global.v4.f32" in ptx


@needs_nvcc
def test_cuda_launchers_link_and_handle_empty_inputs(tmp_path: Path, kernel_objects) -> None:
    """Links the kernels into a host program: every launcher declared in langevin_cuda.h is
    defined, and empty inputs return cudaSuccess without touching a device (so this also runs
    on a machine without a GPU)."""
    driver = tmp_path / "driver.cu"
    driver.write_text(
        """
#include <cstdio>
#include "langevin_cuda.h"
using namespace lpc_fast::cuda;
int main() {
  StepParams p;
  p.step_size = 0.01;
  const cudaError_t ok = cudaSuccess;
  const ScalarKind f16 = ScalarKind::kFloat16, f32 = ScalarKind::kFloat32;
  const ScalarKind bf16 = ScalarKind::kBFloat16, f64 = ScalarKind::kFloat64;
  void* o = nullptr;
  float* f = nullptr;
  int bad = 0;
  bad += launch_step_inplace(o, o, f, 0, f16, p, 1, 1, 0, 0) != ok;
  bad += launch_forward(o, o, f, o, f, 0, bf16, p, 1, 1, 0, 0) != ok;
  bad += launch_backward(o, f, o, o, f, o, o, 0, f64, p, 1, 1, 0, 0) != ok;
  bad += launch_philox_normal(o, 0, f32, 1, 0, 0) != ok;
  bad += launch_philox_uint32(nullptr, 0, 1, 0, 0) != ok;
  // Foreach without a state: an empty list, and a list of empty tensors, launch nothing.
  const ForeachTensor empty[2] = {{o, o, f, 0, f32}, {o, o, f, 0, f64}};
  bad += launch_step_foreach(nullptr, 0, p, 1, 1, 0, nullptr, 0) != ok;
  bad += launch_step_foreach(empty, 2, p, 1, 1, 0, nullptr, 0) != ok;
  // The state variant always launches (an empty step still advances the state): only link it.
  volatile bool never = false;
  if (never) launch_step_state_inplace(o, o, f, nullptr, 0, f32, p, 0);
  std::printf("bad=%d\\n", bad);
  return bad;
}
"""
    )
    exe = tmp_path / "driver"
    obj, _ = kernel_objects("sm_90")
    _nvcc(["-arch=sm_90", "-I", str(CU_SOURCE.parent), str(driver), str(obj), "-o", str(exe)], tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bad=0" in proc.stdout


def _torch_include_dirs() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return list(include_paths())


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_cuda_glue_compiles_against_torch_headers(tmp_path: Path) -> None:
    """Syntax and type check of the TORCH_LIBRARY_IMPL glue with LPC_FAST_WITH_CUDA defined.

    A CPU-only torch wheel ships the c10/cuda headers but not the generated
    ``c10/cuda/impl/cuda_cmake_macros.h``; an empty stand-in (searched last, so a real one wins)
    is enough for a syntax check.
    """
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cuda_include = TOOLKIT.include
    cmd = ["g++", "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-DLPC_FAST_WITH_CUDA=1"]
    for inc in _torch_include_dirs():
        cmd += ["-isystem", inc]
    cmd += ["-isystem", str(cuda_include), "-idirafter", str(tmp_path / "stub"), "-I", str(INCLUDE)]
    cmd.append(str(GLUE_SOURCE))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert _own_warnings(proc.stderr) == []


def test_cuda_glue_is_guarded() -> None:
    """setup.py compiles csrc/cuda/*.cpp only for CUDA builds; the guard keeps a stray CPU
    compile of the glue harmless."""
    text = GLUE_SOURCE.read_text()
    assert "#ifdef LPC_FAST_WITH_CUDA" in text
    assert text.rstrip().endswith("#endif  // LPC_FAST_WITH_CUDA")
    # The kernels file stays torch-free so that nvcc alone can check it.
    kernels = CU_SOURCE.read_text() + (CU_SOURCE.parent / "langevin_cuda.h").read_text()
    assert "#include <torch" not in kernels and "#include <ATen" not in kernels


def _run_setup(tmp_path: Path, env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    # A copy of setup.py (and the build tools it loads) in an empty directory: the CUDA
    # decision runs before any source is looked at, and nothing of the in-place build can be
    # overwritten.
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    (tmp_path / "build_tools").mkdir()
    for tool in ("cuda_toolkit.py", "extension_probe.py"):
        shutil.copy(ROOT / "build_tools" / tool, tmp_path / "build_tools" / tool)
    env = dict(os.environ, LPC_FAST_CUDA="1", **env_overrides)
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_forced_cuda_build_fails_loudly_on_cpu_torch(tmp_path: Path) -> None:
    proc = _run_setup(tmp_path, {})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "LPC_FAST_CUDA=1" in proc.stderr
    assert "CPU build" in proc.stderr
    # It failed before compiling anything.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build_tools", "setup.py"]


def test_forced_cuda_build_fails_loudly_without_toolkit(tmp_path: Path) -> None:
    missing = tmp_path / "no-cuda-here"
    proc = _run_setup(tmp_path, {"CUDA_HOME": str(missing)})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    # One line, naming the switch and the candidate that was tried.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "LPC_FAST_CUDA=1" in lines[0]
    assert "no CUDA toolkit found" in lines[0] and f"CUDA_HOME={missing} (does not exist)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build_tools", "setup.py"]


LIK_CU_SOURCE = ROOT / "csrc" / "cuda" / "likelihood_cuda.cu"
LIK_GLUE_SOURCE = ROOT / "csrc" / "cuda" / "likelihood_cuda_ops.cpp"


@needs_nvcc
def test_likelihood_kernel_compiles_links_and_handles_empty_input(tmp_path: Path) -> None:
    """The fused likelihood kernel (lpc_fast::log_likelihood_grad) compiles for sm_90 without own
    warnings, with precise math, and its launcher returns cudaSuccess for zero rows without a GPU."""
    obj = tmp_path / "likelihood_cuda.o"
    proc = _nvcc(
        ["-c", "-arch=sm_90", "-Xcompiler", "-Wall,-Wextra,-fPIC", str(LIK_CU_SOURCE), "-o", str(obj)],
        tmp_path,
    )
    assert _own_warnings(proc.stdout + proc.stderr) == []
    ptx = tmp_path / "likelihood_cuda.ptx"
    _nvcc(["-ptx", "-arch=sm_90", str(LIK_CU_SOURCE), "-o", str(ptx)], tmp_path)
    text = ptx.read_text()
    for approx in ("lg2.approx", "ex2.approx.ftz.f64"):
        assert approx not in text, f"approximate math instruction {approx} in the likelihood kernel"
    driver = tmp_path / "lik_driver.cu"
    driver.write_text(
        """
#include <cstdio>
#include "likelihood_cuda.h"
int main() {
  const cudaError_t err = lpc_fast::cuda::launch_log_likelihood_grad(
      nullptr, nullptr, nullptr, nullptr, nullptr, false, nullptr, false, 0.0, 0, true, 256, 0, 64, 0);
  std::printf("err=%d\\n", static_cast<int>(err));
  return err == cudaSuccess ? 0 : 1;
}
"""
    )
    exe = tmp_path / "lik_driver"
    _nvcc(["-arch=sm_90", "-I", str(LIK_CU_SOURCE.parent), str(driver), str(obj), "-o", str(exe)], tmp_path)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "err=0" in run.stdout, run.stdout + run.stderr


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_likelihood_glue_compiles_against_torch_headers(tmp_path: Path) -> None:
    """Syntax check of the likelihood op's CUDA glue (as for the Langevin glue above)."""
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["g++", "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-DLPC_FAST_WITH_CUDA=1"]
    for inc in _torch_include_dirs():
        cmd += ["-isystem", inc]
    cmd += ["-isystem", str(TOOLKIT.include), "-idirafter", str(tmp_path / "stub"), "-I", str(INCLUDE)]
    cmd.append(str(LIK_GLUE_SOURCE))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert _own_warnings(proc.stderr) == []
    text = LIK_GLUE_SOURCE.read_text()
    assert "#ifdef LPC_FAST_WITH_CUDA" in text and text.rstrip().endswith("#endif  // LPC_FAST_WITH_CUDA")
    kernels = LIK_CU_SOURCE.read_text() + (LIK_CU_SOURCE.parent / "likelihood_cuda.h").read_text()
    assert "#include <torch" not in kernels and "#include <ATen" not in kernels
