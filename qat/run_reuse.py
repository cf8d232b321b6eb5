"""The training identity of a run: what in its configuration changes training.

`--table` only names a run (W&B group, run directory); it never changes training. So the run
`runs/<preset>/<table A>/<model>/<recipe>/w<b>a<b>/s<seed>` and the same cell of table B are the same
experiment when their configurations agree on everything that changes training. The launcher
(experiments/reuse.py) then does not train the cell again: it leaves a pointer to the other table's run in
the cell's directory, from which the table makers (tables/common.py) fill the cell.

The rule (`training_identity`): a run's `options` (W&B config; its recorded config.json is the same dict) minus
the keys in IGNORED_KEYS (naming, output, resuming, hardware, logging, code version, and the Ultralytics
trainer's derived `ultralytics_args`, which hold paths into the run's own directory), removed at every nesting
level; a key set to None counts as unset (a key added later, at its None default, leaves earlier runs' identity
as it was); integral floats count as ints (2000.0 = 2000). The preset's budgets (`preset_values`) count: a run
trained with budgets since edited is another experiment. User-given paths (`data`, `fp_checkpoint`,
`val_json`) stay in the identity: other weights or data are another experiment.
Only what the run's recipe reads counts (`relevant_config`): of the method hyper-parameters those of its
recipe and its parent's (recipes.method_keys), and an FP run has none of the QAT settings (bits, prologue,
methods, nor the preset's step_update_bound): an FP model trained for a W3 run is the one a W4 run trains.
The same identity ties a run directory to its configuration (qat/run_dir.py).
"""
from __future__ import annotations

import json
from typing import Any

from .logging.schema import OPTIONS_KEY

IGNORED_KEYS = frozenset({"table", "out", "resume", "device", "wandb", "workers", "log_every", "git_commit",
                          "name", "group", "tags", "project", "save_dir", "ultralytics_args"})


def _strip(value: Any) -> Any:
    if isinstance(value, dict):  # a key set to None is one never recorded (keys added later default to None)
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED_KEYS and v is not None}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# RunConfig fields an FP run never reads (the QAT run that trains a missing FP model passes its own values on).
QAT_ONLY_KEYS = frozenset({"bits", "methods", "cle", "cle_relu6", "bias_correction", "quantize_first_last",
                           "first_last_bits", "ead_fraction", "fig1_iterations", "step_update_bound"})


def relevant_config(config: dict) -> dict:
    """The part of a run's config that its recipe reads: an FP run without QAT_ONLY_KEYS, a QAT run with only
    its recipe's method hyper-parameters."""
    from .recipes import RECIPES, method_keys
    config = options_of(config)
    recipe = config.get("recipe")
    if recipe == "fp":
        fp = {k: v for k, v in config.items() if k not in QAT_ONLY_KEYS}
        if isinstance(fp.get("preset_values"), dict):
            fp["preset_values"] = {k: v for k, v in fp["preset_values"].items() if k not in QAT_ONLY_KEYS}
        return fp
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
    missing = None  # an unset key and a key set to None are one (module docstring)
    return {k: (ours.get(k, missing), theirs.get(k, missing)) for k in sorted(ours.keys() | theirs.keys())
            if ours.get(k, missing) != theirs.get(k, missing)}


def options_of(config: dict) -> dict:
    """A run's options: the `options` of a logged W&B config; a config a CLI resolved (to_dict) is one."""
    return config.get(OPTIONS_KEY, config)


def trains_as(config: dict, expected: dict) -> bool:
    """Whether a finished run's logged `config` trained what `expected` describes: the same training identity."""
    return not identity_differences(config, expected)
