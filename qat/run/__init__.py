"""One run lifecycle for every task (classifiers, SSD / YOLOX, Ultralytics detectors): `run(cfg)` and
`python -m qat.run` (qat/cli.py). lifecycle.py holds the rules written once for every task."""


def run(cfg) -> dict:
    """Train the run `cfg` (a qat.config.RunConfig) describes, or return its result when it finished already,
    through its task's glue."""
    if cfg.task == "ultralytics":
        from ..detection.train import train_detector
        return train_detector(cfg)
    if cfg.task == "detection":
        from ..detection.torch_train import TorchDetectionTrainer as trainer
    else:
        from ..train.classification import Trainer as trainer
    return trainer(cfg).run()
