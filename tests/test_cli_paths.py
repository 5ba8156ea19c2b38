"""Every path option of every ``lpc-fast`` command: a missing extension, a directory, a read-only
location, a missing parent directory and a file in place of a directory.

The options are enumerated from the argparse parsers themselves (each path option carries a
:class:`lpc_fast._paths.PathArg`), and a guard test fails for any option that looks like a path but
carries none, so a new path option cannot escape the sweep.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lpc_fast import cli
from lpc_fast._paths import path_actions
from lpc_fast.cli import build_parser, main
from lpc_fast.eval.reproduce import cli as repro_cli

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

# A tiny run: 8x8 digits, 4 latents, small MLP, short chains, one thread.
TINY = ["--dataset", "digits", "--batch-size", "16", "--num-langevin-steps", "4", "--model-latent-dim", "4"]
TINY += ["--model-mlp-hidden", "16", "--num-threads", "1", "--png-samples", "4", "--no-progress"]

# Root ignores permission bits, so a chmod-ed directory is writable in these tests (which run as root).
# procfs lets nobody, root included, create files in it (the attempt fails with ENOENT or EACCES):
# a read-only location for every user on Linux.
READ_ONLY = Path("/proc")


def _parsers() -> dict[str, object]:
    subs = cli._subcommands(build_parser())
    subs["reproduce"] = repro_cli.build_parser()  # parses its own options (see lpc_fast.cli.main)
    return subs


def _path_options() -> list[tuple[str, str, object]]:
    return [
        (cmd, action.option_strings[0], spec)
        for cmd, parser in _parsers().items()
        for action, spec in path_actions(parser)
    ]


PATH_OPTIONS = _path_options()
CASES = ("missing-extension", "directory", "read-only", "missing-parent", "file-as-parent")

# Options whose name or help looks like a path but which are not paths (what each one is instead).
NOT_PATHS = {
    ("train", "--checkpoint-every"): "a step count",
    ("train", "--png-samples"): "an image count",
}
_PATHY = re.compile(r"path|file|dir|root|out\b|json|checkpoint|config|dataset|feature|png|npz", re.I)


def test_every_path_like_option_carries_a_path_spec():
    """A new option named or documented like a path must carry a PathArg, or be listed above."""
    assert {(c, f) for c, f, _ in PATH_OPTIONS} >= {
        ("train", "--config"),
        ("train", "--out"),
        ("train", "--data-root"),
        ("train", "--dataset"),
        ("sample", "--checkpoint"),
        ("sample", "--out"),
        ("eval", "--checkpoint"),
        ("eval", "--json"),
        ("eval", "--feature-space"),
        ("eval", "--dataset"),
        ("demo", "--out"),
        ("reproduce", "--out"),
        ("reproduce", "--dataset"),
    }
    marked = {(c, f) for c, f, _ in PATH_OPTIONS}
    look_alikes = set()
    for cmd, parser in _parsers().items():
        for action in parser._actions:
            if not action.option_strings or action.option_strings[0] in ("-h", "--help"):
                continue
            flag = action.option_strings[0]
            looks = _PATHY.search(" ".join(action.option_strings)) or re.search(
                r"PATH|FILE|DIR", f"{action.metavar or ''} {action.help or ''}"
            )
            if looks and (cmd, flag) not in marked:
                assert (cmd, flag) in NOT_PATHS, f"{cmd} {flag} looks like a path option but has no PathArg"
                look_alikes.add((cmd, flag))
    assert look_alikes == NOT_PATHS.keys()  # the exceptions stay exactly the options that need one


# -- the sweep ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    """One valid existing file (or directory) for each role of an input path option."""
    root = tmp_path_factory.mktemp("examples")
    run = root / "run"
    torch.set_num_threads(1)
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    features = root / "proj.pt"
    proj = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    torch.jit.save(torch.jit.script(proj.eval()), str(features))
    npz = root / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 256, size=(400, 8, 8), dtype=np.uint8))
    config = root / "settings.json"
    config.write_text('{"steps": 1}\n')
    data_dir = root / "data"
    data_dir.mkdir()
    return {
        "checkpoint": run / "checkpoint.pt",
        "config": config,
        "features": features,
        "npz": npz,
        "data-dir": data_dir,
    }


def _base_argv(cmd: str, tmp: Path, ex: dict[str, Path]) -> list[str]:
    """A valid, fast invocation of ``cmd``; the option under test is appended (the last one wins)."""
    if cmd == "train":
        return ["train", *TINY, "--steps", "1", "--out", str(tmp / "run")]
    if cmd == "sample":
        return ["sample", "--checkpoint", str(ex["checkpoint"]), "--out", str(tmp / "s.png"), "--n", "4"]
    if cmd == "eval":
        return [
            "eval",
            "--checkpoint",
            str(ex["checkpoint"]),
            "--json",
            str(tmp / "e.json"),
            "--num-is-samples",
            "2",
            "--num-eval-points",
            "4",
            "--num-generated",
            "8",
            "--feature-space",
            f"torchscript:{ex['features']}",
        ]
    if cmd == "demo":
        return ["demo", "--steps", "1", "--num-threads", "1", "--no-progress", "--out", str(tmp / "demo")]
    if cmd == "reproduce":
        return ["reproduce", "--quick", "--out", str(tmp / "rep")]
    raise AssertionError(f"no base invocation for {cmd}: add one")


def _case(spec, case: str, tmp: Path, ex: dict[str, Path]) -> tuple[str, str, Path | None]:
    """(path text, expected outcome "ok" or "error", the file an accepted output must create)."""
    ext = spec.exts[0] if spec.exts else ""
    writes = spec.kind.startswith("out")
    if case == "missing-extension":
        if spec.kind == "out-file":
            return str(tmp / "new" / "name"), "ok", tmp / "new" / ("name" + ext)
        if spec.kind == "in-file":
            src = ex[spec.role]
            stem = tmp / "copy"
            shutil.copy(src, stem.with_name("copy" + ext))
            return str(stem), "ok", None
        target = tmp / "plain"
        if spec.kind == "in-dir":
            target.mkdir()
        return str(target), "ok", None  # directories take no extension
    if case == "directory":
        d = tmp / "adir"
        d.mkdir()
        return str(d), "ok" if spec.kind.endswith("dir") else "error", None
    if case == "read-only":
        return str(READ_ONLY / "lpc-fast-test" / ("x" + ext)), "error", None
    if case == "missing-parent":
        target = tmp / "no" / "such" / ("x" + ext)
        return str(target), "ok" if writes else "error", target if spec.kind == "out-file" else None
    if case == "file-as-parent":
        (tmp / "plain.txt").write_text("not a directory\n")
        return str(tmp / "plain.txt" / ("x" + ext)), "error", None
    raise AssertionError(case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("cmd", "flag", "spec"), PATH_OPTIONS, ids=[f"{c}{f}" for c, f, _ in PATH_OPTIONS])
def test_path_option_sweep(cmd, flag, spec, case, examples, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    text, expect, created = _case(spec, case, tmp_path, examples)
    prefix = spec.prefixes[0] if spec.prefixes else ""
    seen = {}
    if cmd == "reproduce":
        # The reproduction's own tests run it; here only what reaches it matters.
        def fake_run(cfg, out, **kwargs):
            seen.update(out=out, dataset=cfg.dataset)
            return {"claims": [{"claim": "c", "views": []}]}

        monkeypatch.setattr(repro_cli, "run_reproduction", fake_run)
    argv = [*_base_argv(cmd, tmp_path, examples), flag, prefix + text]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if expect == "error":
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1, err
        assert flag in lines[0] and "expected" in lines[0], err
        return
    assert code == 0, err
    if case == "missing-extension" and spec.exts:
        notes = [ln for ln in err.splitlines() if "note:" in ln and flag in ln]
        assert len(notes) == 1 and spec.exts[0] in notes[0], err
    if created is not None:
        assert created.is_file(), (created, err)
    if spec.kind == "out-dir" and cmd != "reproduce":
        assert Path(text).is_dir()
    if cmd == "reproduce" and flag == "--out":
        assert Path(seen["out"]) == Path(text)


def test_checkpoint_option_takes_a_run_directory(examples, tmp_path, capsys):
    run = examples["checkpoint"].parent
    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(run), "--out", str(png), "--n", "4"]) == 0
    assert png.is_file()
    assert f"reading {run / 'checkpoint.pt'}" in capsys.readouterr().err


def test_sample_without_png_extension_from_the_console(examples, tmp_path):
    """The reported case: ``--out s`` wrote nothing and ended in a PIL traceback."""
    from tests.test_cli import run_cli

    proc = run_cli(
        "sample", "--checkpoint", str(examples["checkpoint"]), "--out", str(tmp_path / "s"), "--n", "4"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").is_file()
    assert "Traceback" not in proc.stderr and "writing" in proc.stderr


def test_an_unchanged_path_keeps_its_spelling(examples, tmp_path, monkeypatch):
    """Resolved values are recorded (config.json) and compared on --resume: only real changes show."""
    from lpc_fast._paths import NPZ_DATASET, OUT_DIR

    monkeypatch.chdir(examples["npz"].parent)
    notes = []
    assert NPZ_DATASET.resolve("npz:./images.npz", "--dataset", notes.append) == "npz:./images.npz"
    assert NPZ_DATASET.resolve("npz:./images", "--dataset", notes.append) == "npz:images.npz"
    assert NPZ_DATASET.resolve("digits", "--dataset", notes.append) == "digits"  # not a path
    assert OUT_DIR.resolve("./runs/x/", "--out", notes.append) == "./runs/x/"
    assert len(notes) == 1 and "--dataset" in notes[0]
