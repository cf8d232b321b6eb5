"""A table's experiment config (`experiments/<table>/config.yaml`) and the launcher's seed list, checked before
anything trains: a misspelled key, model or recipe, bits outside 2-8 or a seed that is not an integer is one
ValueError naming the value and what is allowed (the launcher prints it as one `error:` line, exit 2), instead
of runs failing one by one minutes later or a key being ignored.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from qat.config import ULTRALYTICS_DETECTORS
from qat.detection.torch_detectors import TORCH_DETECTORS

DETECTORS = set(ULTRALYTICS_DETECTORS) | set(TORCH_DETECTORS)  # run by `python -m qat.detection` (= qat.run)
# Every key a config may hold, with what it means; anything else is a typo (e.g. `seed:` for `seeds:`).
CONFIG_KEYS = {
    "table": "the table's name: W&B group and run-directory prefix",
    "models": "classifiers and detectors (qat/models, qat/detection)",
    "recipes": "recipes (qat/recipes.py), in any order (the launcher trains parents before their branches)",
    "bits": "bit-widths, 2-8",
    "seeds": "seeds, integers >= 0 (default [0]; SEEDS / --seeds override)",
    "extra_args": "per preset, arguments passed to every run",
}
REQUIRED_KEYS = ("table", "models", "recipes", "bits")


def known_models() -> list[str]:
    from qat.models import model_names
    return sorted(set(model_names()) | DETECTORS)


def unknown_value(what: str, value, allowed) -> ValueError:
    """`unknown <what> 'x' (did you mean 'y'?); allowed: a, b, c`."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {what} {value!r}{hint}; allowed: {', '.join(map(str, allowed))}")


def check_names(what: str, values: list, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise unknown_value(what, v, allowed)


def _integer_list(path: Path, key: str, values, allowed: str, ok) -> None:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{path}: {key} must be a non-empty list of {allowed}, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not ok(v):
            raise ValueError(f"{path}: {key} must be {allowed}, got {v!r}")


def load_config(path: Path) -> dict:
    from qat.presets import PRESET_NAMES
    from qat.recipes import RECIPES, canonical_recipe
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping with the keys {', '.join(CONFIG_KEYS)}, got {cfg!r}")
    for key in cfg:
        if key not in CONFIG_KEYS:
            raise ValueError(f"{path}: {unknown_value('key', key, list(CONFIG_KEYS))}")
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise ValueError(f"{path}: missing key {key!r} ({CONFIG_KEYS[key]})")
    if not isinstance(cfg["table"], str) or not cfg["table"]:
        raise ValueError(f"{path}: table must be a name, got {cfg['table']!r}")
    for key, allowed in (("models", known_models()), ("recipes", sorted(RECIPES))):
        if not isinstance(cfg[key], list) or not cfg[key]:
            raise ValueError(f"{path}: {key} must be a non-empty list of {CONFIG_KEYS[key]}, got {cfg[key]!r}")
        try:
            check_names(key[:-1], cfg[key], allowed)
        except ValueError as e:
            raise ValueError(f"{path}: {key}: {e}") from None
    cfg["recipes"] = list(dict.fromkeys(canonical_recipe(r) for r in cfg["recipes"]))  # "ours" → its name
    _integer_list(path, "bits", cfg["bits"], "integers between 2 and 8", lambda b: 2 <= b <= 8)
    if "seeds" in cfg:
        _integer_list(path, "seeds", cfg["seeds"], "integers >= 0", lambda s: s >= 0)
    extra = cfg.get("extra_args", {})
    if not isinstance(extra, dict):
        raise ValueError(f"{path}: extra_args must map a preset to a list of arguments, got {extra!r}")
    for preset, args in extra.items():
        if preset not in PRESET_NAMES:
            raise ValueError(f"{path}: extra_args: {unknown_value('preset', preset, list(PRESET_NAMES))}")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{path}: extra_args.{preset} must be a list of strings, got {args!r}")
    return cfg


def parse_bits(text: str, configured: list[int]) -> list[int]:
    """BITS / --bits: some of the config's bit widths, separated by spaces or commas."""
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isascii() and p.isdigit() and int(p) in configured for p in parts):
        raise ValueError(f"BITS / --bits must be some of the config's bits ({', '.join(map(str, configured))}) "
                         f"separated by spaces or commas, got {text!r}")
    return [int(p) for p in parts]


def parse_seeds(text: str) -> list[int]:
    """SEEDS / --seeds: integers >= 0 separated by spaces or commas."""
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):  # no sign, no decimal point
        raise ValueError(f"SEEDS / --seeds must be integers >= 0 separated by spaces or commas, got {text!r}")
    return [int(p) for p in parts]
