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
    (["--batch", "0"], "--batch: must be a positive integer, got '0'"),
    (["--imgsz", "0"], "--imgsz: must be a positive integer, got '0'"),
    (["--fraction", "0"], "--fraction: must be a number in (0, 1], got '0'"),
    (["--device", "cuda:0"], "--device: 'cuda:0' needs a CUDA GPU"),
    (["--device", "0"], "--device: '0' needs a CUDA GPU"),
])
def test_detection_cli_refuses_bad_values(argv, named, no_gpu, capsys):
    pytest.importorskip("ultralytics")
    from qat.detection.train import main
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", *argv])
    assert e.value.code == 2
    assert named in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, named", [
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--device", "cuda"], "--device: 'cuda' needs a CUDA GPU"),
])
def test_torch_detector_cli_refuses_bad_values(argv, named, no_gpu, capsys):
    from qat.detection.train import main
    with pytest.raises(SystemExit) as e:
        main(["--model", "yolox_nano", "--preset", "smoke", *argv])
    assert e.value.code == 2
    assert named in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------- --help
def parsers() -> dict[str, argparse.ArgumentParser]:
    from qat.cli import build_parser
    from qat.detection.torch_detectors import TORCH_DETECTORS
    from qat.detection.torch_train import TorchDetectionConfig
    found = {"qat.train": build_parser(),
             "qat.detection (SSD / YOLOX)": build_parser(TorchDetectionConfig, models=list(TORCH_DETECTORS))}
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return found
    from qat.detection.train import build_parser as detection_parser
    found["qat.detection (YOLO)"] = detection_parser()
    return found


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
