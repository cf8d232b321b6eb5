"""Table V: ablation of ScaleGrad, EAD, AFW (AdaRound in place of AFW) on YOLOv8-n, YOLOv9-t, MobileNetV2."""
from common import (OURS_NOTE, claim_notes, fmt, fp_values, load_runs, paper_cell, parse_args, reuse_notes, seed_values,
                    step_bound_notes, table_preset, write_outputs)

TABLE = "table5"
MODELS = [("yolov8n", "YOLOv8-n (mAP)", "map"), ("yolov9t", "YOLOv9-t (mAP)", "map"),
          ("mobilenetv2", "MobileNetV2 (top-1)", "top1")]
ROWS = [("lsq", "-", "-", "-", "-"), ("scalegrad", "✓", "-", "-", "-"), ("scalegrad+ead", "✓", "✓", "-", "-"),
        ("scalegrad+ead+adaround", "✓", "✓", "-", "✓"), ("scalegrad+ead+afw", "✓", "✓", "✓", "-")]
LABELS = {"lsq": "LSQ", "scalegrad": "ScaleGrad", "scalegrad+ead": "+EAD", "scalegrad+ead+adaround": "+AdaRound",
          "scalegrad+ead+afw": "+AFW"}
# The ablation's claims: each row against the one above it (AFW against AdaRound, the paper's alternative), AFW
# against the model it starts from (+EAD), and the whole method against LSQ.
CLAIMS = [(a, b, LABELS[a], LABELS[b]) for (a, *_), (b, *_) in zip(ROWS, ROWS[1:])] + [
    ("scalegrad+ead", "scalegrad+ead+afw", "+EAD", "+AFW"), ("lsq", "scalegrad+ead+afw", "LSQ", "ours (+AFW)")]


def phase_notes(runs: dict) -> list[str]:
    """Did each phase act? Codes EAD's update changed (ScaleGrad+EAD), weights frozen by ours (τ → end) and codes
    AFW changed, per model and bits."""
    notes = []
    for model, label, _ in MODELS:
        for bits in (4, 3):
            values = lambda recipe, key: seed_values(runs, TABLE, model, recipe, bits, key)  # noqa: E731
            ead = values("scalegrad+ead", "ead/changed_codes")
            frozen = [100 * v for v in values("scalegrad+ead+afw", "freeze/fraction_frozen")]
            changed = values("scalegrad+ead+afw", "afw/changed_codes")
            if ead or frozen or changed:
                notes.append(f"Phases, {label.split(' (')[0]} W{bits}A{bits}: codes changed by EAD {fmt(ead, 0)}; "
                             f"ours: frozen weights {fmt(frozen)} %, codes changed by AFW {fmt(changed, 0)}")
    return notes


# (result key, what it measures): the late window is the phenomenon the methods target (qat/freeze.py).
OSCILLATION_KEYS = [("osc/late_fraction", "oscillating faster than the final freeze threshold in the last 20 % of "
                     "iterations"),
                    ("osc/late_fraction_depthwise", "of them, depthwise layers"),
                    ("osc/fraction_oscillating", "bias-corrected frequency > 0.005 at the end")]


def oscillation_notes(runs: dict) -> list[str]:
    """Share of tracked (≤ 4-bit) weights that oscillate, LSQ, ScaleGrad, ScaleGrad+EAD and ours, per model and
    bits."""
    notes = []
    for model, label, _ in MODELS:
        for bits in (4, 3):
            for key, meaning in OSCILLATION_KEYS:
                cells = []
                for recipe, name in (("lsq", "LSQ"), ("scalegrad", "ScaleGrad"), ("scalegrad+ead", "ScaleGrad+EAD"),
                                     ("scalegrad+ead+afw", "ours (EAD with freezing, AFW)")):
                    vals = [100 * v for v in seed_values(runs, TABLE, model, recipe, bits, key)]
                    if vals:
                        cells.append(f"{name} {fmt(vals)} %")
                if cells:
                    notes.append(f"Oscillating weights, {label.split(' (')[0]} W{bits}A{bits} ({meaning}): "
                                 + "; ".join(cells))
    return notes


def main(argv=None):
    args = parse_args(TABLE, argv)
    runs = load_runs(args, TABLE)
    header = ["ScaleGrad", "EAD", "AFW", "AdaRound", "Bits a/w"]
    for _, label, _ in MODELS:
        header += [label] + (["paper"] if args.with_paper else [])
    rows = []
    for bits in (4, 3):
        for recipe, *marks in ROWS:
            row = marks + [str(bits)]
            for model, _, key in MODELS:
                row.append(fmt(seed_values(runs, TABLE, model, recipe, bits, key)))
                if args.with_paper:
                    row.append(paper_cell(TABLE, model, recipe, bits))
            rows.append(row)
    fp = ["FP", "", "", "", "32"]
    for model, _, key in MODELS:
        fp.append(fmt(fp_values(runs, TABLE, model, "fp_map" if key == "map" else "fp_top1")))
        if args.with_paper:
            fp.append("")
    rows.append(fp)
    notes = [OURS_NOTE,
             "Preset and budgets: see the runs' configs; proxy numbers are Fashion-MNIST / FMNIST-Det, "
             "not ImageNet / COCO."]
    notes += oscillation_notes(runs)
    notes += phase_notes(runs)
    trained = [(recipe, LABELS[recipe]) for recipe, *_ in ROWS if recipe != "scalegrad+ead+adaround"]  # post step only
    notes += step_bound_notes(runs, TABLE, [(m, label.split(" (")[0]) for m, label, _ in MODELS], trained, [4, 3])
    notes.append("Paired differences over seeds (row − the row above it), mean [95 % interval], and the verdict "
                 "against the paper's direction (tables/paired.py):")
    for model, label, key in MODELS:
        for bits in (4, 3):
            notes += claim_notes(runs, TABLE, model, label.split(" (")[0], key, bits, CLAIMS)
    if args.with_paper:
        notes.append("'paper' columns: the paper's reported ImageNet top-1 / COCO mAP (tables/paper_results.yaml).")
    notes += reuse_notes(runs, TABLE)
    write_outputs(TABLE, header, rows, args.out, "Table V — ablation", notes,
                  table_preset(runs, args.preset))


if __name__ == "__main__":
    main()
