"""The T-step LPC inference loop, run eagerly, as one captured CUDA graph, or under ``torch.compile``.

One chain (LPC.md §3.2-3.3): ``T + 1`` decoder forward/backward passes at ``z_0 .. z_T`` and ``T`` fused
Langevin moves. Pass ``t`` gives ``∇_z E(z_t)`` (which drives move ``t + 1``) and, for kept samples
``t = B+1 .. T``, ``Σ_i ∇_θ E(z_t,i)``, which is added to the parameters' ``.grad``. The noise comes from
the op's capturable mode: an int64 ``[seed, offset, step]`` tensor on the latents' device that every
kernel call reads and advances itself, so the three modes draw exactly the noise that
:class:`lpc_fast.LangevinSampler` with the same ``seed``/``offset`` draws.

Modes
-----
``"eager"``
    A Python loop over the passes; works with any energy callable and with DDP (``sync_context``).
``"cuda_graph"``
    The whole chain (all ``T + 1`` passes, the moves, the gradient accumulation, the energy and sample
    records) is captured once per input shape into one CUDA graph after a warm-up on a side stream, then
    replayed: one launch per chain. Needs CUDA tensors and a capturable backend (``cuda`` or ``triton``).
``"compile"``
    A pass (forward, backward through ``torch.func``, accumulation, move) is one
    ``torch.compile(fullgraph=True)`` graph, the same for every pass of the chain, so each new input shape
    compiles once; needs ``energy_fn`` to be an ``nn.Module``. Works on the CPU too.

All three give the same chain up to floating-point rounding (``cuda_graph`` runs the eager kernels, so it
matches ``eager`` bit for bit on a deterministic device; ``compile`` fuses the decoder's arithmetic).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from . import rng
from .dispatch import select_backend
from .ops import _check_hyper, langevin_step_

__all__ = ["LOOP_MODES", "LangevinLoop"]

LOOP_MODES = ("eager", "cuda_graph", "compile")
_CAPTURABLE_BACKENDS = ("cuda", "triton")


class _DeviceScalarConstants(torch.overrides.TorchFunctionMode):
    """Turn ``torch.tensor(<python number>, device=cuda)`` into ``torch.full`` during graph capture.

    ``torch.tensor`` of a host number copies it host-to-device and synchronises the stream, which CUDA
    graph capture forbids; ``torch.full`` writes the same value with a kernel. Energies commonly build such
    constants (e.g. a fixed ``log sigma``), so capture would otherwise fail on them.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor and len(args) == 1 and isinstance(args[0], (bool, int, float)):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda" and not kwargs.get("requires_grad"):
                value = args[0]
                dtype = kwargs.get("dtype")
                if dtype is None:
                    if isinstance(value, bool):
                        dtype = torch.bool
                    elif isinstance(value, int):
                        dtype = torch.int64
                    else:
                        dtype = torch.get_default_dtype()
                return torch.full((), value, dtype=dtype, device=device)
        return func(*args, **kwargs)


class LangevinLoop:
    """Runs LPC chains of ``num_steps`` fused Langevin moves in one of :data:`LOOP_MODES`.

    Parameters
    ----------
    energy_fn : nn.Module or callable
        ``(z, x) -> [b]`` per-chain energies ``E = -log p(x, z)`` (the prior included). ``"compile"`` needs
        an ``nn.Module`` (its parameters are passed functionally).
    params : iterable of Tensor
        The parameters whose gradient ``Σ_t Σ_i ∇_θ E(z_t,i)`` over kept samples is accumulated into
        ``.grad`` (the decoder and likelihood: θ); empty for pure inference. Give every parameter of the
        energy that requires grad: eager mode accumulates with ``backward()`` (so that DDP's hooks run),
        which reaches all of them.
    num_steps : int
        ``T``, the Langevin moves per chain (``T + 1`` decoder passes).
    burn_in : int
        ``B``: samples ``t = B+1 .. T`` are kept (``0 <= B < T``).
    step_size, beta, eps, temperature, bias_correction, precondition
        The fused step's settings (LPC.md §2; :func:`lpc_fast.langevin_step_`). ``precondition=False`` is
        plain ULA; ``temperature=0`` is deterministic predictive coding.
    seed : int
        Unsigned 64-bit noise key; each :meth:`run` takes its starting ``offset``.
    backend : str, optional
        Kernel backend of the step (default: automatic for the latents' device).
    mode : {"eager", "cuda_graph", "compile"}
        See the module docstring.
    keep_samples : bool
        Return the kept samples ``[T - B, b, D]`` (the forward-KL encoder objective needs them).

    Examples
    --------
    >>> loop = LangevinLoop(model.energy, decoder_params, num_steps=20, step_size=0.05, mode="eager")
    >>> chain = loop.run(x, z0, offset=0)   # .grad of decoder_params now holds Σ_t Σ_i ∇_θ E
    """

    def __init__(
        self,
        energy_fn: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        params: Iterable[torch.Tensor] = (),
        *,
        num_steps: int,
        burn_in: int = 0,
        step_size: float,
        beta: float = 0.99,
        eps: float = 1e-3,
        temperature: float = 1.0,
        bias_correction: bool = True,
        precondition: bool = True,
        seed: int = 0,
        backend: str | None = None,
        mode: str = "eager",
        keep_samples: bool = True,
    ) -> None:
        if mode not in LOOP_MODES:
            raise ValueError(f"mode must be one of {LOOP_MODES}, got {mode!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or not 0 <= burn_in < num_steps:
            raise ValueError(f"burn_in must be an int in [0, num_steps={num_steps}), got {burn_in!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= rng.UINT64_MAX:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        if backend == "reference" and mode == "cuda_graph":
            raise ValueError(
                "mode='cuda_graph' needs a capturable kernel backend ('cuda' or 'triton'): the reference "
                "backend reads the noise state on the host, which graph capture forbids"
            )
        if mode == "compile" and not isinstance(energy_fn, nn.Module):
            raise TypeError(
                "mode='compile' needs energy_fn to be an nn.Module (its parameters are passed functionally)"
            )
        if mode != "eager" and isinstance(energy_fn, nn.parallel.DistributedDataParallel):
            raise ValueError(f"mode={mode!r} does not support DistributedDataParallel; use mode='eager'")
        self.energy_fn = energy_fn
        self.params = [p for p in params]
        for p in self.params:
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise ValueError("params must be tensors that require grad")
        self.num_steps = num_steps
        self.burn_in = burn_in
        # Validated once here so that the hot loop does not repeat the op's scalar checks.
        # weight_decay=0: the energy includes the prior, so the kernel must not add it again.
        self.hyper = _check_hyper(step_size, beta, eps, temperature, bias_correction, precondition, 0.0)
        self.seed = seed
        self.backend = backend
        self.mode = mode
        self.keep_samples = bool(keep_samples)
        self._graphs: dict[tuple, _CapturedChain] = {}
        self._compiled: dict[bool, Callable] = {}

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_config(
        cls,
        energy_fn: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        params: Iterable[torch.Tensor],
        config: Any,
        *,
        mode: str = "eager",
        keep_samples: bool = True,
    ) -> LangevinLoop:
        """A loop with the chain settings of a :class:`lpc_fast.train.TrainConfig`.

        Reads ``chain_length``, ``burn_in``, ``langevin_step_size``, ``beta``, ``eps``, ``chain_temperature``,
        ``bias_correction``, ``precondition``, ``seed`` and ``backend``.
        """
        return cls(
            energy_fn,
            params,
            num_steps=config.chain_length,
            burn_in=config.burn_in,
            step_size=config.langevin_step_size,
            beta=config.beta,
            eps=config.eps,
            temperature=config.chain_temperature,
            bias_correction=config.bias_correction,
            precondition=config.precondition,
            seed=config.seed,
            backend=config.backend,
            mode=mode,
            keep_samples=keep_samples,
        )

    @property
    def kept(self) -> int:
        """Samples kept per chain: ``T - B``."""
        return self.num_steps - self.burn_in

    def offset_end(self, offset: int, numel: int) -> int:
        """The noise counter after a chain that started at ``offset`` over ``numel`` latents."""
        return rng.NoiseStream.advance(offset, numel, self.num_steps)

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        x: torch.Tensor,
        z0: torch.Tensor,
        *,
        offset: int = 0,
        accumulate: bool = True,
        sync_context: Callable[[bool], Any] | None = None,
    ) -> dict[str, Any]:
        """Run one chain of ``T`` moves from ``z0`` (not modified).

        Parameters
        ----------
        x : Tensor
            Data ``[b, ...]``.
        z0 : Tensor
            Warm start ``[b, D]`` on ``x``'s device.
        offset : int
            Noise counter of the first move; the chain uses ``T * ceil(z0.numel() / 4)`` counters.
        accumulate : bool
            Add ``Σ_t Σ_i ∇_θ E(z_t,i)`` over kept samples to the ``.grad`` of ``params``.
        sync_context : callable, optional
            ``last -> context manager`` around each pass (DDP's ``no_sync``); eager mode only.

        Returns
        -------
        dict
            ``samples`` ``[T - B, b, D]`` (kept, detached; ``None`` without ``keep_samples``), ``z`` (the
            final sample), ``energies`` (``[T + 1]`` float64 batch means at ``z_0 .. z_T``, on the CPU),
            ``kept`` (``T - B``), ``offset_end`` (the noise counter after the last move),
            ``chain_energies`` (``[T + 1, b]`` per-chain energies, on the device) and ``nonfinite``
            (``[T + 1, b]`` int64 counts of non-finite values in each chain's energy and ``∇_z E`` per
            pass, on the CPU), counted on the device without synchronising: what
            :func:`lpc_fast.train.lpc.run_langevin_chain` computes before applying its non-finite policy.
        """
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= rng.UINT64_MAX:
            raise ValueError(f"offset must be an int in [0, 2**64), got {offset!r}")
        if z0.device != x.device:
            raise ValueError(f"z0 must be on x's device ({x.device}), got {z0.device}")
        if sync_context is not None and self.mode != "eager":
            raise ValueError(f"sync_context (DDP) needs mode='eager', this loop is mode={self.mode!r}")
        accumulate = accumulate and bool(self.params)
        if self.mode == "cuda_graph":
            if z0.device.type != "cuda":
                raise RuntimeError(
                    "mode='cuda_graph' needs CUDA tensors (got "
                    f"{z0.device.type} tensors): use mode='eager' or mode='compile' on {z0.device.type}"
                )
            chosen = select_backend(z0.device, self.backend)
            if chosen.name not in _CAPTURABLE_BACKENDS:
                raise RuntimeError(
                    f"mode='cuda_graph' needs a capturable backend ('cuda' or 'triton'), got {chosen.name!r}"
                )
            out = self._run_graph(x, z0, offset, accumulate)
        elif self.mode == "compile":
            out = self._run_compiled(x, z0, offset, accumulate)
        else:
            out = self._run_eager(x, z0, offset, accumulate, sync_context)
        out["kept"] = self.kept
        out["offset_end"] = self.offset_end(offset, z0.numel())
        return out

    def _buffers(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        samples = (
            torch.empty((self.kept, *z0.shape), dtype=z0.dtype, device=z0.device)
            if self.keep_samples
            else None
        )
        # Per-pass records stay on the device during the chain: recording them never synchronises.
        nonfinite = torch.empty((self.num_steps + 1, z0.shape[0]), dtype=torch.int64, device=z0.device)
        v = torch.zeros(z0.shape, dtype=torch.float32, device=z0.device)
        return v, samples, nonfinite

    def _outputs(self, samples, z, chain_energies, nonfinite) -> dict[str, Any]:
        return {
            "samples": samples,
            "z": z,
            # The mean of each pass in the energy's dtype, then float64: as run_langevin_chain reports it.
            "energies": chain_energies.mean(1).double().cpu(),
            "chain_energies": chain_energies,
            "nonfinite": nonfinite.cpu(),
        }

    def _run_eager(self, x, z0, offset, accumulate, sync_context) -> dict[str, Any]:
        steps, burn = self.num_steps, self.burn_in
        energy_fn, hyper = self.energy_fn, self.hyper
        z = z0.detach().clone().requires_grad_(True)
        v, samples, _ = self._buffers(z0)
        # Each pass's energy and gradient are fresh tensors that the moves only read: keeping references
        # and reducing them once at the end costs ~20 µs less per pass than per-pass bookkeeping ops.
        energies: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        state = rng.NoiseStream(self.seed, offset).rng_state(device=z.device)
        # Resolved and checked once per chain (by the public op on the first move): the later moves call
        # the backend directly, which skips ~25 µs of argument checks and backend resolution per move.
        backend = select_backend(z.device, self.backend)
        for t in range(steps + 1):
            keep = t > burn
            last = t == steps
            ctx = sync_context(last) if sync_context is not None else contextlib.nullcontext()
            with torch.enable_grad(), ctx:
                energy = energy_fn(z, x)
                total = energy.sum()
                if keep and accumulate:
                    # backward (not autograd.grad) so that DDP's gradient hooks see the kept passes.
                    z.grad = None
                    total.backward()
                    grad = z.grad
                else:
                    (grad,) = torch.autograd.grad(total, [z])
            energies.append(energy.detach())
            grads.append(grad)
            with torch.no_grad():
                if keep and samples is not None:
                    samples[t - burn - 1].copy_(z)
                if not last:
                    if t == 0:
                        langevin_step_(z, grad, v, rng_state=state, backend=self.backend, **hyper)
                    else:
                        backend.step_state_(z, grad, v, state, **hyper)
        z.grad = None
        chain_energies = torch.stack(energies)
        nonfinite = _count_nonfinite(chain_energies, torch.stack(grads))
        return self._outputs(samples, z.detach(), chain_energies, nonfinite)

    # ------------------------------------------------------------------ torch.compile

    def _named_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """θ (by name in ``energy_fn``) and the module's other parameters, both detached."""
        wanted = {id(p) for p in self.params}
        theta, other = {}, {}
        for name, p in self.energy_fn.named_parameters():
            (theta if id(p) in wanted else other)[name] = p.detach()
        if len(theta) != len(wanted):
            raise ValueError("mode='compile' needs every tensor of params to be a parameter of energy_fn")
        return theta, other

    def _compiled_pass(self, with_theta: bool) -> Callable:
        if with_theta in self._compiled:
            return self._compiled[with_theta]
        module, hyper, backend = self.energy_fn, self.hyper, self.backend

        def energy_sum(z, theta, other, x):
            energy = torch.func.functional_call(module, {**theta, **other}, (z, x))
            return energy.sum(), energy

        def one_pass(z, v, state, x, theta, other, acc, keep):
            if with_theta:
                (grad, g_theta), energy = torch.func.grad(energy_sum, argnums=(0, 1), has_aux=True)(
                    z, theta, other, x
                )
                for name, a in acc.items():
                    # where, not a 0/1 weight: a non-finite burn-in gradient must add exactly nothing.
                    a.add_(torch.where(keep, g_theta[name], 0.0))
            else:
                grad, energy = torch.func.grad(energy_sum, argnums=0, has_aux=True)(z, theta, other, x)
            energy = energy.detach()
            bad = _count_nonfinite(energy, grad)
            langevin_step_(z, grad, v, rng_state=state, backend=backend, **hyper)
            return energy, bad

        # One static-shape graph for every pass of a chain (kept or not, last or not: the flags are
        # tensors or handled outside), so a new batch shape costs one compilation, not three.
        fn = torch.compile(one_pass, fullgraph=True, dynamic=False)
        self._compiled[with_theta] = fn
        return fn

    def _run_compiled(self, x, z0, offset, accumulate) -> dict[str, Any]:
        steps, burn = self.num_steps, self.burn_in
        theta, other = self._named_params()
        acc = {name: torch.zeros_like(p) for name, p in theta.items()} if accumulate and theta else {}
        fn = self._compiled_pass(bool(acc))
        flags = {k: torch.tensor(k, device=z0.device) for k in (False, True)}
        z = z0.detach().clone()
        v, samples, nonfinite = self._buffers(z0)
        chain_energies = None
        state = rng.NoiseStream(self.seed, offset).rng_state(device=z.device)
        for t in range(steps + 1):
            keep = t > burn
            if keep and samples is not None:
                # z_t is recorded before the pass (which moves z): outside the graph, because a graph
                # input that is a view of a larger buffer would be specialised to one storage offset.
                samples[t - burn - 1].copy_(z)
            if t == steps:
                # The last pass also moves (one graph for all passes); that move is discarded.
                z_last = z.clone()
            energy, bad = fn(z, v, state, x, theta, other, acc, flags[keep])
            if chain_energies is None:
                chain_energies = energy.new_empty((steps + 1, *energy.shape))
            chain_energies[t] = energy
            nonfinite[t] = bad
        if acc:
            _add_to_grad(self.params, [acc[name] for name in theta])
        return self._outputs(samples, z_last, chain_energies, nonfinite)

    # ------------------------------------------------------------------ CUDA graph

    def _run_graph(self, x, z0, offset, accumulate) -> dict[str, Any]:
        key = (tuple(x.shape), x.dtype, tuple(z0.shape), z0.dtype, x.device, bool(accumulate))
        chain = self._graphs.get(key)
        if chain is None:
            chain = _CapturedChain(self, x, z0, accumulate)
            self._graphs[key] = chain
        return chain.replay(x, z0, offset)


def _count_nonfinite(energy: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per chain: non-finite entries of ``∇_z E`` plus 1 for a non-finite energy (int64, on the device).

    ``energy`` is ``[..., b]`` and ``grad`` ``[..., b, D...]`` (one pass, or all passes stacked).
    """
    bad = torch.isfinite(grad).logical_not().flatten(energy.dim()).sum(-1)
    return bad + torch.isfinite(energy).logical_not()


def _add_to_grad(params: list[torch.Tensor], sums: list[torch.Tensor | None]) -> None:
    """``p.grad += s`` (``p.grad = s`` when there is none yet), as ``backward`` accumulates."""
    for p, s in zip(params, sums):
        if s is None:
            continue
        if p.grad is None:
            p.grad = s.clone()
        else:
            p.grad.add_(s)


class _CapturedChain:
    """One chain of a :class:`LangevinLoop` captured into a CUDA graph for one input shape.

    Inputs are copied into static buffers before each replay; the noise state is re-set from the host
    (``[seed, offset, 1]``) and the kernels advance it inside the graph, so each replay draws fresh noise.
    """

    def __init__(self, loop: LangevinLoop, x: torch.Tensor, z0: torch.Tensor, accumulate: bool) -> None:
        self.loop = loop
        self.accumulate = accumulate and bool(loop.params)
        device = z0.device
        self.x = x.detach().clone()
        self.z0 = z0.detach().clone()
        self.z = z0.detach().clone().requires_grad_(True)
        self.v, self.samples, self.nonfinite = loop._buffers(z0)
        self.chain_energies: torch.Tensor | None = None  # allocated by the first warm-up pass
        self.state = rng.NoiseStream(loop.seed, 0).rng_state(device=device)
        self.acc = [torch.zeros_like(p) for p in loop.params] if self.accumulate else []
        self.unused = [False] * len(self.acc)
        # Warm-up on a side stream (lazy initialisation, Triton compilation and the allocator's first
        # blocks must not happen during capture), then capture on the same stream.
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), _DeviceScalarConstants():
            for _ in range(2):
                self._body()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream), _DeviceScalarConstants():
            self._body()

    def _body(self) -> None:
        loop = self.loop
        steps, burn, hyper = loop.num_steps, loop.burn_in, loop.hyper
        z, x = self.z, self.x
        with torch.no_grad():
            z.copy_(self.z0)
            self.v.zero_()
            for a in self.acc:
                a.zero_()
        for t in range(steps + 1):
            keep = t > burn
            with torch.enable_grad():
                energy = loop.energy_fn(z, x)
                total = energy.sum()
                if keep and self.accumulate:
                    grads = torch.autograd.grad(total, [z, *loop.params], allow_unused=True)
                    grad = grads[0]
                    for i, (a, g) in enumerate(zip(self.acc, grads[1:])):
                        if g is None:
                            self.unused[i] = True
                        else:
                            a.add_(g)
                else:
                    (grad,) = torch.autograd.grad(total, [z])
            with torch.no_grad():
                energy = energy.detach()
                if self.chain_energies is None:
                    self.chain_energies = energy.new_empty((steps + 1, *energy.shape))
                self.chain_energies[t].copy_(energy)
                self.nonfinite[t].copy_(_count_nonfinite(energy, grad))
                if keep and self.samples is not None:
                    self.samples[t - burn - 1].copy_(z)
                if t < steps:
                    langevin_step_(z, grad, self.v, rng_state=self.state, backend=loop.backend, **hyper)

    def replay(self, x: torch.Tensor, z0: torch.Tensor, offset: int) -> dict[str, Any]:
        with torch.no_grad():
            self.x.copy_(x)
            self.z0.copy_(z0)
            start = rng.NoiseStream(self.loop.seed, offset).rng_state()
            self.state.copy_(start)
        self.graph.replay()
        if self.accumulate:
            _add_to_grad(self.loop.params, [None if u else a for a, u in zip(self.acc, self.unused)])
        samples = None if self.samples is None else self.samples.clone()
        # Copies: the next replay overwrites the static buffers.
        return self.loop._outputs(
            samples, self.z.detach().clone(), self.chain_energies.clone(), self.nonfinite
        )
