"""The RNG contract: counter-based Philox4x32-10 in Triton's ``randn4x`` layout.

This module is the single executable statement of the noise every backend must
produce (LPC.md §5). Element ``i`` of a call with ``(seed, offset)`` uses

* counter ``c = offset + i // 4`` split into two uint32 words
  ``(c0, c1) = (c mod 2**32, c // 2**32)``, ``c2 = c3 = 0``;
* key ``(k0, k1) = (seed mod 2**32, seed // 2**32)``;
* output lane ``i % 4`` of Philox4x32-10 (Random123 rounds and constants);
* Triton's uint32 -> uniform map: reinterpret as int32, ``x < 0 -> ~x``, then
  ``float32(x) * float32(4.6566127342e-10)`` (always < 1);
* Box–Muller on the lane pairs ``(0, 1)`` and ``(2, 3)``:
  ``u1 = max(float32(1e-7), u1)``, ``th = float32(2*pi) * u2`` (fp32 product),
  ``r = sqrt(-2 log u1)``; lane 0/2 take ``r cos th``, lane 1/3 take ``r sin th``.

The uniforms and ``th`` are bit-exact float32; ``r``, ``cos`` and ``sin`` are
evaluated here in float64, which is the value the kernels approximate in float32
(they must agree to a relative 1e-5 plus a small absolute term, see the tests).

Each call consumes ``ceil(numel / 4)`` counters, so successive steps advance
``offset`` by :func:`offset_increment` and never reuse noise. Seeds and offsets
are unsigned 64-bit integers; the dispatcher carries them as signed int64 (two's
complement), see :func:`to_int64`.
"""

from __future__ import annotations

import torch

__all__ = [
    "PHILOX_KEY_A",
    "PHILOX_KEY_B",
    "PHILOX_ROUND_A",
    "PHILOX_ROUND_B",
    "UINT_TO_UNIFORM_SCALE",
    "BOX_MULLER_U1_MIN",
    "TWO_PI_F32",
    "UINT64_MAX",
    "offset_increment",
    "foreach_offsets",
    "to_int64",
    "to_uint64",
    "philox4x32",
    "philox_uint32",
    "uint32_to_uniform",
    "philox_uniform",
    "philox_normal_reference",
]

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
#: Triton's uint32 -> [0, 1) scale: the largest float32 with (2**31 - 1) * scale < 1.
UINT_TO_UNIFORM_SCALE = 4.6566127342e-10
#: Lower clamp of the Box–Muller radius uniform (float32).
BOX_MULLER_U1_MIN = 1.0e-7
#: 2*pi rounded to float32, as Triton's ``pair_uniform_to_normal`` uses it.
TWO_PI_F32 = 6.283185307179586
UINT64_MAX = 2**64 - 1

_MASK32 = 0xFFFFFFFF


def offset_increment(numel: int) -> int:
    """Counters one call consumes: ``ceil(numel / 4)``."""
    return (int(numel) + 3) // 4


def foreach_offsets(offset: int, numels) -> tuple[list[int], int]:
    """Noise offsets of a multi-tensor step, and the total it consumes.

    Tensor ``i`` of a foreach step starting at ``offset`` uses
    ``offset + sum_{j<i} offset_increment(numels[j])`` (modulo ``2**64``), exactly the
    offsets of calling the single-tensor step on each tensor in order.

    Parameters
    ----------
    offset : int
        Counter of the first tensor: an unsigned 64-bit value or its int64 carrier
        (:func:`to_int64`); a ``SymInt`` under ``torch.compile`` is added without wrapping.
    numels : iterable of int
        Element counts of the tensors, in order.

    Returns
    -------
    (offsets, total) : tuple of (list of int, int)
        The unsigned offset of each tensor and the sum of their increments (what the
        caller adds to ``offset`` for the next step).
    """
    offsets = []
    total = 0
    wrap = isinstance(offset, int)
    for n in numels:
        offsets.append((offset + total) & UINT64_MAX if wrap else offset + total)
        total += offset_increment(n)
    return offsets, total


def to_int64(value: int) -> int:
    """Map an unsigned 64-bit integer to the signed int64 with the same bits."""
    value = int(value)
    if not 0 <= value <= UINT64_MAX:
        raise ValueError(f"expected an integer in [0, 2**64), got {value}")
    return value - 2**64 if value >= 2**63 else value


def to_uint64(value: int) -> int:
    """Inverse of :func:`to_int64`."""
    value = int(value)
    return value + 2**64 if value < 0 else value


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full 32x32 -> 64-bit product of uint32 values held in int64, without overflow."""
    a_lo = a & 0xFFFF
    a_hi = a >> 16
    lo_part = a_lo * b  # < 2**48
    hi_part = a_hi * b  # < 2**48
    lo = lo_part + ((hi_part & 0xFFFF) << 16)  # < 2**49
    hi = (hi_part >> 16) + (lo >> 32)
    return hi & _MASK32, lo & _MASK32


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int,
    k1: int,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 on int64 tensors holding uint32 words (Random123's definition)."""
    k0 = int(k0) & _MASK32
    k1 = int(k1) & _MASK32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(c2, PHILOX_ROUND_B)
        hi_a, lo_a = _mulhilo32(c0, PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _check_u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}")
    if not 0 <= value <= UINT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def _counter_words(n: int, offset: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint32 words (c0, c1) of the counters offset + j, j < ceil(n / 4), with 64-bit carry."""
    m = offset_increment(n)
    j = torch.arange(m, dtype=torch.int64, device=device)
    off_lo = offset & _MASK32
    off_hi = offset >> 32
    lo = j + off_lo  # < 2**33: no overflow
    c0 = lo & _MASK32
    c1 = ((lo >> 32) + off_hi) & _MASK32  # wraps modulo 2**64 like the kernels
    return c0, c1


def philox_uint32(n: int, *, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The contract's uint32 stream: word ``i % 4`` of Philox(counter offset + i // 4).

    Returns an int64 tensor of ``n`` values in ``[0, 2**32)``.
    """
    seed = _check_u64("seed", seed)
    offset = _check_u64("offset", offset)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    c0, c1 = _counter_words(n, offset, device)
    zero = torch.zeros_like(c0)
    words = philox4x32(c0, c1, zero, zero, seed & _MASK32, seed >> 32)
    return torch.stack(words, dim=1).reshape(-1)[:n]


def uint32_to_uniform(words: torch.Tensor) -> torch.Tensor:
    """Triton's uint32 -> float32 uniform in [0, 1), bit-exact."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)  # ~x for negative int32
    return folded.to(torch.float32) * torch.tensor(UINT_TO_UNIFORM_SCALE, dtype=torch.float32)


def philox_uniform(n: int, *, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 uniforms of the contract (element i from word i % 4 of counter offset + i // 4)."""
    return uint32_to_uniform(philox_uint32(n, seed=seed, offset=offset, device=device))


def philox_normal_reference(
    n: int,
    *,
    seed: int,
    offset: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Standard normals of the contract, Box–Muller evaluated in float64.

    The uniforms and the angle are bit-exact float32 values; radius, cosine and
    sine are float64 (the exact value the float32 kernels approximate).
    """
    seed = _check_u64("seed", seed)
    offset = _check_u64("offset", offset)
    m = offset_increment(n)
    u = philox_uniform(4 * m, seed=seed, offset=offset, device=device).view(m, 4)
    u_min = torch.tensor(BOX_MULLER_U1_MIN, dtype=torch.float32, device=device)
    two_pi = torch.tensor(TWO_PI_F32, dtype=torch.float32, device=device)
    out = torch.empty(m, 4, dtype=torch.float64, device=device)
    for pair in (0, 2):
        u1 = torch.maximum(u[:, pair], u_min).double()
        theta = (two_pi * u[:, pair + 1]).double()  # fp32 product, then widened
        radius = torch.sqrt(-2.0 * torch.log(u1))
        out[:, pair] = radius * torch.cos(theta)
        out[:, pair + 1] = radius * torch.sin(theta)
    return out.reshape(-1)[:n].to(dtype)


# --------------------------------------------------------------------------------------------------
# Noise-stream bookkeeping shared by the sampler, the inference loop and the multi-tensor op.
# --------------------------------------------------------------------------------------------------


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 64-bit seed drawn from torch's random generator (the default one unless ``generator``).

    Two 32-bit draws, so ``torch.manual_seed`` makes the result reproducible and successive calls give
    different seeds.
    """
    words = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator).tolist()
    return (words[1] << 32) | words[0]


class NoiseStream:
    """Where a chain's noise comes from: a 64-bit key and the next unused counter.

    One call of the fused step over ``n`` latents consumes :func:`offset_increment` ``(n)`` counters; a
    multi-tensor call consumes the sum over its tensors (tensor ``i`` starts at ``offset + Σ_{j<i}``).
    Every consumer reserves its counters with :meth:`take`, so no noise is ever reused, and counters wrap
    modulo ``2**64`` as the kernels' do.

    Parameters
    ----------
    seed : int, optional
        Unsigned 64-bit key; ``None`` draws one with :func:`draw_seed`.
    offset : int
        First unused counter.
    """

    __slots__ = ("seed", "offset")

    def __init__(self, seed: int | None = None, offset: int = 0) -> None:
        self.seed = draw_seed() if seed is None else _check_u64("seed", seed)
        self.offset = _check_u64("offset", offset)

    @staticmethod
    def advance(offset: int, numel: int, steps: int = 1) -> int:
        """The counter after ``steps`` calls over ``numel`` latents starting at ``offset``."""
        return (offset + steps * offset_increment(numel)) % (UINT64_MAX + 1)

    def reserve(self, counters: int) -> int:
        """Reserve ``counters`` counters; return the first one."""
        start = self.offset
        self.offset = (start + counters) % (UINT64_MAX + 1)
        return start

    def take(self, numel: int, steps: int = 1) -> int:
        """Reserve the counters of ``steps`` calls over ``numel`` latents; return the first one."""
        return self.reserve(steps * offset_increment(numel))

    def take_many(self, numels: list[int]) -> int:
        """Reserve the counters of one multi-tensor call over tensors of ``numels``; return the first."""
        return self.reserve(foreach_offsets(0, numels)[1])

    def rng_state(self, step: int = 1, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """The int64 ``[seed, offset, step]`` tensor of the fused op's capturable mode at this position."""
        return torch.tensor(
            [to_int64(self.seed), to_int64(self.offset), int(step)], dtype=torch.int64, device=device
        )

    def state_dict(self) -> dict[str, int]:
        """``{"seed": ..., "offset": ...}``."""
        return {"seed": self.seed, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.seed = _check_u64("seed", state["seed"])
        self.offset = _check_u64("offset", state["offset"])

    def __repr__(self) -> str:
        return f"NoiseStream(seed={self.seed}, offset={self.offset})"


__all__ += ["draw_seed", "NoiseStream"]
