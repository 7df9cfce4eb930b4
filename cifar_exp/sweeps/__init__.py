"""Multirun sweeps: the Optuna sweeper (sweeper/), per-epoch pruning from inside a job
(pruning.py), the summary written when a sweep ends (summary.py) and the comparison report
over its runs (report.py, `python -m cifar_exp.report`).
"""
