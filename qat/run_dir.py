"""A run directory belongs to one training configuration and to one process at a time.

Every run (the classification Trainer, which the torch detectors share, and `train_detector`) starts with
`claim(run_dir, config)`:
- lock: an exclusive `flock` on `<run dir>/.lock`, held while the run trains; the kernel drops it when the
  process ends, `kill -9` included. A second process on the same directory gets `RunBusy` (the CLIs print one
  `error:` line and exit with BUSY_EXIT), or, when $QAT_WAIT_FOR_LOCK is set (the launcher sets it), waits
  for the lock and then goes on as usual: finished already, or resuming what the other process left.
- identity: the configuration recorded in the directory (`config.json`, written by the first run there) must
  train what this run asks for
  (run_reuse.identity_differences); otherwise a ValueError names the keys that differ. A finished or
  half-trained run of other settings is never returned or resumed as this one.
`finished_result(run_dir)` is a finished run's result.json, and raises when the run finished but its W&B
record, which the tables read, is damaged or cut short. `check_parent` holds a branch to a parent trained
with the branch's settings (those its parent's recipe reads, up to τ or the end).
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .logging.run_reader import CONFIG_NAME, run_problem
from .run_reuse import identity_differences

LOCK_NAME = ".lock"
BUSY_EXIT = 75  # EX_TEMPFAIL: another process trains this run; try again when it has ended
WAIT_ENV = "QAT_WAIT_FOR_LOCK"


class RunBusy(RuntimeError):
    pass


@contextmanager
def claim(run_dir: Path, config: dict):
    """Hold `run_dir`'s lock for the block, after checking the directory's recorded configuration against
    `config` (this run's resolved config, as logged to W&B) and recording it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, run_dir)
        check_recorded(run_dir, config)
        if not (run_dir / CONFIG_NAME).is_file() or not _holds_run(run_dir):
            tmp = run_dir / (CONFIG_NAME + ".tmp")
            tmp.write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
            os.replace(tmp, run_dir / CONFIG_NAME)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        if not os.environ.get(WAIT_ENV):
            raise RunBusy(f"{run_dir} is being trained by another process (pid {holder}): wait for it to end "
                          f"or stop it, then run again") from None
        print(f"[qat] waiting: {run_dir} is being trained by another process (pid {holder})", file=sys.stderr,
              flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def locked_by_other(run_dir: Path) -> bool:
    """Whether another process holds `run_dir`'s lock now (a look: the lock is not kept)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _holds_run(run_dir: Path) -> bool:
    """Whether anything was trained or logged here (a run that stopped before that left only its config)."""
    return any(p.name not in (LOCK_NAME, CONFIG_NAME, CONFIG_NAME + ".tmp") for p in run_dir.iterdir())


def recorded_config(run_dir: Path) -> dict | None:
    """The configuration a run directory was trained with (its config.json); None when it holds no run."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file() or not _holds_run(Path(run_dir)):
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is unreadable: delete the run directory {run_dir} to train it again") from None


def _describe(diff: dict) -> str:
    return ", ".join(f"{key}={was!r} (now {now!r})" for key, (was, now) in diff.items())


def check_recorded(run_dir: Path, config: dict) -> None:
    recorded = recorded_config(run_dir)
    diff = identity_differences(recorded, config) if recorded is not None else {}
    if diff:
        raise ValueError(f"{run_dir} holds a run trained with other settings: {_describe(diff)}; delete the "
                         f"directory to train these settings there, or pass another --table (or --out)")


def check_parent(parent_dir: Path, expected: dict, branch: str, point: str) -> None:
    """Refuse to branch from a parent run trained with other settings than `expected` (the branch's config with
    the parent's recipe: what the parent would be trained with now)."""
    recorded = recorded_config(parent_dir)
    diff = identity_differences(recorded, expected) if recorded is not None else {}
    if diff:
        raise ValueError(f"{branch} branches from {parent_dir} at {point}, but that run was trained with other "
                         f"settings: {_describe(diff)}; delete it to train it again with these settings, or "
                         f"pass another --table (or --out)")


def finished_result(run_dir: Path) -> dict | None:
    """result.json of a finished run, None for an unfinished one; a ValueError for a finished run whose record
    cannot be read back (it must not count as finished, nor be trained over silently)."""
    done = Path(run_dir) / "result.json"
    if not done.is_file():
        return None
    problem = run_problem(run_dir)
    try:
        result = json.loads(done.read_text())
    except ValueError:
        problem = problem or f"its {done.name} is unreadable"
    if problem:
        raise ValueError(f"{run_dir} finished, but {problem}: delete the directory to train it again")
    return result


def run_finished(run_dir: Path) -> bool:
    """Whether a run directory holds a finished run whose records read back complete (the launcher's test)."""
    try:
        return finished_result(run_dir) is not None
    except ValueError:
        return False
