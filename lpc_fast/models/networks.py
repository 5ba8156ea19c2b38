"""Decoders ``g(z)`` and encoders ``q(z | x)``: an MLP for small images and the beta-VAE conv network.

No batch normalisation anywhere: with BatchNorm in training mode the energy of one data point would depend on
the others in the batch, and the Langevin chains of different data points would interact (LPC.md §1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "conv_upsamplings"]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check_shape(data_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(data_shape) != 3 or any(int(s) < 1 for s in data_shape):
        raise ValueError(f"data_shape must be (C, H, W) with positive sizes, got {tuple(data_shape)}")
    c, h, w = (int(s) for s in data_shape)
    return c, h, w


class MLPDecoder(nn.Module):
    """``z [B, latent_dim] -> decoder output [B, C, H, W]`` through ReLU hidden layers (no output activation).

    Parameters
    ----------
    latent_dim : int
    data_shape : (C, H, W)
    hidden : sequence of int
        Hidden widths, from the latent side.
    """

    def __init__(self, latent_dim: int, data_shape: Sequence[int], hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.data_shape = _check_shape(data_shape)
        self.net = _mlp([int(latent_dim), *map(int, hidden), math.prod(self.data_shape)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[0], *self.data_shape)


class MLPEncoder(nn.Module):
    """``x [B, C, H, W] -> (mu, log_sigma)``, each ``[B, latent_dim]``.

    Parameters
    ----------
    data_shape : (C, H, W)
    latent_dim : int
    hidden : sequence of int
        Hidden widths, from the data side.
    """

    def __init__(self, data_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.data_shape = _check_shape(data_shape)
        self.latent_dim = int(latent_dim)
        self.net = _mlp([math.prod(self.data_shape), *map(int, hidden), 2 * self.latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=1)
        return mu, log_sigma


def conv_upsamplings(side: int, num_layers: int) -> int:
    """Stride-2 layers taking a 4x4 map to ``side x side`` (``side = 4 * 2**k``, ``k <= num_layers``)."""
    k = int(round(math.log2(side / 4))) if side >= 4 else -1
    if k < 0 or 4 * 2**k != side or k > num_layers:
        sides = ", ".join(str(4 * 2**i) for i in range(num_layers + 1))
        raise ValueError(f"the conv network needs square images of side {sides}; got {side}")
    return k


def _conv_plan(data_shape: Sequence[int], channels: Sequence[int]) -> tuple[tuple[int, int, int], list[int]]:
    c, h, w = _check_shape(data_shape)
    if h != w:
        raise ValueError(f"the conv network needs square images, got {h}x{w}")
    n = len(channels)
    k = conv_upsamplings(h, n)
    # Layers nearest the image upsample (as in beta-VAE at 64x64); any extra layers keep the resolution.
    strides = [1] * (n - k) + [2] * k
    return (c, h, w), strides


class ConvDecoder(nn.Module):
    """beta-VAE decoder (Higgins et al. 2017): Linear -> hidden -> 4x4 map -> transposed convs.

    With the default channels ``(64, 64, 32, 32)`` and a 64x64 image the convs are
    ``64 -> 64 -> 32 -> 32 -> C``, all 4x4 kernels with stride 2. Smaller images (32x32, 16x16, 8x8) keep the
    same channels and replace the first upsamplings by 3x3 stride-1 convs.

    Parameters
    ----------
    latent_dim : int
    data_shape : (C, H, W)
        Square, side ``4 * 2**k`` with ``k <= len(channels)``.
    channels : sequence of int
        Channels of the feature maps after the 4x4 reshape, one transposed conv each.
    hidden : int
        Width of the fully connected layer.

    Notes
    -----
    On the CPU the transposed convolutions run in ``channels_last`` layout (the output is returned
    contiguous): oneDNN's kernels then skip a layout conversion per layer, about 13% of a forward and
    backward pass at the default widths, with the same values up to float rounding. Setting the attribute
    ``channels_last_on_cpu`` to False restores the plain layout (benchmarks compare the two).
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int],
        channels: Sequence[int] = (64, 64, 32, 32),
        hidden: int = 256,
    ):
        super().__init__()
        self.data_shape, strides = _conv_plan(data_shape, channels)
        chans = [int(c) for c in channels]
        self.first_channels = chans[0]
        self.fc = nn.Sequential(
            nn.Linear(int(latent_dim), int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), chans[0] * 16),
            nn.ReLU(),
        )
        outs = [*chans[1:], self.data_shape[0]]
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(zip(chans, outs, strides)):
            if stride == 2:
                layers.append(nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            else:
                layers.append(nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=1, padding=1))
            if i < len(chans) - 1:
                layers.append(nn.ReLU())
        self.convs = nn.Sequential(*layers)
        self.channels_last_on_cpu = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).reshape(z.shape[0], self.first_channels, 4, 4)
        if self.channels_last_on_cpu and h.device.type == "cpu":
            return self.convs(h.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.convs(h)


class ConvEncoder(nn.Module):
    """Mirror of :class:`ConvDecoder`: convs ``C -> 32 -> 32 -> 64 -> 64``, 4x4 map, Linear -> hidden -> 2d.

    Returns ``(mu, log_sigma)``, each ``[B, latent_dim]``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (64, 64, 32, 32),
        hidden: int = 256,
    ):
        super().__init__()
        self.data_shape, strides = _conv_plan(data_shape, channels)
        self.latent_dim = int(latent_dim)
        chans = [int(c) for c in reversed(channels)]
        ins = [self.data_shape[0], *chans[:-1]]
        layers: list[nn.Module] = []
        for cin, cout, stride in zip(ins, chans, reversed(strides)):
            if stride == 2:
                layers.append(nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1))
            layers.append(nn.ReLU())
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(chans[-1] * 16, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), 2 * self.latent_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x).reshape(x.shape[0], -1)
        mu, log_sigma = self.fc(h).chunk(2, dim=1)
        return mu, log_sigma
