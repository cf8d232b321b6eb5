"""The training entry point: bad input, kill-and-resume, branching, DDP equivalence, paper preset."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_train, tool_env

QAT = ["--preset", "smoke", "--no-wandb", "--no-cle", "--no-bias-correction"]


@pytest.mark.parametrize("args, needle", [
    (["--bits", "1"], "--bits"), (["--bits", "9"], "--bits"), (["--bits", "x"], "--bits"),
    (["--model", "nosuchnet"], "--model"), (["--recipe", "nosuch"], "--recipe"),
    (["--data", "/nonexistent/fmnist"], "Fashion-MNIST not found"),
])
def test_bad_input_gives_one_error_line(args, needle, tmp_path):
    proc = run_train(args + QAT + ["--out", str(tmp_path / "r")], tool_env(tmp_path), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_corrupt_fp_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "fp.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    proc = run_train(QAT + ["--fp-checkpoint", str(bad), "--out", str(tmp_path / "r")], tool_env(tmp_path), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "corrupt" in lines[0], proc.stderr


def _final_state(run_dir: Path):
    return torch.load(run_dir / "final.pt", weights_only=False)


@pytest.mark.parametrize("recipe", ["scalegrad", "fp"])
def test_killed_run_resumes_to_the_same_result(recipe, smoke_env, tmp_path):
    args = QAT + ["--recipe", recipe, "--bits", "3", "--deterministic"]
    if recipe == "fp":  # an FP run writes the cached FP model: not the one the other tests share
        smoke_env = {**smoke_env, "QAT_CHECKPOINTS": str(tmp_path / "checkpoints")}
        args += ["--train-subset", "512"]  # 2 epochs of 16 iterations: enough to be killed after the first
    else:  # the step-update bound's count is hook state a resume must restore (qat/step_bound.py)
        args += ["--step-update-bound", "0.05"]
    reference = tmp_path / "reference"
    run_train(args + ["--out", str(reference)], smoke_env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qat.train", *args, "--out", str(killed)], cwd=REPO,
                            env=smoke_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint.pt").exists() and not (killed / "result.json").exists(), "kill came too late"
    run_train(args + ["--out", str(killed), "--resume"], smoke_env)

    a, b = json.loads((reference / "result.json").read_text()), json.loads((killed / "result.json").read_text())
    assert a["top1"] == b["top1"]
    if recipe != "fp":
        assert a["step_bound/updates_bounded"] == b["step_bound/updates_bounded"]
    for k, v in _final_state(reference)["model"].items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(_final_state(killed)["model"][k], v, rtol=0, atol=0)


def test_unfinished_run_without_resume_is_refused(smoke_env, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    torch.save({"epoch": 1}, out / "checkpoint.pt")
    proc = run_train(QAT + ["--out", str(out)], smoke_env, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_branch_shares_the_prefix_and_finished_runs_are_skipped(smoke_env, tmp_path):
    base = tmp_path / "t" / "scalegrad"
    run_train(QAT + ["--recipe", "scalegrad", "--out", str(base)], smoke_env)
    tau = torch.load(base / "checkpoint_tau.pt", weights_only=False)
    proc = run_train(QAT + ["--recipe", "scalegrad+ead", "--out", str(tmp_path / "t" / "scalegrad+ead")], smoke_env)
    assert "branched from" in proc.stdout and str(base / "checkpoint_tau.pt") in proc.stdout
    assert tau["epoch"] == 4  # τ = 80% of the 5 smoke epochs
    again = run_train(QAT + ["--recipe", "scalegrad", "--out", str(base)], smoke_env)
    assert "finished already" in again.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(smoke_env, tmp_path):
    args = QAT + ["--recipe", "lsq", "--bits", "4", "--epochs", "1"]
    single = tmp_path / "single"
    run_train(args + ["--out", str(single)], smoke_env)
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "qat.train",
                           *args, "--out", str(ddp)], cwd=REPO, env=smoke_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Same global batches; only the order of float sums differs (half-batch gradients averaged by
    # all-reduce), which can flip a rounding decision here and there: a wrong split or a missing
    # average moves weights by ~lr·grad ≈ 1e-2.
    a, b = _final_state(single)["model"], _final_state(ddp)["model"]
    for k, v in a.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            torch.testing.assert_close(b[k], v, rtol=1e-2, atol=1e-3)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (single, ddp))
    assert abs(ra["top1"] - rb["top1"]) <= 1.0


def test_paper_preset_runs_two_iterations_on_a_tiny_imagefolder(tmp_path):
    from PIL import Image
    from qat.models import build_model
    root = tmp_path / "imagenet"
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = (torch.rand(72, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    fp = tmp_path / "mobilenetv2_fp.pt"
    torch.save(build_model("mobilenetv2", "paper").state_dict(), fp)
    env = tool_env(tmp_path)
    proc = run_train(["--preset", "paper", "--data", str(root), "--fp-checkpoint", str(fp), "--recipe", "scalegrad",
                      "--bits", "4", "--max-iterations", "2", "--batch-size", "4", "--workers", "0", "--no-wandb",
                      "--no-cle", "--no-bias-correction", "--out", str(tmp_path / "run")], env)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    ckpt = torch.load(tmp_path / "run" / "trained.pt", weights_only=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # a finished run keeps no resume copy
    assert ckpt["iteration"] == 2 and result["preset"] == "paper"
    assert "[qat]" in proc.stdout


def test_paper_preset_without_imagenet_is_a_clear_error(tmp_path):
    proc = run_train(["--preset", "paper", "--data", str(tmp_path / "none"), "--fp-checkpoint", str(tmp_path / "x.pt"),
                      "--no-wandb", "--out", str(tmp_path / "r")], tool_env(tmp_path), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "ImageNet" in lines[0]


def test_deleted_fp_cache_is_restored_from_the_finished_fp_run(smoke_env, tmp_path):
    env = {**smoke_env, "QAT_CHECKPOINTS": str(tmp_path / "checkpoints")}  # the FP run is finished, its cache absent
    proc = run_train(QAT + ["--recipe", "lsq", "--epochs", "1", "--out", str(tmp_path / "r")], env)
    assert (tmp_path / "checkpoints" / "fp" / "mobilenetv2-smoke.pt").is_file() and "finished already" in proc.stdout


def test_a_model_with_its_own_qat_lr_gets_it_unless_lr_is_given():
    from qat.cli import parse_config
    from qat.config import MODEL_QAT_LR, RunConfig
    assert MODEL_QAT_LR[("proxy", "mobilenetv1")] == 1e-4
    assert parse_config(["--model", "mobilenetv1", "--recipe", "lsq"]).lr == 1e-4  # recorded in the run config
    assert parse_config(["--model", "mobilenetv1", "--recipe", "lsq", "--lr", "0.02"]).lr == 0.02
    assert RunConfig(model="mobilenetv1", recipe="fp").lr is None                  # FP keeps the preset's fp_lr
    assert RunConfig(model="mobilenetv1", recipe="lsq", preset="smoke").lr is None
    assert RunConfig(model="mobilenetv2", recipe="lsq").lr is None
