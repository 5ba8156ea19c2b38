"""The RNG contract (LPC.md §5) of lpc_fast.rng against independent known answers."""

from __future__ import annotations

import math

import pytest
import torch

from lpc_fast import rng


def _words(*values: int) -> list[torch.Tensor]:
    return [torch.tensor([v], dtype=torch.int64) for v in values]


# Random123's published known-answer vectors for philox4x32_10 (kat_vectors): counter, key, output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox4x32_10_matches_random123_known_answers(counter, key, expected):
    out = rng.philox4x32(*_words(*counter), *key)
    assert tuple(int(o) for o in out) == expected


def _scalar_philox(c0: int, c1: int, k0: int, k1: int) -> list[int]:
    """Plain-integer Philox4x32-10, written independently of the vectorised version."""
    c = [c0, c1, 0, 0]
    k = [k0, k1]
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
        k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
    return c


@pytest.mark.parametrize(
    "seed,offset",
    [(0, 0), (123, 7), (2**32 - 1, 2**32 - 2), (2**40 + 5, 2**33 + 1), (2**64 - 1, 2**64 - 3)],
)
def test_stream_layout_is_counter_offset_plus_i_div_4_lane_i_mod_4(seed, offset):
    n = 23
    words = rng.philox_uint32(n, seed=seed, offset=offset)
    for i in range(n):
        counter = (offset + i // 4) % 2**64
        expect = _scalar_philox(counter & 0xFFFFFFFF, counter >> 32, seed & 0xFFFFFFFF, seed >> 32)[i % 4]
        assert int(words[i]) == expect, i


def test_low_word_carries_into_high_word_and_stream_never_repeats():
    # Counters straddle 2**32: the high word must increment, so no block repeats an earlier one.
    offset = 2**32 - 3
    words = rng.philox_uint32(64, seed=9, offset=offset).view(-1, 4)
    blocks = {tuple(int(x) for x in row) for row in words}
    assert len(blocks) == words.shape[0]
    wrapped = rng.philox_uint32(4, seed=9, offset=0)  # what a carry-less counter would reuse
    assert tuple(int(x) for x in words[3]) != tuple(int(x) for x in wrapped)
    expect = _scalar_philox(0, 1, 9, 0)  # counter 2**32 -> words (0, 1)
    assert [int(x) for x in words[3]] == expect


def test_counter_wraps_modulo_2_64():
    words = rng.philox_uint32(8, seed=1, offset=2**64 - 1)
    assert [int(x) for x in words[4:]] == _scalar_philox(0, 0, 1, 0)


def test_uniform_map_matches_triton_definition():
    words = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 12345678], dtype=torch.int64)
    u = rng.uint32_to_uniform(words)
    scale = torch.tensor(rng.UINT_TO_UNIFORM_SCALE, dtype=torch.float32)
    for w, got in zip(words.tolist(), u.tolist()):
        x = w - 2**32 if w >= 2**31 else w
        x = -x - 1 if x < 0 else x
        want = (torch.tensor(float(x), dtype=torch.float32) * scale).item()
        assert got == want
    assert float(u.max()) < 1.0 and float(u.min()) >= 0.0


def test_normals_are_box_muller_of_lane_pairs():
    n = 16
    u = rng.philox_uniform(n, seed=5, offset=11).double().view(-1, 4)
    z = rng.philox_normal_reference(n, seed=5, offset=11).view(-1, 4)
    two_pi = float(torch.tensor(rng.TWO_PI_F32, dtype=torch.float32))
    for row_u, row_z in zip(u.tolist(), z.tolist()):
        for a in (0, 2):
            u1 = max(row_u[a], float(torch.tensor(1e-7, dtype=torch.float32)))
            th = float(
                torch.tensor(two_pi, dtype=torch.float32) * torch.tensor(row_u[a + 1], dtype=torch.float32)
            )
            r = math.sqrt(-2.0 * math.log(u1))
            assert row_z[a] == pytest.approx(r * math.cos(th), rel=1e-12, abs=1e-12)
            assert row_z[a + 1] == pytest.approx(r * math.sin(th), rel=1e-12, abs=1e-12)


def test_offset_increment_and_int64_carrier():
    assert [rng.offset_increment(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    for value in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert rng.to_uint64(rng.to_int64(value)) == value
        assert -(2**63) <= rng.to_int64(value) < 2**63
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        rng.to_int64(2**64)
    with pytest.raises(ValueError, match="seed"):
        rng.philox_uint32(4, seed=-1, offset=0)
