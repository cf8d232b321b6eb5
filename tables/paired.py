"""Paired seed statistics for the tables' claims: the difference method − baseline over the seeds both ran,
its 95 % confidence interval (Student's t), and a verdict against the paper's direction, computed here from the
runs' logs, never written by hand.

Verdicts: "reproduced" — the interval excludes 0 on the paper's side; "not reproduced" — it excludes 0 on the
other side; "within noise" — it contains 0; "too few seeds" — fewer than 2 paired seeds (no interval).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95 % quantiles t_{0.975, df} of Student's t for df = 1 … 30 (standard table values).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to df = 30, beyond it the Cornish–Fisher expansion around the normal quantile
    (error < 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class PairedDifference:
    n: int          # seeds both runs finished
    mean: float     # mean of method − baseline over those seeds
    low: float      # 95 % confidence interval of the mean (nan with n < 2)
    high: float

    def verdict(self, paper_sign: int = 1) -> str:
        """Against the paper's direction: +1 = the paper reports the method above the baseline, −1 below."""
        if self.n < 2:
            return "too few seeds"
        if self.low > 0 or self.high < 0:
            return "reproduced" if (self.low > 0) == (paper_sign > 0) else "not reproduced"
        return "within noise"

    def describe(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f} (n={self.n})"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n})"


def paired_difference(baseline: dict[int, float], method: dict[int, float]) -> PairedDifference | None:
    """method − baseline over the seeds present in both (seed → value); None when no seed is shared."""
    seeds = sorted(set(baseline) & set(method))
    if not seeds:
        return None
    diffs = [method[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(1, mean, math.nan, math.nan)
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(len(diffs), mean, mean - half, mean + half)


def paired_differences_by(baseline: dict[tuple, float], method: dict[tuple, float],
                          group: int) -> dict[object, PairedDifference | None]:
    """`paired_difference` within each value of the cell keys' element `group` (e.g. per bit width or recipe)."""
    return {g: paired_difference({c: v for c, v in baseline.items() if c[group] == g},
                                 {c: v for c, v in method.items() if c[group] == g})
            for g in sorted({c[group] for c in baseline.keys() & method.keys()})}
