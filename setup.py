"""Build ``lpc_fast._C``: the C++ CPU kernels always; CUDA kernels when possible.

``LPC_FAST_CUDA``:
  ``auto`` (default) build CUDA sources when torch is a CUDA build and a CUDA toolkit of the
           same major version is found;
  ``0``    never build CUDA sources;
  ``1``    build CUDA sources or fail with the reason (never a silent CPU-only build).

The CUDA toolkit is found by ``build_tools/cuda_toolkit.py`` (``CUDA_HOME``/``CUDA_PATH``, else
the toolkit behind the ``nvcc`` on ``PATH``, even through a wrapper script or symlinks, else
``/usr/local/cuda``) and handed to torch before it guesses one. ``TORCH_CUDA_ARCH_LIST`` selects
the GPU architectures (default ``8.0;9.0+PTX``).

Build with ``pip install --no-build-isolation -e .`` so the extension compiles
against the torch already installed (torch is deliberately not a build requirement).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _fail(msg: str) -> None:
    sys.stderr.write(f"lpc_fast setup: {msg}\n")
    raise SystemExit(1)


try:
    import torch
except ImportError:  # pragma: no cover - exercised only on broken setups
    _fail(
        "torch must be installed before building lpc_fast "
        "(pip install torch==2.13.0, then pip install --no-build-isolation -e .)"
    )


def _load_build_tool(name: str):
    # build_tools/ is not a package of the distribution: load the file by path.
    path = os.path.join(ROOT, "build_tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_lpc_fast_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


cuda_toolkit = _load_build_tool("cuda_toolkit")
extension_probe = _load_build_tool("extension_probe")

#: Architectures built when TORCH_CUDA_ARCH_LIST is unset: Ampere and Hopper machine code, plus
#: Hopper PTX that newer GPUs compile at load time.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _cuda_decision():
    """The CUDA toolkit to build with (None: CPU only), and why."""
    mode = os.environ.get("LPC_FAST_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        _fail(f"LPC_FAST_CUDA must be one of auto, 0, 1; got {mode!r}")
    if mode == "0":
        return None, "LPC_FAST_CUDA=0"
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)")
        if mode == "auto":
            return None, reasons[0]
    toolkit = version = None
    try:
        toolkit = cuda_toolkit.find_toolkit()
    except cuda_toolkit.ToolkitNotFound as exc:
        reasons.append(str(exc))
    if toolkit is not None and torch.version.cuda is not None:
        try:
            version = cuda_toolkit.check_version(toolkit, torch.version.cuda)
        except RuntimeError as exc:  # ToolkitVersionMismatch, or an nvcc that cannot be run
            reasons.append(str(exc))
    if reasons:
        if mode == "1":
            _fail("LPC_FAST_CUDA=1 but the CUDA extension cannot be built: " + "; ".join(reasons))
        return None, "; ".join(reasons)
    return toolkit, (
        f"torch CUDA {torch.version.cuda}, CUDA {version[0]}.{version[1]} toolkit at {toolkit.root} "
        f"(found by {toolkit.found_by})"
    )


def _probing_build_ext(base):
    """``base`` (a build_ext class) that probes each extension it built for a second libstdc++.

    See build_tools/extension_probe.py: a build whose number formatting is broken would crash on
    its first error message with a number in it, so it is refused.
    """

    class ProbingBuildExt(base):
        def run(self):
            super().run()
            if sys.platform != "linux":
                return
            for ext in self.extensions:
                path = os.path.abspath(self.get_ext_fullpath(ext.name))
                try:
                    found = extension_probe.check_built_extension(path)
                except extension_probe.BrokenBuild as exc:
                    _fail(str(exc))
                if found != "ok":
                    print(f"lpc_fast setup: {found}")

    return ProbingBuildExt


def _extension_and_build_command():
    toolkit, why = _cuda_decision()
    print(f"lpc_fast setup: CUDA kernels {'ON' if toolkit else 'OFF'} ({why})")
    if toolkit is not None:
        # torch's cpp_extension fixes its CUDA_HOME when first imported (from CUDA_HOME, else
        # from the nvcc on PATH, which may be a wrapper outside the toolkit): set it first.
        os.environ["CUDA_HOME"] = toolkit.root
    from torch.utils import cpp_extension

    build_ext = _probing_build_ext(cpp_extension.BuildExtension.with_options(use_ninja=True))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # No -std flag: torch's cpp_extension picks the standard its headers need.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno"]
    link_flags = ["-fopenmp"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    define_macros = []
    if toolkit is not None:
        cpp_extension.CUDA_HOME = toolkit.root  # in case cpp_extension was imported earlier
        # torch turns TORCH_CUDA_ARCH_LIST into -gencode flags; set, it is the user's choice.
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        print(f"lpc_fast setup: CUDA architectures {archs} (TORCH_CUDA_ARCH_LIST)")
        # The toolkit's headers first: nothing else may shadow crt/ and the runtime headers.
        include_dirs.append(toolkit.include)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        define_macros.append(("LPC_FAST_WITH_CUDA", "1"))
        ext = cpp_extension.CUDAExtension(
            "lpc_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
        return ext, build_ext
    ext = cpp_extension.CppExtension(
        "lpc_fast._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )
    return ext, build_ext


_ext, _build_ext = _extension_and_build_command()
setup(ext_modules=[_ext], cmdclass={"build_ext": _build_ext})
