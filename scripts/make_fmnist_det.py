#!/usr/bin/env python
"""Generate (or find cached) FMNIST-Det and print where its Ultralytics data yaml is.

    python scripts/make_fmnist_det.py                      # proxy: 4000 train / 500 val, 128 px
    python scripts/make_fmnist_det.py --preset smoke
    python scripts/make_fmnist_det.py --train-size 8000 --canvas 160 --root /data/fmnist-det

See docs/FMNIST_DET.md for how the images are made.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from qat.data.fmnist_det import PRESETS, FMNISTDetConfig, build_fmnist_det


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="proxy", choices=sorted(PRESETS))
    p.add_argument("--root", default=None, help="parent directory (default $QAT_DATA/fmnist-det)")
    p.add_argument("--force", action="store_true", help="regenerate even when a valid copy exists")
    for f in dataclasses.fields(FMNISTDetConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = vars(p.parse_args(argv))
    overrides = {f.name: args[f.name] for f in dataclasses.fields(FMNISTDetConfig) if args[f.name] is not None}
    try:
        ds = build_fmnist_det(args["preset"], args["root"], force=args["force"], **overrides)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    manifest = json.loads((ds.root / "manifest.json").read_text())
    print(json.dumps({"yaml": str(ds.yaml), "root": str(ds.root), "splits": {
        k: {"images": v["images"], "objects": v["objects"]} for k, v in manifest["splits"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
