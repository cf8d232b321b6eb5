"""YOLOv8 / YOLOv9 (Ultralytics) trained in FP and quantized with every recipe through the shared `qat` code.

One `DetectionTrainer` subclass, `QATDetectionTrainer`, runs both FP pretraining (`recipe="fp"`) and QAT.
For QAT, inside Ultralytics' own loop:

  setup_model      build the model from its yaml (nc from the data), load our FP32 checkpoint, then the
                   shared prologue (qat.prepare.pipeline): fold every BN (checked: all of them), convert
                   every conv except the DFL's — the first conv and the Detect head's output convs at
                   8 bits unless `quantize_first_last` — and calibrate on training batches of the
                   trainer's own data loader;
  build_optimizer  SGD (momentum, no Nesterov) with three groups: weights (decay), biases and step
                   sizes (no decay);
  loss             the model's loss (Ultralytics' criterion, summed over the batch) + the hooks'
                   extra losses (scaled by the batch size, i.e. added to the per-image mean loss, like
                   a mean-loss classification loop);
  optimizer_step   qat.loop.qat_step after Ultralytics' backward, with its AMP scaler and clipping at 10;
  validate         our FP32 COCO evaluator (pycocotools, `coco_eval.coco_map`) on the live model (or a
                   hook's `eval_model()`, e.g. RedYolo's EMA), once per epoch, logged as mAP;
  final_eval       the trained model evaluated in FP32, then the recipe's post steps (AFW, AdaRound,
                   QC, step-only) through `DetectionTask`, a `qat.task.TaskAdapter`.

Pitfalls of Ultralytics handled here (DESIGN.md): `QATDetectionModel.fuse()` is a no-op (Ultralytics'
fuse would fold BN into fake-quant weights and re-parameterise quantized RepConvs); Ultralytics' ModelEMA
is off for QAT (it averages float tensors but never copies the quantizers' non-float state; RedYolo has
its own EMA hook) and its FP16 checkpoints are never used for evaluation: we save FP32 state dicts
ourselves; `amp=False`, `plots=False`, `optimizer="SGD"`, and the run is logged through
`qat.logging.RunLogger` in the schema of every run (qat/logging/schema.py), never with the metrics Ultralytics
passes to `save_metrics` (its `lr/pg<i>` and, at epochs that did not validate, placeholder zeros for mAP and
the validation losses). Ultralytics' own W&B callback stays off (its `wandb` setting defaults to False).

The run's RunConfig and where it starts travel as class attributes (`QATDetectionTrainer.bind(run, ...)` makes a
subclass), so
Ultralytics' DDP launcher, which re-creates `type(trainer)(overrides=...)` from a cloudpickle, keeps them.
"""
from __future__ import annotations

import math
import time
from copy import copy
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils import nms, ops
from ultralytics.utils.torch_utils import unwrap_model

from ..config import ULTRALYTICS_DETECTORS, RunConfig
from ..freeze import without_layer_statistics
from ..hooks import TrainState
from ..loop import qat_step
from ..logging.schema import epoch_lr, prologue_metrics, summary_values
from ..modules import quant_layers, step_parameters
from ..prepare.pipeline import float_prologue, quantize_prologue
from ..recipes import get_recipe, make_post_steps
from ..run.wall_clock import WallClock
from ..run.lifecycle import (CHECKPOINT, FINAL, TAU_CHECKPOINT, TRAINED, NonFiniteLoss, post_step_methods,
                             open_run_logger, prologue_options, step_size_metrics, tau_epoch, training_hooks)
from .coco_eval import coco_map, load_coco

DETECTORS = ULTRALYTICS_DETECTORS


# ------------------------------------------------------------------------------------------------ model

class _ExtraLoss:
    """The hooks' extra-loss terms, held by the model during QAT training only.

    Copies of the model (Ultralytics' EMA, RedYolo's EMA, checkpoints) get None instead of this object.
    """

    def __init__(self, hooks, state: TrainState):
        self.hooks, self.state = hooks, state

    def __call__(self) -> torch.Tensor | None:
        terms = [t for t in (h.extra_loss(self.state) for h in self.hooks) if t is not None]
        return sum(terms) if terms else None

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return (_none, ())


def _none():
    return None


class QATDetectionModel(DetectionModel):
    """Ultralytics' DetectionModel whose `fuse()` does nothing and whose loss adds the hooks' terms."""

    qat_extra_loss = None  # an _ExtraLoss while a QAT run trains

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        # Ultralytics calls fuse() in AutoBackend/final_eval: it would fold BN into fake-quant weights (v8)
        # and replace quantized RepConvs by plain convs (v9). Our BN is folded statically before QAT.
        return self

    def loss(self, batch, preds=None):
        loss, items = super().loss(batch, preds)
        extra = self.qat_extra_loss() if (self.qat_extra_loss is not None and self.training) else None
        if extra is not None:
            # The criterion returns its terms × batch size; extra terms are relative to the per-image mean.
            loss = loss.sum() + extra * batch["img"].shape[0]
        return loss, items


def detect_head(model: nn.Module) -> nn.Module:
    return unwrap_model(model).model[-1]


def head_prefix(model: nn.Module) -> str:
    return f"model.{len(unwrap_model(model).model) - 1}"


def dfl_convs(model: nn.Module) -> list[str]:
    """Names of the DFL convs (fixed integral projection: never quantized, never trained)."""
    return [n for n, m in unwrap_model(model).named_modules() if n.endswith(".dfl.conv") and isinstance(m, nn.Conv2d)]


def high_precision_layers(model: nn.Module) -> list[str]:
    """The first conv and the Detect head's output convs (last conv of every box / class branch)."""
    model = unwrap_model(model)
    head, prefix = detect_head(model), head_prefix(model)
    names = [next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))]
    for branch in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        seqs = getattr(head, branch, None)
        if seqs is None:
            continue
        for i, seq in enumerate(seqs):
            convs = [n for n, m in seq.named_modules() if isinstance(m, nn.Conv2d)]
            names.append(f"{prefix}.{branch}.{i}.{convs[-1]}")
    return names


def build_detector(name_or_yaml: str, nc: int, channels: int = 3, verbose: bool = False) -> QATDetectionModel:
    cfg = DETECTORS.get(name_or_yaml, name_or_yaml)
    return QATDetectionModel(cfg, ch=channels, nc=nc, verbose=verbose)


# --------------------------------------------------------------------------------------------- the run

LOG_EVERY = 20  # optimizer steps between `train/loss_running` points, as the classification loop's default
QAT_DEFAULTS = dict(optimizer="SGD", amp=False, plots=False, val=True, warmup_epochs=0.0, momentum=0.9,
                    weight_decay=1e-5, lr0=1e-3, exist_ok=True, verbose=False)
FP_DEFAULTS = dict(plots=False, val=True, exist_ok=True, verbose=False)


class QATDetectionTrainer(DetectionTrainer):
    """Ultralytics' trainer running `run_spec` (a RunConfig); Ultralytics' own arguments go in `overrides`."""
    run_spec: RunConfig | None = None
    # Start from a QAT checkpoint of this trainer instead of the prologue (qat/run/lifecycle.py names them):
    # ("tau", path) branches at τ (the parent's checkpoint_tau.pt), ("end", path) takes a trained model
    # (trained.pt) straight to the post steps, ("resume", path) continues a killed run from its checkpoint.pt.
    init_from: tuple[str, str] | None = None
    fp_checkpoint: str | None = None        # the FP32 checkpoint ({"model": state_dict} or Ultralytics') for QAT
    val_json: str | None = None             # COCO ground truth of the val split (default: data yaml's val_json)
    save_fp_to: str | None = None           # FP pretraining: where to write the FP32 checkpoint
    eval_fp: bool = True                    # evaluate the FP model before/after the BN fold (tables report it)
    clock: WallClock | None = None          # the run's profile (qat/run/wall_clock.py); None: a clock of its own

    @classmethod
    def bind(cls, run: RunConfig, **start) -> type["QATDetectionTrainer"]:
        """A subclass carrying `run` and the class attributes `start` sets (init_from, fp_checkpoint, val_json,
        save_fp_to, eval_fp): class attributes survive Ultralytics' cloudpickled DDP relaunch."""
        unknown = set(start) - {"init_from", "fp_checkpoint", "val_json", "save_fp_to", "eval_fp", "clock"}
        if unknown:
            raise TypeError(f"QATDetectionTrainer.bind: unknown {sorted(unknown)}")
        name = f"{cls.__name__}_{run.recipe.replace('+', '_').replace('-', '_')}"
        return type(name, (cls,), {"run_spec": run, **start})

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks=None):
        run = self.run_spec
        self.methods = run.methods if run.is_fp else post_step_methods(run.methods, run.preset_value)
        self.prologue = prologue_options(run)
        defaults = FP_DEFAULTS if run.is_fp else QAT_DEFAULTS
        overrides = {**defaults, **(overrides or {})}
        if not run.is_fp:
            get_recipe(run.recipe)  # unknown recipe: fail before any work
            if str(overrides.get("optimizer", "SGD")).lower() not in ("sgd", "auto"):
                raise ValueError("QAT detection runs use optimizer='SGD' (step sizes outside weight decay)")
            overrides["optimizer"] = "SGD"
            overrides.setdefault("nbs", overrides.get("batch", 16))  # no gradient accumulation: T = epochs × batches
        if self.clock is None:
            self.clock = WallClock()
        super().__init__(cfg, overrides, _callbacks)
        self.hooks, self.post_steps, self.state = [], [], None
        self.report: dict = {}
        self.results: dict = {}
        self.logger = None
        self._val_loader = None
        self._calib_raw: list[dict] = []
        self._gt = None
        self.tau_epoch = None
        self._val_at: tuple[int, dict] | None = None  # (iteration, mAPs) of the live model's last validation
        self._validated = False  # whether this epoch validated (else it logs no val/ key)

    # ----------------------------------------------------------------------------------- logging
    def _open_logger(self):
        run = self.run_spec
        if self.logger is not None or not run.wandb or RANK not in {-1, 0}:
            return
        options = {"ultralytics_args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
                   **run.to_dict()}
        with self.clock.phase("wandb"):
            self.logger = open_run_logger(run, self.save_dir, task="detection", metric="map", optimizer=self.optimizer,
                                          epochs=self.epochs, batch_size=self.batch_size, methods=self.methods,
                                          options=options,
                                          iterations=self.epochs * math.ceil(len(self.train_loader) / self.accumulate))

    def log(self, metrics: dict, step: int | None = None):
        """Log at the optimizer-step count (QAT: the hooks' iteration t; FP: epochs × batches so far)."""
        if self.logger is not None:
            if step is None and self.state is not None:
                step = self.state.iteration
            elif step is None:
                loader = getattr(self, "train_loader", None)
                step = (self.epoch + 1) * (len(loader) if loader is not None else 1)
            with self.clock.phase("wandb"):
                self.logger.log(metrics, step=step)

    # --------------------------------------------------------------------------------- model
    def get_model(self, cfg=None, weights=None, verbose=True):
        model = QATDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        if weights:
            model.load(weights)
        path = self.fp_checkpoint
        if path and not self.run_spec.is_fp:
            load_fp_weights(model, path)
        return model

    def setup_model(self):
        ckpt = super().setup_model()
        if not self.run_spec.is_fp and not any(True for _ in quant_layers(self.model)):
            self._quantize()
        return ckpt

    def _quantize(self):
        with self.clock.phase("prologue"):
            self._quantize_model()

    def get_dataloader(self, *args, **kwargs):
        with self.clock.phase("data"):
            return super().get_dataloader(*args, **kwargs)

    def _quantize_model(self):
        run, recipe = self.run_spec, get_recipe(self.run_spec.recipe)
        model = self.model.to(self.device)
        self.model.args = self.args  # the loss (post steps, calibration checks) reads its gains here
        imgsz = self.args.imgsz if isinstance(self.args.imgsz, int) else max(self.args.imgsz)
        example = torch.zeros(1, self.data["channels"], imgsz, imgsz, device=self.device)
        if self.init_from is not None:  # the structure only: the checkpoint brings every value
            recipe.build_structure(model, run.bits, example, self.prologue, run.methods, exclude=dfl_convs(model),
                                   high_precision=high_precision_layers(model))
            left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if left:
                raise RuntimeError(f"BN folding missed {len(left)} BatchNorm layers of the detector: {left[:5]}")
            return
        if not self.fp_checkpoint:  # (a resumed or branched run brings its weights in the checkpoint)
            LOGGER.warning("QAT without fp_checkpoint: quantizing a randomly initialised detector")
        calib = [b["img"] for b in self._calibration_batches(self.prologue.calib_batches)]
        n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if self.eval_fp:
            self.report["fp_map"] = self.evaluate(model)["metric"]  # mAP@[.5:.95] in %
        self.report["prologue"] = float_prologue(model, example, calib, self.prologue)
        left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if self.report["prologue"]["bn_folded"] != n_bn or left:
            raise RuntimeError(f"BN folding missed {len(left)} BatchNorm layers of the detector: {left[:5]}")
        if self.eval_fp:
            self.report["fp_map_prologue"] = self.evaluate(model)["metric"]
        self.report["quantize"] = quantize_prologue(
            model, run.bits, calib, self.prologue, **recipe.quantizer(run.methods), exclude=dfl_convs(model),
            high_precision=high_precision_layers(model))
        if self.eval_fp:
            self.report["init_map"] = self.evaluate(model)["metric"]
        LOGGER.info(f"QAT prologue: {self.report}")

    def _calibration_batches(self, n: int) -> list[dict]:
        """`n` preprocessed training batches (Ultralytics' train loader: its augmentation included)."""
        if len(self._calib_raw) < n:
            batch = max(self.batch_size // max(self.world_size, 1), 1)
            loader = self.get_dataloader(self.data["train"], batch_size=batch, rank=-1, mode="train")
            if self.args.close_mosaic and self.epochs <= self.args.close_mosaic and hasattr(loader.dataset, "close_mosaic"):
                loader.dataset.close_mosaic(hyp=copy(self.args))  # training runs without mosaic: so does calibration
            self._calib_raw = []
            for b in loader:
                self._calib_raw.append({k: v for k, v in b.items()})
                if len(self._calib_raw) >= n:
                    break
            if hasattr(loader, "close"):
                loader.close()
        return [self.preprocess_batch(dict(b)) for b in self._calib_raw[:n]]

    # --------------------------------------------------------------------------- optimisation
    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        if self.run_spec.is_fp:
            return super().build_optimizer(model, name, lr, momentum, decay, iterations)
        model = unwrap_model(model)
        steps = {id(p) for p in step_parameters(model)}
        weights, biases, step_params = [], [], []
        for n, p in model.named_parameters():
            if id(p) in steps:
                step_params.append(p)
            elif p.ndim <= 1:
                biases.append(p)
            else:
                weights.append(p)
        groups = [{"params": weights, "weight_decay": decay, "param_group": "weight"},
                  {"params": biases, "weight_decay": 0.0, "param_group": "bias"},
                  {"params": step_params, "weight_decay": 0.0, "param_group": "step"}]
        LOGGER.info(f"optimizer: SGD(lr={lr}, momentum={momentum}) with {len(weights)} weights (decay={decay}), "
                    f"{len(biases)} biases and {len(step_params)} step sizes (no decay)")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)

    def _setup_train(self):
        super()._setup_train()
        self._open_logger()
        if self.run_spec.is_fp:
            return
        run = self.run_spec
        model = unwrap_model(self.model)
        self.ema = _NoEMA(model)  # Ultralytics' ModelEMA off for QAT (see the module docstring)
        batches = math.ceil(len(self.train_loader) / self.accumulate)
        total = self.epochs * batches
        self.tau_epoch = tau_epoch(self.epochs, run.ead_fraction)
        tau = self.tau_epoch * batches
        self.hooks = training_hooks(run, tau)
        self.post_steps = make_post_steps(get_recipe(run.recipe), self.methods)
        self.state = TrainState(model=model, total_iterations=total)
        for h in self.hooks:
            h.on_train_start(self.state)
        model.qat_extra_loss = _ExtraLoss(self.hooks, self.state)
        self._steps = step_parameters(model)
        if self.init_from is not None:
            self._load_qat_checkpoint(*self.init_from)
        elif self.report:
            self.log(prologue_metrics(self.report, "map"), step=0)

    def _load_qat_checkpoint(self, point: str, path: str):
        """Continue from a QAT checkpoint written by `save_model` (see `init_from`)."""
        from ..train import checkpoint as ckpt
        if point not in ("tau", "end", "resume"):
            raise ValueError(f"init_from point must be 'tau', 'end' or 'resume', got {point!r}")
        state = ckpt.load(Path(path))
        model = unwrap_model(self.model)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"checkpoint {path} does not fit this quantized detector: {str(e)[:300]}") from None
        self.report = {**state.get("report", {}), "init_from": f"{point}:{path}"}
        if point == "end":
            return
        self.optimizer.load_state_dict(state["optimizer"])
        hook_states = state.get("hooks", {})
        for h in self.hooks:
            if type(h).__name__ in hook_states:
                h.load_state_dict(hook_states[type(h).__name__])
        self.state.iteration = state["iteration"]
        self.start_epoch = state["epoch"]
        self.scheduler.last_epoch = self.start_epoch - 1
        if point == "resume" and state.get("wandb_id") and self.logger is not None and self.logger.run_id != state["wandb_id"]:
            LOGGER.warning("resumed detection run logs to a new W&B run id")
        if self.start_epoch >= self.epochs:
            raise ValueError(f"checkpoint {path} is at epoch {self.start_epoch} of {self.epochs}: nothing left to train")

    def _do_train(self):
        init = self.init_from
        if init is not None and init[0] == "end":  # a trained model: straight to evaluation and post steps
            self._setup_train()
            self.epoch = self.epochs - 1
            self.final_eval()
            return
        with self.clock.phase("train"):  # Ultralytics' loop; its nested phases (eval, checkpoint, ...) apart
            super()._do_train()

    def optimizer_step(self):
        if not self.clock.first_iteration:  # where the fused kernels compile
            self.clock.note_first_iteration(time.time() - getattr(self, "epoch_time_start", time.time()))
        # QAT: the running loss every LOG_EVERY steps (at the hooks' iteration t, the rows' step); every run also
        # logs it in each epoch's row (save_metrics)
        if self.state is not None and (self.state.iteration + 1) % LOG_EVERY == 0 and self.tloss is not None:
            self.log({"train/loss_running": _loss_total(self.tloss)}, step=self.state.iteration + 1)
        if self.run_spec.is_fp:
            super().optimizer_step()
            self._check_stop()
            return
        self.state.epoch = self.epoch
        # Ultralytics' loop ran the (scaled) backward, the hooks' extra loss included (QATDetectionModel.loss)
        qat_step(None, self.optimizer, self.hooks, self.state, self._steps, scaler=self.scaler,
                 clip_norm=self.run_spec.preset_value("clip_norm"),
                 clip_params=self.model.parameters())
        self._check_stop()

    def _check_stop(self):
        if self.loss is not None and not torch.isfinite(self.loss):
            raise NonFiniteLoss(f"non-finite training loss in epoch {self.epoch + 1} of {self.run_spec.run_name}: "
                                f"lower lr0 or check the data")
        n = self.run_spec.max_iterations
        it = self.state.iteration if self.state is not None else None
        if n is not None and it is not None and it >= n:
            self.stop = True

    def _handle_nan_recovery(self, epoch):
        # Ultralytics would reload its FP16 EMA checkpoint; we stop with a clear message instead.
        if self.loss is not None and not torch.isfinite(self.loss):
            raise NonFiniteLoss(f"non-finite training loss in epoch {epoch + 1} of {self.run_spec.run_name}: "
                                f"lower lr0 or check the data")
        return False

    # ----------------------------------------------------------------------------- evaluation
    def eval_model(self) -> nn.Module:
        """What is evaluated: a hook's model (RedYolo EMA), Ultralytics' EMA (FP), or the live model."""
        for h in self.hooks:
            m = h.eval_model()
            if m is not None:
                return m
        if self.run_spec.is_fp and self.ema is not None:
            return self.ema.ema
        return unwrap_model(self.model)

    def _gt_index(self):
        if self._gt is None:
            path = self.val_json or self.data.get("val_json")
            if not path:
                raise ValueError("detection evaluation needs the COCO ground truth of the val split: "
                                 "bind val_json or set `val_json` in the data yaml")
            coco = load_coco(path)
            cats = sorted(coco.getCatIds())
            if len(cats) != self.data["nc"]:
                raise ValueError(f"{path} has {len(cats)} categories, the data yaml {self.data['nc']} classes")
            ids = {Path(img["file_name"]).name: img["id"] for img in coco.dataset["images"]}
            self._gt = (coco, ids, cats)
        return self._gt

    def _eval_loader(self):
        if self._val_loader is None:
            batch = max(self.batch_size // max(self.world_size, 1), 1) * 2
            self._val_loader = self.get_dataloader(self.data[self.args.split], batch_size=batch, rank=-1, mode="val")
        return self._val_loader

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        """COCO mAP of `model` on the val split, in FP32, with our evaluator. `metric` = mAP@[.5:.95] in %."""
        with self.clock.phase("eval"):
            coco, ids, cats = self._gt_index()
            model = unwrap_model(model)
            dets = yolo_detections(model, self._eval_loader(), self.device, ids, cats, conf=self.args.conf or 0.001,
                                   iou=self.args.iou, max_det=self.args.max_det)
            return coco_map(dets, coco)

    def validate(self):
        t0 = time.time()
        model = self.eval_model()
        res = self.evaluate(model)
        if self.state is not None and model is unwrap_model(self.model):  # final_eval needs no second look
            self._val_at = (self.state.iteration, _pct(res))
        metrics = {"val/metric": 100 * res["map"], "val/map50": 100 * res["map50"], "time/val_s": time.time() - t0}
        self._validated = True
        fitness = res["map"]
        if self.best_fitness is None or self.best_fitness < fitness:
            self.best_fitness = fitness
        return metrics, fitness

    def save_metrics(self, metrics):
        super().save_metrics(metrics)
        extra = {}
        if self.state is not None:
            self.state.epoch = self.epoch + 1
            for h in self.hooks:
                extra.update(h.epoch_metrics(self.state))
            extra.update(step_size_metrics(unwrap_model(self.model)))
        # Ultralytics' `metrics` hold its own names and, at an epoch that did not validate, zeros or the last
        # validation's values: the row takes the losses and, only after a validation, our validate()'s metrics.
        losses = {f"train/{k}": float(v) for k, v in (self.tloss or {}).items()}
        loss = _loss_total(self.tloss or {})
        # the running loss at the epoch's end is its mean, as in the classification loop's last row of an epoch
        row = {"epoch": self.epoch + 1, "lr": epoch_lr(self.optimizer), "train/loss": loss, "train/loss_running": loss,
               **losses, "time/epoch_s": time.time() - self.epoch_time_start,
               **(self.metrics if self._validated else {}), **extra}
        self._validated = False
        self.log(row)
        val = (f"mAP {row['val/metric']:.2f} (mAP50 {row['val/map50']:.2f})" if "val/metric" in row
               else "not validated")
        LOGGER.info(f"[qat] {self.run_spec.run_name} epoch {self.epoch + 1}/{self.epochs}: {val}")

    # ---------------------------------------------------------------------------- checkpoints
    def save_model(self):
        if self.run_spec.is_fp:
            with self.clock.phase("checkpoint"):
                return super().save_model()
        from ..train import checkpoint as ckpt
        payload = self._checkpoint_payload()
        if self.logger is not None:
            with self.clock.phase("wandb"):
                self.logger.commit()
        with self.clock.phase("checkpoint"):
            ckpt.save(payload, self.save_dir / CHECKPOINT)
            if self.epoch + 1 == self.tau_epoch:
                ckpt.save(payload, self.save_dir / TAU_CHECKPOINT)
        return True

    def _checkpoint_payload(self) -> dict:
        return {"model": unwrap_model(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch + 1, "iteration": self.state.iteration,
                "hooks": {type(h).__name__: h.state_dict() for h in self.hooks}, "report": _scalars(self.report),
                "config": self.run_spec.to_dict(), "wandb_id": self.logger.run_id if self.logger else None,
                "train_args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}}

    # ----------------------------------------------------------------------------- the end
    def final_eval(self):
        """FP: save the FP32 EMA weights. QAT: FP32 evaluation of the trained model, then the post steps."""
        if RANK not in {-1, 0}:
            return
        run = self.run_spec
        try:
            if run.is_fp:
                model = self.eval_model().float()
                res = _pct(self.evaluate(model))
                self.results = dict(res)
                if self.save_fp_to:
                    from ..train import checkpoint as ckpt
                    with self.clock.phase("checkpoint"):
                        ckpt.save({"model": model.state_dict(), "yaml": model.yaml, "nc": self.data["nc"],
                               "imgsz": self.args.imgsz, "map": res["map"], "map50": res["map50"],
                                   "preset_values": dict(run.presets[run.preset])}, Path(self.save_fp_to))
            else:
                from ..train import checkpoint as ckpt
                model = unwrap_model(self.model)
                model.qat_extra_loss = None
                ema = next((m for m in (h.eval_model() for h in self.hooks) if m is not None), None)
                if ema is not None:  # RedYolo: the final model is the EMA copy
                    model.load_state_dict(ema.state_dict())
                if self.init_from is None or self.init_from[0] != "end":
                    payload = self._checkpoint_payload()
                    payload["epoch"] = self.epochs
                    with self.clock.phase("checkpoint"):
                        ckpt.save(payload, self.save_dir / TRAINED)
                # The live model validated after its last step is the trained model: its mAP is known. Not
                # before post steps: an evaluation draws from Python's RNG (Ultralytics' loader), which the
                # post steps' batches use too, so skipping it would change their results.
                known = (ema is None and not self.post_steps and self._val_at is not None
                         and self._val_at[0] == self.state.iteration)
                res = self._val_at[1] if known else _pct(self.evaluate(model))
                self.results = {**_summary_scalars(self.report), "map_trained": res["map"], "map50_trained": res["map50"]}
                for h in self.hooks:
                    self.results.update(without_layer_statistics(h.epoch_metrics(self.state)))
                task = DetectionTask(self)
                for post in self.post_steps:
                    LOGGER.info(f"[qat] {run.run_name}: post step {post.name}")
                    with self.clock.phase("post"):
                        self.results.update(_scalars(post.run(model, task)))
                self.results.update(_pct(self.evaluate(model)) if self.post_steps else res)  # no post step: unchanged
                with self.clock.phase("checkpoint"):
                    ckpt.save({"model": model.state_dict(), "results": self.results, "config": run.to_dict(),
                               "prologue": asdict(self.prologue)}, self.save_dir / FINAL)
            LOGGER.info(f"[qat] {run.run_name}: mAP@[.5:.95] {self.results['map']:.2f} mAP@.5 {self.results['map50']:.2f}")
            if self.logger is not None:
                with self.clock.phase("wandb"):
                    self.logger.summary(summary_values(self.results, "map"))
                    self.logger.finish(0)
        except BaseException:
            if self.logger is not None:
                self.logger.finish(1)
            raise


class _NoEMA:
    """Stands in for Ultralytics' ModelEMA in QAT runs: `.ema` is the live model, updates do nothing."""

    def __init__(self, model: nn.Module):
        self.ema, self.updates, self.enabled = model, 0, False

    def update(self, model):
        pass

    def update_attr(self, model, include=(), exclude=()):
        pass


# ------------------------------------------------------------------------------------------ task adapter

class DetectionTask:
    """qat.task.TaskAdapter over a QATDetectionTrainer, for the post-training steps."""

    def __init__(self, trainer: QATDetectionTrainer):
        self.trainer = trainer

    def iterations_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * len(self.trainer.train_loader)))

    def train_batches(self, epochs: int = 1):
        for _ in range(epochs):
            for batch in self.trainer.train_loader:
                yield self.trainer.preprocess_batch(batch)

    def calib_batches(self):
        return self.trainer._calibration_batches(self.trainer.prologue.calib_batches)

    def inputs(self, batch):
        return batch["img"]

    def loss(self, model, batch):
        """The detector's loss as a per-image mean (Ultralytics returns it summed over the batch)."""
        loss, _ = unwrap_model(model).loss(batch)
        return loss.sum() / batch["img"].shape[0]

    def evaluate(self, model):
        res = self.trainer.evaluate(model)
        return {"metric": res["metric"], **_pct(res)}

    def log(self, metrics, step=None):
        self.trainer.log(metrics, step)


# ------------------------------------------------------------------------------------------- helpers

@torch.no_grad()
def yolo_detections(model: nn.Module, loader, device, image_ids: dict, cat_ids: list, conf: float = 0.001,
                    iou: float = 0.7, max_det: int = 300) -> list[dict]:
    """COCO-form detections of an Ultralytics detector on a val loader (boxes in original-image pixels)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in loader:
            img = batch["img"].to(device).float() / 255
            preds = model(img)
            for si, det in enumerate(nms.non_max_suppression(preds, conf, iou, multi_label=True, max_det=max_det)):
                if not len(det):
                    continue
                boxes = ops.scale_boxes(img.shape[2:], det[:, :4].clone(), batch["ori_shape"][si],
                                        ratio_pad=batch["ratio_pad"][si])
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh (top-left corner)
                image_id = image_ids[Path(batch["im_file"][si]).name]
                for b, s, c in zip(boxes.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
                    out.append({"image_id": image_id, "category_id": cat_ids[int(c)], "bbox": b, "score": s})
    finally:
        model.train(was_training)
    return out


def load_fp_weights(model: nn.Module, path) -> None:
    """Load our FP32 detector checkpoint ({"model": state_dict, ...}) or an Ultralytics .pt checkpoint."""
    from ..train import checkpoint as ckpt
    obj = ckpt.load(Path(path))
    state = obj.get("model", obj)
    if isinstance(state, nn.Module):  # an Ultralytics checkpoint: {"model" or "ema": DetectionModel}
        state = state.float().state_dict()
    elif obj.get("ema") is not None and isinstance(obj["ema"], nn.Module):
        state = obj["ema"].float().state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"checkpoint {path} does not fit this detector: {str(e)[:300]}") from None


def _loss_total(loss_items: dict) -> float:
    """The training loss per image: Ultralytics' loss terms (box, cls, dfl), each a per-image mean, summed."""
    return float(sum(float(v) for v in loss_items.values()))


def _pct(res: dict) -> dict:
    """mAP@[.5:.95] and mAP@.5 in %, as every table and log reports them."""
    return {"map": 100 * res["map"], "map50": 100 * res["map50"]}


def _summary_scalars(d: dict) -> dict:
    """The report's scalars without per-layer entries (those go to the log, not the result)."""
    return {k: v for k, v in _scalars(d).items() if "/model." not in k}


def _scalars(d: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to `a/b` keys, keeping only numbers."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "/"))
        elif isinstance(v, bool):
            out[key] = int(v)
        elif isinstance(v, (int, float)):
            out[key] = v
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[key] = v.item()
    return out
