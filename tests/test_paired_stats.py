"""Paired seed statistics behind the tables' verdicts (tables/paired.py, tables/common.claim_notes): the
difference method − baseline over shared seeds, its 95 % Student-t interval, and the verdict against the paper's
direction, computed from the runs."""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "tables"))
from common import claim_notes  # noqa: E402
from paired import PairedDifference, paired_difference, paired_differences_by, t_quantile_975  # noqa: E402


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(30) == 2.042
    for df, value in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)):  # standard table values
        assert t_quantile_975(df) == pytest.approx(value, abs=2e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_difference_pairs_by_seed_and_gives_the_t_interval():
    baseline = {0: 70.0, 1: 71.0, 2: 69.0, 3: 70.5, 7: 50.0}   # seed 7 has no partner: left out
    method = {0: 71.0, 1: 71.5, 2: 70.5, 3: 70.5, 9: 99.0}
    d = paired_difference(baseline, method)
    diffs = [1.0, 0.5, 1.5, 0.0]
    half = 3.182 * statistics.stdev(diffs) / math.sqrt(4)
    assert d.n == 4 and d.mean == pytest.approx(0.75)
    assert (d.low, d.high) == pytest.approx((0.75 - half, 0.75 + half))
    assert paired_difference({0: 1.0}, {1: 2.0}) is None
    single = paired_difference({0: 1.0}, {0: 2.5})
    assert single.n == 1 and math.isnan(single.low) and single.verdict() == "too few seeds"


@pytest.mark.parametrize("low, high, sign, verdict", [(0.2, 1.0, 1, "reproduced"), (-1.0, -0.2, 1, "not reproduced"),
                                                      (-1.0, -0.2, -1, "reproduced"), (0.2, 1.0, -1, "not reproduced"),
                                                      (-0.5, 0.7, 1, "within noise")])
def test_verdict_follows_the_interval_and_the_papers_direction(low, high, sign, verdict):
    assert PairedDifference(5, (low + high) / 2, low, high).verdict(sign) == verdict


@dataclass
class FakeRun:
    summary: dict = field(default_factory=dict)
    finished: bool = True


def test_claim_notes_from_runs_against_the_paper():
    runs = {}
    for seed, (lsq, sg) in enumerate([(60.0, 62.0), (61.0, 62.5), (59.5, 61.0), (60.2, 62.4), (60.8, 62.0)]):
        runs[f"table5/mobilenetv2/lsq/w3a3/s{seed}"] = FakeRun({"top1": lsq})
        runs[f"table5/mobilenetv2/scalegrad/w3a3/s{seed}"] = FakeRun({"top1": sg})
    runs["table5/mobilenetv2/scalegrad/w3a3/s5"] = FakeRun({"top1": 10.0}, finished=False)  # crashed: ignored
    runs["table5/mobilenetv2/scalegrad+ead/w3a3/s0"] = FakeRun({"top1": 61.0})
    pairs = [("lsq", "scalegrad", "LSQ", "ScaleGrad"), ("scalegrad", "scalegrad+ead", "ScaleGrad", "+EAD"),
             ("lsq", "perchannel", "LSQ", "PerChannel")]
    notes = claim_notes(runs, "table5", "mobilenetv2", "MobileNetV2", "top1", 3, pairs)
    assert len(notes) == 2  # no perchannel runs: no note
    d = paired_difference({s: v.summary["top1"] for s, v in enumerate(list(runs.values())[0:10:2])},
                          {s: v.summary["top1"] for s, v in enumerate(list(runs.values())[1:10:2])})
    assert notes[0] == (f"MobileNetV2 W3A3, ScaleGrad − LSQ: {d.describe()}; paper +2.0 → reproduced")
    assert notes[1].endswith("(n=1); paper +0.3 → too few seeds")


def test_paired_differences_by_a_key_element_pair_within_each_group_only():
    base = {("damp", 0): 1.0, ("damp", 1): 2.0, ("lsq", 0): 5.0, ("lsq", 1): 5.0, ("freeze", 0): 3.0}
    method = {("damp", 0): 2.0, ("damp", 1): 4.0, ("lsq", 0): 4.0, ("lsq", 1): 4.0}
    by_recipe = paired_differences_by(base, method, group=0)
    assert list(by_recipe) == ["damp", "lsq"]  # freeze has no pair
    assert by_recipe["damp"].mean == 1.5 and by_recipe["lsq"].mean == -1.0 and by_recipe["lsq"].n == 2


def test_a_claimed_drop_without_paper_numbers_is_judged_as_a_drop():
    # Table I's claim (frozen weights, steps trained: worse) on MobileNetV2, which the paper does not report.
    runs = {}
    for seed, (lsq, frozen) in enumerate([(84.0, 83.0), (84.5, 83.2), (83.8, 83.1)]):
        runs[f"table1/mobilenetv2/lsq/w4a4/s{seed}"] = FakeRun({"top1": lsq})
        runs[f"table1/mobilenetv2/lsq-freeze-weights/w4a4/s{seed}"] = FakeRun({"top1": frozen})
    pair = [("lsq", "lsq-freeze-weights", "LSQ", "Freeze weight")]
    drop = claim_notes(runs, "table1", "mobilenetv2", "MobileNetV2", "top1", 4, pair, claimed_sign=-1)
    assert drop[0].endswith("; paper: method worse → reproduced")
    rise = claim_notes(runs, "table1", "mobilenetv2", "MobileNetV2", "top1", 4, pair)
    assert rise[0].endswith("; paper: method better → not reproduced")
