"""A run measures each model state once: the FP metric comes with the cached FP model when that model's run
used the same test set, and without post steps the trained model's metric is the final one."""
from qat.config import PRESETS, RunConfig
from qat.train.classification import Trainer


def _counted_run(cfg: RunConfig, monkeypatch) -> tuple[dict, int]:
    calls = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model: calls.append(1) or evaluate(self, model))
    result = Trainer(cfg).run()
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return result, len(calls)


def test_each_model_state_is_evaluated_once(dirs, monkeypatch):
    fp = Trainer(RunConfig(recipe="fp", preset="smoke", table="fp", wandb=False)).run()
    epochs = 2  # the smoke preset validates after every epoch
    qat = dict(recipe="lsq", bits=4, preset="smoke", epochs=epochs, wandb=False, cle=False, bias_correction=False)

    result, evaluations = _counted_run(RunConfig(**qat, table="a"), monkeypatch)
    assert result["fp_top1"] == fp["top1"]  # recorded with the cached FP model
    assert result["top1"] == result["top1_trained"]
    assert evaluations == 2 + epochs  # after the BN fold, after quantizing, every epoch; none at the end

    monkeypatch.setitem(PRESETS["smoke"], "test_subset", PRESETS["smoke"]["test_subset"] // 2)
    result, evaluations = _counted_run(RunConfig(**qat, table="b"), monkeypatch)
    assert evaluations == 3 + epochs  # another test set than the FP run's: the FP model is measured here
