"""The one W&B schema of every run: classifiers, Ultralytics detectors and SSD / YOLOX, FP and QAT alike.

Config (`run_config`): the same flat keys for every task, so a W&B dashboard groups any run by `table` and
shows `model`, `bits`, `recipe`, `seed`, `preset` as columns; training settings as the optimizer ran them
(`lr`, `momentum`, `weight_decay` of the weights' parameter group; `epochs`, `iterations` = optimizer steps,
`batch_size`); `methods` = the method hyper-parameters (the same fields for every task); `options` = the
task's own full options (what reproduces the run; qat/run_reuse.py compares them). `metric` names what the
headline metric is for this task (`top1` or `map`); `task` is `classification` or `detection`.

History (the names are the same for every task):
- every epoch: `epoch`, `lr` (the weights' learning rate during the epoch), `train/loss` (mean training loss
  per image, all loss terms summed), `time/epoch_s`;
- only at epochs that validated: `val/metric` (the headline metric in %: top-1, or COCO mAP@[.5:.95]); an
  epoch without validation logs no `val/` key at all (never a placeholder 0);
- every few iterations: `train/loss_running` (the epoch's mean loss so far);
- QAT runs, at step 0: `prologue/fp_metric` (the FP model), `prologue/fp_metric_folded` (after BN fold and
  CLE), `prologue/init_metric` (right after quantizer init), and the prologue's own counts under
  `prologue/<step>/...` and `quantize/...`;
- families whose keys depend on the model's layers or the recipe (FAMILIES), named alike for every task;
- a few task-only details (TASK_METRICS), e.g. a detector's mAP@.5.

Summary: the run's result (the keys the table makers read: `top1` / `map`, `fp_top1` / `fp_map`, ...) plus
`metric`, the final headline metric under one name for every task.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

TASKS = ("classification", "detection")


@dataclass(frozen=True)
class LoggedConfig:
    """The W&B config of a run: these keys, for every task (RunLogger adds `git_commit`)."""
    table: str
    model: str
    recipe: str                  # "fp" for FP pretraining
    bits: int | None             # None for FP runs
    seed: int
    preset: str
    task: str                    # one of TASKS
    metric: str                  # the headline metric: "top1" (classification) or "map" (detection)
    lr: float                    # the weights' initial learning rate, as the optimizer got it
    momentum: float
    weight_decay: float
    epochs: int
    iterations: int              # optimizer steps of training (before post steps)
    batch_size: int
    methods: dict                # qat.recipes.MethodConfig as a dict
    options: dict                # the task's full options (RunConfig.to_dict(); Ultralytics: + its trainer's)


CONFIG_KEYS = frozenset(f for f in LoggedConfig.__dataclass_fields__) | {"git_commit"}
OPTIONS_KEY = "options"

EPOCH_METRICS = ("epoch", "lr", "train/loss", "time/epoch_s")
VAL_METRICS = ("val/metric",)
RUNNING_METRICS = ("train/loss_running",)
PROLOGUE_METRICS = ("prologue/fp_metric", "prologue/fp_metric_folded", "prologue/init_metric")
COMMON_METRICS = EPOCH_METRICS + VAL_METRICS + RUNNING_METRICS + PROLOGUE_METRICS
# Prefixes of keys that depend on the model's layers, the recipe or the prologue's options.
FAMILIES = ("steps/", "step_bound/", "osc/", "freeze/", "ead/", "damp/", "ema/", "afw/", "adaround/", "qc/",
            "step_only/", "fig1/", "fig1c/", "prologue/", "quantize/")
TASK_METRICS = {
    "classification": ("train/top1", "val/loss"),
    "detection": ("val/map50", "time/val_s", "train/box_loss", "train/cls_loss", "train/dfl_loss"),
}


def run_config(*, table: str, model: str, recipe: str, bits: int | None, seed: int, preset: str, task: str,
               metric: str, optimizer, epochs: int, iterations: int, batch_size: int, methods: Any,
               options: Mapping[str, Any]) -> dict:
    """The config every run logs (LoggedConfig as a dict); lr, momentum and weight decay are read from the
    optimizer's weights group (what the run trained with, whatever defaulted them)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    lr, momentum, weight_decay = optimizer_settings(optimizer)
    return asdict(LoggedConfig(
        table=table, model=model, recipe=recipe, bits=None if recipe == "fp" else int(bits), seed=int(seed),
        preset=preset, task=task, metric=metric, lr=lr, momentum=momentum, weight_decay=weight_decay,
        epochs=int(epochs), iterations=int(iterations), batch_size=int(batch_size),
        methods=asdict(methods) if not isinstance(methods, Mapping) else dict(methods), options=dict(options)))


def weights_group(optimizer) -> dict:
    """The parameter group of the weights: the one with the largest weight decay (the first on a tie).
    Bias and step-size groups have none; Ultralytics' FP optimizer puts the biases first."""
    return max(optimizer.param_groups, key=lambda g: g.get("weight_decay", 0.0))


def optimizer_settings(optimizer) -> tuple[float, float, float]:
    """(lr, momentum, weight decay) of the weights group; Adam's momentum is its beta1."""
    g = weights_group(optimizer)
    lr = g.get("initial_lr", g["lr"])  # a scheduler or warm-up may have moved `lr` already
    momentum = g["momentum"] if "momentum" in g else g.get("betas", (0.0,))[0]
    return float(lr), float(momentum), float(g.get("weight_decay", 0.0))


def epoch_lr(optimizer) -> float:
    """The weights' learning rate now (`lr` in the history)."""
    return float(weights_group(optimizer)["lr"])


def prologue_metrics(report: Mapping[str, Any], metric: str) -> dict:
    """The step-0 history of a QAT run from its prologue report (`fp_<metric>`, `fp_<metric>_prologue`,
    `init_<metric>`, and the `prologue` / `quantize` dicts of qat.prepare.pipeline)."""
    out = {}
    for name, key in (("prologue/fp_metric", f"fp_{metric}"), ("prologue/fp_metric_folded", f"fp_{metric}_prologue"),
                      ("prologue/init_metric", f"init_{metric}")):
        if report.get(key) is not None:
            out[name] = report[key]
    for section in ("prologue", "quantize"):
        if isinstance(report.get(section), Mapping):
            out.update(_scalars(report[section], f"{section}/"))
    return out


def summary_values(result: Mapping[str, Any], metric: str) -> dict:
    """The run summary: its result (None values left out) and `metric`, the headline metric's final value."""
    out = {k: v for k, v in result.items() if v is not None}
    if result.get(metric) is not None:
        out["metric"] = result[metric]
    return out


def unknown_metrics(names, task: str) -> set[str]:
    """History names outside the schema for `task` (W&B's own `_step`, `_runtime`, ... aside)."""
    allowed = set(COMMON_METRICS) | set(TASK_METRICS[task])
    return {n for n in names if not n.startswith("_") and n not in allowed and not n.startswith(FAMILIES)}


def _scalars(d: Mapping[str, Any], prefix: str) -> dict:
    """Nested dicts flattened to `a/b` keys, numbers only (booleans as 0/1)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, bool):
            out[f"{prefix}{k}"] = int(v)
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
        elif hasattr(v, "numel") and v.numel() == 1:
            out[f"{prefix}{k}"] = v.item()
    return out
