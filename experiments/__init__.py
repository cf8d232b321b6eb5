"""The paper's tables and figures as experiments: one directory per table (run.sh + config.yaml) and the
launcher that trains a table's runs (`python -m experiments.launch CONFIG`, launch.py) with its config checks,
run reuse across tables and progress bar."""
