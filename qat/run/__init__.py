"""One run lifecycle for every task (classifiers, SSD / YOLOX, Ultralytics detectors): `lifecycle.run(cfg)` and
`python -m qat.run` (qat/cli.py). See lifecycle.py for the rules written once there."""
