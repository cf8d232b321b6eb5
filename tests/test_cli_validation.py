"""Bad input is refused before anything trains or is written (one `error:` line naming the value and what is
allowed, exit 2), both CLIs document every option, the launcher counts FP models in its progress bar, and tool
state stays out of ~ without scripts/setup.sh (issue 18, items 4 and 9)."""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, tool_env


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.fixture
def no_gpu(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------------------------ python -m qat.train
@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--train-subset", "-5"], "--train-subset: must be a positive integer, got '-5'"),
    (["--max-iterations", "0"], "--max-iterations: must be a positive integer, got '0'"),
    (["--lr", "-0.1"], "--lr: must be a number >= 0, got '-0.1'"),
    (["--first-last-bits", "1"], "--first-last-bits: must be an integer between 2 and 8, got '1'"),
    (["--device", "cuda"], "--device: 'cuda' needs a CUDA GPU"),
    (["--device", "gpu"], "--device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_classification_cli_refuses_bad_values(argv, named, no_gpu, capsys):
    from qat.cli import parse_config
    with pytest.raises(SystemExit) as e:
        parse_config(["--preset", "smoke", *argv])
    assert e.value.code == 2
    assert named in one_error_line(capsys.readouterr().err)


def test_classification_cli_keeps_lr_zero_and_cpu():
    from qat.cli import parse_config
    cfg = parse_config(["--lr", "0", "--device", "cpu", "--epochs", "1", "--batch-size", "8"])
    assert (cfg.lr, cfg.device, cfg.epochs, cfg.batch_size) == (0.0, "cpu", 1, 8)


def test_epochs_zero_writes_nothing(tmp_path):
    """Through the command line: refused with one line, and no run directory, checkpoint or W&B file."""
    env = tool_env(tmp_path, QAT_CHECKPOINTS=tmp_path / "checkpoints")
    proc = subprocess.run([sys.executable, "-m", "qat.train", "--preset", "smoke", "--recipe", "lsq", "--epochs", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--epochs: must be a positive integer, got '0'" in one_error_line(proc.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


# -------------------------------------------------------------------------------- python -m qat.detection
@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--imgsz", "0"], "--imgsz: must be a positive integer, got '0'"),
    (["--fraction", "0"], "--fraction: must be a number in (0, 1], got '0'"),
    (["--device", "cuda:0"], "--device: 'cuda:0' needs a CUDA GPU"),
    (["--device", "0"], "--device: '0' needs a CUDA GPU"),
])
def test_detection_cli_refuses_bad_values(argv, named, no_gpu, capsys):
    pytest.importorskip("ultralytics")
    from qat.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", *argv], default_model="yolov8n")
    assert e.value.code == 2
    assert named in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, named", [
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--device", "cuda"], "--device: 'cuda' needs a CUDA GPU"),
])
def test_torch_detector_cli_refuses_bad_values(argv, named, no_gpu, capsys):
    from qat.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--model", "yolox_nano", "--preset", "smoke", *argv])
    assert e.value.code == 2
    assert named in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------- --help
def parsers() -> dict[str, argparse.ArgumentParser]:
    from qat.cli import build_parser
    return {"qat.run": build_parser(), "qat.detection": build_parser(default_model="yolov8n")}


def test_every_option_of_both_clis_has_help_and_shows_its_default():
    from qat.recipes import MethodConfig
    methods = {"--" + f.name.replace("_", "-") for f in MethodConfig.__dataclass_fields__.values() if f.name != "extra"}
    for name, parser in parsers().items():
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        text = parser.format_help()  # raises on a bad %-format in a help string
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[0]
            assert action.help, f"{name}: {flag} has no help text"
            if flag in methods:  # what the hyper-parameter is, in SPEC's terms
                assert "SPEC §" in action.help, f"{name}: {flag}: {action.help}"
        assert "--pulse-delta PULSE_DELTA" in text and "PulseSmooth δ" in text and "(default: 0.1)" in text
        assert "(default: auto)" in text  # --device


# ------------------------------------------------------------------------------------------ the launcher
GOOD = {"table": "table9", "models": ["mobilenetv2"], "recipes": ["lsq"], "bits": [4], "seeds": [0]}


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = {**GOOD, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del cfg[key]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def launcher_env(tmp_path, monkeypatch):
    for var in ("SEEDS", "MODELS", "RECIPES", "PRESET", "DEVICE", "JOBS", "BITS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("QAT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path


@pytest.mark.parametrize("changes, argv, env, named", [
    (dict(models=["mobilenet_v2"]), [], {}, "unknown model 'mobilenet_v2' (did you mean 'mobilenetv2'?); allowed:"),
    (dict(recipes=["lsq", "scalegrad+eda"]), [], {}, "unknown recipe 'scalegrad+eda' (did you mean 'scalegrad+ead'?)"),
    (dict(seed=[1], seeds=None), [], {}, "unknown key 'seed' (did you mean 'seeds'?); allowed: table, models,"),
    (dict(bits=[4, 1]), [], {}, "bits must be integers between 2 and 8, got 1"),
    (dict(seeds=["x"]), [], {}, "seeds must be integers >= 0, got 'x'"),
    (dict(table=None), [], {}, "missing key 'table'"),
    ({}, [], {"SEEDS": "x"}, "SEEDS / --seeds must be integers >= 0 separated by spaces or commas, got 'x'"),
    ({}, ["--seeds", "0 1.5"], {}, "got '0 1.5'"),
    ({}, [], {"MODELS": "yolov8"}, "unknown model in --models / MODELS 'yolov8'"),
    ({}, [], {"BITS": "2"}, "BITS / --bits must be some of the config's bits"),
    ({}, ["--bits", "3,x"], {}, "got '3,x'"),
    ({}, ["--recipes", "damp"], {}, "unknown recipe in --recipes / RECIPES 'damp'"),
    ({}, ["--preset", "proxi"], {}, "unknown preset 'proxi'"),
    ({}, ["--device", "cuda"], {}, "--device: 'cuda' needs a CUDA GPU"),
    ({}, [], {"JOBS": "0"}, "--jobs: must be a positive integer, got '0'"),
])
def test_launcher_refuses_bad_input_before_any_work(changes, argv, env, named, launcher_env, monkeypatch, no_gpu,
                                                    capsys):
    from experiments import launch
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the launcher started a run"))
    code = None
    try:
        code = launch.main([str(write_config(launcher_env, **changes)), "--preset", "smoke", *argv])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert code == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert not (launcher_env / "runs").exists()


def test_committed_configs_pass_the_check():
    from experiments.launch_config import load_config
    for path in sorted((REPO / "experiments").glob("*/config.yaml")):
        load_config(path)


def test_launcher_progress_counts_fp_models_and_shows_the_run_training(launcher_env, monkeypatch):
    """One FP model and two runs: 3 units; while a run trains, the bar names it."""
    import tqdm.auto

    from experiments import launch
    bars = []
    init = tqdm.auto.tqdm.__init__

    def recording_init(self, *args, **kwargs):  # drawn (TQDM_DISABLE is set in tests) into a string
        init(self, *args, **{**kwargs, "disable": False, "file": io.StringIO()})
        bars.append(self)

    monkeypatch.setattr(tqdm.auto.tqdm, "__init__", recording_init)
    seen = []

    def fake_run(cmd, log, **kwargs):  # the launcher starts each run through run_child
        seen.append((cmd[cmd.index("--recipe") + 1], bars[-1].n, str(bars[-1].postfix)))
        return 0

    monkeypatch.setattr(launch, "run_child", fake_run)
    path = write_config(launcher_env, seeds=[0, 1])
    assert launch.main([str(path), "--preset", "smoke", "--device", "cpu", "--jobs", "1"]) == 0
    assert bars[-1].total == 3 and bars[-1].n == 3  # the FP model is work too
    fp, first, second = seen
    assert fp[:2] == ("fp", 0) and "training FP mobilenetv2" in fp[2]
    assert first[:2] == ("lsq", 1) and "training mobilenetv2/lsq/w4a4/s0" in first[2]
    assert second[:2] == ("lsq", 2) and "last mobilenetv2/lsq/w4a4/s0" in second[2]


# ------------------------------------------------------------------------------ experiments/run_table.sh
def test_run_table_sh_leaves_the_table_alone_when_the_launcher_refuses(tmp_path):
    """run_table.sh in a copy of the tree's layout, with a table maker that leaves a mark: bad SEEDS or a bad
    config stop it (exit 2, no table written); a good launch still writes the table."""
    (tmp_path / "experiments" / "t9").mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "run_table.sh", tmp_path / "experiments")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "make_table9.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('written').touch()\n")
    config = tmp_path / "experiments" / "t9" / "config.yaml"
    written = tmp_path / "tables" / "written"
    env = tool_env(tmp_path / "state", PRESET="smoke")
    for var in ("SEEDS", "MODELS", "RECIPES"):
        env.pop(var, None)

    def run_table(**extra):
        return subprocess.run(["bash", "experiments/run_table.sh", "t9", "9", "--dry-run"], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)

    config.write_text(yaml.safe_dump(GOOD))
    proc = run_table(SEEDS="x")
    assert proc.returncode == 2 and not written.exists(), proc.stdout + proc.stderr
    assert "SEEDS / --seeds must be integers" in one_error_line(proc.stderr)

    config.write_text(yaml.safe_dump({**GOOD, "models": ["resnet"]}))
    proc = run_table()
    assert proc.returncode == 2 and not written.exists(), proc.stdout + proc.stderr

    config.write_text(yaml.safe_dump(GOOD))
    proc = run_table()
    assert proc.returncode == 0 and written.exists(), proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ outside the environment
BLOCK_YAML = """
import runpy, sys
class NoYaml:  # a Python without PyYAML
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "yaml":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoYaml())
script = sys.argv[1]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("table", [1, 2, 5])
def test_table_maker_without_the_project_packages_says_so_in_one_line(table, tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_YAML, str(REPO / "tables" / f"make_table{table}.py")],
                          cwd=tmp_path, env=tool_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    line = one_error_line(proc.stderr)
    assert "'yaml'" in line and "source scripts/setup.sh" in line


def test_ultralytics_keeps_its_settings_out_of_home_without_setup_sh(tmp_path):
    pytest.importorskip("ultralytics")
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = {k: v for k, v in tool_env(tmp_path).items()
           if not k.startswith("YOLO_") and k not in ("XDG_CONFIG_HOME", "QAT_STATE")}
    env.update(HOME=str(home), QAT_STATE=str(state))
    proc = subprocess.run([sys.executable, "-c", "import os, qat.detection.ultralytics_qat; "
                           "print(os.environ['YOLO_CONFIG_DIR'], os.environ['YOLO_OFFLINE'])"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (home / ".config" / "Ultralytics").exists(), sorted(os.listdir(home / ".config"))
    assert proc.stdout.splitlines()[-1].split() == [str(state / "ultralytics"), "1"]
    assert (state / "ultralytics").is_dir()


def test_launcher_bits_restricts_the_runs(launcher_env, monkeypatch, capsys):
    from experiments import launch
    config = write_config(launcher_env, bits=[4, 3], seeds=[0, 1])
    monkeypatch.setenv("BITS", "3")
    assert launch.main([str(config), "--preset", "smoke", "--dry-run", "--device", "cpu"]) == 0
    planned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("todo ")]
    assert len(planned) == 2 and all("--bits 3" in line for line in planned)
