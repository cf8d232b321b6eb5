"""Table III: our method (scalegrad+ead+afw) on nine classifiers, W4A4 and W3A3, with each model's parameter count."""
import yaml

from common import REPO, OURS_NOTE, fp_and_bits_cells, load_runs, parse_args, reuse_notes, table_preset, write_outputs

TABLE = "table3"
RECIPE = "scalegrad+ead+afw"
RECIPES = [RECIPE]
BITS = [4, 3]
MODELS = [("mobilenetv1", "MobileNetV1"), ("mobilenetv2", "MobileNetV2"), ("mobilenetv3_large", "MobileNetV3-L"),
          ("mobilenext_x1.4", "MobileNeXt-x1.4"), ("efficientnet_b0", "EfficientNet-B0"),
          ("shufflenetv2_1.0", "ShuffleNetV2-1.0"), ("resnet18", "ResNet18"), ("seresnet50", "SE-ResNet-50"),
          ("vgg16", "VGG-16")]


def param_millions(name: str) -> float:
    """Parameters (M) of our `name` at paper size (224 px, 1000 classes), built on the meta device (no memory, no
    initialisation); falls back to an ordinary build if a layer cannot be built there."""
    import torch

    from qat.models import build_model
    try:
        with torch.device("meta"):
            model = build_model(name, "paper")
    except Exception:  # noqa: BLE001 — a builder that needs real tensors
        model = build_model(name, "paper")
    return sum(p.numel() for p in model.parameters()) / 1e6


def main(argv=None):
    args = parse_args(TABLE, argv)
    runs = load_runs(args, TABLE)
    paper_params = yaml.safe_load((REPO / "tables" / "paper_results.yaml").read_text())["params_m"][TABLE]
    paper = ["paper"] if args.with_paper else []
    header = ["Model", "Param (M)", *paper, "Acc. FP", *paper]
    for b in BITS:
        header += [f"{b}A{b}W", *paper]
    rows = []
    for model, label in MODELS:
        row = [label, f"{param_millions(model):.1f}"]
        if args.with_paper:
            row.append(f"{paper_params[model]:.1f}")
        row += fp_and_bits_cells(runs, TABLE, model, RECIPE, "top1", BITS, args.with_paper)
        rows.append(row)
    notes = [OURS_NOTE + " Method: ours = recipe scalegrad+ead+afw.",
             "Metric: top-1 (%) on Fashion-MNIST at the smoke/proxy presets (models at proxy size), ImageNet-1k at "
             "the paper preset. Acc. FP: the FP model as recorded by the QAT runs (fp_top1, before the BN-fold "
             "prologue).",
             "Param (M): parameters of our implementation at paper size (224 px, 1000 classes, "
             "qat.models.build_model(name, 'paper')), whatever the preset of the runs."]
    if args.with_paper:
        notes.append("'paper' columns: the paper's Table III (ImageNet-1k top-1; tables/paper_results.yaml).")
    notes += reuse_notes(runs, TABLE)
    write_outputs(TABLE, header, rows, args.out, "Table III — our method on classifiers", notes,
                  table_preset(runs, args.preset))


if __name__ == "__main__":
    main()
