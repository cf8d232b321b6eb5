"""Table makers I–IV on real offline W&B runs written here with RunLogger (no training), the experiment configs,
and Fig. 1's run.sh.

The module fixture writes, under a temp dir and named like the trainer's runs (runs/<preset>/<run name>/wandb/),
finished runs with the summary keys the trainers record (`top1`/`fp_top1`, `map`/`fp_map`) for some cells —
several seeds for some — and crashed runs (finish(exit_code=1), with a metric in their summary that must not be
used) for others. Each make_tableN.py then runs as a subprocess; filled cells must equal mean ± std of the seeds
written, every other cell "missing", and --with-paper must show the paper's numbers.
"""
from __future__ import annotations

import csv
import importlib
import os
import statistics
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, offline_wandb_state, tool_env

pytest.importorskip("wandb")
PRESET = "smoke"

# (table, model, recipe, bits, seed) → summary; "crashed" runs finish with exit code 1.
FINISHED = {
    ("table1", "yolov8n", "lsq", 4, 0): {"map": 21.37, "fp_map": 25.5, "map50": 40.0},
    ("table1", "yolov8n", "lsq", 4, 1): {"map": 22.41, "fp_map": 25.5, "map50": 41.0},
    ("table1", "mobilenetv2", "lsq", 4, 0): {"top1": 85.12, "fp_top1": 88.0, "top1_trained": 85.0},
    ("table1", "mobilenetv2", "lsq-freeze-weights", 4, 0): {"top1": 84.3, "fp_top1": 88.0},
    ("table2", "yolox_tiny", "lsq", 4, 0): {"map": 11.0, "fp_map": 14.2, "step_bound/updates_bounded": 3},
    ("table2", "mobilenetv1", "scalegrad", 3, 0): {"top1": 79.0, "fp_top1": 87.0},
    ("table2", "mobilenetv1", "scalegrad+ead+afw", 3, 0): {"top1": 80.1, "fp_top1": 87.0},
    ("table2", "mobilenetv1", "scalegrad+ead+afw", 3, 1): {"top1": 81.4, "fp_top1": 87.2},
    ("table2", "mobilenetv1", "scalegrad+ead+afw", 3, 2): {"top1": 79.9, "fp_top1": 86.9},
    ("table2", "mobilenetv2", "damp", 4, 0): {"top1": 83.0, "fp_top1": 88.0},
    ("table3", "mobilenetv2", "scalegrad+ead+afw", 4, 0): {"top1": 86.5, "fp_top1": 88.0},
    ("table3", "mobilenetv2", "scalegrad+ead+afw", 4, 1): {"top1": 87.25, "fp_top1": 88.4},
    ("table4", "yolov8n", "scalegrad+ead+afw", 4, 0): {"map": 18.2, "fp_map": 22.0, "map50": 35.0},
    # ScaleGrad's parts: distance beats LSQ on every seed (an interval above 0), PulseSmooth is within noise of it
    **{("table5_parts", "mobilenetv2", recipe, 3, seed): {"top1": top1, "fp_top1": 88.0, "osc/late_fraction": 0.02}
       for recipe, values in (("lsq", (80.0, 80.5, 79.5)), ("distance", (81.0, 81.6, 80.4)),
                              ("pulsesmooth", (80.9, 79.6, 80.0)))
       for seed, top1 in enumerate(values)},
}
CRASHED = {
    ("table1", "yolov8n", "lsq-freeze-weights", 4, 0): {"map": 99.0},
    ("table2", "mobilenext_x1.4", "freeze", 4, 0): {"top1": 99.0, "fp_top1": 99.0},
    ("table3", "resnet18", "scalegrad+ead+afw", 3, 0): {"top1": 99.0, "fp_top1": 99.0},
    ("table4", "ssd_mobilenetv2", "scalegrad+ead+afw", 3, 0): {"map": 99.0, "fp_map": 99.0},
}


def name_of(table, model, recipe, bits, seed):
    return f"{table}/{model}/{recipe}/w{bits}a{bits}/s{seed}"


def ours(values):
    """What a cell must show: mean ± sample std over seeds (n = number of seeds)."""
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def cell_values(table, model, recipe, bits, key):
    return [s[key] for (t, m, r, b, _), s in FINISHED.items() if (t, m, r, b) == (table, model, recipe, bits)]


def fp_cell_values(table, model, key):
    """One value per distinct FP model (seeds that share one FP model give one value)."""
    return sorted({s[key] for (t, m, _, _, _), s in FINISHED.items() if (t, m) == (table, model)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("table_runs")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb_state(mp, root / "state")
        from qat.logging import RunLogger, run_tags

        for runs_, code in ((FINISHED, 0), (CRASHED, 1)):
            for (table, model, recipe, bits, seed), summary in runs_.items():
                name = name_of(table, model, recipe, bits, seed)
                lg = RunLogger(root / PRESET / name, name=name, group=table, tags=run_tags(model, recipe, bits),
                               config={"model": model, "recipe": recipe, "bits": bits, "seed": seed,
                                       "preset": PRESET, "table": table})
                lg.log({"train/loss": 1.0}, step=0)
                lg.summary({**summary, "model": model, "recipe": recipe, "bits": bits, "seed": seed})
                lg.finish(exit_code=code)
        import wandb

        wandb.teardown()
    return root


def maker_module(n: int):
    """tables/make_table{n}.py imported (its constants: MODELS, RECIPES / ROWS, BITS)."""
    if str(REPO / "tables") not in sys.path:
        sys.path.insert(0, str(REPO / "tables"))
    return importlib.import_module(f"make_table{n}")


def make_table(n: int, runs_root: Path, out: Path, *extra, env=None) -> dict[tuple[str, ...], list[str]]:
    env = env or tool_env(out.parent / "state")
    proc = subprocess.run([sys.executable, f"tables/make_table{n}.py", "--runs", str(runs_root / PRESET / f"table{n}"),
                           "--out", str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ext in ("md", "tex", "csv"):
        assert (out / f"table{n}.{ext}").is_file()
    with open(out / f"table{n}.csv", newline="") as f:
        rows = list(csv.reader(f))
    return {"header": rows[0], "rows": rows[1:], "md": (out / f"table{n}.md").read_text()}


def test_table1(runs, tmp_path):
    t = make_table(1, runs, tmp_path / "out")
    assert t["header"] == ["Method", "Variant", "Bits a/w", "YOLOv8-n (mAP)", "MobileNetV2 (top-1, stand-in)"]
    rows = {r[1]: r for r in t["rows"]}
    assert rows["LSQ"][3] == ours(cell_values("table1", "yolov8n", "lsq", 4, "map")) == "21.89 ± 0.74 (n=2)"
    assert rows["LSQ"][4] == ours([85.12])
    assert rows["Freeze weight"][3] == "missing", "a crashed run must not fill a cell"
    assert rows["Freeze weight"][4] == ours([84.3])
    assert rows["FP 32-bit"][3] == ours([25.5]) == "25.50 (n=1)" and rows["FP 32-bit"][4] == ours([88.0])
    assert "FMNIST-Det" in t["md"] and "Fashion-MNIST" in t["md"]

    p = make_table(1, runs, tmp_path / "paper", "--with-paper")
    assert p["header"] == ["Method", "Variant", "Bits a/w", "YOLOv8-n (mAP)", "paper",
                           "MobileNetV2 (top-1, stand-in)", "paper"]
    rows = {r[1]: r for r in p["rows"]}
    assert [rows[k][4] for k in ("FP 32-bit", "LSQ", "Freeze weight")] == ["37.3", "32.1", "31.7"]
    assert rows["LSQ"][6] == ""  # the paper has no MobileNetV2 column in Table I
    assert rows["LSQ"][3] == "21.89 ± 0.74 (n=2)"


def test_table2(runs, tmp_path):
    make_table2 = maker_module(2)

    t = make_table(2, runs, tmp_path / "out", "--with-paper")
    header = t["header"]
    assert header[:4] == ["Task", "Model", "Source", "FP"]
    assert header[4:6] == ["LSQ 4a4w", "LSQ 3a3w"] and header[12:14] == ["Ours 4a4w", "Ours 3a3w"]
    assert header[14:] == ["Freeze* 4a4w", "Freeze* 3a3w"]
    rows = {(r[1], r[2]): dict(zip(header, r)) for r in t["rows"]}
    assert len(rows) == 2 * len(make_table2.MODELS)
    expected = {("YOLOX-T", "LSQ 4a4w"): ours([11.0]), ("MobileNetV1", "Ours 3a3w"): ours([80.1, 81.4, 79.9]),
                ("MobileNetV2", "Damp 4a4w"): ours([83.0]), ("YOLOX-T", "FP"): ours([14.2]),
                ("MobileNetV1", "FP"): ours(fp_cell_values("table2", "mobilenetv1", "fp_top1")),
                ("MobileNetV2", "FP"): ours([88.0])}
    assert expected[("MobileNetV1", "Ours 3a3w")] == "80.47 ± 0.81 (n=3)"
    assert expected[("MobileNetV1", "FP")] == "87.03 ± 0.15 (n=3)"
    for (label, source), row in rows.items():
        if source != "ours":
            continue
        for col in header[3:]:
            assert row[col] == expected.get((label, col), "missing"), (label, col)
    assert rows[("MobileNeXt-x1.4", "ours")]["Freeze* 4a4w"] == "missing"  # crashed
    paper = rows[("YOLOv8-n", "paper")]
    assert [paper[c] for c in ("FP", "LSQ 4a4w", "Damp 3a3w", "Ours 4a4w", "Freeze* 4a4w")] == \
        ["37.3", "33.1", "31.3", "35.2", ""]
    assert rows[("MobileNeXt-x1.4", "paper")]["RedYolo 3a3w"] == "72.3"
    assert "BN folded" in t["md"] and "Fashion-MNIST" in t["md"] and "FMNIST-Det" in t["md"]
    bound_notes = [line for line in t["md"].splitlines() if "cut by the step-update bound" in line]
    assert len(bound_notes) == 1 and bound_notes[0].endswith("YOLOX-T W4A4, per run: LSQ 3 (n=1)")  # logged only there

    plain = make_table(2, runs, tmp_path / "plain")
    assert {r[2] for r in plain["rows"]} == {"ours"} and len(plain["rows"]) == len(make_table2.MODELS)


def test_table3_with_param_counts(runs, tmp_path):
    t = make_table(3, runs, tmp_path / "out", "--with-paper")
    assert t["header"] == ["Model", "Param (M)", "paper", "Acc. FP", "paper", "4A4W", "paper", "3A3W", "paper"]
    rows = {r[0]: r for r in t["rows"]}
    assert len(rows) == 9
    mnv2 = rows["MobileNetV2"]
    assert mnv2[3] == ours([88.0, 88.4]) and mnv2[5] == ours([86.5, 87.25]) == "86.88 ± 0.53 (n=2)"
    assert mnv2[7] == "missing"
    assert rows["ResNet18"][7] == "missing" and rows["ResNet18"][3] == "missing"  # crashed, and nothing else
    # computed parameter counts of our paper-size models beside the paper's
    assert rows["ResNet18"][1] == "11.7" and rows["ResNet18"][2] == "11.7"
    assert rows["VGG-16"][1] == "138.4" and rows["VGG-16"][2] == "138.0"
    assert [mnv2[i] for i in (2, 4, 6, 8)] == ["3.4", "72.0", "71.1", "68.2"]
    assert all(r[5] == "missing" for k, r in rows.items() if k != "MobileNetV2")


def test_table4(runs, tmp_path):
    t = make_table(4, runs, tmp_path / "out")
    assert t["header"] == ["Model", "Param (M) [paper]", "mAP FP", "4A4W", "3A3W"]
    rows = {r[0]: r for r in t["rows"]}
    assert rows["YOLOv8-n"][1:] == ["3.2", ours([22.0]), ours([18.2]), "missing"]
    assert rows["MobileNet SSD V2"][2:] == ["missing"] * 3  # its only run crashed
    p = make_table(4, runs, tmp_path / "paper", "--with-paper")
    assert p["header"] == ["Model", "Param (M) [paper]", "mAP FP", "paper", "4A4W", "paper", "3A3W", "paper"]
    rows = {r[0]: r for r in p["rows"]}
    assert rows["YOLOv8-s"][3::2] == ["44.9", "43.5", "41.8"] and rows["YOLOv8-s"][2::2] == ["missing"] * 3
    assert rows["YOLOv8-n"][4] == ours([18.2])


def test_table5_parts(runs, tmp_path):
    t = make_table("5_parts", runs, tmp_path / "out")
    assert t["header"][6:8] == ["MobileNetV2 W4A4 (top-1)", "MobileNetV2 W3A3 (top-1)"]
    rows = {r[0]: r for r in t["rows"]}
    assert rows["LSQ"][7] == ours([80.0, 80.5, 79.5]) and rows["LSQ"][6] == rows["LSQ"][4] == "missing"
    assert rows["LSQ"][11] == "2.00 ± 0.00 (n=3)"  # late oscillating, in %
    assert rows["ScaleGrad (both)"][7] == "missing" and rows["FP"][7] == ours([88.0])
    # distance − LSQ = +1.0, +1.1, +0.9: t(2) interval above 0
    assert "distance-aware weight gradient only − LSQ: +1.00 [+0.75, +1.25] (n=3) → distance-aware weight " \
           "gradient only better" in t["md"]
    assert "PulseSmooth only − LSQ: +0.17" in t["md"] and "(n=3) → within noise" in t["md"]
    assert "reproduced" not in t["md"]  # the paper claims nothing about the parts


def test_runs_found_through_preset_and_qat_runs(runs, tmp_path):
    """Without --runs a maker reads $QAT_RUNS/<preset>/<table>, as run.sh uses it."""
    env = tool_env(tmp_path / "state", QAT_RUNS=runs, PRESET=PRESET)
    proc = subprocess.run([sys.executable, "tables/make_table4.py", "--out", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ours([18.2]) in (tmp_path / "out" / "table4.md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# experiment configs
# ---------------------------------------------------------------------------------------------------------------
CONFIGS = sorted((REPO / "experiments").glob("*/config.yaml"))
MAKERS = {"table1_freeze": 1, "table2_baselines": 2, "table3_classification": 3, "table4_detection": 4,
          "table5_ablation": 5, "table5_parts": "5_parts"}


def test_every_experiment_has_config_and_run_sh():
    dirs = {p.parent.name for p in CONFIGS}
    assert dirs >= set(MAKERS) | {"fig1_oscillation"}
    for d in dirs:
        assert os.access(REPO / "experiments" / d / "run.sh", os.X_OK), d


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_config_valid_and_dry_run_orders_parents_first(path, tmp_path, monkeypatch, capsys):
    from experiments.launch_config import DETECTORS, load_config
    from qat.models import model_names
    from qat.recipes import get_recipe

    cfg = load_config(path)
    assert set(cfg["models"]) <= set(model_names()) | DETECTORS
    for r in cfg["recipes"]:
        get_recipe(r)
    n = MAKERS.get(path.parent.name)
    if n is not None:  # the config trains every cell its table maker reads
        assert cfg["table"] == f"table{n}"
        maker = maker_module(n)
        models = {m[1] if m[0] in ("OD", "CLS") else m[0] for m in maker.MODELS}
        assert models == set(cfg["models"])
        recipes = getattr(maker, "RECIPES", None) or [r[0] for r in maker.ROWS]
        assert set(recipes) <= set(cfg["recipes"])
    else:  # fig1 draws Table V's runs: LSQ beside ours
        assert path.parent.name == "fig1_oscillation"
        t5 = load_config(REPO / "experiments" / "table5_ablation" / "config.yaml")
        assert cfg["table"] == t5["table"] == "table5"
        for key in ("models", "recipes", "bits"):
            assert set(cfg[key]) <= set(t5[key]), key
        assert {"lsq", "scalegrad+ead+afw"} <= set(cfg["recipes"])

    # `python -m experiments.launch <config> --dry-run --preset smoke`, in this process (the fig1 run.sh test
    # below runs the module through its command line)
    from experiments.launch import main
    for var in ("SEEDS", "MODELS", "RECIPES", "PRESET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    assert main([str(path), "--dry-run", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    runs = []
    for line in out.splitlines():
        if line.startswith("todo "):
            args = line.split()
            runs.append(tuple(args[args.index(f) + 1] for f in ("--model", "--recipe", "--bits", "--seed")))
    seeds = cfg.get("seeds", [0])
    assert len(runs) == len(cfg["models"]) * len(cfg["recipes"]) * len(cfg["bits"]) * len(seeds)
    assert len(set(runs)) == len(runs)
    for i, (model, recipe, bits, seed) in enumerate(runs):
        parent = get_recipe(recipe).branch_from
        if parent is not None:
            assert parent[0] in cfg["recipes"], f"{recipe} branches from {parent[0]}, which the config lacks"
            assert (model, parent[0], bits, seed) in runs[:i], f"{recipe} listed before its parent {parent[0]}"


# ---------------------------------------------------------------------------------------------------------------
# Fig. 1's run.sh: launcher (dry run here), then analysis/fig1.py per model, LSQ beside ours; a missing run is
# reported clearly
# ---------------------------------------------------------------------------------------------------------------
def test_fig1_run_sh_draws_present_runs_and_reports_missing(tmp_path):
    pytest.importorskip("matplotlib")
    runs_root = tmp_path / "runs"
    env = tool_env(tmp_path / "state", QAT_RUNS=runs_root, PRESET=PRESET, FIG1_OUT=tmp_path / "fig")
    for var in ("SEEDS", "MODELS", "RECIPES"):
        env.pop(var, None)
    writer = f"""
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_fig1 import fake_record
from qat.logging import RunLogger, run_tags
root = Path(sys.argv[1])
for recipe in ("lsq", "scalegrad+ead+afw"):
    name = f"table5/mobilenetv2/{{recipe}}/w4a4/s0"
    lg = RunLogger(root / name, name=name, group="table5", tags=run_tags("mobilenetv2", recipe, 4),
                   config={{"preset": root.name}})
    lg.log(fake_record(), step=100)
    lg.summary({{"top1": 80.0, "fp_top1": 85.0}})
    lg.finish()
# YOLOv8-n's LSQ run exists only in Table I, with the configuration Table V would give it: the launcher reuses
# it, and so must the figure.
from qat.config import RunConfig
name = "table1/yolov8n/lsq/w4a4/s0"
det = RunConfig(model="yolov8n", recipe="lsq", bits=4, seed=0, preset=root.name, table="table1").to_dict()
lg = RunLogger(root / name, name=name, group="table1", tags=run_tags("yolov8n", "lsq", 4),
               config={{"table": "table1", "model": "yolov8n", "recipe": "lsq", "bits": 4, "seed": 0,
                        "preset": root.name, "options": det}})
lg.log(fake_record(), step=100)
lg.summary({{"map": 20.0}})
lg.finish()
(root / name / "result.json").write_text("{{}}")
# what the launcher leaves in Table V's cell when it reuses that run (the dry run below writes nothing)
from experiments.reuse import point_to
point_to(root / "table5/yolov8n/lsq/w4a4/s0", root / name)
"""
    proc = subprocess.run([sys.executable, "-c", writer, str(runs_root / PRESET)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", "experiments/fig1_oscillation/run.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # yolov8n's ours run is missing
    assert "[fig1] yolov8n: missing run table5/yolov8n/scalegrad+ead+afw/w4a4/s0" in proc.stderr
    assert "[table5] preset smoke: 6 runs" in proc.stdout  # the launcher ran on the figure's config
    for model in ("mobilenetv2", "yolov8n"):  # yolov8n's LSQ column from the reused Table I run
        for ext in ("png", "pdf"):
            assert (tmp_path / "fig" / f"fig1_{PRESET}_{model}_w4a4.{ext}").stat().st_size > 0

    shutil.rmtree(runs_root / PRESET / "table1")  # no run anywhere: reported, no figure
    shutil.rmtree(tmp_path / "fig")
    proc = subprocess.run(["bash", "experiments/fig1_oscillation/run.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "[fig1] yolov8n: missing run table5/yolov8n/lsq/w4a4/s0" in proc.stderr
    assert "[fig1] yolov8n: no run to draw at w4a4; no figure." in proc.stderr
    assert not list((tmp_path / "fig").glob("fig1_*yolov8n*"))


def test_launcher_orders_branches_after_their_parents_whatever_the_config_order(tmp_path, monkeypatch, capsys):
    """Recipe.branch_from orders a table's runs: a config listing children first still trains each parent first,
    and keeps its own order otherwise."""
    from experiments.launch import main
    config = tmp_path / "config.yaml"
    config.write_text("table: torder\nmodels: [mobilenetv2]\nbits: [4]\nrecipes: [scalegrad+ead+adaround, "
                      "scalegrad+ead+afw, scalegrad+ead, lsq, scalegrad]\n")
    for var in ("SEEDS", "MODELS", "RECIPES", "PRESET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    assert main([str(config), "--dry-run", "--preset", "smoke"]) == 0
    order = [line.split()[line.split().index("--recipe") + 1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("todo ")]
    assert order == ["scalegrad", "scalegrad+ead", "scalegrad+ead+adaround", "scalegrad+ead+afw", "lsq"]


def test_table_makers_import_neither_torch_nor_the_launcher(tmp_path):
    """The table makers read run directories through qat.logging.run_reader: importing every one of them loads no
    torch, no launcher and no run configuration."""
    code = ("import sys; sys.path.insert(0, 'tables'); import common, list_runs, paired\n"
            + "".join(f"import make_table{n}\n" for n in MAKERS.values())
            + "bad = sorted(m for m in sys.modules if m.partition('.')[0] in ('torch', 'experiments', 'tqdm')\n"
              "             or (m.startswith('qat.') and not m.startswith('qat.logging')))\n"
              "print(' '.join(bad) or 'none')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=tool_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["none"]


def test_launcher_default_jobs_one_per_core_on_cpu_one_on_gpu(monkeypatch):
    import torch

    from experiments.launch import default_jobs
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_jobs("auto") == 2 and default_jobs("cpu") == 2
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_jobs("cpu") == 4  # capped: more single-threaded runs only compete for memory bandwidth
    assert default_jobs("cuda") == default_jobs("cuda:1") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_jobs("auto") == 1 and default_jobs("cpu") == 4


# ---------------------------------------------------------------------------------------------------------------
# outputs per preset: a smoke table never overwrites the proxy one, and its title names its preset
# ---------------------------------------------------------------------------------------------------------------
def test_outputs_go_to_a_folder_per_preset(runs, tmp_path, monkeypatch):
    if str(REPO / "tables") not in sys.path:
        sys.path.insert(0, str(REPO / "tables"))
    import common

    monkeypatch.delenv("QAT_TABLES_OUT", raising=False)
    monkeypatch.setenv("PRESET", "proxy")
    assert common.parse_args("table4", []).out == REPO / "tables" / "out" / "proxy"
    assert common.parse_args("table4", ["--preset", "smoke"]).out == REPO / "tables" / "out" / "smoke"
    # --runs <preset>/<table>: that preset, whatever $PRESET says
    args = common.parse_args("table4", ["--runs", str(runs / PRESET / "table4")])
    assert args.preset == PRESET and args.out == REPO / "tables" / "out" / PRESET
    t = make_table(4, runs, tmp_path / "out")
    assert t["md"].splitlines()[0] == "# Table IV — our method on detectors (smoke preset)"


def test_run_sh_writes_the_launched_presets_table(runs, tmp_path):
    """run.sh --preset smoke (PRESET=proxy in the environment) writes tables/out/smoke/ and leaves proxy alone."""
    out = tmp_path / "tables_out"
    env = tool_env(tmp_path / "state", QAT_RUNS=runs, PRESET="proxy", QAT_TABLES_OUT=out)
    for var in ("SEEDS", "MODELS", "RECIPES"):
        env.pop(var, None)
    proc = subprocess.run(["bash", "experiments/table4_detection/run.sh", "--dry-run", "--preset", PRESET], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (out / PRESET / "table4.md").read_text()
    assert md.startswith("# Table IV — our method on detectors (smoke preset)") and ours([18.2]) in md
    assert not (out / "proxy").exists()
