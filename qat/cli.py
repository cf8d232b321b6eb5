"""`python -m qat.run`: one entry point for FP pretraining (`--recipe fp`) and QAT with any recipe, of every
model: classifiers, SSD / YOLOX and the Ultralytics detectors (`--model` picks the task and its options).
`python -m qat.train` and `python -m qat.detection` are the same CLI (the latter defaults to yolov8n).

Bad input ends with one `error: ...` line on stderr and exit status 2; a failed run with exit 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from .cli_help import METHOD_HELP, RUN_HELP
from .config import TASK_FIELDS, ULTRALYTICS_DETECTORS, RunConfig, task_of
from .models import model_names
from .afw import LOSS_REDUCTIONS, REG_REDUCTIONS, THETA_INITS
from .prepare.pipeline import SCALEGRAD_LAYERS
from .recipes import RECIPES, MethodConfig


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage dump
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, every option's default after its help."""


# Option values checked while parsing, so bad input ends before anything trains or is written. A message
# names the value and what is allowed; argparse puts the option's name in front of it.
def _checked(convert, allowed: str, ok):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value
    parse.__name__ = allowed  # argparse names the type in some messages
    return parse


bits_value = _checked(int, "an integer between 2 and 8", lambda v: 2 <= v <= 8)
positive_int = _checked(int, "a positive integer", lambda v: v > 0)
non_negative_int = _checked(int, "an integer >= 0", lambda v: v >= 0)
non_negative_float = _checked(float, "a number >= 0", lambda v: v >= 0)
share = _checked(float, "a number in (0, 1]", lambda v: 0 < v <= 1)

# The type of each configuration field's option where the field's default does not say it (None defaults)
# or only some values make sense.
FIELD_TYPES = {"bits": bits_value, "first_last_bits": bits_value, "seed": non_negative_int,
               "epochs": positive_int, "batch_size": positive_int,
               "train_subset": positive_int, "max_iterations": positive_int, "imgsz": positive_int,
               "log_every": positive_int, "fig1_iterations": non_negative_int, "workers": non_negative_int,
               "lr": non_negative_float, "step_update_bound": non_negative_float, "fraction": share,
               "adaround_iterations": positive_int}
FIELD_CHOICES = {"calib_split": ("train", "val"), "afw_loss": LOSS_REDUCTIONS, "afw_theta_init": THETA_INITS,
                 "afw_reg": REG_REDUCTIONS, "scalegrad_layers": SCALEGRAD_LAYERS}


def check_device(text: str, ultralytics_ids: bool = False) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N` (and with `ultralytics_ids` Ultralytics' GPU lists "0" / "0,1"), a GPU
    only where torch sees one: the device's one-line error instead of a traceback inside the run."""
    allowed = "auto, cpu, cuda or cuda:N" + (" (or Ultralytics GPU ids such as 0 or 0,1)" if ultralytics_ids else "")
    gpu = re.fullmatch(r"cuda(?::(\d+))?", text) or (ultralytics_ids and re.fullmatch(r"\d+(,\d+)*", text))
    if text in ("auto", "cpu"):
        return text
    if not gpu:
        raise ValueError(f"must be {allowed}, got {text!r}")
    import torch
    if not torch.cuda.is_available():
        raise ValueError(f"{text!r} needs a CUDA GPU and torch finds none on this machine (use auto or cpu)")
    ids = [int(i) for i in re.findall(r"\d+", text)]
    if ids and max(ids) >= torch.cuda.device_count():
        raise ValueError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return text


def device_option(ultralytics_ids: bool = False):
    def parse(text: str) -> str:
        try:
            return check_device(text, ultralytics_ids)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "device"
    return parse


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def all_models() -> list[str]:
    from .detection.torch_detectors import TORCH_DETECTORS
    return [*model_names(), *TORCH_DETECTORS, *ULTRALYTICS_DETECTORS]


def build_parser(prog: str = "python -m qat.run", default_model: str | None = None) -> argparse.ArgumentParser:
    """The CLI of RunConfig: one option per field, each with its help text (qat/cli_help.py) and default."""
    from .prepare.cle import RELU6_MODES
    p = OneLineErrorParser(prog=prog, description=__doc__, formatter_class=_HelpFormatter)
    d = RunConfig(model=default_model or RunConfig.model)
    models = all_models()
    p.add_argument("--model", default=default_model or d.model, choices=models, metavar="NAME",
                   help=f"one of: {', '.join(models)}")
    p.add_argument("--recipe", default=d.recipe, choices=["fp"] + sorted(RECIPES), metavar="NAME",
                   help=f"fp (FP pretraining) or one of: {', '.join(sorted(RECIPES))}")
    p.add_argument("--preset", default=d.preset, choices=sorted(d.presets),
                   help="budgets and data set of the model's task (qat/presets.py)")
    choices = {**FIELD_CHOICES, "cle_relu6": RELU6_MODES}
    for f in dataclasses.fields(RunConfig):
        if f.name in ("model", "recipe", "preset", "methods"):
            continue
        default = f.default  # (cle and workers: None = the task's, RunConfig.__post_init__)
        help_text = RUN_HELP.get(f.name)
        if isinstance(default, bool) or f.type == "bool | None":
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.name == "device":  # checked in parse_config: Ultralytics detectors also take GPU ids
            p.add_argument("--device", default=default, help=help_text)
        else:
            kind = FIELD_TYPES.get(f.name) or {int: int, float: float}.get(type(default), str)
            p.add_argument(_flag(f.name), type=kind, default=default, choices=choices.get(f.name), help=help_text)
    methods = p.add_argument_group("method hyper-parameters (SPEC defaults)")
    for f in dataclasses.fields(MethodConfig):
        if f.name == "extra":
            continue
        kind = FIELD_TYPES.get(f.name) or (str if isinstance(f.default, str) else float)
        methods.add_argument(_flag(f.name), type=kind, default=f.default, choices=FIELD_CHOICES.get(f.name),
                             help=METHOD_HELP.get(f.name))
    return p


def parse_config(argv=None, default_model: str | None = None, prog: str = "python -m qat.run") -> RunConfig:
    """The run configuration of a command line; an option the --model's task does not read is refused."""
    parser = build_parser(prog, default_model)
    args = vars(parser.parse_args(argv))
    task = task_of(args["model"])
    for name, tasks in TASK_FIELDS.items():
        if args[name] is not None and task not in tasks:
            parser.error(f"{_flag(name)} applies to {' and '.join(tasks)} models, not to {args['model']} ({task})")
    try:
        check_device(args["device"], ultralytics_ids=task == "ultralytics")
    except ValueError as e:
        parser.error(f"argument --device: {e}")
    method_names = {f.name for f in dataclasses.fields(MethodConfig)}
    methods = MethodConfig(**{k: v for k, v in args.items() if k in method_names})
    return RunConfig(**{k: v for k, v in args.items() if k not in method_names}, methods=methods)


def _error(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 2


def main(argv=None, prog: str = "python -m qat.run", default_model: str | None = None) -> int:
    cfg = parse_config(argv, default_model, prog)
    from .run import run
    from .run.lifecycle import NonFiniteLoss
    from .run_dir import BUSY_EXIT, RunBusy
    from .train.checkpoint import CheckpointError
    from .train.distributed import teardown
    try:
        run(cfg)
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
