"""A bound on how far one optimizer update may move a step size (DEVIATIONS 2b; not in the paper).

At the Ultralytics proxy's lr 1e-2 a step size can be cut by 86 % in one SGD update (docs/PROXY_STUDY.md, "What
traps the step"): its weights then clip, LSQ's clipping term returns a gradient hundreds of times larger, momentum
carries the step two orders of magnitude past its old value, and the layer keeps 3-8 % non-zero codes to the end.
The bound keeps every optimizer update of a step size s within a factor (1 + b) of its value before the update:

    s_{t+1} = clip(s'_{t+1}, s_t / (1 + b), s_t · (1 + b))      (s' = the optimizer's update)

so it acts only on updates larger than that; the optimizer's state (momentum) is left as it is. The hook must run
first after the optimizer step (`qat.run.lifecycle.training_hooks` puts it there): EAD's EMA of the step sizes and
the hooks after it are not the optimizer's update and are not bounded. It counts the element updates it cut.
"""
from __future__ import annotations

import torch

from .hooks import TrainingHook, TrainState
from .modules import step_parameters


class StepUpdateBound(TrainingHook):
    def __init__(self, bound: float):
        if not bound > 0:
            raise ValueError(f"step_update_bound must be > 0 (0 = no bound is not a hook), got {bound}")
        self.factor = 1.0 + bound
        self.steps: list[torch.Tensor] = []
        self._before: list[torch.Tensor] = []
        self._stepped = False     # an optimizer update was seen in this process
        self._bounded = None      # element updates cut so far (a device tensor: no host sync per iteration)
        self._largest = None      # the largest factor an optimizer update asked for, max(s'/s, s/s')
        self.resumed = None       # what the run (or its parent) counted before this process: a checkpoint's

    def on_train_start(self, state: TrainState) -> None:
        self.steps = step_parameters(state.model)
        zero = torch.zeros((), dtype=torch.long, device=self.steps[0].device) if self.steps else None
        self._bounded, self._largest = zero, None if zero is None else zero.float() + 1.0

    def before_optimizer_step(self, state: TrainState) -> None:
        self._before = [s.detach().clone() for s in self.steps]

    @torch.no_grad()
    def after_optimizer_step(self, state: TrainState) -> None:
        for s, before in zip(self.steps, self._before):
            low, high = before / self.factor, before * self.factor
            self._bounded += ((s < low) | (s > high)).sum()
            self._largest = torch.maximum(self._largest, torch.maximum(s / before, before / s).max())
            torch.clamp_(s, min=low, max=high)
        self._before, self._stepped = [], True

    def epoch_metrics(self, state: TrainState) -> dict:
        """Nothing where no update was seen (a branch that goes straight to its post steps trains nothing)."""
        if self.resumed is None and not self._stepped:
            return {}
        counts = self.state_dict()
        return {"step_bound/updates_bounded": counts["bounded"], "step_bound/largest_update_factor": counts["largest"]}

    def state_dict(self) -> dict:
        before = self.resumed or {"bounded": 0, "largest": 1.0}
        if self._bounded is None:
            return dict(before)
        return {"bounded": before["bounded"] + int(self._bounded),
                "largest": max(before["largest"], float(self._largest))}

    def load_state_dict(self, state: dict) -> None:
        self.resumed = {"bounded": int(state.get("bounded", 0)), "largest": float(state.get("largest", 1.0))}
        if self._bounded is not None:
            self._bounded.zero_()
            self._largest.fill_(1.0)
