"""Table IV: our method (scalegrad+ead+afw) on eight detectors, W4A4 and W3A3."""
import yaml

from common import REPO, OURS_NOTE, fp_and_bits_cells, load_runs, parse_args, reuse_notes, table_preset, write_outputs

TABLE = "table4"
RECIPE = "scalegrad+ead+afw"
RECIPES = [RECIPE]
BITS = [4, 3]
MODELS = [("ssd_mobilenetv2", "MobileNet SSD V2"), ("yolox_nano", "YOLOX-Nano"), ("yolox_tiny", "YOLOX-Tiny"),
          ("yolov8n", "YOLOv8-n"), ("yolov8s", "YOLOv8-s"), ("yolov8m", "YOLOv8-m"), ("yolov9t", "YOLOv9-t"),
          ("yolov9s", "YOLOv9-s")]


def main(argv=None):
    args = parse_args(TABLE, argv)
    runs = load_runs(args, TABLE)
    paper_params = yaml.safe_load((REPO / "tables" / "paper_results.yaml").read_text())["params_m"][TABLE]
    paper = ["paper"] if args.with_paper else []
    header = ["Model", "Param (M) [paper]", "mAP FP", *paper]
    for b in BITS:
        header += [f"{b}A{b}W", *paper]
    rows = []
    for model, label in MODELS:
        row = [label, f"{paper_params[model]:.1f}"]
        row += fp_and_bits_cells(runs, TABLE, model, RECIPE, "map", BITS, args.with_paper)
        rows.append(row)
    notes = [OURS_NOTE + " Method: ours = recipe scalegrad+ead+afw.",
             "Metric: mAP@[.5:.95] (%) on FMNIST-Det at the smoke/proxy presets, MS COCO val2017 at the paper "
             "preset. mAP FP: the FP detector as recorded by the QAT runs (fp_map).",
             "Param (M) [paper]: the paper's printed parameter counts (COCO, 80 classes), not computed here."]
    if args.with_paper:
        notes.append("'paper' columns: the paper's Table IV (COCO mAP; tables/paper_results.yaml).")
    notes += reuse_notes(runs, TABLE)
    write_outputs(TABLE, header, rows, args.out, "Table IV — our method on detectors", notes,
                  table_preset(runs, args.preset))


if __name__ == "__main__":
    main()
