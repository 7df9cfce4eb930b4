"""cifar_exp: Hydra-configured CIFAR-10 experiments, tracked in MLflow, tuned with Optuna."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# The configs live in the package (cifar_exp/conf, shipped as package data), so a checkout, an
# editable install and a wheel read the same folder; an absolute path, so they are found from any
# working directory. Here, not in main.py, so that the report (which main.py's `cifar-exp report`
# runs) reads it without importing main.
CONFIG_DIR = str(_Path(__file__).resolve().parent / "conf")
