"""The cached FP model: its metric is recorded with it (a run measures each model state once), and it is
refused when the preset's FP budgets changed since it was trained."""
from dataclasses import replace

import pytest

from qat.config import RunConfig, check_fp_budgets, fp_cache_path, writes_fp_cache
from qat.run.lifecycle import fp_config, keep_fp_cache
from qat.presets import CLASSIFICATION as PRESETS
from qat.train.classification import Trainer

QAT = dict(recipe="lsq", bits=4, preset="smoke", epochs=2, wandb=False, cle=False, bias_correction=False)


@pytest.fixture(scope="module")
def fp_result(tmp_path_factory):
    """The smoke FP MobileNetV2, trained once into this module's own runs and checkpoint directories."""
    tmp = tmp_path_factory.mktemp("fp_cache")
    env = pytest.MonkeyPatch()
    env.setenv("QAT_RUNS", str(tmp / "runs"))
    env.setenv("QAT_CHECKPOINTS", str(tmp / "checkpoints"))
    yield Trainer(RunConfig(recipe="fp", preset="smoke", table="fp", wandb=False)).run()
    env.undo()


def _counted_run(cfg: RunConfig, monkeypatch) -> tuple[dict, int]:
    calls = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model: calls.append(1) or evaluate(self, model))
    result = Trainer(cfg).run()
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return result, len(calls)


def test_each_model_state_is_evaluated_once(fp_result, monkeypatch):
    result, evaluations = _counted_run(RunConfig(**QAT, table="a"), monkeypatch)
    assert result["fp_top1"] == fp_result["top1"]  # recorded with the cached FP model
    assert result["top1"] == result["top1_trained"]
    # after the BN fold, after quantizing, after each epoch (the smoke preset validates every epoch); none at the end
    assert evaluations == 2 + QAT["epochs"]

    monkeypatch.setitem(PRESETS["smoke"], "test_subset", PRESETS["smoke"]["test_subset"] // 2)
    result, evaluations = _counted_run(RunConfig(**QAT, table="b"), monkeypatch)
    assert evaluations == 3 + QAT["epochs"]  # another test set than the FP run's: the FP model is measured here


def test_a_cached_fp_model_with_other_budgets_is_refused(fp_result, monkeypatch):
    monkeypatch.setitem(PRESETS["smoke"], "fp_epochs", PRESETS["smoke"]["fp_epochs"] + 1)
    with pytest.raises(ValueError, match=r"trained with fp_epochs=\d+, but the smoke preset now sets fp_epochs=\d+"):
        Trainer(RunConfig(**QAT, table="c")).run()


def test_fp_budget_check_passes_equal_budgets_and_refuses_unrecorded_ones():
    check_fp_budgets("x.pt", dict(PRESETS["proxy"], qat_epochs=99), "proxy", PRESETS["proxy"])  # not an FP budget
    with pytest.raises(ValueError, match="records no preset budgets"):  # written by older code
        check_fp_budgets("x.pt", None, "proxy", PRESETS["proxy"])


def test_an_fp_study_leaves_the_cached_fp_model_alone(fp_result, tmp_path):
    """An FP run with other budgets (here another table and --epochs, as `train_fp_detector.py --epochs 10
    --table study` once did) overwrote the preset's cached model, which then claimed the preset's budgets."""
    cache = fp_cache_path("mobilenetv2", "smoke")
    before = cache.read_bytes()
    study = Trainer(RunConfig(recipe="fp", preset="smoke", table="study", epochs=1, wandb=False, out=None))
    study.run()
    assert cache.read_bytes() == before and (study.run_dir / "final.pt").is_file()


def test_only_the_presets_fp_run_writes_the_cache():
    fp = RunConfig(recipe="fp", preset="smoke", table="fp")
    assert writes_fp_cache(fp)
    for study in (dict(epochs=5), dict(lr=0.1), dict(batch_size=8), dict(train_subset=64), dict(max_iterations=3),
                  dict(seed=1), dict(table="study"), dict(out="elsewhere")):
        assert not writes_fp_cache(replace(fp, **study)), study
    # the FP run a QAT run trains first when the cache is missing is the preset's, whatever the QAT run overrides
    qat = RunConfig(recipe="lsq", preset="smoke", seed=3, epochs=2, batch_size=8, lr=0.5, table="t", out="o")
    assert writes_fp_cache(fp_config(qat))


def test_keep_fp_cache_writes_for_the_presets_fp_run_and_puts_back_only_a_deleted_cache(tmp_path):
    fp, cache = RunConfig(recipe="fp", preset="smoke", table="fp"), tmp_path / "cache" / "fp.pt"
    writes = []
    write = lambda path: writes.append(path) or path.write_text("model")  # noqa: E731
    keep_fp_cache(fp, lambda: cache, write)                          # the run ends: writes
    keep_fp_cache(fp, lambda: cache, write, finished_earlier=True)   # met finished, cache there: nothing
    cache.unlink()
    keep_fp_cache(fp, lambda: cache, write, finished_earlier=True)   # met finished, cache deleted: put back
    assert writes == [cache, cache] and cache.is_file()
    where = []  # any other run: the cache's path is not even computed (a detector's needs its data set)
    for other in (replace(fp, seed=1), RunConfig(recipe="lsq", preset="smoke")):
        keep_fp_cache(other, lambda: where.append(1) or cache, write)
    assert where == [] and len(writes) == 2
