"""Langevin predictive coding ("sample as you infer", LPC.md §3).

Per minibatch x (this rank's shard):

1. warm start ``z_0`` (prior sample, zeros, encoder sample or encoder mean);
2. ``T`` Langevin moves ``z_0 -> z_1 ... z_T`` with :class:`lpc_fast.LangevinSampler` (or, by
   ``config.loop_mode``, :class:`lpc_fast.fastloop.LangevinLoop`, which draws the same noise).
   Pass ``t`` (``t = 0 .. T``) runs the decoder forward/backward once at ``z_t``: the same backward
   gives ``∇_z E(z_t)``, which drives move ``t+1`` (for ``t < T``), and, for kept samples,
   ``∇_θ E(z_t)`` accumulated into the decoder's ``.grad``. That is ``T + 1`` passes for ``T`` moves.
3. The decoder gradient is the average over the kept samples ``z_{B+1} ... z_T`` (burn-in ``B``; the
   warm start ``z_0`` is never kept, the final sample ``z_T`` always is: ``T - B`` samples) and over the
   batch; one Adam step on θ. The chain is detached: no gradient flows through the moves.
4. With an encoder, the encoder objective with θ fixed, then one Adam step on φ:
   forward KL ``-mean_t,i log q(z_t | x_i)`` over the same kept samples; reverse KL
   ``mean_i [E(z; x_i) - H(q(.|x_i))]`` with ``z = mu + sigma * eps`` (reparameterised; the entropy
   term in closed form, which has the same gradient expectation as ``log q(z|x)`` and less variance);
   Jeffreys: their sum. The encoder is trained whenever the model has one, whatever the warm start,
   since it is also the importance-sampling proposal at evaluation.

``decoder_grad_evals_step`` counts decoder forward/backward passes per chain: ``T + 1``, plus one for
the reverse-KL term when it is used (it differentiates the decoder's energy w.r.t. ``z``).
``method="pc"`` runs the same algorithm at temperature 0 (no noise: gradient descent on the energy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from lpc_fast.train.base import Trainer, _ThetaModule, gaussian_entropy, gaussian_log_prob
from lpc_fast.train.config import ConfigError, TrainConfig
from lpc_fast.train.distributed import RANK_OFFSET_STRIDE, DistContext
from lpc_fast.train.faults import NonFiniteError

__all__ = [
    "LPCTrainer",
    "encoder_objective",
    "finish_chain",
    "make_sampler",
    "posterior_chain_fn",
    "run_langevin_chain",
]


def encoder_objective(
    model: torch.nn.Module,
    x: torch.Tensor,
    samples: torch.Tensor | None,
    eps: torch.Tensor | None,
    objective: str,
    *,
    sample_mask: torch.Tensor | None = None,
    point_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The encoder loss of LPC.md §3.4 for one batch (θ is not excluded here: freeze it outside).

    Parameters
    ----------
    model : LatentModel
        Provides ``encode(x) -> (mu, log_sigma)`` and ``energy(z, x)``.
    x : Tensor
        Data ``[B, ...]``.
    samples : Tensor or None
        Detached chain samples ``[K, B, D]`` (needed by ``forward_kl`` and ``jeffreys``).
    eps : Tensor or None
        Standard normals ``[B, D]`` for the reparameterised sample (``reverse_kl`` and ``jeffreys``).
    objective : {"forward_kl", "reverse_kl", "jeffreys"}
    sample_mask : Tensor, optional
        ``[K, B]`` bool: which chain samples count in the forward KL (``None``: all).
    point_mask : Tensor, optional
        ``[B]`` bool: which data points count in the reverse KL (``None``: all).

    Returns
    -------
    (loss, parts)
        The scalar loss and its terms as floats (``forward_kl``, ``reverse_kl``).
    """
    mu, log_sigma = model.encode(x)
    loss = mu.new_zeros(())
    parts: dict[str, float] = {}
    if objective in ("forward_kl", "jeffreys"):
        if samples is None:
            raise ValueError("the forward KL needs chain samples")
        if sample_mask is None:
            lf = -gaussian_log_prob(samples, mu.unsqueeze(0), log_sigma.unsqueeze(0)).mean()
        else:
            # Invalid samples are replaced by a finite point before the log-density, so that their zero
            # weight gives exactly zero gradient (0 * inf would be NaN).
            m = sample_mask.to(samples.device)
            safe = torch.where(m.unsqueeze(-1), samples, mu.detach().unsqueeze(0))
            lp = gaussian_log_prob(safe, mu.unsqueeze(0), log_sigma.unsqueeze(0))
            lf = -torch.where(m, lp, 0.0).sum() / m.sum().clamp(min=1)
        loss = loss + lf
        parts["forward_kl"] = float(lf.detach())
    if objective in ("reverse_kl", "jeffreys"):
        if eps is None:
            raise ValueError("the reverse KL needs reparameterisation noise")
        z = mu + torch.exp(log_sigma) * eps
        per_point = model.energy(z, x) - gaussian_entropy(log_sigma)
        if point_mask is None:
            lr = per_point.mean()
        else:
            pm = point_mask.to(per_point.device)
            lr = torch.where(pm, per_point, 0.0).sum() / pm.sum().clamp(min=1)
        loss = loss + lr
        parts["reverse_kl"] = float(lr.detach())
    if not parts:
        raise ValueError(f"unknown encoder objective {objective!r}")
    return loss, parts


def make_sampler(z: torch.Tensor, config: TrainConfig, *, seed: int, offset: int):
    """A :class:`lpc_fast.LangevinSampler` over ``z`` with the chain settings of ``config``."""
    from lpc_fast.sampler import LangevinSampler

    return LangevinSampler(
        [z],
        step_size=config.langevin_step_size,
        mode="preconditioned" if config.precondition else "ula",
        beta=config.beta,
        eps=config.eps,
        temperature=config.chain_temperature,
        bias_correction=config.bias_correction,
        prior_grad=False,
        seed=seed,
        offset=offset,
        backend=config.backend,
        record_diagnostics=False,  # its per-step reductions cost time the trainer does not need
    )


def run_langevin_chain(
    energy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    z0: torch.Tensor,
    config: TrainConfig,
    sampler_factory: Callable[[torch.Tensor], Any],
    *,
    accumulate: bool = False,
    sync_context: Callable[[bool], Any] | None = None,
    training_step: int | None = None,
    any_fault: Callable[[bool], bool] | None = None,
    index_offset: int = 0,
    energy_grad_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    theta_grad_fn: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    energy_offset: float = 0.0,
) -> dict[str, Any]:
    """The chain of LPC.md §3.2-3.3: ``T + 1`` forward/backward passes at ``z_0 .. z_T``, ``T`` moves.

    Pass ``t`` computes ``E(z_t; x)`` once; its backward gives ``∇_z E`` (the sampler's drive for move
    ``t + 1``) and, for kept samples when ``accumulate`` is set, adds ``Σ_i ∇_θ E(z_t,i)`` to the
    parameters' ``.grad``. Kept samples are ``t = B+1 .. T`` (``B = config.burn_in``).

    The non-finite values of every chain's energy and ``∇_z E`` are counted on the device (no host
    synchronisation inside the chain): after every pass under the ``reset`` policy, which acts on them
    at once, and otherwise once after the chain, from the passes' gradients.
    ``config.nonfinite_policy`` decides what happens to chains with any: ``raise`` raises
    :class:`~lpc_fast.train.faults.NonFiniteError` after the chain; ``skip`` marks the whole chain
    invalid; ``reset`` puts the chain back at its warm start (with the warm start's gradient and a
    fresh preconditioner) right after the failing pass and marks only the non-finite samples invalid.
    With ``accumulate``, invalid samples have already been added to ``.grad``: the caller
    re-accumulates over the valid ones when ``faulty`` is set (the trainer's
    :meth:`LPCTrainer._accumulate_valid`).

    Parameters
    ----------
    energy_fn : callable
        ``(z, x) -> [b]`` energies.
    x, z0 : Tensor
        Data ``[b, ...]`` and the warm start ``[b, D]`` (not modified).
    config : TrainConfig
        Supplies T, burn-in, the non-finite policy and the sampler settings.
    sampler_factory : callable
        ``z -> LangevinSampler`` over the leaf tensor ``z`` (fixes the noise stream).
    accumulate : bool
        Accumulate the decoder gradient of kept samples into ``.grad``.
    sync_context : callable, optional
        ``last -> context manager`` wrapped around each pass (DDP's ``no_sync``).
    training_step : int, optional
        The 1-based training step, for error messages.
    any_fault : callable, optional
        ``local_fault -> global_fault``: under DDP, whether any process saw a non-finite value, so that
        every process takes the same path.
    index_offset : int
        Added to batch indices in error messages (this process's first row of the global batch).
    energy_grad_fn : callable, optional
        ``(z, x, record) -> (energy [b], ∇_z E)``, both detached, plus a third item (a record for
        ``theta_grad_fn``, or None) when ``record`` is set, which the chain does on kept passes when
        ``accumulate`` (:meth:`lpc_fast.models.LatentModel.energy_and_grad`). Used instead of autograd of
        ``energy_fn`` when given: every pass then differentiates the decoder with respect to ``z``
        alone, and with ``accumulate`` the decoder gradient of the kept samples is taken after the
        chain, in one pass over all of them (``theta_grad_fn``, required then), which is the same
        sum ``Σ_t Σ_i ∇_θ E(z_t,i)``. That pass is skipped when a chain had non-finite values (the
        caller re-accumulates over the valid samples, as for the passes above).
    theta_grad_fn : callable, optional
        ``(z [K b, D], x [K b, ...], records) -> None`` adding ``Σ_i ∇_θ E(z_i; x_i)`` to ``.grad``
        (:meth:`lpc_fast.models.LatentModel.accumulate_decoder_grad`), from the kept passes' records
        where they exist (no recomputation), else by one batched pass.
    energy_offset : float
        Added once to every pass's energy (the constant that ``energy_grad_fn`` may leave out,
        :meth:`lpc_fast.models.LatentModel.energy_constant`).

    Returns
    -------
    dict
        ``samples`` ``[T - B, b, D]`` (kept, detached), ``z`` (final sample), ``energies``
        (``[T + 1]`` float64 means over the valid chains at ``z_0 .. z_T``), ``kept`` (``T - B``),
        ``offset_end`` (the sampler's noise counter after the last move), ``nonfinite`` (``[T + 1, b]``
        int64 counts of non-finite values per pass and chain, on the CPU), ``affected`` (batch indices
        of the chains with any), ``faulty`` (any process had one), ``sample_mask`` (``[T - B, b]`` bool
        validity of the kept samples, or ``None`` when all are valid) and ``point_mask`` (``[b]`` bool,
        the chains still in the batch, or ``None``).

    Raises
    ------
    NonFiniteError
        With ``nonfinite_policy="raise"``, naming the training step, the first failing pass, the
        chains and the count of non-finite values there.
    """
    steps, burn = config.chain_length, config.burn_in
    policy = config.nonfinite_policy
    if energy_grad_fn is not None and accumulate and theta_grad_fn is None:
        raise ValueError("accumulate with energy_grad_fn needs theta_grad_fn (the decoder gradient's pass)")
    z = z0.detach().clone().requires_grad_(True)
    sampler = sampler_factory(z)
    samples = torch.empty((steps - burn, *z.shape), dtype=z.dtype, device=z.device)
    energies: list[torch.Tensor] = []  # kept on the device: no host sync inside the chain
    grads: list[torch.Tensor] = []  # references (each pass makes a new gradient): no copy, no kernel
    # Each chain's energy plus the sum of its gradient is finite exactly when every value is (or an
    # overflow, which is as bad). The reset policy needs it after every pass; otherwise it is taken
    # once after the chain, from the kept references.
    checks: list[torch.Tensor] = []
    records: list[Any] = []  # per kept pass, from energy_grad_fn (see theta_grad_fn)
    g0: torch.Tensor | None = None
    for t in range(steps + 1):
        keep = t > burn
        last = t == steps
        # enable_grad: the chain needs ∇_z E even when called under no_grad (sampling, evaluation).
        # With energy_grad_fn no pass reaches the parameters: none of them is the last to sync.
        sync_last = last and energy_grad_fn is None
        with (
            torch.enable_grad(),
            sync_context(sync_last) if sync_context is not None else contextlib.nullcontext(),
        ):
            if energy_grad_fn is not None:
                # ∇_z E alone, without building or reducing anything else; kept passes also return
                # what the decoder gradient needs later (records), when the model can.
                if keep and accumulate:
                    energy, z.grad, rec = energy_grad_fn(z, x, True)
                    records.append(rec)
                else:
                    energy, z.grad = energy_grad_fn(z, x, False)
            else:
                energy = energy_fn(z, x)
                total = energy.sum()
                if keep and accumulate:
                    z.grad = None
                    total.backward()
                else:
                    (z.grad,) = torch.autograd.grad(total, [z])
                energy = energy.detach()
        energies.append(energy)
        grads.append(z.grad)
        if keep:
            samples[t - burn - 1].copy_(z.detach())
        if policy == "reset":
            check = z.grad.detach().flatten(1).sum(1, dtype=energy.dtype).add_(energy)
            checks.append(check)
            if not last:
                if g0 is None:
                    g0 = z.grad.detach().clone()
                _reset_chains(z, check.isfinite().logical_not_(), z0, g0, sampler)
        if not last:
            sampler.step()
    chain_energies = torch.stack(energies)
    if energy_offset:
        chain_energies.add_(energy_offset)
    if policy == "reset":
        check_all = torch.stack(checks)
    else:
        check_all = torch.stack(grads).flatten(2).sum(2, dtype=chain_energies.dtype).add_(chain_energies)
    finite = check_all.isfinite().cpu()
    if bool(finite.all()):
        nonfinite = torch.zeros(finite.shape, dtype=torch.int64)
    else:
        nonfinite = (
            torch.stack([g.detach().isfinite().logical_not_().flatten(1).sum(1) for g in grads]).cpu()
            + chain_energies.isfinite().logical_not_().cpu()
        )
        nonfinite = torch.maximum(nonfinite, finite.logical_not().long())  # overflow with no inf/NaN
    del grads
    result = finish_chain(
        samples,
        z.detach(),
        chain_energies,
        nonfinite,
        offset_end=int(sampler.offset),
        config=config,
        training_step=training_step,
        any_fault=any_fault,
        index_offset=index_offset,
    )
    if energy_grad_fn is not None and accumulate and not result["faulty"]:
        kept = samples.shape[0]
        xs = x.unsqueeze(0).expand(kept, *x.shape).reshape(kept * x.shape[0], *x.shape[1:])
        with sync_context(True) if sync_context is not None else contextlib.nullcontext():
            theta_grad_fn(samples.reshape(kept * samples.shape[1], *samples.shape[2:]), xs, records)
    return result


def finish_chain(
    samples: torch.Tensor,
    z: torch.Tensor,
    chain_energies: torch.Tensor,
    nonfinite: torch.Tensor,
    *,
    offset_end: int,
    config: TrainConfig,
    training_step: int | None = None,
    any_fault: Callable[[bool], bool] | None = None,
    index_offset: int = 0,
) -> dict[str, Any]:
    """Apply ``config.nonfinite_policy`` to a finished chain and build :func:`run_langevin_chain`'s dict.

    Shared by every way of running the chain (the sampler loop above,
    :class:`lpc_fast.fastloop.LangevinLoop`), so that they report, mask and raise identically.
    ``samples`` ``[T - B, b, D]``, ``chain_energies`` ``[T + 1, b]`` (on the device) and ``nonfinite``
    ``[T + 1, b]`` (int64 counts, on the CPU) are the chain's;
    ``reset`` acts inside the chain, so here it only masks the non-finite samples.
    """
    burn = config.burn_in
    policy = config.nonfinite_policy
    local_fault = bool(nonfinite.any())
    faulty = any_fault(local_fault) if any_fault is not None else local_fault
    affected = (nonfinite.sum(0) > 0).nonzero().flatten().tolist()
    sample_mask = point_mask = None
    if not faulty:
        means = chain_energies.mean(1).double().cpu()
    else:
        if policy == "raise":
            found = _first_fault(nonfinite)
            if found is None:  # another process failed: stop together
                raise NonFiniteError(step=training_step, inner_step=None, chains=[], count=0)
            chains = [i + index_offset for i in found[1]]
            raise NonFiniteError(step=training_step, inner_step=found[0], chains=chains, count=found[2])
        valid = nonfinite == 0
        if policy == "skip":
            point_mask = valid.all(0)
            valid = point_mask.expand_as(valid)
        e = chain_energies.double().cpu()
        means = torch.where(valid, e, 0.0).sum(1) / valid.sum(1)  # NaN where no chain is valid
        sample_mask = valid[burn + 1 :].clone()
    return {
        "samples": samples,
        "z": z,
        "energies": means,
        "kept": samples.shape[0],
        "offset_end": offset_end,
        "nonfinite": nonfinite,
        "affected": affected,
        "faulty": faulty,
        "sample_mask": sample_mask,
        "point_mask": point_mask,
    }


def _first_fault(nonfinite: torch.Tensor) -> tuple[int, list[int], int] | None:
    rows = nonfinite.sum(1).nonzero()
    if rows.numel() == 0:
        return None
    t = int(rows[0, 0])
    return t, nonfinite[t].nonzero().flatten().tolist(), int(nonfinite[t].sum())


@torch.no_grad()
def _reset_chains(
    z: torch.Tensor, bad: torch.Tensor, z0: torch.Tensor, g0: torch.Tensor, sampler: Any
) -> None:
    """Put the chains flagged in ``bad`` (bool ``[b]``) back at their warm start, on the device."""
    hit = bad.view(-1, *([1] * (z.dim() - 1)))
    z.copy_(torch.where(hit, z0.to(z.dtype), z))
    z.grad = torch.where(hit, g0, z.grad)
    st = sampler.state.get(z)
    if not st or st.get("v") is None:
        return
    group = sampler.param_groups[0]
    # A fresh chain's first step has v_hat = g0**2; this v gives the same v_hat at the next (global)
    # step index s + 1 with bias correction, and v' = (1 - beta) g0**2 without, as a fresh chain.
    scale = (1.0 - group["beta"] ** st["step"]) if group["bias_correction"] else 0.0
    st["v"].copy_(torch.where(hit, (g0.float() ** 2) * scale, st["v"]))


def posterior_chain_fn(
    model: torch.nn.Module, config: TrainConfig, *, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``chain_fn(x) -> [T - B, b, D]``: the training's Langevin chain, run on a batch ``x``.

    For encoder-free models, whose importance-sampling proposal is fitted to such a chain
    (:func:`lpc_fast.eval.evaluate_model`). Chains start from the prior (a CPU generator seeded with
    ``seed``) and draw Langevin noise from ``(seed, offset)`` with the offset advancing across calls,
    so successive batches never share noise and the result does not depend on the device.
    """
    gen = torch.Generator().manual_seed(seed)
    position = {"offset": 0}

    def chain_fn(x: torch.Tensor) -> torch.Tensor:
        z0 = torch.randn(x.shape[0], model.latent_dim, generator=gen).to(x.device)
        start = position["offset"]
        chain = run_langevin_chain(
            model.energy,
            x,
            z0,
            config,
            lambda z: make_sampler(z, config, seed=seed, offset=start),
            energy_grad_fn=(
                (lambda z, xb, rec: model.energy_and_grad(z, xb, record=rec))
                if hasattr(model, "energy_and_grad")
                else None
            ),
        )
        position["offset"] = chain["offset_end"]
        return chain["samples"]

    return chain_fn


class _EncoderObjective(torch.nn.Module):
    """The encoder loss as a module over the encoder's parameters only (the unit DDP reduces for φ)."""

    def __init__(self, model: torch.nn.Module, objective: str) -> None:
        super().__init__()
        self.__dict__["_model"] = model
        self.encoder = model.encoder
        self.objective = objective

    def forward(self, x, samples, eps, sample_mask=None, point_mask=None):  # noqa: D102 - see encoder_objective
        return encoder_objective(
            self._model, x, samples, eps, self.objective, sample_mask=sample_mask, point_mask=point_mask
        )


class LPCTrainer(Trainer):
    """LPC (or, with ``method="pc"``, deterministic predictive coding) on one model.

    See the module docstring for the exact algorithm. Langevin noise: seed ``config.seed``, counter
    offset ``rank * RANK_OFFSET_STRIDE + noise_offset``; ``noise_offset`` continues where the previous
    minibatch's sampler stopped (``T * ceil(numel / 4)`` counters per minibatch), so no noise is ever
    reused and a restored trainer draws exactly the noise the uninterrupted one would. The
    preconditioner state ``v`` restarts at zero for each minibatch (LPC.md §2), so this position is
    the sampler's whole state between minibatches.
    """

    method = "lpc"

    def __init__(
        self, config: TrainConfig, data: Any, *, model=None, dist: DistContext | None = None
    ) -> None:
        super().__init__(config, data, model=model, dist=dist)
        self.method = config.method if config.method in ("lpc", "pc") else "lpc"
        if config.method == "vae":
            raise ConfigError("method", "LPCTrainer runs 'lpc' or 'pc'; use VAETrainer for 'vae'")
        if config.uses_encoder_warm_start and self.encoder is None:
            raise ConfigError(
                "warm_start",
                f"{config.warm_start!r} needs a model with an encoder (set --model-use-encoder) "
                "or use 'prior' or 'zeros'",
            )
        self._check_loop_mode()
        self.noise_offset = 0
        self._energy = self._ddp(_ThetaModule(self.model))
        # The chain's lean passes (energy_and_grad) run through this module; an energy replaced
        # later (a wrapped energy in tests or diagnostics) takes the autograd path.
        self._lean_energy = self._energy
        self._loop = None  # the LangevinLoop of loop_mode != "sampler", built on first use
        self._enc_loss = (
            self._ddp(_EncoderObjective(self.model, config.encoder_objective))
            if self.encoder is not None
            else None
        )

    def _check_loop_mode(self) -> None:
        """Reject a ``loop_mode`` this run's device, backend or process count cannot run."""
        mode = self.config.loop_mode
        if mode in ("cuda_graph", "compile") and self.dist.world_size > 1:
            raise ConfigError(
                "loop_mode",
                f"{mode} runs one process (this run has {self.dist.world_size}); use --loop-mode eager "
                "or sampler with data parallelism",
            )
        if mode != "cuda_graph":
            return
        if self.device.type != "cuda":
            raise ConfigError(
                "loop_mode",
                f"cuda_graph needs a CUDA device (this run's device is {self.device.type}); "
                "use --loop-mode eager or compile",
            )
        from lpc_fast.dispatch import select_backend

        chosen = select_backend(self.device, self.config.backend).name
        if chosen not in ("cuda", "triton"):
            raise ConfigError(
                "loop_mode",
                f"cuda_graph needs the 'cuda' or 'triton' kernel backend (got {chosen!r}, whose noise "
                "state is read on the host, which graph capture forbids); use --loop-mode eager",
            )

    # -- pieces ------------------------------------------------------------------------------------------
    def warm_start(self, x: torch.Tensor) -> torch.Tensor:
        """``z_0`` for this rank's batch ``x`` (detached)."""
        mode = self.config.warm_start
        b, d = x.shape[0], self.latent_dim
        if mode == "zeros":
            return torch.zeros(b, d, device=self.device)
        if mode == "prior":
            return self.global_normal(d)
        with torch.no_grad():
            mu, log_sigma = self.model.encode(x)
            if mode == "encoder_mean":
                return mu.detach().clone()
            return (mu + torch.exp(log_sigma) * self.global_normal(d)).detach()

    def _make_sampler(self, z: torch.Tensor):
        offset = self.dist.rank * RANK_OFFSET_STRIDE + self.noise_offset
        return make_sampler(z, self.config, seed=self.config.seed, offset=offset)

    def run_chain(self, x: torch.Tensor, z0: torch.Tensor, *, accumulate: bool = True) -> dict[str, Any]:
        """Run the ``T`` moves from ``z0``, accumulating ``Σ_t ∇_θ E(z_t)`` into ``.grad`` if asked.

        Returns the dict of :func:`run_langevin_chain`; advances this trainer's noise position. With
        ``config.loop_mode`` other than ``"sampler"`` the moves run in a
        :class:`lpc_fast.fastloop.LangevinLoop` (same noise stream, same accumulation) and the
        non-finite policy and the result come from the same :func:`finish_chain`.
        """
        energy = self._energy

        def sync_context(last: bool):
            # Gradients of every pass but the last stay local; DDP all-reduces their sum once.
            if self.dist.enabled and not last and hasattr(energy, "no_sync"):
                return energy.no_sync()
            return contextlib.nullcontext()

        if self.config.loop_mode != "sampler":
            return self._run_loop(x, z0, accumulate, sync_context)
        sampler = self._make_sampler
        # Data parallelism keeps the autograd passes (its gradient hooks and no_sync follow them).
        lean = (
            energy is self._lean_energy and hasattr(self.model, "energy_and_grad") and not self.dist.enabled
        )
        chain = run_langevin_chain(
            energy,
            x,
            z0,
            self.config,
            sampler,
            accumulate=accumulate,
            sync_context=sync_context,
            training_step=self.step + 1,
            any_fault=self._any_rank if self.dist.enabled else None,
            index_offset=self.dist.rank * self.local_batch,
            # Through the (possibly data-parallel) energy module, so that gradient hooks fire.
            energy_grad_fn=(lambda z, xb, rec: energy(z, xb, "grad", rec)) if lean else None,
            theta_grad_fn=(lambda z, xb, recs: energy(z, xb, "theta", records=recs)) if lean else None,
            energy_offset=self.model.energy_constant() if lean else 0.0,
        )
        self.noise_offset = chain["offset_end"] - self.dist.rank * RANK_OFFSET_STRIDE
        return chain

    def _run_loop(self, x, z0, accumulate, sync_context) -> dict[str, Any]:
        from lpc_fast.fastloop import LangevinLoop

        energy = self._energy
        # Rebuilt when the energy is replaced (a wrapped energy in tests or diagnostics).
        if self._loop is None or self._loop.energy_fn is not energy:
            self._loop = LangevinLoop.from_config(
                energy, self.theta_params, self.config, mode=self.config.loop_mode
            )
        base = self.dist.rank * RANK_OFFSET_STRIDE
        out = self._loop.run(
            x,
            z0,
            offset=base + self.noise_offset,
            accumulate=accumulate,
            sync_context=sync_context if self.config.loop_mode == "eager" else None,
        )
        chain = finish_chain(
            out["samples"],
            out["z"],
            out["chain_energies"],
            out["nonfinite"],
            offset_end=out["offset_end"],
            config=self.config,
            training_step=self.step + 1,
            any_fault=self._any_rank if self.dist.enabled else None,
            index_offset=self.dist.rank * self.local_batch,
        )
        self.noise_offset = chain["offset_end"] - base
        return chain

    # -- one optimizer step ------------------------------------------------------------------------------
    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (all ranks must take the same branch)."""
        import torch.distributed as tdist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _step(self, x: torch.Tensor) -> tuple[dict[str, float], int]:
        cfg = self.config
        self.opt_theta.zero_grad(set_to_none=True)
        z0 = self.warm_start(x)
        chain = self.run_chain(x, z0)  # raises NonFiniteError under nonfinite_policy="raise"
        energies = chain["energies"]
        loss = float(energies[cfg.burn_in + 1 :].mean())
        # Before any optimizer step: a divergence leaves model and optimizers untouched.
        self._check_divergence(loss, cfg.langevin_step_size)
        evals = cfg.chain_length + 1
        if chain["faulty"]:
            evals += self._accumulate_valid(x, chain)
        else:
            # Each backward added Σ_i ∇_θ E(z_t,i); average over kept samples and the batch (DDP has
            # already averaged the per-rank sums over ranks, so this gives the global-batch mean).
            scale = 1.0 / (chain["kept"] * x.shape[0])
            for p in self.theta_params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self.opt_theta.step()
        affected = len(chain["affected"])  # this process's; train_step sums over processes
        metrics = {
            "loss": loss,
            "energy_start": float(energies[0]),
            "energy_end": float(energies[-1]),
            "nonfinite_chains": affected,
        }
        if self._enc_loss is not None:
            metrics.update(self._encoder_step(x, chain["samples"], chain["sample_mask"], chain["point_mask"]))
            if cfg.encoder_objective in ("reverse_kl", "jeffreys"):
                evals += 1
        return metrics, evals

    def _accumulate_valid(self, x: torch.Tensor, chain: dict[str, Any]) -> int:
        """Redo the decoder gradient over the valid kept samples only; return the passes it took.

        Runs only on a step with non-finite chains (the chain's own accumulation already summed the
        invalid ones). Invalid samples are replaced by zeros, a finite point, and weighted 0, so they
        contribute exactly nothing. The mean is over the valid samples of the global batch.
        """
        energy = self._energy
        mask = chain["sample_mask"].to(self.device)
        samples = chain["samples"]
        k = samples.shape[0]
        for p in self.theta_params:
            p.grad = None
        for i in range(k):
            last = i == k - 1
            ctx = (
                energy.no_sync()
                if self.dist.enabled and not last and hasattr(energy, "no_sync")
                else contextlib.nullcontext()
            )
            with ctx:
                m = mask[i]
                zi = torch.where(m.view(-1, *([1] * (samples.dim() - 2))), samples[i], 0.0)
                torch.where(m, energy(zi, x), 0.0).sum().backward()
        valid = float(mask.sum())
        if self.dist.enabled:
            valid = self.dist.mean({"n": valid}, self.device)["n"]  # mean over ranks: DDP averages too
        for p in self.theta_params:
            if p.grad is None:
                continue
            if valid > 0:
                p.grad.mul_(1.0 / valid)
            else:
                p.grad = None  # nothing valid: no update (the divergence guard normally stops first)
        return k

    def _encoder_step(
        self,
        x: torch.Tensor,
        samples: torch.Tensor,
        sample_mask: torch.Tensor | None = None,
        point_mask: torch.Tensor | None = None,
    ) -> dict[str, float]:
        objective = self.config.encoder_objective
        eps = self.global_normal(self.latent_dim) if objective in ("reverse_kl", "jeffreys") else None
        self.opt_phi.zero_grad(set_to_none=True)
        # θ is held fixed: no decoder gradient is even computed for the reverse-KL term.
        flags = [p.requires_grad for p in self.theta_params]
        for p in self.theta_params:
            p.requires_grad_(False)
        try:
            if sample_mask is None and point_mask is None:
                loss, parts = self._enc_loss(x, samples, eps)
            else:
                loss, parts = self._enc_loss(x, samples, eps, sample_mask, point_mask)
            loss.backward()
        finally:
            for p, f in zip(self.theta_params, flags):
                p.requires_grad_(f)
        self.opt_phi.step()
        out = {"encoder_loss": float(loss.detach())}
        out.update({f"encoder_{k}": v for k, v in parts.items()})
        return out

    # -- state -------------------------------------------------------------------------------------------
    def _sampler_state(self) -> dict[str, Any]:
        # Between minibatches the chains hold no state (v restarts at 0 per batch): only the position
        # of rank 0's noise stream, relative to the rank's base offset, is needed.
        return {"noise_offset": self.noise_offset, "rank_offset_stride": RANK_OFFSET_STRIDE}

    def _load_sampler_state(self, state: dict[str, Any] | None) -> None:
        if state is None or int(state.get("rank_offset_stride", RANK_OFFSET_STRIDE)) != RANK_OFFSET_STRIDE:
            raise ValueError("checkpoint has no compatible Langevin noise position")
        self.noise_offset = int(state["noise_offset"])
