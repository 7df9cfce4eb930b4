"""cifar_exp: Hydra-configured CIFAR-10 experiments, tracked in MLflow, tuned with Optuna."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# The configs live in the package (cifar_exp/conf, shipped as package data), so a checkout, an
# editable install and a wheel read the same folder; an absolute path, so they are found from any
# working directory. Here, not in main.py, so that the report (which main.py's `cifar-exp report`
# runs) reads it without importing main.
CONFIG_DIR = str(_Path(__file__).resolve().parent / "conf")

# cifar_exp/conf/hydra/launcher/submitit_slurm.yaml sets our launcher class and defaults on the submitit
# plugin's option of the same name, and Hydra checks it against that option's schema (what we
# want: its keys and types) with a deprecation warning per composition that users can do nothing
# about. Filtered here: Hydra's plugin scan resets filters set while it imports a plugin.
import warnings as _warnings

_warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore")
