#!/usr/bin/env bash
# Table III (ours on nine classifiers; W4A4 and W3A3).
# PRESET=smoke|proxy|proxy-long|proxy-gpu|paper (default proxy), SEEDS="0 1 2", DEVICE=auto|cpu|cuda, MODELS=a,b, JOBS=n,
# WANDB_MODE (default offline). Finished runs are skipped, killed runs resume. Ends by writing the table.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_table.sh" table3_classification 3 "$@"
