"""``LatentModel``: decoder + likelihood + prior (+ optional encoder), and the energy Langevin samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import ModelConfig
from .likelihoods import BernoulliLikelihood, DiscretisedGaussianLikelihood, GaussianLikelihood, Likelihood
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .prior import StandardNormalPrior

__all__ = ["LatentModel", "build_likelihood", "build_model"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _plain_mlp_layers(decoder: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of an :class:`MLPDecoder` made of Linear and ReLU layers only (alternating,
    as :class:`MLPDecoder` builds it) and without hooks, else None."""
    if type(decoder) is not MLPDecoder:
        return None
    mods = list(decoder.net)
    if len(mods) % 2 == 0 or decoder._forward_hooks or decoder._forward_pre_hooks:
        return None
    for i, m in enumerate(mods):
        if type(m) is not (nn.Linear if i % 2 == 0 else nn.ReLU) or m._forward_hooks or m._forward_pre_hooks:
            return None
    return mods[0::2]


def _linear(a: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    if lin.bias is None:
        return torch.mm(a, lin.weight.t())
    return torch.addmm(lin.bias, a, lin.weight.t())


class LatentModel(nn.Module):
    """``p(x, z) = p(x | decoder(z)) N(z; 0, I)`` with an optional amortised encoder.

    Data ``x`` is always given in [0, 1], shape ``[B, C, H, W]``; latents ``z`` are ``[B, latent_dim]``. All
    per-data-point quantities are ``[B]`` in nats and depend on row ``b`` of ``x`` and ``z`` only.

    Parameters
    ----------
    decoder : nn.Module
        ``z -> decoder output`` of shape ``[B, *data_shape]`` (the likelihood's parameterisation).
    likelihood : Likelihood
    latent_dim : int
    data_shape : (C, H, W)
    encoder : nn.Module, optional
        ``x -> (mu, log_sigma)`` of a diagonal Gaussian ``q(z | x)``.
    prior : StandardNormalPrior, optional
    """

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        data_shape: Sequence[int],
        encoder: nn.Module | None = None,
        prior: StandardNormalPrior | None = None,
    ):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.likelihood = likelihood
        self.prior = prior if prior is not None else StandardNormalPrior()
        self.latent_dim = int(latent_dim)
        self.data_shape = tuple(int(s) for s in data_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` per data point, ``[B]``."""
        return self.likelihood.log_prob(x, self.decoder(z))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x, z) = log p(x | z) + log p(z)`` per data point, ``[B]``."""
        return self.log_likelihood(x, z) + self.prior.log_prob(z)

    def energy(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``E(z; x) = -log p(x | z) - log p(z)`` per data point, ``[B]`` (Langevin targets ``exp(-E)``).

        Call ``energy(z, x).sum().backward()`` to get every chain's gradient at once: the sum couples
        nothing because each term depends on its own row.
        """
        return -self.log_joint(x, z)

    def energy_constant(self) -> float:
        """The part of ``E(z; x)`` that depends on neither ``z`` nor ``x`` nor a parameter: the standard
        normal prior's ``(latent_dim / 2) log(2 pi)`` (0 for another prior, whose energy keeps it)."""
        if type(self.prior) is not StandardNormalPrior:
            return 0.0
        return self.latent_dim * _HALF_LOG_2PI

    def energy_and_grad(
        self,
        z: torch.Tensor,
        x: torch.Tensor,
        *,
        accumulate: bool = False,
        constant: bool = True,
        record: bool = False,
    ) -> tuple:
        """``E(z; x)`` per data point and ``∇_z E``, both detached, in as few kernels as the maths needs.

        The likelihood's value and its derivative with respect to the decoder output come from one
        fused kernel (:meth:`Likelihood.log_prob_and_grad`); the decoder is then differentiated once,
        with respect to ``z`` alone, and the standard normal prior's gradient is ``z`` itself.

        Parameters
        ----------
        z : Tensor
            Latents ``[B, latent_dim]`` (not modified; its ``.grad`` is not touched).
        x : Tensor
            Data ``[B, C, H, W]`` in [0, 1].
        accumulate : bool
            Also add ``Σ_i ∇_θ E(z_i; x_i)`` to the ``.grad`` of the decoder's and the likelihood's
            parameters (through autograd's accumulation, so data-parallel gradient hooks see it).
        constant : bool
            Include :meth:`energy_constant` in the energy (a chain adds it once to all its passes).
        record : bool
            This pass's decoder gradient is wanted: return, as a third item, what
            :meth:`accumulate_decoder_grad` needs to form it later without recomputing the pass (a
            plain ReLU MLP decoder's layer inputs and output gradients, the likelihood's per-point
            sigma derivative), or, for other decoders, add it to ``.grad`` now (as ``accumulate``)
            and return None.

        Returns
        -------
        (energy, grad_z) or (energy, grad_z, record)
            ``[B]`` and ``z``'s shape.

        Notes
        -----
        A plain ReLU MLP decoder (:class:`MLPDecoder`, Linear and ReLU layers) is differentiated by
        hand, layer by layer, without building an autograd graph; other decoders by autograd with
        respect to ``z`` alone.
        """
        layers = _plain_mlp_layers(self.decoder) if not accumulate else None
        if layers is not None and type(self.prior) is StandardNormalPrior:
            return self._mlp_energy_and_grad(z, x, layers, constant, record)
        if record:
            return (*self.energy_and_grad(z, x, accumulate=True, constant=constant), None)
        zl = z.detach().requires_grad_(True)
        if type(self.prior) is not StandardNormalPrior:
            # Another prior: its gradient by autograd of the whole energy.
            with torch.enable_grad():
                energy = self.energy(zl, x)
                if accumulate:
                    energy.sum().backward()
                    g = zl.grad
                else:
                    (g,) = torch.autograd.grad(energy.sum(), [zl])
            if not constant:  # this energy includes the prior's own constant
                energy = energy - self.energy_constant()
            return energy.detach(), g
        with torch.enable_grad():
            out = self.decoder(zl)
        log_lik, g_out, g_log_sigma = self.likelihood.log_prob_and_grad(x, out)
        flat = zl.detach().reshape(zl.shape[0], -1)
        # E = -log p(x | z) + |z|^2 / 2 + (D/2) log(2 pi): the square sum as a matrix-vector product
        # with a cached vector of halves, fused with the likelihood term.
        energy = torch.addmv(log_lik, flat * flat, self._halves(flat), beta=-1.0)
        if constant:
            energy.add_(flat.shape[1] * _HALF_LOG_2PI)
        if accumulate:
            g_out.neg_()  # ∇_out E
            learned = getattr(self.likelihood, "log_sigma", None)
            if g_log_sigma is not None and learned is not None and learned.requires_grad:
                g_ls = g_log_sigma.sum().neg_().to(learned.dtype).reshape(learned.shape)
                torch.autograd.backward([out, learned], [g_out, g_ls])
            else:
                out.backward(g_out)
            grad = zl.grad.add_(zl.detach())
        else:
            (g_lik,) = torch.autograd.grad(out, [zl], g_out)
            grad = torch.sub(zl.detach(), g_lik)
        return energy, grad

    def _mlp_energy_and_grad(self, z, x, layers, constant, record):
        """:meth:`energy_and_grad` of a plain ReLU MLP decoder, forward and backward by hand."""
        zd = z.detach()
        with torch.no_grad():
            inputs = [zd]  # the input of every Linear layer
            a = zd
            for i, lin in enumerate(layers):
                a = _linear(a, lin)
                if i < len(layers) - 1:
                    a = torch.relu(a)
                    inputs.append(a)
            out = a.view(zd.shape[0], *self.decoder.data_shape)
            log_lik, g_out, g_log_sigma = self.likelihood.log_prob_and_grad(x, out)
            d = g_out.view(zd.shape[0], -1)  # ∇ log p(x | z) at the last layer's output
            deltas = [d]
            for i in range(len(layers) - 1, 0, -1):
                d = torch.ops.aten.threshold_backward(torch.mm(d, layers[i].weight), inputs[i], 0)
                deltas.append(d)
            g_lik = torch.mm(d, layers[0].weight)
            deltas.reverse()
            flat = zd.reshape(zd.shape[0], -1)
            energy = torch.addmv(log_lik, flat * flat, self._halves(flat), beta=-1.0)
            if constant:
                energy.add_(flat.shape[1] * _HALF_LOG_2PI)
            grad = torch.sub(zd, g_lik.view_as(zd))
        if not record:
            return energy, grad
        # The first layer's input is z itself, which the chain moves in place: the caller passes the
        # kept samples to accumulate_decoder_grad instead.
        return energy, grad, (inputs[1:], deltas, g_log_sigma)

    def accumulate_decoder_grad(self, z: torch.Tensor, x: torch.Tensor, records: list | None = None) -> None:
        """Add ``Σ_i ∇_θ E(z_i; x_i)`` to the ``.grad`` of the decoder's and the likelihood's parameters.

        All rows at once: the chain calls it once on its kept samples stacked into one batch (``x``
        repeated to match). With ``records`` (from :meth:`energy_and_grad` with ``record=True``, one
        per block of rows, in order), each layer's weight gradient is one matrix product over all the
        recorded passes and nothing is recomputed; a record of None means that pass already added its
        gradient. Without records, one forward and one backward through the decoder, with the
        likelihood's derivative from the fused kernel, through autograd's accumulation; the recorded
        gradients are added to ``.grad`` directly.
        """
        if records is not None:
            if any(r is None for r in records):
                if not all(r is None for r in records):
                    raise ValueError("records must all be records or all be None (already accumulated)")
                return
            layers = _plain_mlp_layers(self.decoder)
            if layers is None:
                raise ValueError("records are only made for a plain ReLU MLP decoder")
            self._accumulate_recorded(z, layers, records)
            return
        if type(self.prior) is not StandardNormalPrior:
            with torch.enable_grad():
                self.energy(z.detach(), x).sum().backward()
            return
        with torch.enable_grad():
            out = self.decoder(z.detach())
        _, g_out, g_log_sigma = self.likelihood.log_prob_and_grad(x, out)
        g_out.neg_()  # ∇_out E
        learned = getattr(self.likelihood, "log_sigma", None)
        if g_log_sigma is not None and learned is not None and learned.requires_grad:
            g_ls = g_log_sigma.sum().neg_().to(learned.dtype).reshape(learned.shape)
            torch.autograd.backward([out, learned], [g_out, g_ls])
        else:
            out.backward(g_out)

    def _accumulate_recorded(self, z: torch.Tensor, layers: list, records: list) -> None:
        with torch.no_grad():
            inputs = [z.reshape(z.shape[0], -1)]
            inputs += [self._stack_into(("h", i), [r[0][i] for r in records]) for i in range(len(layers) - 1)]
            params, grads = [], []
            for i, lin in enumerate(layers):
                d = self._stack_into(("d", i), [r[1][i] for r in records]).neg_()  # ∇ E at the layer's output
                if lin.weight.requires_grad:
                    params.append(lin.weight)
                    grads.append(torch.mm(d.t(), inputs[i]))
                if lin.bias is not None and lin.bias.requires_grad:
                    params.append(lin.bias)
                    grads.append(d.sum(0))
            learned = getattr(self.likelihood, "log_sigma", None)
            if learned is not None and learned.requires_grad and records[0][2] is not None:
                g_ls = torch.stack([r[2].sum() for r in records]).sum().neg_()
                params.append(learned)
                grads.append(g_ls.to(learned.dtype).reshape(learned.shape))
        # Assigned (or added) directly: a gradient handed to autograd's accumulation while also
        # referenced here would be copied first. (The trainer takes this path without data
        # parallelism only.)
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def _stack_into(self, key: tuple, parts: list[torch.Tensor]) -> torch.Tensor:
        """``torch.cat(parts)`` into a buffer kept for the next call of the same shape: a fresh
        megabyte-sized result every step costs more in page faults than the copy itself."""
        rows = sum(p.shape[0] for p in parts)
        shape = (rows, *parts[0].shape[1:])
        cache = self.__dict__.setdefault("_stack_cache", {})
        buf = cache.get(key)
        if buf is None or buf.shape != shape or buf.dtype != parts[0].dtype or buf.device != parts[0].device:
            buf = torch.empty(shape, dtype=parts[0].dtype, device=parts[0].device)
            cache[key] = buf
        return torch.cat(parts, out=buf)

    def _halves(self, flat: torch.Tensor) -> torch.Tensor:
        """A vector of ``0.5`` of ``flat``'s width, dtype and device (cached: no per-call allocation)."""
        key = (flat.shape[1], flat.dtype, flat.device)
        cache = self.__dict__.setdefault("_halves_cache", {})
        vec = cache.get(key)
        if vec is None:
            vec = torch.full((flat.shape[1],), 0.5, dtype=flat.dtype, device=flat.device)
            cache[key] = vec
        return vec

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of ``q(z | x)``, each ``[B, latent_dim]``."""
        if self.encoder is None:
            raise RuntimeError("this model has no encoder (built with use_encoder=False)")
        return self.encoder(x)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image of ``p(x | z)`` in [0, 1], ``[B, C, H, W]``."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, *, from_likelihood: bool = False
    ) -> torch.Tensor:
        """Images from the model: ``z ~ N(0, I)``, then the likelihood mean (or a draw of it).

        Parameters
        ----------
        n : int
        generator : torch.Generator, optional
            Drives both the prior draw and, with ``from_likelihood``, the pixel noise.
        from_likelihood : bool
            Return a draw of ``p(x | z)`` instead of its mean (the mean is what sample-quality metrics use).
        """
        ref = next(self.decoder.parameters(), None)
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None else torch.float32
        z = self.prior.sample(n, self.latent_dim, generator, device=device, dtype=dtype)
        out = self.decoder(z)
        if from_likelihood:
            return self.likelihood.sample(out, generator)
        return self.likelihood.mean(out)


def build_likelihood(config: ModelConfig, num_levels: int | None = None) -> Likelihood:
    """The likelihood module that ``config`` names (``num_levels`` only matters for the discretised one)."""
    name = config.likelihood
    if name in ("gaussian", "gaussian_learned"):
        learn = config.learn_sigma or name == "gaussian_learned"
        return GaussianLikelihood(config.sigma, learn_sigma=learn, mean_activation=config.mean_activation)
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "discretised_gaussian":
        levels = config.num_levels if num_levels is None else int(num_levels)
        return DiscretisedGaussianLikelihood(
            levels, sigma=config.sigma, learn_sigma=config.learn_sigma, mean_activation=config.mean_activation
        )
    raise ValueError(f"unknown likelihood {name!r}")


def build_model(config: ModelConfig, data_shape: Sequence[int], num_levels: int | None = None) -> LatentModel:
    """Build the :class:`LatentModel` that ``config`` describes for images of ``data_shape = (C, H, W)``.

    Parameters
    ----------
    config : ModelConfig
    data_shape : (C, H, W)
    num_levels : int, optional
        Intensity levels of the data (the dataset knows: 256 for 8-bit images, 17 for sklearn's digits);
        ``None`` takes ``config.num_levels``.
    """
    config.validate()
    shape = tuple(int(s) for s in data_shape)
    if config.architecture == "mlp":
        decoder: nn.Module = MLPDecoder(config.latent_dim, shape, config.mlp_hidden)
        encoder = MLPEncoder(shape, config.latent_dim, tuple(reversed(config.mlp_hidden)))
    else:
        decoder = ConvDecoder(config.latent_dim, shape, config.conv_channels, config.conv_hidden)
        encoder = ConvEncoder(shape, config.latent_dim, config.conv_channels, config.conv_hidden)
    return LatentModel(
        decoder,
        build_likelihood(config, num_levels),
        config.latent_dim,
        shape,
        encoder=encoder if config.use_encoder else None,
    )
