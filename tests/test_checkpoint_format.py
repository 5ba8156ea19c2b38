"""The checkpoint file: plain `torch.load(weights_only=True)` reads it, checksummed; old files still load."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch

from lpc_fast.cli import main
from lpc_fast.train import CheckpointError, load_checkpoint
from lpc_fast.train.checkpoint import (
    CHECKPOINT_NAME,
    LegacyCheckpointWarning,
    convert_checkpoint,
    decode_checkpoint,
    encode_checkpoint,
    state_digest,
)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--batch-size", "16", "--num-langevin-steps", "4", "--model-latent-dim", "4"]
TINY += ["--model-mlp-hidden", "16", "--num-threads", "1", "--png-samples", "4", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    torch.set_num_threads(1)
    assert main(["train", *TINY, "--steps", "3", "--out", str(out)]) == 0
    return out


def _plain(obj, where="ckpt"):
    """Assert ``obj`` holds only tensors, numbers, strings, None and dicts/lists/tuples of those."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), where
            _plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)), (where, type(obj))


def test_plain_torch_load_reads_a_fresh_checkpoint(run):
    ckpt = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    _plain(ckpt)
    assert ckpt["format"] == "lpc_fast.checkpoint" and ckpt["format_version"] == 2
    assert ckpt["sha256"] == state_digest(ckpt)
    trainer = ckpt["trainer"]
    assert trainer["step"] == 3
    assert {"model", "opt_theta", "opt_phi", "sampler", "order", "noise_gen"} <= trainer.keys()
    assert ckpt["config"]["steps"] == 3 and ckpt["data"]["shape"] == [1, 8, 8]
    # The decoder's own state dict shares its tensors with the model's.
    for key, value in ckpt["decoder"].items():
        assert torch.equal(value, trainer["model"]["decoder." + key])
    # lpc_fast's loader returns the same state without the format entries.
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state.keys() == ckpt.keys() - {"format", "format_version", "sha256"}


def test_readme_three_lines_load_the_decoder(run, monkeypatch):
    """The README's snippet, run as written (on this run's checkpoint)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- checkpoint-three-lines[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost its checkpoint snippet"
    code = block.group(1)
    assert len([ln for ln in code.splitlines() if ln.strip()]) == 3  # (the formatter adds a blank line)
    monkeypatch.chdir(run.parent)
    code = code.replace("runs/lpc/checkpoint.pt", str(run / CHECKPOINT_NAME))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    decoder = scope["decoder"]
    assert isinstance(decoder, torch.nn.Module)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    # A plain module of the same layout loaded from ckpt["decoder"] computes the same thing.
    own = torch.nn.Module()
    own.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 64))
    own.load_state_dict(scope["ckpt"]["decoder"])
    with torch.no_grad():
        assert torch.equal(own.net(z).reshape(5, 1, 8, 8), decoder(z))


def test_bit_flip_torn_and_foreign_files_are_clear_errors(run, tmp_path):
    good = (run / CHECKPOINT_NAME).read_bytes()
    weight = torch.load(io.BytesIO(good), weights_only=True)["decoder"]["net.0.weight"]
    at = good.find(weight.numpy().tobytes())
    assert at > 0
    flipped = bytearray(good)
    flipped[at + 5] ^= 0x10
    torch.load(io.BytesIO(bytes(flipped)), weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode_checkpoint(bytes(flipped), "f.pt")
    for n in (0, 1, len(good) // 2, len(good) - 1):
        with pytest.raises(CheckpointError, match="truncated") as info:
            decode_checkpoint(good[:n], "t.pt")
        assert "\n" not in str(info.value)
    other = io.BytesIO()
    torch.save({"weight": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not an lpc_fast checkpoint"):
        decode_checkpoint(other.getvalue(), "o.pt")
    with pytest.raises(ValueError, match="reserved"):
        encode_checkpoint({"sha256": "x"})


def test_digest_is_canonical_and_type_exact():
    t = torch.arange(12.0).reshape(3, 4)
    assert state_digest({"a": t.t().contiguous()}) == state_digest(
        {"a": t.t().clone(memory_format=torch.contiguous_format)}
    )
    assert state_digest({"a": t.t()}) == state_digest({"a": t.t().contiguous()})  # layout is not content
    values = [1, 1.0, True, "1", torch.tensor(1), torch.tensor(1.0), [1], (1,), None, {"1": 1}]
    assert len({state_digest({"a": v}) for v in values}) == len(values)
    assert state_digest({"a": float("nan")}) == state_digest({"a": float("nan")})
    assert state_digest({"a": 0.0}) != state_digest({"a": -0.0})
    with pytest.raises(TypeError, match=r"state\['a'\]"):
        state_digest({"a": object()})


def _legacy_bytes(state: dict) -> bytes:
    """The previous writer: a text header with the payload's SHA-256, then the torch.save payload."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return b"LPCFAST-CKPT\n" + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload


def test_previous_format_still_loads_and_resumes_bit_identically(run, tmp_path, capsys):
    state = load_checkpoint(run / CHECKPOINT_NAME)
    old = tmp_path / "old.pt"
    old.write_bytes(_legacy_bytes(state))
    with pytest.raises(pickle.UnpicklingError):  # what users hit before: torch.load cannot read it
        torch.load(old, weights_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_checkpoint(old)
    assert [w.category for w in caught] == [LegacyCheckpointWarning]
    assert "\n" not in str(caught[0].message) and "convert_checkpoint" in str(caught[0].message)
    assert torch.equal(
        loaded["trainer"]["model"]["decoder.net.0.weight"], state["trainer"]["model"]["decoder.net.0.weight"]
    )
    bad = bytearray(old.read_bytes())
    bad[-30] ^= 0x01
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode_checkpoint(bytes(bad), "bad.pt")

    # The command line: one note line, then it works.
    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(old), "--out", str(png), "--n", "4"]) == 0
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if "previous lpc_fast format" in ln]) == 1, err
    assert "Traceback" not in err and png.is_file()

    # A run whose checkpoint is in the previous format resumes bit-identically.
    ref = tmp_path / "ref"
    assert main(["train", *TINY, "--steps", "5", "--out", str(ref)]) == 0
    part = tmp_path / "part"
    assert main(["train", *TINY, "--steps", "3", "--out", str(part)]) == 0
    ckpt = part / CHECKPOINT_NAME
    ckpt.write_bytes(_legacy_bytes(load_checkpoint(ckpt)))
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "5", "--out", str(part), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "previous lpc_fast format" in err and "resuming from" in err, err
    got, want = (
        load_checkpoint(ckpt)["trainer"]["model"],
        load_checkpoint(ref / CHECKPOINT_NAME)["trainer"]["model"],
    )
    assert all(torch.equal(got[k], want[k]) for k in want)
    torch.load(ckpt, weights_only=True)  # the resumed run wrote the current format

    # Converting in place.
    assert convert_checkpoint(old) == old
    converted = torch.load(old, weights_only=True)
    assert converted["sha256"] == state_digest(converted)
    assert torch.equal(
        converted["trainer"]["model"]["decoder.net.0.weight"],
        state["trainer"]["model"]["decoder.net.0.weight"],
    )
