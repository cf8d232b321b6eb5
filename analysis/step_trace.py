#!/usr/bin/env python
"""Per-iteration trace of one quantized layer's weight step size during a run (docs/PROXY_STUDY.md, "What traps
the step"): for each optimizer step, the step size before and after it, its gradient as the backward left it
(before clipping), the layer's share of non-zero codes, its largest |w| and the lr. A diagnostic: it wraps the
trainers' `qat_step` for this process only; the run itself is an ordinary `python -m qat.run` run (give it a table
of its own, and `--max-iterations` to stop early).

    python analysis/step_trace.py --layer model.22.cv2.0.2 --trace trace.jsonl -- \
        --model yolov8n --recipe damp --bits 4 --seed 0 --table step_trace --max-iterations 430 --no-wandb
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def traced_step(step_fn, layer_name: str, out):
    """`step_fn` (qat.loop.qat_step) that also writes one JSON line per call about `layer_name` to `out`."""
    seen = {"t": 0, "hooked": None}

    def step(loss, optimizer, hooks, state, *args, **kwargs):
        layer = dict(state.model.named_modules()).get(layer_name)
        if layer is None:
            raise SystemExit(f"error: the model has no layer {layer_name!r}")
        s, q = layer.weight_quant.step, layer.weight_quant
        if seen["hooked"] is not s:  # the gradient the backward leaves, before clipping and the optimizer
            s.register_hook(lambda grad: seen.__setitem__("grad", grad.detach().clone()))
            seen["hooked"] = s
        before = s.detach().clone()
        result = step_fn(loss, optimizer, hooks, state, *args, **kwargs)
        w = layer.weight.detach()
        codes = torch.clamp(torch.round(w / s.detach()), q.qmin, q.qmax)
        grad = seen.pop("grad", None)
        out.write(json.dumps({"t": seen["t"], "step_before": before.tolist(), "step_after": s.detach().tolist(),
                              "grad": None if grad is None else grad.tolist(),
                              "nonzero_codes": float((codes != 0).float().mean()),
                              "max_abs_w": float(w.abs().max()), "lr": optimizer.param_groups[0]["lr"]}) + "\n")
        out.flush()
        seen["t"] += 1
        return result

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", required=True, help="quantized layer name, e.g. model.22.cv2.0.2")
    p.add_argument("--trace", required=True, help="JSON-lines file to write")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="after --: the arguments of python -m qat.run")
    a = p.parse_args(argv)
    run_args = a.run_args[1:] if a.run_args[:1] == ["--"] else a.run_args
    import qat.detection.ultralytics_qat as ultralytics_qat
    import qat.train.classification as classification
    from qat.cli import main as run_main
    from qat.loop import qat_step
    with open(a.trace, "w") as out:
        ultralytics_qat.qat_step = classification.qat_step = traced_step(qat_step, a.layer, out)
        return run_main(run_args)


if __name__ == "__main__":
    sys.exit(main())
