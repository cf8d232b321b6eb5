"""Table makers on real W&B offline runs: a finished run fills its cell, crashed and absent runs are missing."""
import json
import subprocess
import sys

from helpers import REPO, run_train


def test_table5_from_offline_wandb_runs(smoke_env, tmp_path):
    env = dict(smoke_env, QAT_RUNS=str(tmp_path / "runs"))
    common = ["--preset", "smoke", "--table", "table5", "--model", "mobilenetv2", "--no-cle", "--no-bias-correction"]
    run_train(common + ["--recipe", "lsq", "--bits", "4", "--epochs", "1"], env)
    crashed = run_train(common + ["--recipe", "scalegrad", "--bits", "4", "--epochs", "1", "--lr", "1e12"], env,
                        check=False)
    assert crashed.returncode == 1 and "non-finite" in crashed.stderr
    result = json.loads((tmp_path / "runs" / "smoke" / "table5" / "mobilenetv2" / "lsq" / "w4a4" / "s0" /
                         "result.json").read_text())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tables/make_table5.py", "--preset", "smoke", "--out", str(out),
                           "--with-paper"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split(",")[:5]): line.split(",") for line in (out / "table5.csv").read_text().splitlines()}
    lsq4 = rows[("-", "-", "-", "-", "4")]
    # columns: 5 marks, then per model (ours, paper): yolov8n, yolov9t, mobilenetv2
    assert lsq4[9] == f"{result['top1']:.2f} (n=1)"
    assert lsq4[10] == "69.5"                               # the paper's number, labelled beside ours
    scalegrad4 = rows[("✓", "-", "-", "-", "4")]
    assert scalegrad4[9] == "missing", "a crashed run must not fill a cell"
    assert lsq4[5] == "missing" and rows[("-", "-", "-", "-", "3")][9] == "missing"
    assert (out / "table5.md").is_file() and (out / "table5.tex").is_file()
    # the run logged the one W&B schema of every task (qat/logging/schema.py; tests/test_wandb_schema.py)
    from qat.logging.run_reader import read_local_runs
    from qat.logging.schema import CONFIG_KEYS, EPOCH_METRICS, unknown_metrics
    rec = read_local_runs(tmp_path / "runs" / "smoke" / "table5" / "mobilenetv2" / "lsq")[0]
    names = {k for row in rec.history for k in row}
    assert set(rec.config) == CONFIG_KEYS and set(EPOCH_METRICS) <= names and "val/metric" in names
    assert unknown_metrics(names, "classification") == set() and rec.summary["metric"] == result["top1"]
    text = (out / "table5.md").read_text()
    osc, late = 100 * result["osc/fraction_oscillating"], 100 * result["osc/late_fraction"]
    assert f"MobileNetV2 W4A4 (bias-corrected frequency > 0.005 at the end): LSQ {osc:.2f} (n=1) %" in text
    assert (f"MobileNetV2 W4A4 (oscillating faster than the final freeze threshold in the last 20 % of iterations): "
            f"LSQ {late:.2f} (n=1) %") in text
