"""Evaluation: importance-sampled log-likelihood, ELBO, bits/dim and sample-quality metrics.

See :mod:`lpc_fast.eval.likelihood` (estimators and their conventions), :mod:`lpc_fast.eval.quality`
(Fréchet distance, KID, density/coverage) and :mod:`lpc_fast.eval.features` (which feature space a
sample-quality number was computed in).
"""

from __future__ import annotations

from .evaluate import evaluate_model, make_feature_space, sample_quality
from .features import CNNFeatures, FeatureSpace, TorchScriptFeatures, default_feature_space, weights_sha256
from .inception import FIDInceptionV3, InceptionFeatures
from .likelihood import (
    PROPOSAL_WIDEN,
    bits_per_dim,
    elbo,
    fit_gaussian_proposal,
    gaussian_proposal,
    importance_log_likelihood,
)
from .quality import density_coverage, frechet_distance, kernel_distance

__all__ = [
    "CNNFeatures",
    "FIDInceptionV3",
    "FeatureSpace",
    "InceptionFeatures",
    "PROPOSAL_WIDEN",
    "TorchScriptFeatures",
    "bits_per_dim",
    "default_feature_space",
    "density_coverage",
    "elbo",
    "evaluate_model",
    "fit_gaussian_proposal",
    "frechet_distance",
    "gaussian_proposal",
    "importance_log_likelihood",
    "kernel_distance",
    "make_feature_space",
    "sample_quality",
    "weights_sha256",
]
