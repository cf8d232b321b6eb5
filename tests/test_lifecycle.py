"""The run lifecycle's rules, written once for every task (qat/run/lifecycle.py, issue 14): τ, where a run
starts (fresh, resumed, branched from its parent, which is trained first when missing), post-step budgets, and
recipes as a registry whose entries own their quantizer settings, hooks and post steps."""
from dataclasses import replace

import pytest

from qat.config import RunConfig
from qat.hooks import TrainingHook
from qat.recipe_registry import RECIPES, Part, Recipe, register_recipe
from qat.recipes import MethodConfig, get_recipe, make_hooks, make_post_steps, method_keys
from qat.run import lifecycle


def test_tau_is_the_start_of_the_last_ead_fraction_of_the_epochs():
    assert lifecycle.tau_epoch(100, 0.2) == 80 and lifecycle.tau_epoch(5, 0.2) == 4
    assert lifecycle.tau_epoch(2, 0.2) == 1  # one EAD epoch for every task (classifiers had none: round(1.6) = 2)
    assert lifecycle.tau_epoch(1, 0.2) == 1 and lifecycle.tau_epoch(2, 0.0) == 2


def test_a_run_starts_fresh_resumed_or_branched_from_its_parent_trained_first(tmp_path):
    trained = []

    def train_parent(cfg):  # stands in for training the parent run: it leaves its τ checkpoint
        trained.append(cfg.recipe)
        cfg.run_dir.mkdir(parents=True)
        (cfg.run_dir / lifecycle.TAU_CHECKPOINT).write_bytes(b"")

    child = RunConfig(recipe="scalegrad+ead", preset="smoke", wandb=False, out=str(tmp_path / "child"))
    start = lifecycle.start_point(child, train_parent, announce=lambda m: None)
    assert (start.kind, start.path, start.trained) == ("branch", tmp_path / "scalegrad" / "checkpoint_tau.pt", False)
    assert lifecycle.start_point(child, train_parent).path == start.path and trained == ["scalegrad"]
    assert lifecycle.start_point(replace(child, recipe="lsq"), train_parent).kind == "fresh"

    run_dir = tmp_path / "child"
    run_dir.mkdir()
    (run_dir / lifecycle.CHECKPOINT).write_bytes(b"")
    with pytest.raises(ValueError, match="--resume"):
        lifecycle.start_point(child, train_parent)
    resumed = lifecycle.start_point(replace(child, resume=True), train_parent)
    assert (resumed.kind, resumed.path, resumed.trained) == ("resume", run_dir / "checkpoint.pt", False)
    (run_dir / lifecycle.TRAINED).write_bytes(b"")  # killed in the post steps: they run again on the trained model
    assert lifecycle.start_point(replace(child, resume=True), train_parent) == \
        lifecycle.Start("resume", run_dir / "trained.pt", True)


def test_post_step_budgets_left_unset_take_the_presets():
    preset = {"afw_epochs": 0.5, "qc_epochs": 1, "adaround_iterations": 20, "step_only_epochs": 2}
    m = lifecycle.post_step_methods(MethodConfig(afw_epochs=3), preset.get)
    assert (m.afw_epochs, m.qc_epochs, m.adaround_iterations, m.step_only_epochs) == (3, 1, 20, 2)


class _Probe(TrainingHook):
    def __init__(self, tau, k):
        self.tau, self.k = tau, k


def test_a_method_is_one_registration_whose_entry_owns_its_settings_hooks_and_keys():
    probe = Part("probe", lambda m, bits, tau: _Probe(tau, m.ead_k), ("ead_k",))
    register_recipe(Recipe("probe", per_channel=True, hooks=(probe,), post=(get_recipe("ours").post[0],),
                           branch_from=("scalegrad", "tau")))
    try:
        recipe = get_recipe("probe")
        hooks = make_hooks(recipe, 4, 7, MethodConfig(ead_k=2.0))
        assert isinstance(hooks[-1], _Probe) and (hooks[-1].tau, hooks[-1].k) == (7, 2.0)
        assert [type(s).__name__ for s in make_post_steps(recipe, MethodConfig(afw_epochs=1))] == ["AFWStep"]
        # its own keys, its post step's and its parent's (ScaleGrad's gradient mode)
        assert {"ead_k", "afw_lr", "pulse_delta", "dist_k", "scalegrad_layers"} <= method_keys(recipe)
        assert recipe.quantizer(MethodConfig()) == {"per_channel": True, "pulse_delta": None, "dist_k": None,
                                                    "scalegrad_layers": "low-bit"}
        with pytest.raises(ValueError, match="twice"):
            register_recipe(Recipe("probe"))
    finally:
        del RECIPES["probe"]
    assert get_recipe("ours") is get_recipe("scalegrad+ead+afw")
    assert get_recipe("scalegrad").quantizer(MethodConfig(pulse_delta=0.2, dist_k=3.0, scalegrad_layers="all")) == \
        {"per_channel": False, "pulse_delta": 0.2, "dist_k": 3.0, "scalegrad_layers": "all"}


def test_one_config_class_and_one_cli_for_every_task(capsys):
    from qat.cli import parse_config
    from qat.presets import PRESETS
    for model, task, cle, workers in [("mobilenetv2", "classification", True, 8), ("yolox_nano", "detection", False, 0),
                                      ("yolov8n", "ultralytics", False, 0)]:
        cfg = parse_config(["--model", model, "--batch-size", "4"])
        assert type(cfg) is RunConfig and cfg.task == task and cfg.presets is PRESETS[task]
        assert (cfg.cle, cfg.workers, cfg.batch_size) == (cle, workers, 4) and "batch_size" in cfg.to_dict()["preset_values"]
    assert all("batch_size" in budgets and "batch" not in budgets for table in PRESETS.values() for budgets in table.values())
    # gradient clipping is a budget of the task's presets (Ultralytics' 10, none elsewhere), read by every loop
    assert {task: {b["clip_norm"] for b in table.values()} for task, table in PRESETS.items()} == \
        {"classification": {None}, "detection": {None}, "ultralytics": {10.0}}
    assert parse_config(["--no-cle"]).cle is False and parse_config(["--model", "yolov8n", "--cle"]).cle is True
    with pytest.raises(SystemExit) as e:  # an option the model's task does not read is refused, not ignored
        parse_config(["--model", "mobilenetv2", "--fraction", "0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --fraction applies to ultralytics")


def test_a_recipe_alias_names_the_run_as_its_recipe(tmp_path, monkeypatch, capsys):
    """`--recipe ours` is the run `scalegrad+ead+afw` (its directory, its reuse, the tables' cell), in the CLI, in a
    launcher config and in RECIPES=..."""
    from experiments import launch
    from experiments.launch_config import load_config
    from qat.cli import parse_config
    cfg = parse_config(["--model", "mobilenetv2", "--recipe", "ours", "--bits", "3"])
    assert cfg.recipe == "scalegrad+ead+afw" and cfg.run_dir.parts[-3:] == ("scalegrad+ead+afw", "w3a3", "s0")
    assert get_recipe("ours") is get_recipe(cfg.recipe)
    path = tmp_path / "config.yaml"
    path.write_text("table: t\nmodels: [mobilenetv2]\nrecipes: [lsq, ours, scalegrad+ead+afw]\nbits: [3]\n")
    assert load_config(path)["recipes"] == ["lsq", "scalegrad+ead+afw"]
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    assert launch.main([str(path), "--preset", "smoke", "--device", "cpu", "--recipes", "ours", "--dry-run"]) == 0
    planned = [line.split("--recipe ")[1].split()[0] for line in capsys.readouterr().out.splitlines()
               if "--recipe " in line and "--recipe fp" not in line]
    assert planned == ["scalegrad+ead+afw"]


def test_a_branch_starts_from_the_run_its_reused_parent_cell_points_to(dirs):
    # Table I's branch of a cell the launcher reused from Table V: no second training of the parent.
    from qat.logging.run_reader import REUSED_FROM_NAME
    child = RunConfig(recipe="lsq-freeze-weights", preset="smoke", wandb=False, table="table1")
    parent_cell = replace(child, recipe="lsq").run_dir
    source = replace(child, recipe="lsq", table="table5").run_dir
    source.mkdir(parents=True)
    (source / lifecycle.TRAINED).write_bytes(b"")
    parent_cell.mkdir(parents=True)
    (parent_cell / REUSED_FROM_NAME).write_text('{"run": "table5/mobilenetv2/lsq/w4a4/s0"}\n')
    start = lifecycle.start_point(child, lambda cfg: pytest.fail("the parent was trained again"))
    assert (start.kind, start.path, start.trained) == ("branch", source / lifecycle.TRAINED, True)
