"""``lpc-fast``: train, sample, evaluate and demo from the command line.

Subcommands::

    lpc-fast train --method lpc|vae|pc --dataset digits --steps N --seed S --out DIR [--resume]
                   [--config FILE.json] [any TrainConfig field as --field-name, ModelConfig fields as
                   --model-field-name; booleans as --flag / --no-flag; "none" for optional values]
    lpc-fast sample --checkpoint PATH --out PNG [--n 64] [--seed 0]
    lpc-fast eval --checkpoint PATH --dataset NAME --json OUT [--num-is-samples K] [--split test]
    lpc-fast demo [--steps N] [--out DIR]
    lpc-fast reproduce [...]        (lpc_fast.eval.reproduce: the paper's comparisons)

Path options are checked before any work starts (:mod:`lpc_fast._paths`): an output file given without
its extension gets it (with a note on stderr), an input given without it is found with it, a run directory
stands for its ``checkpoint.pt``; anything unusable is one line naming the option and what it expects.

Option precedence: defaults < ``--config`` file < explicit options; with ``--resume`` the checkpoint's
config replaces the defaults.

Exit status: 0 success; 2 invalid input (one line on stderr naming the option, file or dataset: bad
options, config files, datasets, checkpoints, unavailable backends or devices, unwritable paths);
3 training diverged (the batch energy exploded; the last good state is checkpointed); 4 a non-finite
energy or gradient under ``--nonfinite-policy raise`` (last good state checkpointed); 130 interrupted
by SIGINT/SIGTERM (checkpoint written, continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

__all__ = ["main", "build_parser", "DEMO_STEPS", "EXIT_DIVERGED", "EXIT_NONFINITE", "config_from_args"]

#: Steps of ``lpc-fast demo``: enough for digit-like samples on 2 CPU cores in a few minutes.
DEMO_STEPS = 3000
#: Output directory of ``lpc-fast demo``.
DEMO_OUT = "runs/demo"
_MODEL_PREFIX = "model-"
_EXIT_USAGE = 2
#: Exit status of a run stopped by the divergence guard.
EXIT_DIVERGED = 3
#: Exit status of a run stopped by a non-finite chain under ``--nonfinite-policy raise``.
EXIT_NONFINITE = 4


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def _path_specs() -> dict[str, Any]:
    """The :class:`~lpc_fast._paths.PathArg` of each path option, by name (see build_parser)."""
    from lpc_fast._paths import NPZ_DATASET, OUT_DIR, PathArg
    from lpc_fast.train.checkpoint import CHECKPOINT_NAME

    return {
        "out_dir": OUT_DIR,
        "npz": NPZ_DATASET,
        "config": PathArg("in-file", "a JSON file of settings", "config", exts=(".json",)),
        "data_root": PathArg("in-dir", "an existing data directory", "data-dir"),
        "checkpoint": PathArg(
            "in-file",
            f"a checkpoint file (or a run directory holding {CHECKPOINT_NAME})",
            "checkpoint",
            exts=(".pt",),
            dir_entry=CHECKPOINT_NAME,
        ),
        "png": PathArg("out-file", "a PNG image file", "png", exts=(".png",)),
        "json": PathArg("out-file", "a JSON file", "json", exts=(".json",)),
        "features": PathArg(
            "in-file",
            "a TorchScript feature network or Inception weights file",
            "features",
            prefixes=("torchscript:", "inception:"),
        ),
    }


#: TrainConfig fields that hold paths -> key of _path_specs(); checked on the resolved config.
_TRAIN_PATH_FIELDS = {"out": "out_dir", "data_root": "data_root", "dataset": "npz"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, no usage dump
        self.exit(_EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- option generation from the config dataclasses ----------------------------------------------------


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    from lpc_fast.train.config import _strip_optional

    return _strip_optional(tp)


def _value_parser(tp: Any, optional: bool) -> Any:
    """An argparse ``type=`` callable for field type ``tp`` with a clear 'expected ...' message."""

    def none_or(fn):
        def parse(text: str):
            if optional and text.strip().lower() in ("none", "null"):
                return None
            return fn(text)

        parse.__name__ = getattr(fn, "__name__", "value")
        return parse

    def as_int(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None

    def as_float(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None

    if tp is int:
        return none_or(as_int)
    if tp is float:
        return none_or(as_float)
    if get_origin(tp) in (tuple, list):
        item = next((a for a in get_args(tp) if a is not Ellipsis), str)
        conv = as_int if item is int else as_float if item is float else str

        def as_seq(text: str):
            parts = [p for p in text.replace(" ", "").split(",") if p]
            try:
                return [conv(p) for p in parts]
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"expected comma-separated values ({exc})") from None

        return none_or(as_seq)
    return none_or(str)


def _positive_int(text: str) -> int:
    """argparse ``type=`` of counts, checked while parsing (before any path option or file is read)."""
    value = _value_parser(int, False)(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_dataclass_options(
    group: Any, cls: type, prefix: str, dest_prefix: str, skip: set[str], paths: dict[str, Any] | None = None
) -> None:
    from lpc_fast._paths import mark_path
    from lpc_fast.train.config import field_choices

    paths = paths or {}

    hints = typing.get_type_hints(cls)
    doc_lines = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _strip_optional(hints[f.name])
        flag = "--" + prefix + f.name.replace("_", "-")
        dest = dest_prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = (doc_lines.get(f.name, "") + f" (default: {default})").strip()
        choices = field_choices(tp)
        if tp is bool:
            group.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif choices is not None:
            allowed = list(choices) + (["none"] if optional else [])
            group.add_argument(
                flag,
                dest=dest,
                type=_choice_parser(choices, optional),
                default=argparse.SUPPRESS,
                metavar="{" + ",".join(map(str, allowed)) + "}",
                help=help_text,
            )
        else:
            action = group.add_argument(
                flag,
                dest=dest,
                type=_value_parser(tp, optional),
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=help_text,
            )
            if f.name in paths:
                mark_path(action, paths[f.name])


def _choice_parser(choices: tuple[Any, ...], optional: bool) -> Any:
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, choices))}; got {text!r}")
        return text

    return parse


def _field_docs(cls: type) -> dict[str, str]:
    """Each attribute's description from a NumPy-style ``Attributes`` section, as plain text."""
    import re

    lines = (cls.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    names: list[str] = []
    desc: list[str] = []
    indent = None

    def flush() -> None:
        text = " ".join(desc)
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
        for n in names:
            out.setdefault(n, text)

    for line in lines:
        s = line.strip()
        depth = len(line) - len(line.lstrip())
        if " : " in s and (indent is None or depth <= indent):
            flush()
            names = [n.strip() for n in s.split(" : ")[0].split(",")]
            desc, indent = [], depth
        elif names and s and depth > (indent or 0):
            desc.append(s)
        elif names and not s:
            continue
    flush()
    return out


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from lpc_fast._paths import path_option
    from lpc_fast.models import ModelConfig
    from lpc_fast.train.config import TrainConfig

    specs = _path_specs()
    path_option(
        p,
        "--config",
        path=specs["config"],
        dest="config_file",
        metavar="FILE.json",
        help="read settings from a JSON file",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint (bit-identical)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_paths = {name: specs[key] for name, key in _TRAIN_PATH_FIELDS.items()}
    _add_dataclass_options(p.add_argument_group("training"), TrainConfig, "", "cfg__", {"model"}, train_paths)
    _add_dataclass_options(p.add_argument_group("model"), ModelConfig, _MODEL_PREFIX, "model__", set())


def build_parser() -> argparse.ArgumentParser:
    """The ``lpc-fast`` argument parser (options generated from the config dataclasses)."""
    from lpc_fast._paths import path_option

    specs = _path_specs()
    parser = _Parser(prog="lpc-fast", description="Langevin predictive coding: train, sample, evaluate.")
    sub = parser.add_subparsers(
        dest="command", metavar="{train,sample,eval,demo,reproduce}", parser_class=_Parser
    )
    sub.required = True

    train = sub.add_parser(
        "train", help="train a model (writes config.json, metrics.jsonl, checkpoint.pt, PNGs)"
    )
    _add_train_options(train)

    sample = sub.add_parser("sample", help="write a grid of model samples from a checkpoint")
    path_option(sample, "--checkpoint", path=specs["checkpoint"], required=True, metavar="PATH")
    path_option(sample, "--out", path=specs["png"], required=True, metavar="PNG")
    sample.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    sample.add_argument(
        "--seed", type=_value_parser(int, False), default=0, help="prior noise seed (default 0)"
    )

    ev = sub.add_parser("eval", help="importance-sampled log-likelihood and other metrics of a checkpoint")
    path_option(ev, "--checkpoint", path=specs["checkpoint"], required=True, metavar="PATH")
    path_option(
        ev, "--dataset", path=specs["npz"], default=None, help="dataset name (default: the training dataset)"
    )
    ev.add_argument("--split", default="test", help="dataset split (default test)")
    path_option(
        ev,
        "--json",
        path=specs["json"],
        dest="json_out",
        required=True,
        metavar="OUT",
        help="where to write the metrics",
    )
    ev.add_argument("--num-is-samples", type=_positive_int, default=1000, help="K (default 1000)")
    path_option(
        ev,
        "--feature-space",
        path=specs["features"],
        default="default",
        metavar="SPEC",
        help="sample-quality features: default (a CNN trained once on the training split and cached), "
        "inception:PATH or torchscript:PATH",
    )
    ev.add_argument(
        "--num-eval-points",
        type=_positive_int,
        default=500,
        help="test points scored (default 500)",
    )
    ev.add_argument(
        "--num-generated",
        type=_positive_int,
        default=2000,
        help="generated images for sample-quality metrics (default 2000)",
    )
    ev.add_argument(
        "--seed", type=_value_parser(int, False), default=0, help="evaluation noise seed (default 0)"
    )

    demo = sub.add_parser("demo", help=f"train LPC on digits for {DEMO_STEPS} steps and write samples.png")
    demo.add_argument("--steps", type=_value_parser(int, False), default=DEMO_STEPS)
    path_option(
        demo, "--out", path=specs["out_dir"], default=DEMO_OUT, help=f"output directory (default {DEMO_OUT})"
    )
    demo.add_argument(
        "--num-threads", type=_value_parser(int, False), default=1, help="torch CPU threads (default 1)"
    )
    demo.add_argument("--no-progress", action="store_true")

    # Its options belong to lpc_fast.eval.reproduce, which parses them itself (see main()).
    sub.add_parser(
        "reproduce",
        add_help=False,
        help="train every method over several seeds, evaluate, and test the paper's claims "
        "(lpc-fast reproduce --help)",
    )
    return parser


def config_from_args(args: argparse.Namespace):
    """Resolve the TrainConfig of ``lpc-fast train``: defaults < checkpoint (resume) < file < options."""
    from lpc_fast.train.checkpoint import load_latest
    from lpc_fast.train.config import ConfigError, TrainConfig

    explicit_train = {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__")}
    explicit_model = {k[7:]: v for k, v in vars(args).items() if k.startswith("model__")}
    file_cfg: dict[str, Any] = {}
    if args.config_file:
        try:
            text = Path(args.config_file).read_text()
        except OSError as exc:
            raise UsageError(f"--config: cannot read {args.config_file}: {exc.strerror or exc}") from None
        try:
            file_cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--config: {args.config_file} is not valid JSON: {exc}") from None
        if not isinstance(file_cfg, dict):
            raise UsageError(f"--config: {args.config_file} must hold a JSON object of settings")
        try:  # names an unknown or mistyped key, and the file, before anything runs
            TrainConfig.from_dict(file_cfg)
        except ConfigError as exc:
            key = exc.option
            detail = str(exc).split(": ", 1)[-1]
            raise UsageError(f"--config: {args.config_file}: key {key!r}: {detail}") from None
    base = TrainConfig().to_dict()
    if args.resume:
        out = explicit_train.get("out", file_cfg.get("out", base["out"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # run_training reports a corrupt checkpoint once
            found = load_latest(out)
        if found is not None:
            base = dict(found[0]["config"])
    merged = dict(base)
    for k, v in file_cfg.items():
        if k == "model":
            merged["model"] = {**merged["model"], **v}
        else:
            merged[k] = v
    merged.update(explicit_train)
    merged["model"] = {**merged["model"], **explicit_model}
    return TrainConfig.from_dict(merged).validate()


# -- subcommands ---------------------------------------------------------------------------------------


def _check_config_paths(config: Any, note: Any) -> None:
    """Resolve the path fields of a TrainConfig (from options, a config file or defaults) in place."""
    from lpc_fast._paths import OUT_DIR

    specs = _path_specs()
    for name, key in _TRAIN_PATH_FIELDS.items():
        value = getattr(config, name)
        if value is None:
            continue
        spec = OUT_DIR if name == "data_root" and config.download else specs[key]  # downloads go there
        flag = "--" + name.replace("_", "-")
        setattr(config, name, spec.resolve(value, flag, note))


def _cmd_train(args: argparse.Namespace) -> int:
    from lpc_fast.train.loop import run_training

    config = config_from_args(args)
    _check_config_paths(config, args.note)
    result = run_training(config, resume=args.resume, progress=not args.no_progress)
    return _report(result)


def _report(result) -> int:
    if result.interrupted:
        return 130
    if result.samples_png is not None:
        print(f"samples: {result.samples_png}")
        print(f"reconstructions: {result.reconstructions_png}")
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lpc_fast.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
    from lpc_fast.train.config import TrainConfig
    from lpc_fast.train.loop import run_training

    out = Path(args.out)
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):  # the demo is disposable: start over each time
        if (out / name).exists():
            (out / name).unlink()
    # One thread: the default model is small enough that threading only adds overhead, and a
    # shared 2-core machine slows down badly when oversubscribed.
    config = TrainConfig(
        steps=args.steps, out=str(out), checkpoint_every=max(1, args.steps // 4), num_threads=args.num_threads
    ).validate()
    result = run_training(config, progress=not args.no_progress)
    return _report(result)


def _load(path: str, note: Any):
    from lpc_fast.train.checkpoint import LegacyCheckpointWarning, load_checkpoint
    from lpc_fast.train.loop import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LegacyCheckpointWarning)
        state = load_checkpoint(path)
    for w in caught:  # one line, not Python's two-line warning display
        if issubclass(w.category, LegacyCheckpointWarning):
            note(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    model, config = load_model(state)
    return state, model, config


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from lpc_fast.train.images import save_image_grid

    _, model, _ = _load(args.checkpoint, args.note)
    with torch.no_grad():
        images = model.sample(args.n, torch.Generator().manual_seed(args.seed))
    path = save_image_grid(images, args.out)
    print(f"samples: {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from lpc_fast.data import load_dataset
    from lpc_fast.eval import evaluate_model
    from lpc_fast.train.lpc import posterior_chain_fn

    state, model, config = _load(args.checkpoint, args.note)
    name = args.dataset or config.dataset
    data = load_dataset(name, args.split, root=config.data_root, download=False)
    if tuple(data.shape) != tuple(state["data"]["shape"]):
        raise UsageError(
            f"--dataset: {name} has images of shape {tuple(data.shape)}, the model was trained on "
            f"{tuple(state['data']['shape'])}"
        )
    chain_fn = (
        None
        if getattr(model, "encoder", None) is not None
        else posterior_chain_fn(model, config, seed=args.seed)
    )
    metrics = evaluate_model(
        model,
        data,
        num_is_samples=args.num_is_samples,
        num_eval_points=args.num_eval_points,
        num_generated=args.num_generated,
        generator=torch.Generator().manual_seed(args.seed),
        chain_fn=chain_fn,
        feature_space=_feature_space(args.feature_space, data),
    )
    metrics = {"checkpoint": str(args.checkpoint), "dataset": name, "split": args.split, **metrics}
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)  # checked writable before the evaluation
    out.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    print(f"metrics: {out}")
    return 0


def _feature_space(spec: str, data: Any) -> Any:
    from lpc_fast.eval.evaluate import make_feature_space

    try:
        return make_feature_space(spec, data)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise UsageError(f"--feature-space: {str(exc).strip().splitlines()[0]}") from None


def _json_default(obj: Any) -> Any:
    try:
        return obj.item() if obj.numel() == 1 else obj.tolist()
    except AttributeError:
        return str(obj)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of :func:`build_parser`'s parser, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


_COMMANDS = {
    "train": _cmd_train,
    "demo": _cmd_demo,
    "sample": _cmd_sample,
    "eval": _cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lpc-fast`` / ``python -m lpc_fast``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:
        from lpc_fast.eval.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from lpc_fast import BackendUnavailableError
    from lpc_fast._paths import PathArgError, resolve_path_args
    from lpc_fast.data import DatasetError
    from lpc_fast.train.checkpoint import CheckpointError
    from lpc_fast.train.config import ConfigError
    from lpc_fast.train.faults import DivergenceError, NonFiniteError

    def fail(exc: BaseException, code: int) -> int:
        print(f"lpc-fast {args.command}: error: {exc}", file=sys.stderr)
        return code

    def note(message: str) -> None:
        print(f"lpc-fast {args.command}: note: {message}", file=sys.stderr)

    args.note = note
    try:
        # Every path option is checked before any work (train's, on the resolved config).
        sub = _subcommands(parser)[args.command]
        config_fields = {"cfg__" + name for name in _TRAIN_PATH_FIELDS} if args.command == "train" else ()
        resolve_path_args(sub, args, note, skip=config_fields)
        return _COMMANDS[args.command](args)
    except (
        UsageError,
        PathArgError,
        ConfigError,
        DatasetError,
        CheckpointError,
        BackendUnavailableError,
    ) as exc:
        return fail(exc, _EXIT_USAGE)
    except DivergenceError as exc:
        return fail(exc, EXIT_DIVERGED)
    except NonFiniteError as exc:
        return fail(exc, EXIT_NONFINITE)
    except OSError as exc:  # an unwritable --out, a full disk...: the path and the reason, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}", _EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"lpc-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
