"""The kinds of job `task=` chooses, peers behind one interface: image classification
(classify.py), the k-fold polynomial study (kfold.py) and LeNet transfer (transfer.py).

Each task module has `check(cfg)`, its own part of the config checks (raises ConfigError; imports
no Keras, validate.py calls it), and `run(cfg, tracker, checkpoint_dir) -> dict[str, float]`, its
final metrics (`optimized_metric` among them; Keras is imported there, once a job really runs).
"""
from __future__ import annotations

import importlib

# task name (`task=`) -> its module; modules are imported on use, so naming a task imports nothing.
TASKS = {
    "classify": "cifar_exp.tasks.classify",
    "kfold_poly": "cifar_exp.tasks.kfold",
    "transfer": "cifar_exp.tasks.transfer",
}


def load(name: str):
    """The module of task `name`, a key of TASKS (KeyError otherwise; validate.py checks the name first)."""
    return importlib.import_module(TASKS[name])
