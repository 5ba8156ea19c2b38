"""Build ``lpc_fast._C``: the C++ CPU kernels always; CUDA kernels when possible.

``LPC_FAST_CUDA``:
  ``auto`` (default) build CUDA sources when torch is a CUDA build and nvcc is found;
  ``0``    never build CUDA sources;
  ``1``    build CUDA sources or fail with the reason (never a silent CPU-only build).

Build with ``pip install --no-build-isolation -e .`` so the extension compiles
against the torch already installed (torch is deliberately not a build requirement).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _fail(msg: str) -> None:
    sys.stderr.write(f"lpc_fast setup: {msg}\n")
    raise SystemExit(1)


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - exercised only on broken setups
    _fail(
        "torch must be installed before building lpc_fast "
        "(pip install torch==2.13.0, then pip install --no-build-isolation -e .)"
    )


def _cuda_decision() -> tuple[bool, str]:
    """Whether to build CUDA sources, and why (or why not)."""
    mode = os.environ.get("LPC_FAST_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        _fail(f"LPC_FAST_CUDA must be one of auto, 0, 1; got {mode!r}")
    if mode == "0":
        return False, "LPC_FAST_CUDA=0"
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)")
    cuda_home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        reasons.append("nvcc not found (set CUDA_HOME)")
    if reasons:
        if mode == "1":
            _fail("LPC_FAST_CUDA=1 but the CUDA extension cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    with_cuda, why = _cuda_decision()
    print(f"lpc_fast setup: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # No -std flag: torch's cpp_extension picks the standard its headers need.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno"]
    link_flags = ["-fopenmp"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    define_macros = []
    if with_cuda:
        # pip's nvidia-* wheels keep CUDA library headers (cusparse.h, ...) under site-packages.
        for site in sys.path:
            cand = os.path.join(site, "nvidia", "cu13", "include")
            if os.path.isdir(cand):
                include_dirs.append(cand)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        nvcc_flags = [
            "-O3",
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90",
        ]
        define_macros.append(("LPC_FAST_WITH_CUDA", "1"))
        return cpp_extension.CUDAExtension(
            "lpc_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    return cpp_extension.CppExtension(
        "lpc_fast._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
