"""Reuse a finished run of another table when it trained exactly what this table's cell asks for.

`--table` only names a run (W&B group, run directory); it never changes training, so the same cell of two
tables of one preset is one experiment when the runs' configurations have the same training identity
(qat/run_reuse.py). The launcher (experiments/launch.py) then does not train the cell again: it leaves a pointer
(`reused_from.json`, qat/logging/run_reader.py) in the cell's run directory naming the run it used, and the table
makers fill the cell from that run. A run is reused only when it is finished: `result.json` in its directory and
a finished W&B run there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from qat.config import FP_TABLE, run_name, runs_root
from qat.logging.run_reader import REUSED_FROM_NAME, RunRecord, finished_record
from qat.run_reuse import trains_as

SKIPPED_DIRS = frozenset({"logs", FP_TABLE})  # under runs/<preset>/: not tables of QAT runs


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
                       expected: dict) -> Path | None:
    """The directory of a finished run of another table identical to this cell's run (`expected`: the
    configuration the launcher gives the cell), or None."""
    found = find_identical_record(preset, table, model, recipe, bits, seed, expected)
    return found[0] if found else None


def trained_otherwise(preset: str, table: str, model: str, recipe: str, bits: int, seed: int,
                      expected: dict) -> bool:
    """Whether this cell's own run finished with another training configuration than the launcher gives
    the cell now (`expected`; a preset or default edited since it ran, like MobileNetV1's QAT lr; for a
    detector, its preset budgets): it counts as finished, but its numbers are not what the
    table's code would train."""
    rec = finished_record(runs_root() / preset / run_name(table, model, recipe, bits, seed))
    return rec is not None and not trains_as(rec.config, expected)


def point_to(run_dir: Path, source: Path) -> None:
    """Record in the cell's `run_dir` that its run is `source` (a run directory of the same preset)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    relative = source.resolve().relative_to(run_dir.resolve().parents[4]).as_posix()
    tmp = run_dir / (REUSED_FROM_NAME + ".tmp")
    tmp.write_text(json.dumps({"run": relative}) + "\n")
    os.replace(tmp, run_dir / REUSED_FROM_NAME)  # a table maker never reads half a pointer


def forget_source(run_dir: Path) -> None:
    """Drop the cell's pointer before the launcher trains the cell's own run (its source no longer fits)."""
    (run_dir / REUSED_FROM_NAME).unlink(missing_ok=True)
