"""CUDA toolkit discovery (``build_tools/cuda_toolkit.py``) on fake toolkit trees, and setup.py's
decision built on it.

Each test builds the directories it needs under ``tmp_path``: a toolkit is a directory with an
executable ``bin/nvcc`` and ``include/crt/host_config.h``; the fake ``nvcc`` is a shell script
that answers ``--version`` and ``--dryrun`` the way the real one does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_toolkit", ROOT / "build_tools" / "cuda_toolkit.py")
ct = importlib.util.module_from_spec(_spec)
sys.modules["cuda_toolkit"] = ct  # dataclasses look the module up by name
_spec.loader.exec_module(ct)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="fake nvcc scripts are POSIX shell")


def _write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def make_toolkit(root: Path, release: str = "13.0") -> Path:
    """A fake toolkit whose nvcc reports ``release`` and its own TOP, like the real one."""
    _write_exe(
        root / "bin" / "nvcc",
        f"""#!/bin/sh
here=$(cd "$(dirname "$0")" && pwd)
for arg in "$@"; do
  case "$arg" in
    --version) echo "Cuda compilation tools, release {release}, V{release}.88"; exit 0 ;;
    --dryrun) echo "#\\$ _HERE_=$here" >&2; echo "#\\$ TOP=$here/.." >&2; exit 0 ;;
  esac
done
exit 1
""",
    )
    (root / "include" / "crt").mkdir(parents=True)
    (root / "include" / "crt" / "host_config.h").write_text("/* fake */\n")
    return root


def make_wrapper(path: Path, target: Path) -> Path:
    """An nvcc wrapper script outside the toolkit (``exec <toolkit>/bin/nvcc "$@"``)."""
    return _write_exe(path, f'#!/bin/sh\nexec "{target}" "$@"\n')


def which_of(path: Path | None):
    return lambda name: str(path) if (path is not None and name == "nvcc") else None


def test_cuda_home_is_honoured(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "cuda-13.0")
    other = make_toolkit(tmp_path / "other")
    found = ct.find_toolkit({"CUDA_HOME": str(tk)}, which_of(other / "bin" / "nvcc"), default_root=str(other))
    assert found.root == str(tk)
    assert found.found_by == "CUDA_HOME"
    assert found.nvcc == str(tk / "bin" / "nvcc")


def test_cuda_path_is_used_when_cuda_home_is_unset(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "cuda")
    found = ct.find_toolkit({"CUDA_PATH": str(tk)}, which_of(None), default_root=str(tmp_path / "none"))
    assert (found.root, found.found_by) == (str(tk), "CUDA_PATH")


def test_wrong_cuda_home_is_reported_not_passed_over(tmp_path: Path) -> None:
    good = make_toolkit(tmp_path / "good")
    bad = tmp_path / "not-a-toolkit"
    (bad / "bin").mkdir(parents=True)
    with pytest.raises(ct.ToolkitNotFound) as err:
        ct.find_toolkit({"CUDA_HOME": str(bad)}, which_of(good / "bin" / "nvcc"), default_root=str(good))
    msg = str(err.value)
    assert f"CUDA_HOME={bad}" in msg
    assert "no bin/nvcc and no include/crt/host_config.h" in msg
    assert "\n" not in msg


def test_nvcc_on_path_inside_a_toolkit(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "cuda")
    found = ct.find_toolkit({}, which_of(tk / "bin" / "nvcc"), default_root=str(tmp_path / "none"))
    assert found.root == str(tk)
    assert found.found_by.startswith("nvcc on PATH")


def test_wrapper_is_followed_through_dryrun_top(tmp_path: Path) -> None:
    # The layout that breaks torch's own guess: /usr/local/bin/nvcc is a script, /usr/local has
    # no include/crt, and the toolkit is elsewhere.
    tk = make_toolkit(tmp_path / "opt" / "cuda-13.0")
    prefix = tmp_path / "usr" / "local"
    wrapper = make_wrapper(prefix / "bin" / "nvcc", tk / "bin" / "nvcc")
    (prefix / "include").mkdir()
    found = ct.find_toolkit({}, which_of(wrapper), default_root=str(tmp_path / "none"))
    assert found.root == str(tk)
    assert "--dryrun TOP" in found.found_by


def test_symlink_farm_is_resolved(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "store" / "cuda-13.0")
    farm = tmp_path / "profile"
    (farm / "bin").mkdir(parents=True)
    (farm / "bin" / "nvcc").symlink_to(tk / "bin" / "nvcc")
    (farm / "include").mkdir()  # a farm with some headers, but not the toolkit's crt/
    found = ct.find_toolkit({}, which_of(farm / "bin" / "nvcc"), default_root=str(tmp_path / "none"))
    assert found.root == str(tk)
    assert "resolved" in found.found_by


def test_default_location_is_last(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "usr-local-cuda")
    found = ct.find_toolkit({}, which_of(None), default_root=str(tk))
    assert (found.root, found.found_by) == (str(tk), "default location")


def test_not_found_lists_everything_tried_in_one_line(tmp_path: Path) -> None:
    # A wrapper whose target is gone: nvcc --dryrun fails, and no candidate is a toolkit.
    wrapper = make_wrapper(tmp_path / "bin" / "nvcc", tmp_path / "gone" / "bin" / "nvcc")
    default = tmp_path / "usr-local-cuda"
    with pytest.raises(ct.ToolkitNotFound) as err:
        ct.find_toolkit({}, which_of(wrapper), default_root=str(default))
    msg = str(err.value)
    assert "\n" not in msg
    assert "CUDA_HOME and CUDA_PATH unset" in msg
    assert f"nvcc on PATH {wrapper}: {tmp_path} (no include/crt/host_config.h)" in msg
    assert f"{wrapper} --dryrun: printed no TOP" in msg
    assert f"{default} (does not exist)" in msg
    assert "set CUDA_HOME" in msg
    assert len(err.value.tried) == 4


def test_not_found_without_nvcc(tmp_path: Path) -> None:
    with pytest.raises(ct.ToolkitNotFound) as err:
        ct.find_toolkit({}, which_of(None), default_root=str(tmp_path / "none"))
    assert "no nvcc on PATH" in str(err.value)


def test_nvcc_must_be_executable(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "cuda")
    (tk / "bin" / "nvcc").chmod(0o644)
    assert ct.missing_markers(str(tk)) == ["bin/nvcc"]


def test_version_matches_torch_major(tmp_path: Path) -> None:
    tk = ct.Toolkit(str(make_toolkit(tmp_path / "cuda", release="13.2")), "CUDA_HOME")
    assert ct.toolkit_version(tk) == (13, 2)
    assert ct.check_version(tk, "13.0") == (13, 2)  # minor versions may differ


def test_version_mismatch_message(tmp_path: Path) -> None:
    tk = ct.Toolkit(str(make_toolkit(tmp_path / "cuda-12.8", release="12.8")), "CUDA_HOME")
    with pytest.raises(ct.ToolkitVersionMismatch) as err:
        ct.check_version(tk, "13.0")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"at {tk.root}" in msg and "is CUDA 12.8" in msg and "built with CUDA 13.0" in msg


def test_unreadable_version_is_an_error(tmp_path: Path) -> None:
    root = make_toolkit(tmp_path / "cuda")
    _write_exe(root / "bin" / "nvcc", "#!/bin/sh\necho nonsense\n")
    with pytest.raises(RuntimeError, match="printed no CUDA release"):
        ct.toolkit_version(ct.Toolkit(str(root), "CUDA_HOME"))


# --- setup.py's decision, end to end (``setup.py --version`` runs it without building) ----------


def _setup_decision(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    (project / "build_tools").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "setup.py", project / "setup.py")
    for tool in ("cuda_toolkit.py", "extension_probe.py"):  # the build tools setup.py loads
        shutil.copy(ROOT / "build_tools" / tool, project / "build_tools" / tool)
    full_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=project,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


needs_cuda_torch = pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU build")


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch is a CUDA build")
def test_setup_auto_on_cpu_torch_builds_cpu_only(tmp_path: Path) -> None:
    proc = _setup_decision(tmp_path, {"LPC_FAST_CUDA": "auto"})
    assert proc.returncode == 0, proc.stderr
    assert "CUDA kernels OFF (torch" in proc.stdout and "is a CPU build" in proc.stdout


@needs_cuda_torch
def test_setup_follows_a_wrapper_nvcc(tmp_path: Path) -> None:
    major = torch.version.cuda.split(".")[0]
    tk = make_toolkit(tmp_path / "opt" / f"cuda-{major}.9", release=f"{major}.9")
    wrapper = make_wrapper(tmp_path / "wrapbin" / "nvcc", tk / "bin" / "nvcc")
    path = f"{wrapper.parent}:/usr/bin:/bin"
    proc = _setup_decision(tmp_path, {"LPC_FAST_CUDA": "1", "PATH": path})
    assert proc.returncode == 0, proc.stderr
    assert f"CUDA kernels ON (torch CUDA {torch.version.cuda}, CUDA {major}.9 toolkit at {tk}" in proc.stdout
    assert f"found by {wrapper} --dryrun TOP" in proc.stdout


@needs_cuda_torch
def test_setup_refuses_a_toolkit_of_another_major_version(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path / "cuda-old", release="1.0")
    proc = _setup_decision(tmp_path, {"LPC_FAST_CUDA": "1", "CUDA_HOME": str(tk)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "LPC_FAST_CUDA=1 but the CUDA extension cannot be built" in lines[0]
    assert f"is CUDA 1.0 but torch was built with CUDA {torch.version.cuda}" in lines[0]
    # In auto mode the same toolkit means a CPU-only build that says why.
    proc = _setup_decision(tmp_path, {"LPC_FAST_CUDA": "auto", "CUDA_HOME": str(tk)})
    assert proc.returncode == 0, proc.stderr
    assert "CUDA kernels OFF (" in proc.stdout and "is CUDA 1.0" in proc.stdout
