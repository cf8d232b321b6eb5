"""The launcher's one progress bar (experiments/launch.py).

One unit per FP model the launcher trains and one per run, so the bar moves while FP models train (a table's
first minutes) and the ETA, taken from the rate of finished units, does not spread the FP time over the QAT runs
alone. Beside the bar: the runs training now and the last one that ended.
"""
from __future__ import annotations

import threading

from tqdm.auto import tqdm


class LaunchProgress:
    def __init__(self, table: str, total: int):
        self.table = table
        self.bar = tqdm(total=total, desc=table, unit="run", dynamic_ncols=True)
        self.running: list[str] = []
        self.last: str | None = None
        self.lock = threading.Lock()  # the launcher's worker threads report here at once

    def _label(self, name: str) -> str:  # run names all start with the table's
        return name.removeprefix(self.table + "/")

    def _show(self) -> None:
        parts = []
        if self.running:
            parts.append("training " + ", ".join(self.running))
        if self.last:
            parts.append("last " + self.last)
        self.bar.set_postfix_str("; ".join(parts))

    def start(self, name: str) -> None:
        with self.lock:
            self.running.append(self._label(name))
            self._show()

    def done(self, name: str) -> None:
        """One unit of work ended (trained, failed, reused or found finished)."""
        with self.lock:
            label = self._label(name)
            if label in self.running:
                self.running.remove(label)
            self.last = label
            self.bar.update(1)
            self._show()

    def close(self) -> None:
        self.bar.close()
