"""Sample-quality summary and the whole-model evaluation used by ``lpc-fast eval``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..data import DatasetError, ImageDataset, load_dataset
from .features import FeatureSpace, TorchScriptFeatures, default_feature_space
from .inception import InceptionFeatures
from .likelihood import (
    bits_per_dim,
    elbo,
    fit_gaussian_proposal,
    gaussian_proposal,
    importance_log_likelihood,
)
from .quality import density_coverage, frechet_distance, kernel_distance

__all__ = ["evaluate_model", "make_feature_space", "sample_quality"]


def sample_quality(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    feature_space: FeatureSpace,
    *,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FID-style Fréchet distance, KID, density and coverage of two image sets in one feature space.

    Parameters
    ----------
    real_images, fake_images
        ``[N, C, H, W]`` in ``[0, 1]``.
    feature_space
        A :class:`~lpc_fast.eval.features.FeatureSpace` (its ``name`` is reported).
    k
        Neighbourhood size of density/coverage.
    kid_subsets, kid_subset_size, seed
        Subsampling of the kernel distance.

    Returns
    -------
    dict
        ``fid``, ``kid``, ``kid_std``, ``density``, ``coverage``, ``feature_space`` (name), ``num_real``,
        ``num_fake``. "fid" is the Fréchet distance in *this* feature space; it equals FID only in
        pytorch-fid's Inception space.
    """
    fr = feature_space.features(real_images)
    ff = feature_space.features(fake_images)
    kid, kid_std = kernel_distance(fr, ff, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    density, coverage = density_coverage(fr, ff, k=k)
    return {
        "fid": frechet_distance(fr, ff),
        "kid": kid,
        "kid_std": kid_std,
        "density": density,
        "coverage": coverage,
        "feature_space": feature_space.name,
        "num_real": int(fr.shape[0]),
        "num_fake": int(ff.shape[0]),
    }


def make_feature_space(spec: FeatureSpace | str | None, dataset: ImageDataset) -> FeatureSpace:
    """Resolve a feature-space choice.

    Parameters
    ----------
    spec
        A :class:`FeatureSpace` (returned as is); None or ``"default"`` for the default CNN trained on
        the training split matching ``dataset``; ``"inception:PATH"`` for pytorch-fid's Inception
        weights; ``"torchscript:PATH"`` for a TorchScript feature network.
    dataset
        The evaluation split (used to find its training split for the default).
    """
    if isinstance(spec, FeatureSpace):
        return spec
    if spec is None or spec == "default":
        return _feature_space_for(dataset)
    kind, _, path = spec.partition(":")
    if kind == "inception" and path:
        return InceptionFeatures(path)
    if kind == "torchscript" and path:
        return TorchScriptFeatures(path)
    raise ValueError(
        f"unknown feature space {spec!r}; expected 'default', 'inception:PATH' or 'torchscript:PATH'"
    )


def _feature_space_for(dataset: ImageDataset) -> FeatureSpace:
    try:
        train = load_dataset(**{**dataset.spec, "split": "train"})
    except (DatasetError, TypeError) as exc:
        warnings.warn(
            f"no training split of {dataset.name} ({exc}); training the feature network on the evaluation "
            "images themselves",
            stacklevel=3,
        )
        train = dataset
    return default_feature_space(train)


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _generate(model: Any, n: int, generator: torch.Generator | None, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, n, batch_size):
        s = model.sample(min(batch_size, n - start), generator)
        if s.dim() == 2 and s.shape[1] == model.latent_dim:
            s = model.decode_mean(s)  # a model whose sample() returns latents
        out.append(s.detach().float().cpu())
    return torch.cat(out).clamp_(0.0, 1.0)


@torch.no_grad()
def evaluate_model(
    model: Any,
    dataset_test: ImageDataset,
    *,
    num_is_samples: int = 1000,
    num_eval_points: int = 500,
    num_generated: int = 2000,
    feature_space: FeatureSpace | str | None = None,
    generator: torch.Generator | None = None,
    chain_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 100,
    is_batch_size: int = 50,
    num_elbo_samples: int = 10,
) -> dict[str, Any]:
    """Likelihood, reconstruction and sample quality of a latent-variable model on a test split.

    Parameters
    ----------
    model
        Has ``log_joint(x, z) -> Tensor[B]`` (nats), ``encode(x) -> (mu, log_sigma)`` (unless
        ``encoder`` is None), ``decode_mean(z)``, ``sample(n, generator)`` (images, or latents
        ``[n, latent_dim]`` which are then decoded), ``latent_dim`` and ``encoder``.
    dataset_test
        The test split; its first ``num_eval_points`` images are scored, its first ``num_generated``
        images are the reference set of the sample-quality metrics.
    num_is_samples
        Importance samples per data point.
    feature_space
        A :class:`FeatureSpace` or a string for :func:`make_feature_space`; default: the CNN of
        :func:`~lpc_fast.eval.features.default_feature_space` trained on the matching training split.
    generator
        Source of all sampling noise.
    chain_fn
        For encoder-free models: ``chain_fn(x) -> Tensor [T, B, D]`` of posterior samples (burn-in
        removed); a diagonal Gaussian fitted to them (std widened by 1.2) is the proposal.
    batch_size
        Data points per likelihood batch and images per generation batch.
    is_batch_size
        Importance samples per model call (a call evaluates ``is_batch_size * batch_size`` rows).
    num_elbo_samples
        Monte-Carlo samples per data point of the ELBO.

    Returns
    -------
    dict
        ``nll_nats`` (mean over points of -log p(x)), ``nll_se`` (Monte-Carlo standard error of that
        mean), ``nll_std`` (spread over data points), ``bits_per_dim`` (``nll / (D ln 2)``: the model's
        log_joint is taken as a pmf over the discrete pixel values when the data are discrete),
        ``elbo`` (mean, None without an encoder), ``recon_mse`` (per pixel, of ``decode_mean`` at the
        proposal mean), ``fid``, ``kid``, ``kid_std``, ``density``, ``coverage``, ``feature_space``,
        ``proposal`` (``"encoder"`` or ``"chain-fit"``), ``num_eval_points``, ``num_is_samples``.
    """
    has_encoder = getattr(model, "encoder", None) is not None
    if not has_encoder and chain_fn is None:
        raise ValueError(
            "an encoder-free model needs chain_fn(x) -> [T, B, D] posterior samples for the proposal"
        )
    device = _model_device(model)
    x_all = dataset_test.images[:num_eval_points].to(device)
    logpx, se2, elbos, sq_err = [], [], [], 0.0
    for start in range(0, x_all.shape[0], batch_size):
        x = x_all[start : start + batch_size]
        if has_encoder:
            mu, log_sigma = model.encode(x)
        else:
            mu, log_sigma = fit_gaussian_proposal(chain_fn(x))
        lp, se = importance_log_likelihood(
            model.log_joint,
            gaussian_proposal(mu, log_sigma),
            x,
            num_samples=num_is_samples,
            batch_size=is_batch_size,
            generator=generator,
        )
        logpx.append(lp)
        se2.append(se.square())
        if has_encoder:
            elbos.append(elbo(model.log_joint, mu, log_sigma, x, num_elbo_samples, generator=generator))
        sq_err += (model.decode_mean(mu).reshape(x.shape) - x).double().square().sum().item()
    lp_all = torch.cat(logpx)
    n = lp_all.shape[0]
    nll = -lp_all.mean().item()
    result: dict[str, Any] = {
        "nll_nats": nll,
        "nll_se": math.sqrt(torch.cat(se2).sum().item()) / n,
        "nll_std": lp_all.std().item() if n > 1 else 0.0,
        "bits_per_dim": bits_per_dim(nll, dataset_test.num_dims, dataset_test.num_levels),
        "elbo": torch.cat(elbos).mean().item() if has_encoder else None,
        "recon_mse": sq_err / x_all.numel(),
        "proposal": "encoder" if has_encoder else "chain-fit",
        "num_eval_points": n,
        "num_is_samples": num_is_samples,
    }
    fs = make_feature_space(feature_space, dataset_test)
    real = dataset_test.images[:num_generated]
    fake = _generate(model, real.shape[0], generator, batch_size)
    result.update(sample_quality(real, fake, fs))
    return result
