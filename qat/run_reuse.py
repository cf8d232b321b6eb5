"""Reuse a finished run of another table when it trained exactly what this table asks for.

`--table` only names a run (W&B group, run directory); it never changes training. So the run
`runs/<preset>/<table A>/<model>/<recipe>/w<b>a<b>/s<seed>` and the same cell of table B are the same
experiment when their configurations agree on everything that changes training. The launcher
(qat/experiments.py) then does not train the cell again, and the table makers (tables/common.py) fill
the cell from the other table's run.

The rule (`training_identity`): a run's `options` (W&B config; its recorded config.json is the same dict) minus
the keys in IGNORED_KEYS (naming, output, resuming, hardware, logging, code version, and the Ultralytics
trainer's derived `ultralytics_args`, which hold paths into the run's own directory), removed
at every nesting level; integral floats count as ints (2000.0 = 2000). The preset's budgets (`preset_values`)
count: a run trained with budgets since edited is another experiment. User-given paths (`data`,
`fp_checkpoint`, `val_json`) stay in the identity: other weights or data are another experiment.
Only what the run's recipe reads counts (`relevant_config`): of the method hyper-parameters those of its
recipe and its parent's (recipes.method_keys), and an FP run has none of the QAT settings (bits, prologue,
methods): an FP model trained for a W3 run is the one a W4 run trains.
The same identity ties a run directory to its configuration (qat/run_dir.py).
A run is reused only when it is finished: `result.json` in its directory and a finished W&B run there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import FP_TABLE, RunConfig, run_name, runs_root
from .logging.run_reader import RunRecord, read_local_runs
from .logging.schema import OPTIONS_KEY

IGNORED_KEYS = frozenset({"table", "out", "resume", "device", "wandb", "workers", "log_every", "git_commit",
                          "name", "group", "tags", "project", "save_dir", "ultralytics_args"})
SKIPPED_DIRS = frozenset({"logs", FP_TABLE})  # under runs/<preset>/: not tables of QAT runs


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# RunConfig fields an FP run never reads (the QAT run that trains a missing FP model passes
# its own values on).
QAT_ONLY_KEYS = frozenset({"bits", "methods", "cle", "cle_relu6", "bias_correction", "quantize_first_last",
                           "first_last_bits", "ead_fraction", "fig1_iterations"})


def relevant_config(config: dict) -> dict:
    """The part of a run's config that its recipe reads: an FP run without QAT_ONLY_KEYS, a QAT run with only
    its recipe's method hyper-parameters."""
    from .recipes import RECIPES, method_keys
    config = options_of(config)
    recipe = config.get("recipe")
    if recipe == "fp":
        return {k: v for k, v in config.items() if k not in QAT_ONLY_KEYS}
    if recipe in RECIPES and isinstance(config.get("methods"), dict):
        keys = method_keys(RECIPES[recipe])
        return dict(config, methods={k: v for k, v in config["methods"].items() if k in keys})
    return config


def training_identity(config: dict) -> str:
    """Canonical JSON of what in `config` changes training (see the module docstring)."""
    return json.dumps(_strip(relevant_config(config)), sort_keys=True, separators=(",", ":"), default=str)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def identity_differences(config: dict, expected: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (value in `config`, value in `expected`) for every key of the training identity on which
    they differ."""
    ours, theirs = (_flat(json.loads(training_identity(c))) for c in (config, expected))
    missing = "(unset)"
    diff = {k: (ours.get(k, missing), theirs.get(k, missing)) for k in sorted(ours.keys() | theirs.keys())
            if ours.get(k, missing) != theirs.get(k, missing)}
    return diff


def options_of(config: dict) -> dict:
    """A run's options: the `options` of a logged W&B config; a config built here (default_config) is one."""
    return config.get(OPTIONS_KEY, config)


def trains_as(config: dict, expected: dict) -> bool:
    """Whether a finished run's logged `config` trained what `expected` describes: the same training identity."""
    return not identity_differences(config, expected)


def default_config(preset: str, table: str, model: str, recipe: str, bits: int, seed: int,
                   like: dict | None = None) -> dict:
    """The configuration the launcher gives this cell when no extra arguments pass through: `like` (the config of
    another run of the same model and recipe, whose options the table's runs share) with bits and seed set, else
    `RunConfig(...).to_dict()`."""
    if like is not None:
        return dict(options_of(like), bits=bits, seed=seed)
    return RunConfig(model=model, recipe=recipe, bits=bits, seed=seed, preset=preset, table=table).to_dict()


def finished_record(run_dir: Path) -> RunRecord | None:
    """The newest finished W&B run in a run directory that holds result.json; None otherwise (its history
    is not read: callers compare configs)."""
    if not (run_dir / "result.json").is_file():
        return None
    done = [r for r in read_local_runs(run_dir, with_history=False) if r.finished]
    return max(done, key=lambda r: r.start_time) if done else None


def find_identical_record(preset: str, table: str, model: str, recipe: str, bits: int, seed: int,
                          expected: dict, preset_dir: Path | None = None) -> tuple[Path, RunRecord] | None:
    """(run dir, W&B record) of the first other table (sorted by name) whose run of this cell is finished
    and trained what `expected` describes. `preset_dir` defaults to runs_root()/preset."""
    preset_dir = preset_dir or runs_root() / preset
    if not preset_dir.is_dir():
        return None
    for other in sorted(d.name for d in preset_dir.iterdir() if d.is_dir()):
        if other == table or other in SKIPPED_DIRS:
            continue
        run_dir = preset_dir / run_name(other, model, recipe, bits, seed)
        rec = finished_record(run_dir)
        if rec is not None and trains_as(rec.config, expected):
            return run_dir, rec
    return None


def find_identical_run(preset: str, table: str, model: str, recipe: str, bits: int, seed: int,
                       expected_config: dict | None = None) -> Path | None:
    """The directory of a finished run of another table identical to this cell's run, or None.

    Without `expected_config` the cell's default config (what the launcher runs) is expected.
    """
    if expected_config is None:
        expected_config = default_config(preset, table, model, recipe, bits, seed)
    found = find_identical_record(preset, table, model, recipe, bits, seed, expected_config)
    return found[0] if found else None


def trained_otherwise(preset: str, table: str, model: str, recipe: str, bits: int, seed: int,
                      expected: dict | None = None) -> bool:
    """Whether this cell's own run finished with another training configuration than the launcher gives
    the cell now (`expected`, default: the cell's default config; a preset or default edited since it ran,
    like MobileNetV1's QAT lr, or its preset's budgets): it counts as finished,
    but its numbers are not what the table's code would train."""
    rec = finished_record(runs_root() / preset / run_name(table, model, recipe, bits, seed))
    expected = expected or default_config(preset, table, model, recipe, bits, seed)
    return rec is not None and not trains_as(rec.config, expected)
