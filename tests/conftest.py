import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test, deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    """Environment whose cached FP checkpoints live in a session temp dir; the smoke FP MobileNetV2 is
    trained there once (a few seconds) and shared by every training test."""
    from helpers import run_train, tool_env
    tmp = tmp_path_factory.mktemp("smoke")
    env = tool_env(tmp, QAT_CHECKPOINTS=tmp / "checkpoints")
    run_train(["--recipe", "fp", "--preset", "smoke", "--no-wandb", "--table", "fp"], env)
    return env


@pytest.fixture()
def dirs(tmp_path, monkeypatch):
    """Runs, cached FP checkpoints and offline W&B runs of one test, all under its tmp_path."""
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("QAT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


@pytest.fixture(scope="session")
def smoke_lsq_run(smoke_env, tmp_path_factory):
    """A finished smoke LSQ W3A3 classifier run (read-only: tests that change a run train their own)."""
    from helpers import run_train
    run_dir = tmp_path_factory.mktemp("smoke_lsq") / "run"
    run_train(["--preset", "smoke", "--no-wandb", "--recipe", "lsq", "--bits", "3", "--out", str(run_dir)], smoke_env)
    return run_dir
