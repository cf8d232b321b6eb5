"""RunLogger: the thin W&B wrapper every training loop logs through.

- Only rank 0 logs; other ranks and `enabled=False` are no-ops (and never import wandb).
- `WANDB_MODE` defaults to "offline" unless the user set it; W&B writes under `run_dir/wandb/`.
- `.run_id` is known before the run starts; store it in the checkpoint and pass it back as
  `resume_id` so a killed-and-resumed training continues one W&B run (offline, each resume writes a
  new `offline-run-*-<id>` directory with the same id; `run_reader` merges them).
- Rows: `log(metrics, step)` and `histogram(key, tensor, step)` calls with the same `step` go
  into one history row, which wandb commits when a later step is logged or at `finish`. A row
  still pending when the process is killed is lost, so call `commit()` before saving a
  checkpoint; after that, wandb ignores (with a warning) more logging to the same step.
  wandb-core also buffers the `.wandb` file and flushes it every `flush_interval` seconds
  (wandb's default is 15 s; we use 2 s), so a kill loses at most that much of committed data.
- wandb exports `WANDB_SERVICE` once its core runs, and child processes that inherit it log through
  the parent's wandb-core (a killed child then leaves its run id "in use" there and cannot be
  resumed). RunLogger removes it from the environment, so each logging process has its own core.

Naming (DESIGN.md): name `{table}/{model}/{recipe}/w{b}a{b}/s{seed}`, group = table,
tags = [model, recipe, "w{b}a{b}"] — see `run_name` and `run_tags`.
"""

from __future__ import annotations

import functools
import os
import secrets
import string
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_PROJECT = "qat-oscillation"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_ID_CHARS = string.ascii_lowercase + string.digits


def bits_tag(bits: int | tuple[int, int]) -> str:
    """`4 -> "w4a4"`; `(4, 8) -> "w4a8"`."""
    wb, ab = (bits, bits) if isinstance(bits, int) else tuple(bits)
    return f"w{int(wb)}a{int(ab)}"


def run_name(table: str, model: str, recipe: str, bits: int | tuple[int, int], seed: int) -> str:
    """The run name convention: `{table}/{model}/{recipe}/w{b}a{b}/s{seed}`."""
    return f"{table}/{model}/{recipe}/{bits_tag(bits)}/s{int(seed)}"


def run_tags(model: str, recipe: str, bits: int | tuple[int, int]) -> list[str]:
    """The tags convention: model, recipe, bits."""
    return [model, recipe, bits_tag(bits)]


def new_run_id() -> str:
    """An 8-character base-36 id, like `wandb.util.generate_id()` (without importing wandb)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


@functools.lru_cache(maxsize=None)
def git_commit(repo: str | Path = _REPO_ROOT) -> str:
    """`git rev-parse HEAD` of the repository, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _plain(value: Any) -> Any:
    """One-element tensors / numpy scalars -> Python numbers; everything else unchanged."""
    if type(value).__module__.startswith(("torch", "numpy")) and hasattr(value, "item"):
        try:
            size = value.numel() if hasattr(value, "numel") else value.size
            if size == 1:
                return value.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return value


class RunLogger:
    """Log one training run to W&B (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        name: str,
        group: str,
        tags: list[str],
        config: Mapping[str, Any],
        project: str = DEFAULT_PROJECT,
        resume_id: str | None = None,
        enabled: bool = True,
        rank: int = 0,
        flush_interval: float = 2.0,
    ):
        self.run_dir = Path(run_dir)
        self.name, self.group, self.tags, self.project = name, group, list(tags), project
        self.active = bool(enabled) and rank == 0
        self.run_id = resume_id or new_run_id()
        self.resumed = resume_id is not None
        self.config = {**dict(config), "git_commit": git_commit()}
        self._run = None
        self._finished = False
        if not self.active:
            return

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Keep W&B's per-user state out of ~ unless the caller placed it (scripts/setup.sh does).
        state = self.run_dir / "wandb" / ".state"
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data")):
            os.environ.setdefault(var, str(state / sub))

        import wandb

        settings = wandb.Settings(
            x_transaction_log_flush_interval=float(flush_interval),
            reinit="create_new",  # several loggers in one process (tests, sweeps) never clash
            allow_val_change=self.resumed,  # a resume may bring a new git commit into the config
        )
        self._wandb = wandb
        # wandb exports WANDB_SERVICE (its core's socket) once the core runs, and processes that
        # inherit it log through that core; a killed child then leaves its run id "in use" there,
        # so resuming it fails. Every logging process gets its own core; children never share ours.
        os.environ.pop("WANDB_SERVICE", None)
        self._run = wandb.init(
            project=project,
            dir=str(self.run_dir),
            name=name,
            group=group,
            tags=self.tags,
            config=self.config,
            id=self.run_id,
            resume="allow" if self.resumed else None,
            mode=os.environ.get("WANDB_MODE") or "offline",
            settings=settings,
        )
        os.environ.pop("WANDB_SERVICE", None)  # our live connection does not need it
        self.run_id = self._run.id

    # -- logging -------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Add `metrics` to the history row of `step` (steps must not decrease)."""
        if self._run is None:
            return
        self._run.log({k: _plain(v) for k, v in metrics.items()}, step=int(step))

    def histogram(self, key: str, tensor: Any, step: int, num_bins: int = 64) -> None:
        """Log a `wandb.Histogram` of a tensor/array's values at `step`."""
        if self._run is None:
            return
        import numpy as np

        if hasattr(tensor, "detach"):
            values = tensor.detach().float().cpu().numpy()
        else:
            values = np.asarray(tensor, dtype=np.float64)
        hist = self._wandb.Histogram(np_histogram=np.histogram(values.ravel(), bins=num_bins))
        self._run.log({key: hist}, step=int(step))

    def commit(self) -> None:
        """Close the pending history row now (call before saving a checkpoint)."""
        if self._run is None:
            return
        self._run.log({}, commit=True)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-summary keys (final metrics the table makers read)."""
        if self._run is None:
            return
        for k, v in values.items():
            self._run.summary[k] = _plain(v)

    def finish(self, exit_code: int = 0, wait_s: float = 30.0) -> None:
        """End the run: exit code 0 marks it finished, anything else crashed. Idempotent.

        wandb's `finish()` returns before wandb-core has written the end of the `.wandb` file
        (observed: up to ~50 ms later), so a reader in this process could see the run without its
        exit record. We wait (at most `wait_s`) until the exit record is on disk.
        """
        if self._run is None or self._finished:
            return
        self._finished = True
        run_file = self.run_path / f"run-{self.run_id}.wandb" if self.run_path else None
        self._run.finish(exit_code=int(exit_code))
        if run_file is not None and run_file.exists() and wait_s > 0:
            _wait_for_exit_record(run_file, wait_s)

    # -- context manager: an exception finishes the run as crashed -----------------------------
    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    @property
    def run_path(self) -> Path | None:
        """The run's own W&B directory (`run_dir/wandb/offline-run-...`), when logging."""
        if self._run is None or self._run.disabled:  # WANDB_MODE=disabled writes nothing
            return None
        return Path(self._run.dir).parent


def _wait_for_exit_record(path: Path, timeout: float) -> bool:
    """Poll `path` until it holds an exit record (True) or `timeout` seconds pass (False)."""
    import time

    from .wandb_records import iter_records

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.HasField("exit") for r in iter_records(path)):
                return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
