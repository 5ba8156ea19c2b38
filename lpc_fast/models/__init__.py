"""Latent-variable models for LPC: likelihoods, prior, MLP and beta-VAE conv networks, ``LatentModel``."""

from __future__ import annotations

from .config import ARCHITECTURES, LIKELIHOODS, ModelConfig
from .latent import LatentModel, build_likelihood, build_model
from .likelihoods import (
    BernoulliLikelihood,
    DiscretisedGaussianLikelihood,
    GaussianLikelihood,
    Likelihood,
    log_normal_cdf_difference,
)
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .prior import StandardNormalPrior

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "DiscretisedGaussianLikelihood",
    "GaussianLikelihood",
    "LatentModel",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "ModelConfig",
    "StandardNormalPrior",
    "build_likelihood",
    "build_model",
    "log_normal_cdf_difference",
]
