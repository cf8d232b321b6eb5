"""Help text of every option of `python -m qat.run` (= qat.train, qat.detection; argparse adds each default).

Keyed by the configuration field the option sets (RunConfig, MethodConfig); tests/test_cli_validation.py checks
that every option has one. argparse formats help with `%`, so a
literal percent sign is written `%%`.
"""
from __future__ import annotations

RUN_HELP: dict[str, str] = {
    "bits": "weight and activation bits, 2-8 (first and last layer: --first-last-bits)",
    "seed": "random seed (data order, initialisation); part of the run's name",
    "table": "W&B group and run-directory prefix: runs/<preset>/<table>/<model>/<recipe>/w<b>a<b>/s<seed>",
    "data": "data location: the ImageNet root (paper preset) or a Fashion-MNIST directory; detection: an Ultralytics "
            "COCO data yaml (YOLO) or a COCO root (SSD / YOLOX); default: the preset's data set",
    "val_json": "Ultralytics detectors: COCO annotations of the val split (default: the data yaml's val_json)",
    "calib_split": "where quantizer calibration and bias correction draw images: 'train' (a held-out slice of the "
                   "training set) or 'val' (the paper's choice, SPEC §1)",
    "fp_checkpoint": "FP weights to quantize (needed at the paper preset); default: the cached FP model under "
                     "checkpoints/fp, trained first when missing",
    "out": "run directory; default: runs/<preset>/<table>/<model>/<recipe>/w<b>a<b>/s<seed>",
    "resume": "continue an unfinished run from its last checkpoint",
    "device": "auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N; Ultralytics detectors also "
              "take its GPU ids (0 or 0,1)",
    "wandb": "log the run to W&B (offline unless WANDB_MODE says otherwise)",
    "quantize_first_last": "quantize the first and last layers at --bits too instead of --first-last-bits (SPEC §1)",
    "first_last_bits": "bits of the first and the last layer when --no-quantize-first-last (SPEC §1), 2-8",
    "cle": "cross-layer equalization before QAT (SPEC §8; needs ReLU-like activations); default (None): on for "
           "classifiers, off for detectors",
    "cle_relu6": "CLE on a chain with ReLU6: 'clip' (a per-channel clip, exact) or 'relu' (DFQ's ReLU)",
    "bias_correction": "empirical bias correction after quantizer init (SPEC §8)",
    "epochs": "training epochs, a positive integer; default: the preset's QAT (or FP) epochs",
    "lr": "learning rate, >= 0; default: the preset's QAT (or FP) lr",
    "step_update_bound": "QAT: bound b on one optimizer update of a step size, kept within a factor 1 + b of its "
                         "value (qat/step_bound.py), >= 0; 0 = none; default: the preset's",
    "batch_size": "images per batch, a positive integer; default: the preset's",
    "train_subset": "classifiers, SSD / YOLOX: training images used, a positive integer; default: the preset's",
    "imgsz": "detectors: square input size in pixels, a positive integer; default: the preset's",
    "fraction": "Ultralytics detectors: share of the training images used per epoch, in (0, 1]; default: the "
                "preset's",
    "weight_decay": "SGD weight decay (none on step sizes, SPEC §9)",
    "momentum": "SGD momentum (SPEC §9)",
    "ead_fraction": "share of the QAT iterations in the EAD phase: τ = (1 - this) x the total (SPEC §3)",
    "max_iterations": "stop after this many optimizer steps, a positive integer (tests, smoke runs)",
    "deterministic": "bitwise-reproducible resume on a CPU (turns oneDNN kernels off)",
    "workers": "data-loader processes; default (None): 8 for classifiers, 0 for detectors",
    "log_every": "log the running loss every this many iterations",
    "fig1_iterations": "record Fig. 1's weight and step-size traces over this many last iterations",
}

# The methods' hyper-parameters, in SPEC.md's terms.
METHOD_HELP: dict[str, str] = {
    "pulse_delta": "ScaleGrad PulseSmooth δ in (0, 0.5): the step-size gradient term falls linearly to 0 over the "
                   "last δ before each bin edge (SPEC §2)",
    "dist_k": "ScaleGrad distance-aware weight gradient k: dL/dw is scaled by exp(-k·Δ), Δ = distance to the "
              "nearest level in steps (SPEC §2)",
    "scalegrad_layers": "where ScaleGrad's gradients (PulseSmooth, exp(-kΔ)) act: the 'low-bit' layers only, leaving "
                        "the 8-bit first / last layers to LSQ (chosen on calibration data, DEVIATIONS 2a), or 'all' "
                        "quantized layers (SPEC §2)",
    "ead_k": "EAD k_ead: latent-weight EMA factor α = clamp(k_ead·Δ, 0, α_max) (SPEC §3)",
    "ead_alpha_max": "EAD α_max, the cap of the latent-weight EMA factor α (SPEC §3)",
    "ead_mu_init": "EAD μ_init: step-size EMA factor at τ, decayed linearly to 0 at the last iteration (SPEC §3)",
    "osc_momentum": "oscillation-tracking momentum m of each weight's oscillation-frequency EMA (SPEC §4, §5)",
    "afw_gamma": "AFW γ in the offset g(θ) = clamp(γ·tanh(θ), -1, 1) (SPEC §6)",
    "afw_lambda": "AFW λ, the weight of the regulariser R(g) = g²(1 - g²)² (SPEC §6)",
    "afw_lr": "AFW learning rate of the offsets θ (SGD, SPEC §6)",
    "afw_epochs": "AFW fine-tuning epochs (SPEC §6); None: the preset's (paper: 10)",
    "afw_loss": "AFW task loss against λ: the batch mean (the paper at face value) or summed over the batch "
                "(SPEC §6, qat/afw.py)",
    "afw_theta_init": "AFW θ initialisation: the latent weight's residual w/s − w_int (AdaRound's; the default, "
                      "chosen on the calibration split, DEVIATIONS 7c) or zero (g starts at the frozen code; SPEC §6)",
    "afw_reg": "AFW regulariser: λ times the mean of R(g) over the offsets (mean, the default; DEVIATIONS 7c) or λ·Σ R(g) (sum; SPEC §6)",
    "damp_weight": "Damp λ_final: the dampening loss weight at the end of its cosine ramp (SPEC §7)",
    "ema_decay": "RedYolo EMA decay of latent weights and step sizes (SPEC §7)",
    "ema_ramp": "RedYolo EMA ramp: the decay at iteration t is decay·(1 - exp(-t/ramp)) (SPEC §7)",
    "qc_lr": "RedYolo quantization correction: Adam learning rate of the per-channel affine (SPEC §7)",
    "qc_epochs": "RedYolo quantization correction epochs (SPEC §7); None: the preset's (paper: 1)",
    "adaround_iterations": "AdaRound iterations per layer, a positive integer (SPEC §7); None: the preset's "
                           "(paper: 10000, AIMET)",
    "step_only_epochs": "Table I 'Freeze weight' (lsq-freeze-weights): epochs training only the step sizes after "
                        "LSQ (SPEC §7); None: the preset's",
}
