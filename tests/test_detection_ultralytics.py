"""Ultralytics detectors under QAT: conversion coverage, no-op fuse, a smoke run, hooks inside the trainer."""
import copy

import pytest
import torch
from torch import nn

from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det
from qat.modules import QuantConv2d, convert, quant_layers
from qat.prepare.bn_fold import fold_batchnorm
from qat.config import RunConfig
from qat.loop import qat_step

pytest.importorskip("ultralytics")

from qat.detection.ultralytics_qat import QATDetectionTrainer, build_detector, dfl_convs, high_precision_layers  # noqa: E402,E501

TINY = FMNISTDetConfig(train_size=16, val_size=8, canvas=64, min_size=12, max_size=40, seed=1)
NO_DATA_PREP = dict(model="yolov8n", preset="smoke", table="t", cle=False, bias_correction=False)


@pytest.fixture(autouse=True)
def one_calibration_batch(monkeypatch):
    from qat.presets import ULTRALYTICS
    monkeypatch.setitem(ULTRALYTICS, "smoke", dict(ULTRALYTICS["smoke"], calib_batches=1))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_fmnist_det(TINY, tmp_path_factory.mktemp("fmnist_det"))


def quantized(name: str, bits: int = 4):
    torch.manual_seed(0)
    model = build_detector(name, nc=10).eval()
    x = torch.rand(1, 3, 64, 64)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model, x) == n_bn
    convert(model, bits, exclude=dfl_convs(model), high_precision=high_precision_layers(model))
    for _, layer in quant_layers(model):  # any step > 0 will do for structural checks
        layer.weight_quant.init_step(layer.weight)
        layer.input_quant.step.data.fill_(0.05)
    return model.eval(), x


@pytest.mark.parametrize("name", ["yolov8n", "yolov9t"])
def test_bn_fold_keeps_the_fp_output(name):
    torch.manual_seed(0)
    model = build_detector(name, nc=10).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 64, 64)
    ref = model(x)[0]
    fold_batchnorm(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x)[0], ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["yolov8n", "yolov9t"])
def test_conversion_covers_every_conv_but_the_dfl(name):
    model, _ = quantized(name)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    plain = [n for n, m in convs if not isinstance(m, QuantConv2d)]
    assert plain == dfl_convs(model) == ["model.22.dfl.conv"]
    high = set(high_precision_layers(model))
    assert len(high) == 7 and "model.0.conv" in high  # first conv + 3 box + 3 class outputs
    for n, m in convs:
        if isinstance(m, QuantConv2d):
            assert m.weight_quant.bits == m.input_quant.bits == (8 if n in high else 4), n
    assert not model.model[-1].dfl.conv.weight.requires_grad


@pytest.mark.parametrize("name", ["yolov8n", "yolov9t"])
def test_fuse_leaves_the_quantized_model_unchanged(name):
    model, x = quantized(name)
    before = copy.deepcopy(model.state_dict())
    modules = [type(m) for m in model.modules()]
    out = model(x)[0]
    assert model.fuse() is model
    assert [type(m) for m in model.modules()] == modules
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # tensors, and the quantizers' extra state (bits, signedness)
        assert torch.equal(before[k], after[k]) if torch.is_tensor(before[k]) else before[k] == after[k], k
    assert torch.equal(model(x)[0], out)


def run_trainer(data, tmp_path, run: RunConfig, epochs=1, eval_fp=True, **overrides):
    trainer = QATDetectionTrainer.bind(run, eval_fp=eval_fp)(overrides=dict(
        model="yolov8n.yaml", data=str(data.yaml), epochs=epochs, imgsz=64, batch=8, device="cpu", workers=0,
        project=str(tmp_path), name="run", seed=0, close_mosaic=0, **overrides))
    return trainer


def test_smoke_qat_run_reports_map(tiny_data, tmp_path, monkeypatch):
    import qat.detection.ultralytics_qat as ultralytics_qat
    steps = []  # the trainer's optimizer steps go through qat.loop.qat_step, its scaler and clipping as options
    monkeypatch.setattr(ultralytics_qat, "qat_step", lambda *a, **kw: steps.append(kw) or qat_step(*a, **kw))
    run = RunConfig(recipe="lsq", bits=4, wandb=False, **NO_DATA_PREP)
    trainer = run_trainer(tiny_data, tmp_path, run)
    trainer.train()
    assert len(steps) == 2 and all(kw["clip_norm"] == 10.0 and kw["scaler"] is trainer.scaler for kw in steps)
    r = trainer.results
    for key in ("fp_map", "fp_map_prologue", "init_map", "map_trained", "map", "map50"):
        assert 0.0 <= r[key] <= 100.0, key
    assert r["prologue/bn_folded"] == 57
    from qat.logging.fig1_traces import Fig1TraceHook
    fig1 = next(h for h in trainer.hooks if isinstance(h, Fig1TraceHook))  # Fig. 1: the last iteration recorded
    traced = dict(quant_layers(trainer.model))[fig1.choice.layer]
    assert fig1.iterations == [2] and sum(fig1.hist) == traced.weight.numel()
    assert trainer.state.iteration == trainer.state.total_iterations == 2
    assert (trainer.save_dir / "checkpoint.pt").is_file() and (trainer.save_dir / "trained.pt").is_file()
    # the step sizes are in the SGD group without weight decay
    step_group = next(g for g in trainer.optimizer.param_groups if g["param_group"] == "step")
    assert step_group["weight_decay"] == 0.0 and len(step_group["params"]) == 2 * 63
    # the run's profile (qat/run/wall_clock.py): Ultralytics' loop as training, its evaluations, checkpoints and
    # prologue apart
    profile = trainer.clock.result()
    for phase in ("train", "eval", "checkpoint", "prologue", "data"):
        assert profile[f"time/{phase}_s"] > 0, phase
    assert 0 < profile["time/first_iteration_s"] <= profile["time/train_s"]


def test_an_epoch_without_validation_logs_the_schema_and_no_val_metric(tiny_data, tmp_path, monkeypatch):
    """W&B rows in the one schema (qat/logging/schema.py): flat config keys, `lr` / `train/loss` every epoch, and
    `val/metric` only at an epoch that validated (Ultralytics passes placeholder zeros for mAP and the validation
    losses at the others, and its own `lr/pg<i>` names)."""
    from qat.logging.run_reader import read_local_runs
    from qat.logging.schema import CONFIG_KEYS, EPOCH_METRICS, PROLOGUE_METRICS, unknown_metrics

    import qat.detection.ultralytics_qat as ultralytics_qat

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(ultralytics_qat, "LOG_EVERY", 1)  # the running loss at every step, as well as every epoch
    run = RunConfig(recipe="lsq", bits=4, **NO_DATA_PREP)
    trainer = run_trainer(tiny_data, tmp_path, run, epochs=2, val=False)  # Ultralytics validates the last epoch
    trainer.train()
    rec = read_local_runs(trainer.save_dir)[0]
    assert rec.finished and set(rec.config) == CONFIG_KEYS
    assert (rec.config["model"], rec.config["bits"], rec.config["task"], rec.config["iterations"]) == \
        ("yolov8n", 4, "detection", 4)
    rows = {row["epoch"]: row for row in rec.history if "epoch" in row}
    assert set(EPOCH_METRICS) <= set(rows[1]) and set(EPOCH_METRICS) <= set(rows[2])
    assert not [k for k in rows[1] if k.startswith(("val/", "metrics/"))], rows[1]
    assert rows[2]["val/metric"] == trainer.results["map_trained"]
    names = {k for row in rec.history for k in row}
    assert unknown_metrics(names, "detection") == set() and set(PROLOGUE_METRICS) <= names
    assert [row["_step"] for row in rec.history if "train/loss_running" in row] == [1, 2, 3, 4]


def test_ead_fires_after_tau_in_the_detection_trainer(tiny_data, tmp_path):
    # 2 epochs × 2 iterations, τ = epoch 1 = iteration 2: EAD must act on iterations 3 and 4 only.
    run = RunConfig(recipe="scalegrad+ead", bits=4, wandb=False, ead_fraction=0.5, **NO_DATA_PREP)
    trainer = run_trainer(tiny_data, tmp_path, run, epochs=2, eval_fp=False)
    seen = []

    def wrap(trainer):
        from qat.ead import EADHook
        hook = next(h for h in trainer.hooks if isinstance(h, EADHook))
        layer = [m for _, m in quant_layers(trainer.state.model) if m.weight_quant.bits == 4][0]
        original = hook.after_optimizer_step

        def spy(state):
            raw = layer.weight.detach().clone()
            active = hook._previous is not None
            original(state)
            seen.append((state.iteration + 1, active, not torch.equal(raw, layer.weight)))
        hook.after_optimizer_step = spy

    trainer.add_callback("on_train_start", wrap)
    trainer.train()
    assert [(t, a) for t, a, _ in seen] == [(1, False), (2, False), (3, True), (4, True)]
    assert all(changed == active for _, active, changed in seen)
    # ScaleGrad's gradient mode reached the low-bit quantizers, not the 8-bit first / last (DEVIATIONS 2a)
    modes = {m.weight_quant.bits: (m.weight_quant.pulse_delta, m.weight_quant.dist_k)
             for _, m in quant_layers(trainer.state.model)}
    assert modes == {4: (0.1, 1.0), 8: (None, None)}


def test_frozen_weights_keep_their_codes(tiny_data, tmp_path):
    # The Freeze recipe's state inside the detection trainer: half of a 3-bit head conv's weights are frozen
    # at the start; through training their codes must not change and their latent values get no task
    # gradient, while the free ones get one.
    run = RunConfig(recipe="freeze", bits=3, wandb=False, **NO_DATA_PREP)
    trainer = run_trainer(tiny_data, tmp_path, run, epochs=2, eval_fp=False, lr0=0.01)
    seen = {"codes": [], "grads": []}

    def freeze_half(trainer):
        from qat.freeze import FreezeHook
        layer = dict(quant_layers(trainer.state.model))["model.22.cv3.0.1.conv"]
        wq = layer.weight_quant
        assert wq.bits == 3 and wq.frozen is not None
        mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        wq.frozen.freeze(mask, wq.codes(layer.weight))
        seen.update(layer=layer, mask=mask, initial=wq.codes(layer.weight).clone())
        hook = next(h for h in trainer.hooks if isinstance(h, FreezeHook))
        original = hook.before_optimizer_step

        def spy(state):
            seen["grads"].append(layer.weight.grad.clone())
            original(state)
        hook.before_optimizer_step = spy

    def record(trainer):
        wq = seen["layer"].weight_quant
        seen["codes"].append(wq.frozen.codes_with_frozen(wq.codes(seen["layer"].weight)))

    trainer.add_callback("on_train_start", freeze_half)
    trainer.add_callback("on_train_batch_end", record)
    trainer.train()
    mask, codes = seen["mask"], seen["initial"]
    assert len(seen["codes"]) == len(seen["grads"]) == 4
    for now, grad in zip(seen["codes"], seen["grads"]):
        assert torch.equal(now[mask], codes[mask])
        assert not grad[mask].any() and grad[~mask].any()
    assert "freeze/fraction_frozen" in trainer.results
