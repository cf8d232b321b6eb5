"""`python -m qat.train`: one entry point for FP pretraining (`--recipe fp`) and QAT with any recipe.

Bad input ends with one `error: ...` line on stderr and exit status 2; a failed run with exit 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import RunConfig
from .models import model_names
from .recipes import RECIPES, MethodConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage dump
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def _bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bits must be an integer between 2 and 8, got {text!r}") from None
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"--bits must be between 2 and 8, got {bits}")
    return bits


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(config_cls: type[RunConfig] = RunConfig, models: list[str] | None = None,
                 prog: str = "python -m qat.train") -> argparse.ArgumentParser:
    """The CLI of `config_cls` (RunConfig, or a task's subclass with its own presets and models)."""
    p = _Parser(prog=prog, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = config_cls()
    models = models or model_names()
    p.add_argument("--model", default=d.model if d.model in models else models[0], choices=models, metavar="NAME",
                   help=f"one of: {', '.join(models)}")
    p.add_argument("--recipe", default=d.recipe, choices=["fp"] + sorted(RECIPES), metavar="NAME",
                   help=f"fp or one of: {', '.join(sorted(RECIPES))}")
    p.add_argument("--bits", type=_bits, default=d.bits, help="weight and activation bits (2-8)")
    p.add_argument("--preset", default=d.preset, choices=sorted(config_cls.presets))
    for f in dataclasses.fields(config_cls):
        if f.name in ("model", "recipe", "bits", "preset", "methods"):
            continue
        default = getattr(d, f.name)
        if isinstance(default, bool):
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {int: int, float: float}.get(type(default), None)
            if f.name in ("epochs", "batch_size", "train_subset", "max_iterations", "imgsz"):
                kind = int
            elif f.name == "lr":
                kind = float
            p.add_argument(_flag(f.name), type=kind or str, default=default)
    methods = p.add_argument_group("method hyper-parameters (SPEC defaults)")
    for f in dataclasses.fields(MethodConfig):
        if f.name == "extra":
            continue
        kind = int if f.name == "adaround_iterations" else float
        methods.add_argument(_flag(f.name), type=kind, default=f.default)
    return p


def parse_config(argv=None, config_cls: type[RunConfig] = RunConfig, **parser_kwargs) -> RunConfig:
    args = vars(build_parser(config_cls, **parser_kwargs).parse_args(argv))
    method_names = {f.name for f in dataclasses.fields(MethodConfig)}
    methods = MethodConfig(**{k: v for k, v in args.items() if k in method_names})
    cfg = config_cls(**{k: v for k, v in args.items() if k not in method_names}, methods=methods)
    if cfg.calib_split not in ("train", "val"):
        raise SystemExit(_error(f"--calib-split must be 'train' or 'val', got {cfg.calib_split!r}"))
    from .prepare.cle import RELU6_MODES
    if cfg.cle_relu6 not in RELU6_MODES:
        raise SystemExit(_error(f"--cle-relu6 must be one of {', '.join(RELU6_MODES)}, got {cfg.cle_relu6!r}"))
    return cfg


def _error(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 2


def main(argv=None, config_cls: type[RunConfig] = RunConfig, trainer_cls=None, **parser_kwargs) -> int:
    cfg = parse_config(argv, config_cls, **parser_kwargs)
    from .run_dir import BUSY_EXIT, RunBusy
    from .train.checkpoint import CheckpointError
    from .train.classification import NonFiniteLoss, Trainer
    from .train.distributed import teardown
    try:
        (trainer_cls or Trainer)(cfg).run()
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        return _error(str(e))
    except RunBusy as e:
        _error(str(e))
        return BUSY_EXIT
    except NonFiniteLoss as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: rerun with --resume to continue from the last epoch\n")
        return 130
    finally:
        teardown()
    return 0
