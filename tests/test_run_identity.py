"""A run directory is tied to its training configuration (qat/run_dir.py, issue 18 item 1): the same command
with another hyper-parameter is refused with one `error:` line naming the key instead of answering "finished
already"; a branch refuses a parent trained with other settings; the launcher rejects an unknown extra
argument before it starts anything."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import run_train

from qat.config import RunConfig

SMOKE = ["--preset", "smoke", "--epochs", "2", "--no-wandb"]


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


def test_changed_hyper_parameter_is_refused_not_finished_already(smoke_env):
    args = ["--recipe", "lsq", "--table", "ident", *SMOKE]
    run_train(args, smoke_env)
    again = run_train(args, smoke_env)  # the same configuration: its result
    assert "finished already" in again.stdout
    changed = run_train([*args, "--lr", "0.05"], smoke_env, check=False)
    assert changed.returncode == 2, changed.stdout[-2000:]
    line = _one_error_line(changed)
    assert "lr=None (now 0.05)" in line and "delete the directory" in line
    assert "finished already" not in changed.stdout


def test_branch_refuses_a_parent_trained_with_other_dist_k(smoke_env):
    run_train(["--recipe", "scalegrad", "--table", "branch", *SMOKE], smoke_env)
    proc = run_train(["--recipe", "scalegrad+ead", "--table", "branch", "--dist-k", "5.0", *SMOKE], smoke_env,
                     check=False)
    assert proc.returncode == 2, proc.stdout[-2000:]
    line = _one_error_line(proc)
    assert "methods.dist_k=1 (now 5)" in line and "/scalegrad/w4a4/s0" in line
    branch_dir = Path(smoke_env["QAT_RUNS"]) / "smoke/branch/mobilenetv2/scalegrad+ead/w4a4/s0"
    assert not (branch_dir / "result.json").exists()


def test_identity_holds_only_what_the_recipe_reads():
    from qat.run_reuse import identity_differences, training_identity
    base = RunConfig(recipe="scalegrad", preset="smoke").to_dict()
    ead = dict(base, methods=dict(base["methods"], ead_k=2.0))
    assert training_identity(ead) == training_identity(base)  # ScaleGrad never reads EAD's settings
    assert identity_differences(dict(ead, recipe="scalegrad+ead"), dict(base, recipe="scalegrad+ead")) == \
        {"methods.ead_k": (2.0, 1.0)}
    # a branch's identity holds its parent's settings: AdaRound after ScaleGrad+EAD depends on ead_k
    assert identity_differences(dict(ead, recipe="scalegrad+ead+adaround"),
                                dict(base, recipe="scalegrad+ead+adaround")) == {"methods.ead_k": (2.0, 1.0)}
    # an FP run reads none of the QAT settings (the FP model a W3 run trains is the W4 run's)
    fp = RunConfig(recipe="fp", preset="smoke").to_dict()
    assert training_identity(dict(fp, bits=3, cle=False)) == training_identity(fp)
    assert training_identity(dict(fp, epochs=1)) != training_identity(fp)


@pytest.fixture
def launch(dirs, tmp_path, monkeypatch):
    """The launcher on a one-run table whose run command only leaves a mark (no training)."""
    import experiments.launch as ex
    config = tmp_path / "config.yaml"
    config.write_text("table: tident\nmodels: [mobilenetv2]\nrecipes: [lsq]\nbits: [4]\n")
    fp = dirs / "checkpoints" / "fp" / "mobilenetv2-smoke.pt"  # the FP model counts as trained
    fp.parent.mkdir(parents=True)
    fp.write_bytes(b"")
    mark = tmp_path / "ran"
    fake = [sys.executable, "-c", f"open({str(mark)!r}, 'a').write('x')"]
    monkeypatch.setattr(ex, "command", lambda *a, **k: fake)
    monkeypatch.setattr(ex, "fp_command", lambda *a, **k: fake, raising=False)
    return lambda *args: ex.main([str(config), "--preset", "smoke", "--device", "cpu", *args]), mark


def test_launcher_rejects_an_unknown_extra_argument_before_running(launch, capsys):
    main, mark = launch
    assert main("--learning-rate", "0.05") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: unrecognized arguments: --learning-rate 0.05"]
    assert not mark.exists()
    assert main("--pulse-delta", "x") == 2  # a bad value of a known argument, too
    assert "error: argument --pulse-delta" in capsys.readouterr().err and not mark.exists()


def test_launcher_rejects_extra_arguments_that_move_its_runs(launch, capsys):
    main, mark = launch
    assert main("--tab", "other") == 2  # an abbreviation of --table, which the launcher sets
    assert capsys.readouterr().err.startswith("error: the extra arguments --tab other set table")
    assert not mark.exists()


def test_launcher_passes_valid_extra_arguments(launch, capsys):
    main, mark = launch
    assert main("--pulse-delta", "0.5") == 0
    assert mark.read_text() == "x"


def test_detection_runs_keep_the_same_rules(dirs):
    """train_detector claims its directory like the classification Trainer: a directory holding a run of other
    settings is refused naming the key, one another process trains is busy (both before any work)."""
    import fcntl
    import os

    from dataclasses import replace

    from qat.config import RunConfig
    from qat.detection.train import train_detector
    from qat.run_dir import RunBusy
    cfg = RunConfig(model="yolov8n", recipe="lsq", preset="smoke", table="det")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    (cfg.run_dir / "result.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lr=None \(now 0.05\)"):
        train_detector(replace(cfg, lr=0.05))
    fd = os.open(cfg.run_dir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunBusy, match="being trained by another process"):
            train_detector(cfg)
    finally:
        os.close(fd)
