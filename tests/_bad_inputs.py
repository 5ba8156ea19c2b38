"""Bad inputs for the C++ (CPU and CUDA) dispatcher ops, each run in a process of its own.

The public functions check their arguments in Python first; these calls go to
``torch.ops.lpc_fast.*`` directly, past those checks, so the kernels' own checks must raise. A check
that crashes the process (a build whose number formatting is broken: csrc/include/check_message.h)
then fails one case, with its name, instead of taking the test run down with it. Every expected
message includes the numbers the check formats, so a check that raises with its numbers missing
fails too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Hyper-parameters after ``step`` in the ops' schemas: step_size, beta, eps, temperature,
# bias_correction, precondition, weight_decay.
HYPER = "[1e-2, 0.99, 1e-3, 1.0, True, True, 0.0]"

# name -> (devices, call, regex the RuntimeError must match). In ``call``: ops = torch.ops.lpc_fast,
# z, g, v of shape (4, 4) on the device, h the hyper-parameters, D the device.
CASES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "step_grad_shape": (
        ("cpu", "cuda"),
        "ops.langevin_step_(z, g[:2], v, 1, *h, 1, 0)",
        r"grad must have z's shape \[4, 4\], got \[2, 4\]",
    ),
    "step_v_shape": (
        ("cpu", "cuda"),
        "ops.langevin_step_(z, g, v[:, :3], 1, *h, 1, 0)",
        r"v must have z's shape \[4, 4\], got \[4, 3\]",
    ),
    "fwd_grad_shape": (
        ("cpu", "cuda"),
        "ops.langevin_fwd(z, g.reshape(16), v, 1, *h, 1, 0)",
        r"grad must have z's shape \[4, 4\], got \[16\]",
    ),
    "fwd_v_shape": (
        ("cpu", "cuda"),
        "ops.langevin_fwd(z, g, v[:1], 1, *h, 1, 0)",
        r"v must have z's shape \[4, 4\], got \[1, 4\]",
    ),
    "bwd_grad_z_new_shape": (
        ("cpu", "cuda"),
        "ops.langevin_bwd(z[:3], None, z, g, v, 1, *h, 1, 0)",
        r"grad_z_new must have z's shape \[4, 4\], got \[3, 4\]",
    ),
    "step_zero_with_bias_correction": (
        ("cpu", "cuda"),
        "ops.langevin_step_(z, g, v, 0, *h, 1, 0)",
        r"undefined for beta=0\.99, step=0",
    ),
    "state_of_length_2": (
        ("cpu", "cuda"),
        "ops.langevin_step_state_(z, g, v, torch.zeros(2, dtype=torch.int64, device=D), *h)",
        r"state must have shape \(3,\) holding \[seed, offset, step\], got \[2\]",
    ),
    "state_int32": (
        ("cpu", "cuda"),
        "ops.langevin_step_state_(z, g, v, torch.zeros(3, dtype=torch.int32, device=D), *h)",
        r"state must be int64, got Int",
    ),
    "foreach_grads_length": (
        ("cpu", "cuda"),
        "ops.langevin_step_foreach_([z, z], [g], [v, v], 1, *h, 1, 0)",
        r"grads must hold one tensor per tensor of zs \(2\), got 1",
    ),
    "foreach_vs_length": (
        ("cpu", "cuda"),
        "ops.langevin_step_foreach_([z], [g], [v, v, v], 1, *h, 1, 0)",
        r"vs must hold one tensor per tensor of zs \(1\), got 3",
    ),
    "foreach_item_shape": (
        ("cpu", "cuda"),
        "ops.langevin_step_foreach_([z, z], [g, g[:1]], [v, v], 1, *h, 1, 0)",
        r"grads\[1\] must have zs\[1\]'s shape \[4, 4\], got \[1, 4\]",
    ),
    "foreach_state_length": (
        ("cpu", "cuda"),
        "ops.langevin_step_foreach_state_([z], [g], [v], torch.zeros(4, dtype=torch.int64, device=D), *h)",
        r"state must have shape \(3,\) holding \[seed, offset, step\], got \[4\]",
    ),
    "v_float64": (
        ("cpu", "cuda"),
        "ops.langevin_step_(z, g, v.double(), 1, *h, 1, 0)",
        r"v must be float32, got Double",
    ),
    "grad_float16": (
        ("cpu", "cuda"),
        "ops.langevin_step_(z, g.half(), v, 1, *h, 1, 0)",
        r"grad must have z's dtype \(Float\), got Half",
    ),
    "philox_normal_int_out": (
        ("cpu", "cuda"),
        "ops.philox_normal_(torch.empty(5, dtype=torch.int32, device=D), 1, 0)",
        r"philox_normal_",
    ),
    "likelihood_x_shape": (
        ("cpu", "cuda"),
        "ops.log_likelihood_grad(z[:2], z, None, 0.0, 0, False, 256)",
        r"x must have out's shape \[4, 4\], got \[2, 4\]",
    ),
    "likelihood_kind": (
        ("cpu", "cuda"),
        "ops.log_likelihood_grad(z, z, None, 0.0, 7, False, 256)",
        r"kind must be 0 \(discretised Gaussian\), 1 \(Gaussian\) or 2 \(Bernoulli\), got 7",
    ),
    "likelihood_levels": (
        ("cpu", "cuda"),
        "ops.log_likelihood_grad(z, z, None, 0.0, 0, False, 1)",
        r"num_levels must be >= 2, got 1",
    ),
    "grad_on_another_device": (
        ("cuda",),
        "ops.langevin_step_(z, g.cpu(), v, 1, *h, 1, 0)",
        r"grad must be a CUDA tensor, got cpu",
    ),
}

_RUNNER = """
import re, sys
import torch
import lpc_fast
from lpc_fast.dispatch import get_backend

D = {device!r}
get_backend("cpu").availability()  # loads the C++ ops
ops = torch.ops.lpc_fast
gen = torch.Generator().manual_seed(0)
z = torch.randn(4, 4, generator=gen).to(D)
g = torch.randn(4, 4, generator=gen).to(D)
v = torch.rand(4, 4, generator=gen).to(D)
h = {hyper}
try:
{call}
except RuntimeError as exc:
    first = str(exc).splitlines()[0]
    print("raised:", first)
    sys.exit(0 if re.search({pattern!r}, str(exc)) else 3)
print("no error raised")
sys.exit(4)
"""


def case_ids(device: str) -> list[str]:
    """The cases that apply to ``device``."""
    return [name for name, (devices, _, _) in CASES.items() if device in devices]


def _run_forked(code: str) -> tuple[int, str]:
    """Run ``code`` in a forked child (torch already imported: no start-up cost); (status, output).

    The status is the child's exit code, or minus the signal that killed it, like subprocess's.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            exec(compile(code, "<bad input case>", "exec"), {"__name__": "__bad_input__"})
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - anything else fails the case, with its name
            os.write(2, f"{type(exc).__name__}: {exc}\n".encode())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    return code, b"".join(chunks).decode(errors="replace")


def run_case(name: str, device: str) -> None:
    """Run case ``name`` on ``device`` in a process of its own; assert it raised the expected error.

    CPU cases run in a forked child of the test process (cheap; CUDA is never touched there), CUDA
    cases in a fresh interpreter (a CUDA context does not survive fork).
    """
    _, call, pattern = CASES[name]
    code = _RUNNER.format(device=device, hyper=HYPER, call=textwrap.indent(call, "    "), pattern=pattern)
    if device == "cpu" and hasattr(os, "fork"):
        from lpc_fast.dispatch import get_backend

        get_backend("cpu").availability()  # import torch and load the ops once, before forking
        status, out = _run_forked(code)
    else:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        status, out = proc.returncode, proc.stdout + proc.stderr
    out = out.strip()
    if status < 0:
        raise AssertionError(f"{name} on {device}: the process died with signal {-status}\n{out}")
    reasons = {3: f"the message does not match {pattern!r}", 4: "no error was raised"}
    assert status == 0, f"{name} on {device}: {reasons.get(status, 'failed')}\n{out}"
