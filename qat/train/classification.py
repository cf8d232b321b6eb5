"""The classification training loop: FP pretraining and QAT with every recipe, read top to bottom.

One run = one directory holding `checkpoint.pt` (every epoch), `checkpoint_tau.pt` (at τ, for runs
that branch there), `trained.pt` (end of training, before post steps), `result.json` (written last:
its presence means the run finished), the W&B run, and `config.json` + `.lock` (qat/run_dir.py: the directory
belongs to one configuration and one process).
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import RunConfig, fp_cache_path
from ..data.classification import fashion_mnist_data, imagenet_data
from ..freeze import without_layer_statistics
from ..hooks import TrainState
from ..logging.schema import epoch_lr, prologue_metrics, summary_values
from ..loop import qat_step
from ..models import build_model
from ..modules import step_parameters
from ..prepare.pipeline import PrologueOptions, float_prologue, quantize_prologue
from ..recipes import get_recipe, make_post_steps
from ..run.lifecycle import (CHECKPOINT, FINAL, TAU_CHECKPOINT, TRAINED, NonFiniteLoss, fp_weights, keep_fp_cache,
                             post_step_methods, open_run_logger, prologue_options, start_point, step_size_metrics,
                             tau_epoch, training_hooks)
from ..run.wall_clock import WallClock
from ..run_dir import claim, finished_result
from . import checkpoint as ckpt
from .distributed import all_reduce_sum, barrier, init_distributed, is_main


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class ClassificationTask:
    """TaskAdapter (qat/task.py) over a trainer's data, for post-training steps."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def iterations_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * len(self.trainer.train_data)))

    def train_batches(self, epochs: int = 1):
        for e in range(epochs):
            for batch in self.trainer.train_data.epoch(1000 + e):  # epochs distinct from training's
                yield self.trainer.move(batch)

    def calib_batches(self):
        return [self.trainer.move(b) for b in self.trainer.calib_inputs_labels]

    def inputs(self, batch):
        return batch[0]

    def loss(self, model, batch):
        return self.trainer.batch_loss(model, batch)[0]

    def evaluate(self, model):
        return self.trainer.timed_evaluate(model)

    def log(self, metrics, step=None):
        self.trainer.log(metrics, step)


class Trainer:
    """Classification; a subclass changes the task through `metric`, `setup_data`, `build_net`, `move`,
    `batch_loss`, `evaluate` and `high_precision_layers` (qat/detection/torch_train.py does)."""
    metric = "top1"  # the headline metric's key: result["top1"], report["fp_top1"] (W&B: "val/metric")
    task = "classification"  # the W&B schema's task (qat/logging/schema.py)

    def __init__(self, cfg: RunConfig):
        self.clock = WallClock()  # where the run's wall time goes, kept in its result.json
        self.cfg = cfg
        # Denormals in CPU backward passes slow a step ~10× (docs/PERFORMANCE.md); they are far below
        # anything a 3/4-bit grid can represent, so they are flushed to zero.
        torch.set_flush_denormal(True)
        if cfg.deterministic:
            # oneDNN picks kernels by memory alignment, so a resumed process can differ in the last bits.
            torch.backends.mkldnn.enabled = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        self.run_dir = cfg.run_dir
        self.logger = None
        self.global_step = 0
        self.val_at: tuple[int, dict] | None = None  # (iteration, result) of the live model's last evaluation
        self.batch_size = cfg.batch_size or cfg.preset_value("batch_size")
        with self.clock.phase("data"):
            self.train_data, self.calib_data, self.test_data = self.setup_data()
            self.calib_inputs_labels = []
            for batch in self.calib_data.epoch(0):
                self.calib_inputs_labels.append(batch)
                if len(self.calib_inputs_labels) >= cfg.preset_value("calib_batches"):
                    break

    # -------------------------------------------------------------------- task
    def setup_data(self):
        """(train, calibration, test) batch sources; each has `epoch(e)` and `len()`."""
        cfg, p = self.cfg, self.cfg.preset_value
        if p("dataset") == "imagenet":
            if not cfg.data:
                raise ValueError("the paper preset needs --data pointing at an ImageNet ImageFolder (train/, val/)")
            return imagenet_data(cfg.data, self.batch_size, cfg.seed, cfg.calib_split, workers=cfg.workers,
                                 train_subset=cfg.train_subset)
        return fashion_mnist_data(self.batch_size, self.train_subset(), p("test_subset"), cfg.seed, cfg.data,
                                  cfg.calib_split)

    def train_subset(self) -> int | None:
        """Training images used: --train-subset, else the preset's (FP runs: its fp_train_subset when it has one)."""
        cfg = self.cfg
        if cfg.train_subset is not None:
            return cfg.train_subset
        return _fp_subset(cfg) if cfg.is_fp else cfg.preset_value("train_subset")

    def build_net(self) -> nn.Module:
        """The FP architecture, randomly initialised."""
        return build_model(self.cfg.model, self.cfg.preset_value("model_size"))

    def move(self, batch):
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batch_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """(mean loss, batch size, correct predictions or None) of one moved batch."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y), len(y), (logits.detach().argmax(1) == y).sum()

    def fp_cache(self) -> Path:
        """Where the proxy FP model is cached (trained once, shared by every QAT run of the model)."""
        return fp_cache_path(self.cfg.model, self.cfg.preset)

    def high_precision_layers(self, model: nn.Module) -> list[str] | None:
        """Layers kept at first_last_bits; None = the first and the last (convert's default)."""
        return None

    # ----------------------------------------------------------------- logging
    def open_logger(self, resume_id: str | None, optimizer, epochs: int, iterations: int):
        if self.cfg.wandb and is_main():
            with self.clock.phase("wandb"):
                self.logger = open_run_logger(self.cfg, self.run_dir, task=self.task, metric=self.metric,
                                              optimizer=optimizer, epochs=epochs, iterations=iterations,
                                              batch_size=self.batch_size, resume_id=resume_id)

    def log(self, metrics: dict, step: int | None = None):
        if self.logger is not None:
            with self.clock.phase("wandb"):
                self.logger.log(metrics, step=self.global_step if step is None else step)

    def timed_evaluate(self, model: nn.Module) -> dict:
        """`evaluate` (which a task's trainer overrides), its time counted as the run's evaluation."""
        with self.clock.phase("eval"):
            return self.evaluate(model)

    def save(self, payload: dict, path: Path) -> None:
        """ckpt.save, its time counted as the run's checkpoint I/O."""
        with self.clock.phase("checkpoint"):
            ckpt.save(payload, path)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        model = bare(model)
        was_training = model.training
        model.eval()
        correct = total = loss_sum = 0.0
        for x, y in self.test_data.epoch(0):
            x, y = x.to(self.device), y.to(self.device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            total += len(y)
        model.train(was_training)
        correct, total, loss_sum = all_reduce_sum([correct, total, loss_sum], self.device)
        top1 = 100.0 * correct / max(1, total)
        return {"metric": top1, "top1": top1, "loss": loss_sum / max(1, total)}

    # ------------------------------------------------------------------ models
    def fp_model(self) -> nn.Module:
        """The FP model: from --fp-checkpoint, else the cached proxy checkpoint (trained here if missing)."""
        c = self.cfg
        model = self.build_net()
        path = fp_weights(c, self.fp_cache(), lambda p: ckpt.load(p, mmap=True).get("config", {}).get("preset_values"),
                          self._train_other, barrier, _announce)
        self.fp_stored = None if c.fp_checkpoint else ckpt.load(path)  # our cache: read once, kept for its metric
        try:
            model.load_state_dict(self.fp_stored["model"] if self.fp_stored else ckpt.load_model_weights(path))
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"checkpoint {path} does not fit model {c.model!r}: {str(e)[:300]}") from None
        return model.to(self.device)

    def recorded_fp_metric(self) -> float | None:
        """The cached FP model's metric as its FP run measured it (stored with it), when that run used this
        run's test set; None for a --fp-checkpoint or another test set (then it is measured here)."""
        if self.cfg.fp_checkpoint:
            return None
        stored, mine = self.fp_stored, self.cfg.to_dict()  # fp_model() read it
        theirs = stored.get("config", {})
        same_test_set = all(theirs.get(key) == mine.get(key) for key in ("data", "imgsz")) and all(
            theirs.get("preset_values", {}).get(key) == mine["preset_values"].get(key)
            for key in ("dataset", "test_subset", "imgsz", "fmnist_det"))
        return stored.get(self.metric) if same_test_set else None

    def prologue_options(self) -> PrologueOptions:
        return prologue_options(self.cfg)

    def calib_inputs(self) -> list[torch.Tensor]:
        return [self.move(b)[0] for b in self.calib_inputs_labels]

    def quantized_model(self, init: bool) -> tuple[nn.Module, dict]:
        """FP model → prologue → quantized model. `init=False` builds the structure only (to load a checkpoint)."""
        c, recipe = self.cfg, get_recipe(self.cfg.recipe)
        model = self.fp_model()
        calib = self.calib_inputs()
        opts = self.prologue_options()
        high_precision = self.high_precision_layers(model)
        if not init:
            recipe.build_structure(model, c.bits, calib[0], opts, c.methods, high_precision=high_precision)
            return model, {}
        k = self.metric
        recorded = self.recorded_fp_metric()
        report = {f"fp_{k}": recorded if recorded is not None else self.timed_evaluate(model)[k]}
        report["prologue"] = float_prologue(model, calib[0], calib, opts)
        report[f"fp_{k}_prologue"] = self.timed_evaluate(model)[k]  # after BN fold + CLE
        cle = report["prologue"].get("cle", {})
        report.update({f"cle_{k}": cle[k] for k in ("pairs_kept", "pairs_reverted", "relu6_replaced") if k in cle})
        report["quantize"] = quantize_prologue(model, c.bits, calib, opts, **recipe.quantizer(c.methods),
                                               high_precision=high_precision)
        report[f"init_{k}"] = self.timed_evaluate(model)[k]
        return model, report

    # --------------------------------------------------------------- schedule
    def epochs(self) -> int:
        c = self.cfg
        if c.epochs is not None:
            return c.epochs
        return c.preset_value("fp_epochs" if c.is_fp else "qat_epochs")

    def tau_epoch(self) -> int:
        return tau_epoch(self.epochs(), self.cfg.ead_fraction)

    def make_optimizer(self, model: nn.Module, epochs: int):
        c = self.cfg
        steps = set(map(id, step_parameters(model)))
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if id(p) not in steps and p.dim() > 1]
        no_decay = [p for p in params if id(p) not in steps and p.dim() <= 1]
        step_params = [p for p in params if id(p) in steps]
        groups = [{"params": decay, "weight_decay": c.weight_decay if not c.is_fp else 5e-5},
                  {"params": no_decay, "weight_decay": 0.0}]
        if step_params:
            groups.append({"params": step_params, "weight_decay": 0.0})  # never decay step sizes
        opt = torch.optim.SGD(groups, lr=c.training_lr, momentum=c.momentum, nesterov=c.is_fp)
        if c.is_fp:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        else:  # the paper's StepLR
            step = max(1, round(c.preset_value("lr_step_fraction") * epochs))
            sched = torch.optim.lr_scheduler.StepLR(opt, step, gamma=0.1)
        return opt, sched

    # -------------------------------------------------------------------- run
    def run(self) -> dict:
        """Train (or resume, or branch), run the post steps, record the result; a failure marks the
        W&B run crashed (exit code 1) so no table takes a number from it. The run directory is locked and
        tied to this configuration for the whole run (qat/run_dir.py)."""
        with claim(self.run_dir, self.cfg.to_dict()) if is_main() else nullcontext():
            try:
                return self._run()
            except BaseException:
                if self.logger is not None:
                    self.logger.finish(1)
                raise

    def _run(self) -> dict:
        c = self.cfg
        done = finished_result(self.run_dir)
        if done is not None:
            if is_main():
                keep_fp_cache(c, self.fp_cache, lambda cache: ckpt.save(
                    {"model": ckpt.load_model_weights(self.run_dir / FINAL), "config": c.to_dict(),
                     self.metric: done[self.metric]}, cache), finished_earlier=True)
            _announce(f"[qat] {c.run_name}: finished already ({self.run_dir / 'result.json'})")
            barrier()
            return done
        torch.manual_seed(c.seed)
        recipe = None if c.is_fp else get_recipe(c.recipe)
        epochs = self.epochs()
        tau_epoch = self.tau_epoch()
        with self.clock.phase("parent"):
            start = start_point(c, self._train_other, barrier, _announce)  # trains a missing parent first
        state_ckpt = ckpt.load(start.path) if start.path else None

        with self.clock.phase("prologue"):
            if c.is_fp:
                model = self.build_net().to(self.device)
                if state_ckpt is not None:  # a killed FP run continues from its own weights
                    model.load_state_dict(state_ckpt["model"])
                report = {}
            elif state_ckpt is not None:
                model, report = self.quantized_model(init=False)
                model.load_state_dict(state_ckpt["model"])
                report = state_ckpt.get("report", {})
            else:
                model, report = self.quantized_model(init=True)

        iters_per_epoch = len(self.train_data)
        total_iterations = epochs * iters_per_epoch
        tau = tau_epoch * iters_per_epoch
        hooks = [] if c.is_fp else training_hooks(c, tau)
        optimizer, scheduler = self.make_optimizer(model, epochs)
        state = TrainState(model=model, total_iterations=total_iterations)
        for h in hooks:
            h.on_train_start(state)

        start_epoch = 0
        resume_id = None
        training_done = False
        if state_ckpt is not None:
            optimizer.load_state_dict(state_ckpt["optimizer"])
            scheduler.load_state_dict(state_ckpt["scheduler"])
            start_epoch = state_ckpt["epoch"]
            state.iteration = state_ckpt["iteration"]
            hook_states = state_ckpt.get("hooks", {})
            for h in hooks:
                if type(h).__name__ in hook_states:
                    h.load_state_dict(hook_states[type(h).__name__])
            if start.kind == "resume":
                ckpt.set_rng_state(state_ckpt["rng"])
                resume_id = state_ckpt.get("wandb_id")
            training_done = start.trained or state_ckpt.get("training_done", False)
        self.global_step = state.iteration

        self.open_logger(resume_id, optimizer, epochs, total_iterations)
        if report and start_epoch == 0 and not training_done:
            self.log(prologue_metrics(report, self.metric), step=0)
        if is_main():
            where = start.describe(start_epoch)
            print(f"[qat] {c.run_name}: {where}; {epochs} epochs × {iters_per_epoch} iterations"
                  + ("" if c.is_fp else f", τ = epoch {tau_epoch}"), flush=True)

        train_model = model
        if self.world > 1:
            train_model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        history = []
        if not training_done:
            for epoch in range(start_epoch, epochs):
                with self.clock.phase("train"):
                    train_metrics = self.train_epoch(train_model, optimizer, hooks, state, epoch, epochs)
                lr = epoch_lr(optimizer)  # the epoch's, before the scheduler moves it
                scheduler.step()
                metrics = {**train_metrics, "epoch": epoch + 1, "lr": lr, **step_size_metrics(model)}
                # CPU presets validate only where a number is used (τ and the end); others every epoch.
                if c.preset_value("val_every_epoch") or epoch + 1 in (tau_epoch, epochs):
                    eval_model = next((m for m in (h.eval_model() for h in hooks) if m is not None), model)
                    val = self.timed_evaluate(eval_model)
                    if eval_model is model:
                        self.val_at = (state.iteration, val)
                    metrics.update({f"val/{k}": v for k, v in val.items() if k != self.metric})  # val/metric
                for h in hooks:
                    metrics.update(h.epoch_metrics(state))
                self.log(metrics)
                history.append(metrics)
                if is_main():
                    val_text = f" val {self.metric} {metrics['val/metric']:.2f}%" if "val/metric" in metrics else ""
                    train_acc = f" train top-1 {train_metrics['train/top1']:.2f}%" if "train/top1" in train_metrics else ""
                    print(f"[qat] {c.run_name} epoch {epoch + 1}/{epochs}: train loss {train_metrics['train/loss']:.4f}"
                          f"{train_acc}{val_text}", flush=True)
                payload = self.checkpoint_payload(model, optimizer, scheduler, hooks, state, epoch + 1, report)
                if self.logger is not None:
                    with self.clock.phase("wandb"):
                        self.logger.commit()  # the epoch's row reaches disk before the checkpoint says it is done
                if is_main():
                    self.save(payload, self.run_dir / CHECKPOINT)
                    if not c.is_fp and epoch + 1 == tau_epoch:
                        self.save(payload, self.run_dir / TAU_CHECKPOINT)
                barrier()
                if c.max_iterations is not None and state.iteration >= c.max_iterations:
                    break
            # RedYolo evaluates (and keeps) its EMA copy.
            ema = next((m for m in (h.eval_model() for h in hooks) if m is not None), None)
            if ema is not None:
                model.load_state_dict(ema.state_dict())
            payload = self.checkpoint_payload(model, optimizer, scheduler, hooks, state, epochs, report)
            payload["training_done"] = True
            if is_main():
                self.save(payload, self.run_dir / CHECKPOINT)
                self.save(payload, self.run_dir / TRAINED)
            barrier()

        result = self.finish(model, hooks, state, report)
        return result

    def _train_other(self, cfg: RunConfig) -> dict:
        """Train the parent or the FP run of this run's model (the same task); its wall counts as `parent` here,
        also when the FP run is trained inside the prologue."""
        with self.clock.phase("parent"):
            return type(self)(cfg).run()

    def train_epoch(self, train_model, optimizer, hooks, state: TrainState, epoch: int, epochs: int) -> dict:
        c, model = self.cfg, bare(train_model)
        model.train()
        steps = step_parameters(model)
        clip_norm = None if c.is_fp else c.preset_value("clip_norm")
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        bar = tqdm(self.train_data.epoch(epoch), total=len(self.train_data), leave=False,
                   disable=not is_main() or os.environ.get("TQDM_DISABLE", "") not in ("", "0"),
                   desc=f"{c.recipe} ep {epoch + 1}/{epochs}", dynamic_ncols=True)
        t0 = time.time()
        for i, batch in enumerate(bar):
            loss, n, batch_correct = self.batch_loss(train_model, self.move(batch))
            qat_step(loss, optimizer, hooks, state, steps, clip_norm=clip_norm)
            if i == 0 and not self.clock.first_iteration:  # where the fused kernels compile
                self.clock.note_first_iteration(time.time() - t0)
            self.global_step = state.iteration
            loss_sum += loss.detach() * n
            if batch_correct is not None:
                correct += batch_correct
            seen += n
            if (i + 1) % c.log_every == 0 or i + 1 == len(self.train_data):
                running = float(loss_sum) / seen  # a host sync, only every log_every iterations
                if not math.isfinite(running):
                    raise NonFiniteLoss(f"non-finite training loss at iteration {state.iteration} (epoch {epoch + 1}) "
                                        f"of {c.run_name}: lower --lr or check the data")
                bar.set_postfix(loss=f"{running:.3f}", **({} if batch_correct is None else
                                                         {"acc": f"{100 * float(correct) / seen:.1f}"}))
                self.log({"train/loss_running": running})
            if c.max_iterations is not None and state.iteration >= c.max_iterations:
                break
        loss_total, correct_total, seen_total = all_reduce_sum([float(loss_sum), float(correct), seen], self.device)
        out = {"train/loss": loss_total / seen_total, "time/epoch_s": time.time() - t0}
        if batch_correct is not None:
            out["train/top1"] = 100 * correct_total / seen_total
        return out

    def checkpoint_payload(self, model, optimizer, scheduler, hooks, state, epoch, report) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "iteration": state.iteration, "hooks": {type(h).__name__: h.state_dict() for h in hooks},
                "rng": ckpt.rng_state(), "wandb_id": self.logger.run_id if self.logger else None,
                "report": report, "config": self.cfg.to_dict()}

    def finish(self, model, hooks, state, report) -> dict:
        c = self.cfg
        result = {"model": c.model, "recipe": c.recipe, "bits": None if c.is_fp else c.bits, "seed": c.seed,
                  "preset": c.preset, "table": c.table}
        k = self.metric
        # the live model evaluated after its last step is the trained model: its metric is known
        known = self.val_at is not None and self.val_at[0] == state.iteration
        result[f"{k}_trained"] = (self.val_at[1] if known else self.timed_evaluate(model))[k]
        if not c.is_fp:
            for key in (f"fp_{k}", f"fp_{k}_prologue", f"init_{k}"):
                result[key] = report.get(key)
            result.update({k: v for k, v in report.items() if k.startswith("cle_")})
            for h in hooks:
                result.update(without_layer_statistics(h.epoch_metrics(state)))
            task = ClassificationTask(self)
            post_steps = make_post_steps(get_recipe(c.recipe), post_step_methods(c.methods, c.preset_value))
            for post in post_steps:
                if is_main():
                    print(f"[qat] {c.run_name}: post step {post.name}", flush=True)
                with self.clock.phase("post"):
                    result.update(post.run(model, task))
            if post_steps:
                result[k] = self.timed_evaluate(model)[k]
        result.setdefault(k, result[f"{k}_trained"])  # no post step: the trained model is the final one
        if is_main():
            fp_payload = {"model": model.state_dict(), "config": c.to_dict(), k: result[k]}
            keep_fp_cache(c, self.fp_cache, lambda cache: self.save(fp_payload, cache))
            self.save({"model": model.state_dict(), "result": result}, self.run_dir / FINAL)
            if self.logger is not None:
                with self.clock.phase("wandb"):
                    self.logger.summary(summary_values(result, k))
                    self.logger.finish(0)
            result.update(self.clock.result())  # (the result.json only: W&B has closed)
            (self.run_dir / "result.json").write_text(json.dumps(result, indent=1))
            ckpt.drop_resume_checkpoint(self.run_dir / CHECKPOINT)
            print(f"[qat] {c.run_name}: {k} {result[k]:.2f}%", flush=True)
        barrier()
        return result


def _announce(message: str) -> None:
    if is_main():
        print(message, flush=True)


def _fp_subset(cfg: RunConfig):
    return cfg.presets[cfg.preset].get("fp_train_subset", cfg.presets[cfg.preset]["train_subset"])
