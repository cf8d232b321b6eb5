"""A finished run's headline metric on its CALIBRATION split, kept in a study's JSON cache as it is measured.

The calib studies (analysis/*_study.py) choose what the paper leaves open by these scores, never by the split the
tables report. Classifiers: top-1 on Fashion-MNIST's 5 000-image held-out slice of the training set (the run's
`calib_data`), with the final model rebuilt as the exporter rebuilds it (`qat.export.run_model.load_run`: recorded
structure, `final.pt`, frozen codes). Ultralytics detectors: COCO mAP on FMNIST-Det's calib split
(analysis/detector_split_eval.py). Which one a run gets follows its result.json (`top1` or `map`).
"""
from __future__ import annotations

import json
from pathlib import Path


def classifier_calib_top1(run_dir: Path) -> float:
    """Top-1 (%) of a finished classifier run's final model on its calibration split."""
    from qat.export.run_model import ExportError, load_run
    try:
        loaded = load_run(run_dir)
    except ExportError as e:
        raise SystemExit(f"error: {e}") from None
    trainer = loaded.trainer
    trainer.test_data = trainer.calib_data  # evaluate() reads test_data; the calib slice instead
    return trainer.evaluate(loaded.model)["top1"]


def calib_score(run_dir: Path) -> float:
    """The run's headline metric on its calibration split: classifier top-1 or detector mAP (%)."""
    result = json.loads((run_dir / "result.json").read_text())
    if "top1" in result:
        return classifier_calib_top1(run_dir)
    if "map" in result:
        from analysis.detector_split_eval import evaluate_on_split
        return evaluate_on_split(run_dir, "calib")
    raise SystemExit(f"error: {run_dir}/result.json has neither top1 nor map: not a classifier or detector run")


def cache_key(run_dir: Path) -> str:
    """The run's path under the runs root (`$QAT_RUNS`), so a committed cache reads the same on every machine; a
    run elsewhere: its resolved path."""
    from qat.config import runs_root
    resolved, root = run_dir.resolve(), runs_root().resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def calib_scores(runs: list[Path], cache_path: Path) -> dict[Path, float]:
    """Run directory → calibration score of each finished run, kept in the JSON file `cache_path` as each is
    measured, so a killed study resumes where it stopped and a study over more seeds measures only what is new."""
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    out = {}
    for run_dir in runs:
        if not (run_dir / "result.json").is_file():
            raise SystemExit(f"error: {run_dir} is not a finished run (no result.json)")
        key = cache_key(run_dir)
        if key not in cache:
            cache[key] = calib_score(run_dir)
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=1))
        out[run_dir] = cache[key]
    return out


def write_report(path: Path, text: str) -> int:
    """Write a calib study's markdown report to `path` and print it; the exit status 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return 0
