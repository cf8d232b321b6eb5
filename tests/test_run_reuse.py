"""Runs reused across tables: the identity rule (qat/run_reuse.py), `find_identical_run` and the launcher's reuse
(experiments/reuse.py), the pointer it leaves in the cell's run directory and the table makers' cells filled from
it, on real offline W&B runs written here with RunLogger (no training).

Runs under $QAT_RUNS/smoke/ (→ what Table II must show for it after its launcher ran, `launched`):
- table5 mobilenetv2 lsq W4 s0, the launcher's config (other device / resume / commit) → LSQ 4a4w reused;
  table5's s1 of that cell is outside Table II's seeds → still n=1
- table2 and table5 mobilenetv2 lsq W3 s0, both identical → Table II's own run wins
- table3 and table5 mobilenetv2 ours W4 s0, both identical → the first other table by name (table3) fills it
- table5 mobilenetv2 ours W3 (methods.afw_lr changed), damp W4 (epochs set) → not reused: missing
- table5 mobilenetv2 redyolo W4, identical but crashed (no result.json) → missing
- table5 yolov8n lsq W4 with the default RunConfig → reused; W3 with epochs set → missing
- table2 yolov9t lsq W4 with epochs=3 (own run), table5 yolov9t lsq W3 with epochs=3 → reused when Table II's
  yolov9t runs are launched with `--epochs 3`
- table5 yolov8n perchannel W4, identical but recorded other preset budgets than today's → missing
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, offline_wandb_state

pytest.importorskip("wandb")

from experiments.reuse import find_identical_run  # noqa: E402
from qat.config import RunConfig  # noqa: E402
from qat.logging.run_reader import REUSED_FROM_NAME, reused_source  # noqa: E402
from qat.run_reuse import IGNORED_KEYS, training_identity  # noqa: E402

PRESET = "smoke"


def cls_config(table, model, recipe, bits, seed, **changes) -> dict:
    """What `python -m qat.train` logs for a launcher run (device/resume as the launcher passes them)."""
    cfg = RunConfig(model=model, recipe=recipe, bits=bits, seed=seed, preset=PRESET, table=table, device="cpu",
                    resume=True, **changes)
    return cfg.to_dict()


def det_config(table, model, recipe, bits, seed, stale_budgets=False, **changes) -> dict:
    """What `python -m qat.run` logs for an Ultralytics detector (its trainer's derived settings beside the
    options); `stale_budgets`: preset budgets other than today's recorded."""
    config = RunConfig(model=model, recipe=recipe, bits=bits, seed=seed, preset=PRESET, table=table, resume=True,
                       **changes).to_dict()
    config["ultralytics_args"] = {"save_dir": f"/runs/{table}/x", "name": f"{table}/{model}"}
    if stale_budgets:
        config["preset_values"] = dict(config["preset_values"], qat_epochs=config["preset_values"]["qat_epochs"] + 1)
    return config


def launcher_gives(table, model, recipe, bits, seed, extra=()) -> dict:
    """The configuration the launcher gives a cell (its one place for it, experiments/launch.py run_config)."""
    from experiments.launch import RunSpec, run_config
    return run_config(RunSpec(table, model, recipe, bits, seed, PRESET), PRESET, "cpu", list(extra))


def logged(options: dict, table, model, recipe, bits, seed) -> dict:
    """The W&B config of a run with these options (qat/logging/schema.py): flat keys, the options under `options`."""
    from qat.logging.schema import LoggedConfig
    detection = "ultralytics_args" in options
    return dataclasses.asdict(LoggedConfig(
        table=table, model=model, recipe=recipe, bits=bits, seed=seed, preset=PRESET,
        task="detection" if detection else "classification", metric="map" if detection else "top1", lr=0.01,
        momentum=0.9, weight_decay=1e-5, epochs=5, iterations=40, batch_size=32,
        methods=dataclasses.asdict(RunConfig().methods), options=options))


AFW = dataclasses.replace(RunConfig().methods, afw_lr=0.01)
# (table, model, recipe, bits, seed) → (config, summary, exit code)
RUNS = {
    ("table5", "mobilenetv2", "lsq", 4, 0): (cls_config("table5", "mobilenetv2", "lsq", 4, 0), {"top1": 81.5}, 0),
    ("table5", "mobilenetv2", "lsq", 4, 1): (cls_config("table5", "mobilenetv2", "lsq", 4, 1), {"top1": 79.5}, 0),
    ("table2", "mobilenetv2", "lsq", 3, 0): (cls_config("table2", "mobilenetv2", "lsq", 3, 0), {"top1": 72.0}, 0),
    ("table5", "mobilenetv2", "lsq", 3, 0): (cls_config("table5", "mobilenetv2", "lsq", 3, 0), {"top1": 70.0}, 0),
    ("table3", "mobilenetv2", "scalegrad+ead+afw", 4, 0):
        (cls_config("table3", "mobilenetv2", "scalegrad+ead+afw", 4, 0), {"top1": 86.0}, 0),
    ("table5", "mobilenetv2", "scalegrad+ead+afw", 4, 0):
        (cls_config("table5", "mobilenetv2", "scalegrad+ead+afw", 4, 0), {"top1": 85.0}, 0),
    ("table5", "mobilenetv2", "scalegrad+ead+afw", 3, 0):
        (cls_config("table5", "mobilenetv2", "scalegrad+ead+afw", 3, 0, methods=AFW), {"top1": 60.0}, 0),
    ("table5", "mobilenetv2", "damp", 4, 0): (cls_config("table5", "mobilenetv2", "damp", 4, 0, epochs=1),
                                              {"top1": 50.0}, 0),
    ("table5", "mobilenetv2", "redyolo", 4, 0): (cls_config("table5", "mobilenetv2", "redyolo", 4, 0),
                                                 {"top1": 99.0}, 1),
    ("table5", "yolov8n", "lsq", 4, 0): (det_config("table5", "yolov8n", "lsq", 4, 0), {"map": 28.5}, 0),
    ("table5", "yolov8n", "lsq", 3, 0): (det_config("table5", "yolov8n", "lsq", 3, 0, epochs=1), {"map": 5.0}, 0),
    ("table2", "yolov9t", "lsq", 4, 0): (det_config("table2", "yolov9t", "lsq", 4, 0, epochs=3), {"map": 20.0}, 0),
    ("table5", "yolov9t", "lsq", 3, 0): (det_config("table5", "yolov9t", "lsq", 3, 0, epochs=3), {"map": 15.0}, 0),
    ("table5", "yolov8n", "perchannel", 4, 0): (det_config("table5", "yolov8n", "perchannel", 4, 0, stale_budgets=True),
                                                {"map": 27.0}, 0),
}


def run_dir(root: Path, table, model, recipe, bits, seed) -> Path:
    return root / PRESET / table / model / recipe / f"w{bits}a{bits}" / f"s{seed}"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse_runs")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb_state(mp, root / "state")
        from qat.logging import RunLogger, run_tags

        for (table, model, recipe, bits, seed), (config, summary, code) in RUNS.items():
            d = run_dir(root, table, model, recipe, bits, seed)
            name = f"{table}/{model}/{recipe}/w{bits}a{bits}/s{seed}"
            lg = RunLogger(d, name=name, group=table, tags=run_tags(model, recipe, bits),
                           config=logged(config, table, model, recipe, bits, seed))
            lg.summary({**summary, "fp_top1" if "top1" in summary else "fp_map": 88.0})
            lg.finish(exit_code=code)
            if code == 0:
                (d / "result.json").write_text(json.dumps(summary))
        (root / PRESET / "table5" / "logs").mkdir()
        import wandb

        wandb.teardown()
    return root


@pytest.fixture
def env(runs_root, monkeypatch):
    monkeypatch.setenv("QAT_RUNS", str(runs_root))
    monkeypatch.delenv("PRESET", raising=False)
    return runs_root


@pytest.fixture
def own_copy(runs_root, tmp_path, monkeypatch):
    """A copy of the runs for a test that launches (and so writes pointers into run directories)."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root, root, ignore=shutil.ignore_patterns("state"))
    monkeypatch.setenv("QAT_RUNS", str(root))
    monkeypatch.delenv("PRESET", raising=False)
    return root


def fake_launch(config: Path, monkeypatch, *args) -> int:
    """The launcher, whose runs (FP models included) only succeed without training: what is left are the
    pointers of the cells it reused."""
    from experiments import launch
    monkeypatch.setattr(launch, "run_child", lambda cmd, log, **kwargs: 0)
    return launch.main([str(config), "--preset", PRESET, "--device", "cpu", *args])


@pytest.fixture
def launched(own_copy, tmp_path, monkeypatch):
    """Table II's cells of these runs launched: MobileNetV2 and YOLOv8-n with the launcher's settings, YOLOv9-t
    with `--epochs 3` (as its own run was)."""
    cfg = launcher_config(tmp_path, ["lsq", "scalegrad+ead+afw", "damp", "redyolo", "perchannel"],
                          models=["mobilenetv2", "yolov8n"], bits=[4, 3])
    assert fake_launch(cfg, monkeypatch) == 0
    assert fake_launch(launcher_config(tmp_path, ["lsq"], models=["yolov9t"], bits=[4, 3]), monkeypatch,
                       "--epochs", "3") == 0
    return own_copy


# ------------------------------------------------------------------------------------------------ identity
def test_identity_ignores_naming_and_hardware_only():
    base = cls_config("table5", "mobilenetv2", "lsq", 4, 0)
    other = dict(base, table="table2", out="/x", device="cuda", resume=False, workers=2, log_every=5,
                 git_commit="abc", wandb=False)
    assert training_identity(base) == training_identity(other)
    assert training_identity(logged(base, "table5", "mobilenetv2", "lsq", 4, 0)) == training_identity(base)
    assert training_identity(base) == training_identity(launcher_gives("table2", "mobilenetv2", "lsq", 4, 0))
    for key, value in [("epochs", 1), ("seed", 1), ("bits", 3), ("preset_values", {}), ("fp_checkpoint", "a.pt")]:
        assert training_identity(dict(base, **{key: value})) != training_identity(base), key
    changed = dict(base, methods=dict(base["methods"], afw_lr=0.01))
    assert training_identity(changed) == training_identity(base)  # LSQ never reads AFW's settings
    ours = cls_config("table5", "mobilenetv2", "scalegrad+ead+afw", 4, 0)
    assert training_identity(dict(ours, methods=dict(ours["methods"], afw_lr=0.01))) != training_identity(ours)
    assert training_identity({"a": {"name": 1, "b": 2.0}}) == training_identity({"a": {"b": 2}})  # nested, 2.0 = 2
    assert {"table", "device", "git_commit", "save_dir"} <= IGNORED_KEYS


def test_detection_identity_leaves_out_the_trainers_derived_paths():
    a, b = det_config("table5", "yolov8n", "lsq", 4, 0), det_config("table2", "yolov8n", "lsq", 4, 0)
    assert a["ultralytics_args"] != b["ultralytics_args"]  # paths into each table's own tree
    assert training_identity(a) == training_identity(b)
    assert training_identity(a) != training_identity(det_config("table5", "yolov8n", "lsq", 4, 0, epochs=1))
    assert training_identity(a) == training_identity(launcher_gives("table2", "yolov8n", "lsq", 4, 0))


def test_launcher_command_logs_the_expected_config():
    """The config `python -m qat.train` builds from the launcher's command is the one reuse expects, and the one
    a run of that cell logs."""
    from experiments.launch import RunSpec, command
    from qat.cli import parse_config
    spec = RunSpec("table2", "mobilenetv2", "scalegrad+ead+afw", 3, 1, PRESET)
    argv = command(spec, PRESET, "cpu", [])[3:]
    assert training_identity(parse_config(argv).to_dict()) == \
        training_identity(launcher_gives("table5", "mobilenetv2", "scalegrad+ead+afw", 3, 1)) == \
        training_identity(cls_config("table5", "mobilenetv2", "scalegrad+ead+afw", 3, 1))


# ---------------------------------------------------------------------------------------- find_identical_run
def test_find_identical_run(env):
    root = env

    def find(*cell, expected_config=None):  # by default, what the launcher gives the cell
        return find_identical_run(PRESET, *cell, expected_config or launcher_gives(*cell))
    assert find("table2", "mobilenetv2", "lsq", 4, 0) == run_dir(root, "table5", "mobilenetv2", "lsq", 4, 0)
    assert find("table5", "mobilenetv2", "lsq", 4, 0) is None  # never the table's own run
    # several identical runs: the first other table by name
    assert find("table2", "mobilenetv2", "scalegrad+ead+afw", 4, 0) == \
        run_dir(root, "table3", "mobilenetv2", "scalegrad+ead+afw", 4, 0)
    assert find("table3", "mobilenetv2", "scalegrad+ead+afw", 4, 0) == \
        run_dir(root, "table5", "mobilenetv2", "scalegrad+ead+afw", 4, 0)
    assert find("table2", "mobilenetv2", "scalegrad+ead+afw", 3, 0) is None  # afw_lr differs
    assert find("table2", "mobilenetv2", "scalegrad+ead+afw", 3, 0,
                expected_config=cls_config("table2", "mobilenetv2", "scalegrad+ead+afw", 3, 0, methods=AFW)) == \
        run_dir(root, "table5", "mobilenetv2", "scalegrad+ead+afw", 3, 0)
    assert find("table2", "mobilenetv2", "damp", 4, 0) is None  # epochs set there
    assert find("table2", "mobilenetv2", "redyolo", 4, 0) is None  # crashed
    assert find("table2", "mobilenetv2", "perchannel", 4, 0) is None  # nowhere
    assert find("table2", "yolov8n", "lsq", 4, 0) == run_dir(root, "table5", "yolov8n", "lsq", 4, 0)
    assert find("table2", "yolov8n", "lsq", 4, 0, expected_config=det_config("table2", "yolov8n", "lsq", 4, 0)) == \
        run_dir(root, "table5", "yolov8n", "lsq", 4, 0)
    assert find("table2", "yolov8n", "lsq", 3, 0, expected_config=det_config("table2", "yolov8n", "lsq", 3, 0)) is None
    # trained with other preset budgets than today's (recorded in preset_values): not reused
    assert find("table2", "yolov8n", "perchannel", 4, 0) is None


def test_runs_trained_with_other_preset_budgets_are_trained_otherwise(env):
    from experiments.reuse import trained_otherwise
    from qat.run_reuse import trains_as
    current = det_config("table5", "yolov8n", "lsq", 4, 0)
    assert not trains_as(det_config("table5", "yolov8n", "lsq", 4, 0, stale_budgets=True), current)
    assert trained_otherwise(PRESET, "table5", "yolov8n", "perchannel", 4, 0,
                             launcher_gives("table5", "yolov8n", "perchannel", 4, 0))
    assert not trained_otherwise(PRESET, "table5", "yolov8n", "lsq", 4, 0, launcher_gives("table5", "yolov8n", "lsq", 4, 0))


# ---------------------------------------------------------------------------------------------- table makers
def make_table(n: int, tmp_path: Path, *argv, label: int = 1) -> tuple[dict, str]:
    """(row label, column) → cell of make_table{n}.py run in this process, and its Markdown."""
    if str(REPO / "tables") not in sys.path:
        sys.path.insert(0, str(REPO / "tables"))
    importlib.import_module(f"make_table{n}").main([*argv, "--out", str(tmp_path)])
    with open(tmp_path / f"table{n}.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    return {(r[label], col): v for r in rows for col, v in zip(header, r)}, (tmp_path / f"table{n}.md").read_text()


@pytest.mark.parametrize("how", ["preset", "runs"])
def test_table2_fills_cells_from_identical_runs(launched, tmp_path, how):
    argv = ["--preset", PRESET] if how == "preset" else ["--runs", str(launched / PRESET / "table2")]
    cells, md = make_table(2, tmp_path / "out", *argv)
    assert cells[("MobileNetV2", "LSQ 4a4w")] == "81.50 (n=1)"  # reused from table5, only the launched seed
    assert cells[("MobileNetV2", "LSQ 3a3w")] == "72.00 (n=1)"  # own run wins over table5's 70.0
    assert cells[("MobileNetV2", "Ours 4a4w")] == "86.00 (n=1)"  # table3 before table5
    assert cells[("MobileNetV2", "Ours 3a3w")] == "missing"  # afw_lr differs
    assert cells[("MobileNetV2", "Damp 4a4w")] == "missing"  # epochs set
    assert cells[("MobileNetV2", "RedYolo 4a4w")] == "missing"  # crashed
    assert cells[("MobileNetV2", "FP")] == "88.00 (n=1)"
    assert cells[("YOLOv8-n", "LSQ 4a4w")] == "28.50 (n=1)" and cells[("YOLOv8-n", "LSQ 3a3w")] == "missing"
    assert cells[("YOLOv9-t", "LSQ 4a4w")] == "20.00 (n=1)" and cells[("YOLOv9-t", "LSQ 3a3w")] == "15.00 (n=1)"
    assert cells[("YOLOv8-n", "PerChannel 4a4w")] == "missing"  # other preset budgets
    assert "- Cells reused from identical runs of other tables: table3 (1 run), table5 (3 runs)\n" in md


def test_no_cell_is_reused_without_the_launchers_pointer(env, tmp_path):
    """The table makers read run directories only: Table II, not launched, reuses nothing (were its cells
    planned from experiments/table2_baselines/config.yaml, LSQ 4a4w would be table5's run)."""
    cells, md = make_table(2, tmp_path, "--preset", PRESET)
    assert "Cells reused" not in md and cells[("MobileNetV2", "LSQ 4a4w")] == "missing"
    assert cells[("MobileNetV2", "LSQ 3a3w")] == "72.00 (n=1)"  # its own run


def test_a_pointer_to_a_run_no_longer_finished_leaves_the_cell_missing(launched, tmp_path, capsys):
    source = run_dir(launched, "table5", "mobilenetv2", "lsq", 4, 0)
    assert reused_source(run_dir(launched, "table2", "mobilenetv2", "lsq", 4, 0)) == source
    (source / "result.json").unlink()  # e.g. deleted to train it again
    cells, _ = make_table(2, tmp_path / "out", "--preset", PRESET)
    assert cells[("MobileNetV2", "LSQ 4a4w")] == "missing"
    assert f"warning: run table2/mobilenetv2/lsq/w4a4/s0 was reused from {source}, which holds no finished run" \
        in capsys.readouterr().err


def test_launcher_drops_a_pointer_when_it_trains_the_cell(own_copy, tmp_path, monkeypatch):
    """A cell reused before whose source no longer fits (here: damp W4 of table5 has epochs=1) trains its own run,
    and the table must not show the other table's run for it."""
    from experiments.reuse import point_to
    cell = run_dir(own_copy, "table2", "mobilenetv2", "damp", 4, 0)
    point_to(cell, run_dir(own_copy, "table5", "mobilenetv2", "damp", 4, 0))
    assert fake_launch(launcher_config(tmp_path, ["damp"]), monkeypatch) == 0
    assert not (cell / REUSED_FROM_NAME).exists()


def test_wandb_api_reading_borrows_nothing(monkeypatch):
    sys.path.insert(0, str(REPO / "tables"))
    import common
    from qat.logging import RunRecord
    rec = RunRecord("id", "table2/mobilenetv2/lsq/w3a3/s0", "table2", [], {}, {"top1": 1.0}, [], "finished", "p")
    monkeypatch.setattr(common, "read_api_runs",
                        lambda path, filters, history: pytest.fail("tables read no history") if history else [rec])
    monkeypatch.setattr(common, "reused_runs", lambda *a: pytest.fail("API reading must not borrow"))
    args = common.parse_args("table2", ["--wandb", "e/p"])
    assert common.load_runs(args, "table2") == {rec.name: rec}


# -------------------------------------------------------------------------------------------------- launcher
def launcher_config(tmp_path: Path, recipes: list[str], table: str = "table2", models=("mobilenetv2",),
                    bits=(4,)) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"table": table, "models": list(models), "recipes": recipes, "bits": list(bits),
                                    "seeds": [0]}))
    return path


def test_launcher_reuses_identical_runs(own_copy, tmp_path, capsys):
    from experiments import launch
    cfg = launcher_config(tmp_path, ["lsq", "damp"])
    assert launch.main([str(cfg), "--preset", PRESET, "--dry-run"]) == 0
    out = capsys.readouterr().out
    source = run_dir(own_copy, "table5", "mobilenetv2", "lsq", 4, 0)
    assert f"reuse table2/mobilenetv2/lsq/w4a4/s0 from {source}" in out and "1 reusable from other tables" in out
    assert "todo " in out and "--recipe damp" in out  # epochs differ there: trained

    # extra arguments pass through: what is reused is a run trained with them (table5's damp with epochs=1)
    assert launch.main([str(cfg), "--preset", PRESET, "--dry-run", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 reusable" in out and "reuse table2/mobilenetv2/damp/w4a4/s0" in out and "--recipe lsq" in out
    cell = run_dir(own_copy, "table2", "mobilenetv2", "lsq", 4, 0)
    assert not cell.exists()  # a dry run writes nothing

    # a real launch of the reusable run trains nothing (no FP model, no run, no log): it leaves in the cell's
    # directory a pointer to the run it used, and nothing else
    assert launch.main([str(launcher_config(tmp_path, ["lsq"])), "--preset", PRESET]) == 0
    out = capsys.readouterr().out
    assert f"[table2] reused table2/mobilenetv2/lsq/w4a4/s0 from {source}" in out
    assert not (own_copy / PRESET / "table2" / "logs" / "table2__mobilenetv2__lsq__w4a4__s0.log").exists()
    assert [p.name for p in cell.iterdir()] == [REUSED_FROM_NAME]
    assert json.loads((cell / REUSED_FROM_NAME).read_text()) == {"run": "table5/mobilenetv2/lsq/w4a4/s0"}
    assert reused_source(cell) == source


def test_launcher_warns_of_own_runs_trained_otherwise(env, tmp_path, capsys):
    """table5's damp W4 run finished with epochs=1, which the launcher does not give it: kept, but named."""
    from experiments import launch
    cfg = launcher_config(tmp_path, ["lsq", "damp"], table="table5")
    assert launch.main([str(cfg), "--preset", PRESET, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "2 finished already" in out
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "table5/mobilenetv2/damp/w4a4/s0 finished with other training settings" in warned[0]
    # extra arguments asking for other settings than a finished run has: refused, not skipped
    assert launch.main([str(cfg), "--preset", PRESET, "--dry-run", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 finished run(s) were trained with other settings") and \
        "table5/mobilenetv2/lsq/w4a4/s0" in err
