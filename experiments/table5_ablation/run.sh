#!/usr/bin/env bash
# Table V (ablation). PRESET=smoke|proxy|proxy-long|proxy-gpu|paper (default proxy), SEEDS="0 1 2", DEVICE=auto|cpu|cuda,
# WANDB_MODE (default offline). Finished runs are skipped, killed runs resume. Ends by writing the table.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_table.sh" table5_ablation 5 "$@"
