"""Feature spaces for sample-quality metrics.

A feature space maps images ``[N, C, H, W]`` in ``[0, 1]`` to features ``[N, F]`` and has a ``name``
that is reported with every number computed in it, so that numbers from different networks are never
compared by accident.

* :class:`CNNFeatures` / :func:`default_feature_space`: the offline default. A small CNN trained once,
  with a fixed seed, on the dataset's training split: a classifier where labels exist, a multi-task
  net on the generative factors for procedural data (shape class + scale, position and hue), an
  autoencoder otherwise. Features are its 128-d penultimate layer. The weights are cached under
  ``$LPC_FAST_CACHE/features`` and named ``"<dataset>-cnn-v1:<first 12 hex of the SHA-256 of the
  weights>"``. These numbers are *not* comparable with published FIDs.
* :class:`TorchScriptFeatures`: any user TorchScript network (e.g. an exported Inception or DINOv2).
* :class:`InceptionFeatures`: pytorch-fid's Inception-v3 pool features from a user-supplied
  ``pt_inception-2015-12-05-*.pth`` state dict (see its docstring for what is and is not verified).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, cache_dir

__all__ = ["CNNFeatures", "FeatureSpace", "TorchScriptFeatures", "default_feature_space", "weights_sha256"]

CNN_VERSION = "cnn-v1"
FEATURE_DIM = 128


class FeatureSpace:
    """Base class: ``features(images) -> Tensor [N, F]`` computed in batches, plus a ``name``."""

    name: str = "unnamed"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Features ``[N, F]`` (float32, CPU) of images ``[N, C, H, W]`` in ``[0, 1]``."""
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        out = [
            self._forward(images[i : i + batch_size].float()) for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out).float().cpu()

    __call__ = features


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and bytes, sorted by name)."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _SmallCNN(nn.Module):
    def __init__(
        self, channels: int, size: int, num_classes: int, num_regress: int, autoencoder: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU()]
        ch, s = 32, size
        while s > 4:  # stride-2 stages down to a 4x4 (or smaller) map
            nxt = min(2 * ch, 128)
            layers += [nn.Conv2d(ch, nxt, 3, stride=2, padding=1), nn.ReLU()]
            ch, s = nxt, math.ceil(s / 2)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * s * s, FEATURE_DIM), nn.ReLU())
        self.classify = nn.Linear(FEATURE_DIM, num_classes) if num_classes > 0 else None
        self.regress = nn.Linear(FEATURE_DIM, num_regress) if num_regress > 0 else None
        self.decode = nn.Linear(FEATURE_DIM, channels * size * size) if autoencoder else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _factor_targets(factors: torch.Tensor, names: tuple[str, ...] | None) -> torch.Tensor:
    # Regress the continuous factors that are well defined from pixels; hue on the circle.
    cols = []
    names = names or ()
    for key in ("scale", "pos_x", "pos_y"):
        if key in names:
            cols.append(factors[:, names.index(key)])
    if "hue" in names:
        hue = factors[:, names.index("hue")] * (2.0 * math.pi)
        cols += [hue.cos(), hue.sin()]
    if not cols:
        return torch.empty(factors.shape[0], 0)
    t = torch.stack(cols, dim=1)
    return (t - t.mean(0)) / t.std(0).clamp_min(1e-6)


class CNNFeatures(FeatureSpace):
    """The default offline feature space: penultimate layer of a small CNN trained on one dataset.

    Build it with :func:`default_feature_space` (which trains or loads the cached weights).
    """

    def __init__(self, net: _SmallCNN, dataset_name: str, image_shape: tuple[int, int, int]) -> None:
        self.net = net.eval()
        self.image_shape = tuple(image_shape)
        self.sha256 = weights_sha256(net)
        self.name = f"{dataset_name}-{CNN_VERSION}:{self.sha256[:12]}"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.name} takes images {self.image_shape}, got {tuple(images.shape[1:])}")
        return self.net(images)


def _config(dataset: ImageDataset, steps: int, batch_size: int, seed: int) -> dict[str, Any]:
    h = hashlib.sha256(dataset.images.contiguous().numpy().tobytes())
    if dataset.labels is not None:
        h.update(dataset.labels.numpy().tobytes())
    return {
        "version": CNN_VERSION,
        "dataset": dataset.name,
        "shape": list(dataset.shape),
        "n": len(dataset),
        "data_sha256": h.hexdigest(),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
    }


@torch.enable_grad()  # callers may be inside no_grad (e.g. an evaluation loop)
def _train(net: _SmallCNN, dataset: ImageDataset, steps: int, batch_size: int, seed: int) -> None:
    images = dataset.images
    labels = dataset.labels
    targets = _factor_targets(dataset.factors, dataset.factor_names) if dataset.factors is not None else None
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    n = images.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x = images[idx]
        feats = net(x)
        loss = torch.zeros(())
        if net.classify is not None and labels is not None:
            loss = loss + F.cross_entropy(net.classify(feats), labels[idx])
        if net.regress is not None and targets is not None:
            loss = loss + F.mse_loss(net.regress(feats), targets[idx])
        if net.decode is not None:
            loss = loss + F.mse_loss(torch.sigmoid(net.decode(feats)), x.flatten(1)) * 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()


def default_feature_space(
    dataset: ImageDataset,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
    cache: bool = True,
) -> CNNFeatures:
    """Train (or load from the cache) the default feature CNN on a training split.

    Parameters
    ----------
    dataset
        The *training* split of the dataset whose samples will be compared.
    steps, batch_size, seed
        Adam (lr 1e-3) steps, batch size and seed of the one-off training.
    cache
        Load/store the weights under ``$LPC_FAST_CACHE/features``, keyed by the dataset's content and
        these settings. A cached file whose weights do not match their recorded SHA-256 is retrained.

    Returns
    -------
    CNNFeatures
        ``name`` is ``"<dataset>-cnn-v1:<sha256[:12]>"``.
    """
    c, h, w = dataset.shape
    if h != w:
        raise ValueError(f"default_feature_space needs square images, got {dataset.shape}")
    num_classes = int(dataset.labels.max().item()) + 1 if dataset.labels is not None else 0
    num_regress = 0
    if dataset.factors is not None:
        num_regress = _factor_targets(dataset.factors[:2], dataset.factor_names).shape[1]
    autoencoder = num_classes == 0 and num_regress == 0

    config = _config(dataset, steps, batch_size, seed)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name)[:40]
    path = cache_dir("features") / f"{slug}-{CNN_VERSION}-{key}.pt"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation is part of the recipe
        net = _SmallCNN(c, h, num_classes, num_regress, autoencoder)
    if cache and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(blob["state_dict"])
            if weights_sha256(net) == blob["sha256"]:
                return CNNFeatures(net, dataset.name, dataset.shape)
            warnings.warn(f"{path}: weights do not match their SHA-256; retraining", stacklevel=2)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            warnings.warn(f"{path}: unreadable cached feature network ({exc}); retraining", stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _SmallCNN(c, h, num_classes, num_regress, autoencoder)
    _train(net, dataset, steps, batch_size, seed)
    if cache:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"state_dict": net.state_dict(), "sha256": weights_sha256(net), "config": config}, tmp)
        os.replace(tmp, path)
    return CNNFeatures(net, dataset.name, dataset.shape)


class TorchScriptFeatures(FeatureSpace):
    """Features from a user TorchScript network ``images -> [N, F]`` (or ``[N, F, 1, 1]``).

    Parameters
    ----------
    path
        A ``torch.jit.save``-d module.
    input_size
        Resize images (bilinear) to ``input_size x input_size`` first, if given.
    channels
        Repeat grey images to this many channels (e.g. 3 for ImageNet networks), if given.
    scale
        ``"unit"`` passes ``[0, 1]`` pixels, ``"symmetric"`` maps them to ``[-1, 1]``,
        ``"imagenet"`` applies the ImageNet mean/std normalisation.
    name
        Reported feature-space name; default ``"torchscript:<file>:<sha256[:12] of the file>"``.
    """

    _IMAGENET_MEAN = (0.485, 0.456, 0.406)
    _IMAGENET_STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_size: int | None = None,
        channels: int | None = None,
        scale: str = "unit",
        name: str | None = None,
    ) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"TorchScript feature network not found: {p}")
        if scale not in ("unit", "symmetric", "imagenet"):
            raise ValueError(f"scale must be 'unit', 'symmetric' or 'imagenet', got {scale!r}")
        self.module = torch.jit.load(str(p), map_location="cpu").eval()
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        self.name = name or f"torchscript:{p.name}:{digest[:12]}"
        self.input_size = input_size
        self.channels = channels
        self.scale = scale

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"{self.name}: cannot map {x.shape[1]} channels to {self.channels}")
            x = x.expand(-1, self.channels, -1, -1)
        if self.input_size is not None and tuple(x.shape[2:]) != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        if self.scale == "symmetric":
            x = 2.0 * x - 1.0
        elif self.scale == "imagenet":
            mean = torch.tensor(self._IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor(self._IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - mean) / std
        out = self.module(x)
        return out.flatten(1)
