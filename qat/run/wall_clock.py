"""Where a run's wall time goes (issue 16's profile): exclusive seconds per phase, kept in the run's result.

Phases: `startup` (process start to the trainer: interpreter, imports, argument parsing), `data` (data sets and
calibration batches), `parent` (a branch's parent run, or an FP model missing from the cache, trained first in
this process), `prologue` (FP model, BN fold, CLE, quantizer insertion and calibration, bias correction), `train`
(training iterations; the first one, where
Dynamo/Inductor compile the fused quantizer kernels, is also kept apart as `first_iteration`), `eval`, `checkpoint`
(saving), `wandb` (opening, logging, closing the run), `post` (post steps: AFW, QC, AdaRound, step-only, less
their evaluations). Phases nest: time in an inner phase (an evaluation inside a post step) counts only there, so
the phases add up to the measured wall, and `other` is what no phase covers.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

PHASES = ("startup", "data", "parent", "prologue", "train", "eval", "checkpoint", "wandb", "post")
_process_started_at: float | None = None  # only the first clock of a process counts its start-up


def process_start_time() -> float:
    """When this process started (Unix time), from the kernel's record of it."""
    import psutil  # a W&B dependency
    return psutil.Process().create_time()


class WallClock:
    def __init__(self):
        global _process_started_at
        now = time.time()
        self.seconds: dict[str, float] = defaultdict(float)
        if _process_started_at is None:  # a parent or FP run trained in the same process has no start-up of its own
            _process_started_at = process_start_time()
            self.seconds["startup"] = max(0.0, now - _process_started_at)
        self.started = now - self.seconds["startup"]
        self._stack: list[list] = []  # [phase, start of its current stretch]
        self.first_iteration = 0.0

    @contextmanager
    def phase(self, name: str):
        """Time the block as `name`; an enclosing phase is paused meanwhile."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}")
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.seconds[outer[0]] += now - outer[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            inner = self._stack.pop()
            self.seconds[inner[0]] += now - inner[1]
            if self._stack:
                self._stack[-1][1] = now

    def note_first_iteration(self, seconds: float) -> None:
        """The run's first training iteration in this process (part of `train`, also kept apart)."""
        self.first_iteration = seconds

    def result(self) -> dict[str, float]:
        """`time/<phase>_s` for every phase, `time/first_iteration_s` (included in train), `time/total_s` (process
        start, or the clock's start, to now), `time/other_s` and `time/train_share` (training's share of the wall)."""
        total = time.time() - self.started
        out = {f"time/{name}_s": round(self.seconds.get(name, 0.0), 3) for name in PHASES}
        out["time/first_iteration_s"] = round(self.first_iteration, 3)
        out["time/other_s"] = round(total - sum(self.seconds.get(n, 0.0) for n in PHASES), 3)
        out["time/total_s"] = round(total, 3)
        out["time/train_share"] = round(self.seconds.get("train", 0.0) / total, 4) if total > 0 else 0.0
        return out
