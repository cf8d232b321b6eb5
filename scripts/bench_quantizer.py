#!/usr/bin/env python
"""Quantizer and training-step benchmark (DESIGN: Performance; issue 7). Prints RATIOS measured side
by side in one run: every repetition runs each contender once (in rotating order) and each contender's
median over the repetitions is compared, so a noisy shared machine slows all contenders alike.

1. Quantizer fwd+bwd (`qat.functional.lsq_fake_quant`, LSQ and ScaleGrad modes) on an activation-sized
   tensor (per-tensor) and a weight tensor (per-tensor and per-channel), against
   - an elementwise multiply of the same tensor by a learnable scale of the step's shape (`x * s`,
     fwd+bwd with gradients to both): the speed bar, target fused/multiply <= 1.3 on CPU;
   - PyTorch's `torch._fake_quantize_learnable_per_{tensor,channel}_affine` (LSQ mode only: it has no
     ScaleGrad);
   - our own eager path (`QAT_FUSED=0`), to show what the fused kernels buy.
2. A full training step (forward, cross-entropy, backward, SGD with momentum): QAT (4-bit, ScaleGrad
   δ=0.1 k=1.0, oscillation trackers) against FP (the same BN-folded model), time and peak memory.
   Peak memory is torch.cuda.max_memory_allocated on CUDA; on CPU it is the bytes of the persistent
   tensors (parameters, buffers, optimizer and tracker state, the batch) plus the highest net amount
   allocated through PyTorch's CPU allocator during one step (torch.profiler memory events).

On CPU the table gives wall time and this process's CPU time (a shared machine inflates wall time
more). Denormals are flushed to zero for the whole run (`--keep-denormals` to keep them): the
randomly initialised FP proxies otherwise produce denormals in backward that slow FP steps several-fold
on x86, an artefact the quantized model does not have. `--thp on` sets THP_MEM_ALLOC_ENABLE=1 (PyTorch's
CPU allocator on transparent huge pages: fresh activation-sized buffers stop costing a page fault per
4 KiB). The CUDA section (and the 224 px MobileNetV2 and ResNet18 steps) runs only where CUDA is present;
`--paper-models` puts 224 px steps on the CPU too (scripts/gpu_check.sh --cpu-smoke), and `--json PATH` writes the
step section's numbers for scripts (scripts/gpu_check.sh prints its summary from it).

    source scripts/setup.sh && python scripts/bench_quantizer.py            # CPU, 2 threads (+ CUDA if present)
    python scripts/bench_quantizer.py --thp on                              # with huge-page allocations
    python scripts/bench_quantizer.py --quick                               # smoke run: small tensors, few reps
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time

# `--thp on|off` must act before PyTorch's first large CPU allocation (c10 reads it once).
if "--thp" in sys.argv[:-1]:
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if sys.argv[sys.argv.index("--thp") + 1] == "on" else "0"

import torch  # noqa: E402
import torch.nn.functional as F

from qat import kernels  # noqa: E402
from qat.freeze import attach_trackers  # noqa: E402
from qat.functional import int_grid, lsq_fake_quant, lsq_grad_scale  # noqa: E402
from qat.models import build_model, input_shape  # noqa: E402
from qat.modules import convert, quant_layers, set_gradient_mode  # noqa: E402
from qat.prepare.bn_fold import fold_batchnorm  # noqa: E402


PAPER_MODELS = ("mobilenetv2", "resnet18")  # the 224 px steps of the CUDA section


def shape_arg(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu and, if present, cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--reps", type=int, default=15, help="interleaved repetitions, quantizer section")
    p.add_argument("--step-reps", type=int, default=7, help="interleaved repetitions, training-step section")
    p.add_argument("--act-shape", type=shape_arg, default=(128, 32, 56, 56))
    p.add_argument("--weight-shape", type=shape_arg, default=(512, 512, 3, 3), help="ResNet18's largest conv")
    p.add_argument("--models", default="mobilenetv2,resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--paper-batch", type=int, default=128, help="batch of the 224 px models")
    p.add_argument("--paper-models", help="models of the 224 px step (ImageNet size, 1000 classes); default: "
                   f"{','.join(PAPER_MODELS)} on CUDA, none on the CPU")
    p.add_argument("--json", metavar="PATH", help="also write the step section's results to this JSON file")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--no-eager", action="store_true", help="skip the eager-quantizer contenders")
    p.add_argument("--skip-quantizer", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the top operators of one QAT step per model")
    p.add_argument("--quick", action="store_true", help="smoke run: small tensors, few repetitions")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormals to zero (by default the run starts with "
                   "torch.set_flush_denormal(True): the randomly initialised FP proxies produce denormal "
                   "gradients that slow FP steps 3-9x on x86, which the quantized model never sees)")
    p.add_argument("--thp", choices=("on", "off"), help="THP_MEM_ALLOC_ENABLE for this run: PyTorch's CPU "
                   "allocator on transparent huge pages (default: as in the environment)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.step_reps = 3, 2
        args.act_shape, args.weight_shape = (16, 32, 28, 28), (128, 128, 3, 3)
        args.batch, args.paper_batch = 32, 8
    return args


# ---------------------------------------------------------------------------------------------------
# Timing

@contextlib.contextmanager
def fused(on: bool):
    old = os.environ.get("QAT_FUSED")
    os.environ["QAT_FUSED"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QAT_FUSED", None)
        else:
            os.environ["QAT_FUSED"] = old


def interleaved(contenders: dict, reps: int, device: torch.device, warmup: int = 2):
    """Median seconds per contender, (wall, cpu); each repetition runs all contenders once, rotating order.

    `cpu` is this process's CPU time (all threads; on CUDA it equals wall with syncs, so wall is
    repeated): on a shared machine other processes inflate wall time, much less CPU time.
    """
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    sync()
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            contenders[name]()
            sync()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    med_wall = {n: statistics.median(t) for n, t in wall.items()}
    return med_wall, (med_wall if cuda else {n: statistics.median(t) for n, t in cpu.items()})


# ---------------------------------------------------------------------------------------------------
# 1. Quantizer fwd+bwd

def quantizer_cases(args, device):
    """(label, x, step shape, signed, N for LSQ's g, dist_k of ScaleGrad)."""
    gen = torch.Generator().manual_seed(0)
    act = torch.randn(args.act_shape, generator=gen).relu_().to(device)
    w = (0.05 * torch.randn(args.weight_shape, generator=gen)).to(device)
    per_sample = act.numel() // act.shape[0]
    return [
        ("activation " + "x".join(map(str, args.act_shape)) + " per-tensor", act, (), False, per_sample, None),
        ("weight " + "x".join(map(str, args.weight_shape)) + " per-tensor", w, (), True, w.numel(), 1.0),
        ("weight " + "x".join(map(str, args.weight_shape)) + " per-channel", w,
         (w.shape[0],) + (1,) * (w.dim() - 1), True, w.numel() // w.shape[0], 1.0),
    ]


def bench_quantizer(args, device):
    print(f"\n## Quantizer fwd+bwd on {device.type} (median of {args.reps} interleaved repetitions)")
    rows = []
    for label, x, step_shape, signed, n, dist_k in quantizer_cases(args, device):
        qmin, qmax = int_grid(args.bits, signed)
        if signed:
            s0 = 2 * x.abs().mean() / qmax ** 0.5
            s0 = (2 * x.abs().flatten(1).mean(1) / qmax ** 0.5).view(step_shape) if step_shape else s0
        else:
            s0 = x.max() / qmax
        step = torch.ones(step_shape, device=device) * s0
        g_scale = lsq_grad_scale(n, qmax)
        xg = x.clone().requires_grad_()
        sg = step.clone().requires_grad_()
        grad = torch.randn_like(x)

        def multiply():
            torch.autograd.grad(xg * sg, (xg, sg), grad)

        def ours(on, pulse, k):
            def run():
                with fused(on):
                    torch.autograd.grad(lsq_fake_quant(xg, sg, qmin, qmax, g_scale, pulse, k), (xg, sg), grad)
            return run

        if step_shape:
            zp = torch.zeros(x.shape[0], device=device)
            scale_pc = sg.detach().view(-1).clone().requires_grad_()

            def builtin():
                y = torch._fake_quantize_learnable_per_channel_affine(xg, scale_pc, zp, 0, qmin, qmax, g_scale)
                torch.autograd.grad(y, (xg, scale_pc), grad)
        else:
            zp = torch.zeros(1, device=device)
            scale_pt = sg.detach().view(1).clone().requires_grad_()

            def builtin():
                y = torch._fake_quantize_learnable_per_tensor_affine(xg, scale_pt, zp, qmin, qmax, g_scale)
                torch.autograd.grad(y, (xg, scale_pt), grad)

        contenders = {"multiply": multiply, "torch builtin (LSQ)": builtin,
                      "fused LSQ": ours(True, None, None), "fused ScaleGrad": ours(True, 0.1, dist_k)}
        if not args.no_eager:
            contenders.update({"eager LSQ": ours(False, None, None), "eager ScaleGrad": ours(False, 0.1, dist_k)})
        wall, cpu = interleaved(contenders, args.reps, device)
        print(f"\n{label}  (ScaleGrad: δ=0.1" + (f", k={dist_k})" if dist_k else ", no k: activation)"))
        print(f"  {'':<22} {'wall ms':>9} {'/multiply':>9} {'/builtin':>9}   "
              f"{'cpu ms':>9} {'/multiply':>9} {'/builtin':>9}")
        for name in contenders:
            cols = []
            for med in (wall, cpu):
                t = med[name]
                cols.append(f"{t * 1e3:9.2f} {t / med['multiply']:8.2f}x {t / med['torch builtin (LSQ)']:8.2f}x")
            print(f"  {name:<22} " + "   ".join(cols))
        rows.append((label, wall, cpu))
    return rows


# ---------------------------------------------------------------------------------------------------
# 2. Training step

def build_pair(name: str, size: str, batch: int, bits: int, device):
    """(FP model, QAT model, batch, labels): the QAT model is the BN-folded FP model converted."""
    torch.manual_seed(0)
    model = build_model(name, size)
    c, h, w = input_shape(size)
    num_classes = 10 if size == "proxy" else 1000
    x = torch.randn(batch, c, h, w)
    y = torch.randint(0, num_classes, (batch,))
    model.train()
    with torch.no_grad():  # non-trivial BN statistics to fold
        model(x[: min(batch, 32)])
    fold_batchnorm(model, x[:4])
    fp = model.to(device).train()
    qat = copy.deepcopy(fp)
    convert(qat, bits)
    x, y = x.to(device), y.to(device)
    layers = [layer for _, layer in quant_layers(qat)]
    with torch.no_grad():
        for layer in layers:
            layer.weight_quant.init_step(layer.weight)
            layer.input_quant.observing = True
        qat(x)  # one calibration batch: moving-average min/max
        for layer in layers:
            layer.input_quant.observing = False
            layer.input_quant.init_step_from_range()
    set_gradient_mode(qat, 0.1, 1.0)
    attach_trackers(qat)
    return fp, qat, x, y


def make_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    step.optimizer = opt
    return step


def persistent_bytes(model, optimizer, *tensors) -> int:
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    for t in list(model.parameters()) + list(model.buffers()) + list(tensors):
        add(t)
    for state in optimizer.state.values():
        for v in state.values():
            add(v)
    for m in model.modules():
        for attr in ("tracker", "frozen"):
            obj = getattr(m, attr, None)
            if obj is not None:
                for v in vars(obj).values():
                    add(v)
    return total


def peak_bytes(step, model, x, y, device) -> int:
    step.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile
    base = persistent_bytes(model, step.optimizer, x, y)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocation = torch._C._profiler._EventType.Allocation
    events = []

    def walk(node):
        if node.tag == allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    running = high = 0
    for _, nbytes in sorted(events):
        running += nbytes
        high = max(high, running)
    return base + high


def bench_steps(args, device):
    models = [(m, "proxy", args.batch) for m in args.models.split(",") if m]
    paper = args.paper_models.split(",") if args.paper_models is not None else \
        (PAPER_MODELS if device.type == "cuda" else ())
    models += [(m, "paper", args.paper_batch) for m in paper if m]
    print(f"\n## Training step on {device.type}: QAT ({args.bits}-bit, ScaleGrad δ=0.1 k=1.0, oscillation "
          f"trackers) vs FP (same BN-folded model); median of {args.step_reps} interleaved repetitions")
    results = []
    for name, size, batch in models:
        fp, qat, x, y = build_pair(name, size, batch, args.bits, device)
        fp_step, qat_step = make_step(fp, x, y), make_step(qat, x, y)

        def qat_fused():
            with fused(True):
                qat_step()

        def qat_eager():
            with fused(False):
                qat_step()
        contenders = {"FP": fp_step, "QAT fused": qat_fused}
        if not args.no_eager:
            contenders["QAT eager"] = qat_eager
        wall, cpu = interleaved(contenders, args.step_reps, device)
        mem = {"FP": peak_bytes(fp_step, fp, x, y, device)}
        with fused(True):
            mem["QAT fused"] = peak_bytes(qat_step, qat, x, y, device)
        if not args.no_eager:
            with fused(False):
                mem["QAT eager"] = peak_bytes(qat_step, qat, x, y, device)
        c, h, w = x.shape[1:]
        print(f"\n{name} ({size}, input [{batch},{c},{h},{w}])")
        print(f"  {'':<10} {'wall ms':>9} {'/FP':>6}   {'cpu ms':>9} {'/FP':>6}   {'peak MiB':>9} {'/FP':>6}")
        for k in contenders:
            print(f"  {k:<10} {wall[k] * 1e3:9.1f} {wall[k] / wall['FP']:5.2f}x   {cpu[k] * 1e3:9.1f} "
                  f"{cpu[k] / cpu['FP']:5.2f}x   {mem[k] / 2**20:9.1f} {mem[k] / mem['FP']:5.2f}x")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            with fused(True), profile(activities=[ProfilerActivity.CPU] +
                                      ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
                qat_step()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=20))
        results.append((name, size, batch, wall, cpu, mem))
        del fp, qat, fp_step, qat_step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def main(argv=None):
    args = parse_args(argv)
    flush = not args.keep_denormals and torch.set_flush_denormal(True)  # before any worker thread exists
    torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices != "auto" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"# bench_quantizer: torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()} {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
          + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    print(f"# argv: {' '.join(sys.argv[1:]) or '(defaults)'}; THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', '(unset)')}, QAT_FUSED={os.environ.get('QAT_FUSED', '(unset)')}, "
          f"denormals {'flushed to zero' if flush else 'kept'}")
    checks, steps = [], []
    for dev in devices:
        device = torch.device(dev)
        if not args.skip_quantizer:
            for label, wall, _ in bench_quantizer(args, device):
                if dev == "cpu":
                    for mode in ("fused LSQ", "fused ScaleGrad"):
                        checks.append((f"cpu quantizer {mode} / multiply, {label}", wall[mode] / wall["multiply"], 1.3))
        if not args.skip_step:
            for name, size, batch, wall, _, mem in bench_steps(args, device):
                steps.append(dict(device=dev, model=name, size=size, batch=batch,
                                  fp_ms=wall["FP"] * 1e3, qat_ms=wall["QAT fused"] * 1e3,
                                  time_ratio=wall["QAT fused"] / wall["FP"], fp_peak_mib=mem["FP"] / 2**20,
                                  qat_peak_mib=mem["QAT fused"] / 2**20, peak_ratio=mem["QAT fused"] / mem["FP"]))
                limit = {("cpu", "mobilenetv2", "proxy"): 1.10, ("cpu", "resnet18", "proxy"): 1.20,
                         ("cuda", "mobilenetv2", "paper"): 1.20, ("cuda", "resnet18", "paper"): 1.20,
                         }.get((dev, name, size))
                if limit is not None:
                    checks.append((f"{dev} step QAT/FP time, {name} {size}", wall["QAT fused"] / wall["FP"], limit))
                # peak memory: issue 16's per-model targets on the CPU proxies, issue 7's 1.3 elsewhere
                mem_limit = {("cpu", "mobilenetv2", "proxy"): 1.2, ("cpu", "resnet18", "proxy"): 1.5}.get(
                    (dev, name, size), 1.3)
                checks.append((f"{dev} step QAT/FP peak memory, {name} {size}", mem["QAT fused"] / mem["FP"],
                               mem_limit))
    if checks:
        print("\n## Targets (issues 7 and 16; wall-time medians)")
        for what, ratio, limit in checks:
            print(f"  {'met ' if ratio <= limit else 'MISS'}  {ratio:5.2f} <= {limit:.2f}  {what}")
    reason = kernels.disabled_reason()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "fused": not reason, "steps": steps}, f, indent=1)
    print(f"\n# fused path: {'OFF (' + reason + ')' if reason else 'on'}; "
          f"Dynamo graphs compiled: {torch._dynamo.utils.counters['stats']['unique_graphs']}")


if __name__ == "__main__":
    main()
