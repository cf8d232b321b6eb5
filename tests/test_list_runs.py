"""tables/list_runs.py: one CSV row per finished run, unfinished runs left out, a clear error without runs."""
import csv
import io
import json
import subprocess
import sys

from helpers import REPO


def test_lists_finished_runs_only(tmp_path):
    root = tmp_path / "proxy" / "table5" / "mobilenetv2"
    for recipe, bits, top1 in (("lsq", 4, 80.5), ("lsq", 3, 70.25)):
        d = root / recipe / f"w{bits}a{bits}" / "s0"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"model": "mobilenetv2", "recipe": recipe, "bits": bits,
                                                   "seed": 0, "top1": top1, "osc/fraction_oscillating": 0.01}))
    unfinished = root / "scalegrad" / "w4a4" / "s0"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_bytes(b"")
    proc = subprocess.run([sys.executable, "tables/list_runs.py", "table5", "--runs", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["recipe"], r["bits"], r["top1"]) for r in rows] == [("lsq", "4", "80.5"), ("lsq", "3", "70.25")]
    assert rows[0]["osc/fraction_oscillating"] == "0.01"


def test_missing_table_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "tables/list_runs.py", "table5", "--runs", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no runs under")
