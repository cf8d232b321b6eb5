"""Time one FP training step (forward + backward + SGD step) of registered models at proxy size.

    OMP_NUM_THREADS=2 python -m qat.models.bench [--threads 2] [--batch 128] [--steps 5] [NAME ...]

Prints a Markdown table: parameters, output feature map, wall-clock ms/step (median and min over
`--steps` timed steps, after 2 warm-up steps) and process CPU ms/step (all threads; with `--threads 1`
it is the step's compute, nearly independent of other processes' load). The proxy widths in `registry.py` were chosen so that a step costs at most
about 0.5 s on 2 CPU threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from .registry import build_model, input_shape, model_names


def time_step(model: nn.Module, batch: int, size: str, steps: int, warmup: int = 2) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each timed step."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5)
    x = torch.randn(batch, *input_shape(size))
    y = torch.randint(0, 10, (batch,))
    times, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models to time (default: all registered)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.names or model_names()
    print(f"proxy size, batch {args.batch}, {args.threads} threads, median of {args.steps} steps")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share the cores: wall times"
          " inflate under load, CPU times much less)")
    print("| model | params (M) | final map | wall ms/step (median) | wall ms (min) | CPU ms/step (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        model = build_model(name, "proxy")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        model.eval()
        fmap = "?"
        features = getattr(model, "forward_features", None)
        if features is None and hasattr(model, "conv5"):  # torchvision ShuffleNetV2: the map before pooling
            features = lambda x: model.conv5(model.stage4(model.stage3(model.stage2(model.maxpool(model.conv1(x))))))  # noqa: E731
        if features is not None:
            with torch.no_grad():
                fmap = "×".join(map(str, features(torch.zeros(2, *input_shape("proxy"))).shape[-2:]))
        times, cpu = time_step(model, args.batch, "proxy", args.steps)
        print(f"| {name} | {params:.2f} | {fmap} | {1000 * statistics.median(times):.0f} | {1000 * min(times):.0f} "
              f"| {1000 * statistics.median(cpu):.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
