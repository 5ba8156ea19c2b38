"""Model configuration: every architectural and likelihood default, named once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["ARCHITECTURES", "LIKELIHOODS", "ModelConfig"]

Architecture = Literal["mlp", "conv"]
LikelihoodName = Literal["gaussian", "gaussian_learned", "bernoulli", "discretised_gaussian"]
MeanActivation = Literal["sigmoid", "identity"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
LIKELIHOODS: tuple[str, ...] = get_args(LikelihoodName)


@dataclass
class ModelConfig:
    """Architecture and likelihood of a latent-variable model ``p(x, z) = p(x | z) N(z; 0, I)``.

    Attributes
    ----------
    architecture : {"mlp", "conv"}
        ``"mlp"`` works for any ``C x H x W``; ``"conv"`` is the beta-VAE network (Higgins et al. 2017) for
        square images of side ``4 * 2**k`` with ``k <= len(conv_channels)`` (8, 16, 32, 64, ...).
    latent_dim : int
        Size of ``z``. 40 is this package's choice (the paper's value was not recovered).
    mlp_hidden : tuple of int
        Hidden widths of the MLP decoder; the MLP encoder uses them in reverse order.
    conv_channels : tuple of int
        Feature-map channels of the conv decoder after its 4x4 reshape, one transposed conv each
        (the last maps to the image channels); the encoder mirrors them.
    conv_hidden : int
        Width of the fully connected layer between the latent and the 4x4 feature map.
    likelihood : {"gaussian", "gaussian_learned", "bernoulli", "discretised_gaussian"}
        ``p(x | z)``. ``"discretised_gaussian"`` is the paper's choice; ``"gaussian_learned"`` is a Gaussian
        with one learned, shared ``log sigma`` (sigma-VAE).
    sigma : float
        Fixed (or initial, if learned) standard deviation of the Gaussian likelihoods, **in units of the
        data in [0, 1]**. The discretised Gaussian works on [-1, 1] and uses ``2 * sigma`` there, so the same
        value means the same noise level for every likelihood. 0.1 is a moderate pixel noise: with 0.1 the
        reconstruction term weighs 50 per unit squared error, enough to make the decoder use the latent.
    learn_sigma : bool
        Learn ``log sigma`` (one scalar shared by all pixels) for ``"gaussian"`` and
        ``"discretised_gaussian"``; ``"gaussian_learned"`` always learns it.
    num_levels : int
        Intensity levels of the discretised Gaussian when the dataset does not say (256 for 8-bit images).
    mean_activation : {"sigmoid", "identity"}
        Link from the decoder output to the Gaussian / discretised-Gaussian location in [0, 1] data units.
        ``"identity"`` makes a linear decoder a linear-Gaussian model (probabilistic PCA).
    use_encoder : bool
        Build an amortised encoder ``q(z | x) = N(mu, diag sigma**2)`` (warm start and importance sampling).
    """

    architecture: Architecture = "mlp"
    latent_dim: int = 40
    mlp_hidden: tuple[int, ...] = (256, 256)
    conv_channels: tuple[int, ...] = (64, 64, 32, 32)
    conv_hidden: int = 256
    likelihood: LikelihoodName = "discretised_gaussian"
    sigma: float = 0.1
    learn_sigma: bool = False
    num_levels: int = 256
    mean_activation: MeanActivation = "sigmoid"
    use_encoder: bool = True

    def __post_init__(self) -> None:
        self.mlp_hidden = tuple(int(h) for h in self.mlp_hidden)
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with an invalid value."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {self.num_levels}")
        if self.mean_activation not in ("sigmoid", "identity"):
            raise ValueError(f"mean_activation must be 'sigmoid' or 'identity', got {self.mean_activation!r}")
        if any(h < 1 for h in self.mlp_hidden) or any(c < 1 for c in self.conv_channels):
            raise ValueError("mlp_hidden and conv_channels must be positive")
        if self.architecture == "conv" and len(self.conv_channels) < 1:
            raise ValueError("conv_channels must not be empty")
        if self.conv_hidden < 1:
            raise ValueError(f"conv_hidden must be >= 1, got {self.conv_hidden}")
