#!/usr/bin/env bash
# ScaleGrad's parts (PulseSmooth only, distance only, lr-matched LSQ) beside LSQ and ScaleGrad, YOLOv8-n and
# MobileNetV2, W4A4 and W3A3.
# PRESET, SEEDS, DEVICE, JOBS, BITS, WANDB_MODE as every table's run.sh. Finished runs are skipped, killed runs
# resume, Table V's identical LSQ / ScaleGrad runs are reused. Ends by writing the table.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_table.sh" table5_parts 5_parts "$@"
