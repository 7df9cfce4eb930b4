"""cifar_exp: Hydra-configured CIFAR-10 experiments, tracked in MLflow, tuned with Optuna."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# The configs, as an absolute path so they are found from any working directory. A wheel
# (`pip install .`, git+URL, an index) ships the repository's conf/ inside the package as
# cifar_exp/conf (pyproject.toml's package-dir); an editable install or a source checkout has
# no cifar_exp/conf and reads the repository's conf/ next to the package. Here, not in main.py,
# so that the report (which main.py's `cifar-exp report` runs) reads it without importing main.
_PACKAGE_DIR = _Path(__file__).resolve().parent
CONFIG_DIR = str(_PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parent / "conf")

# conf/hydra/launcher/submitit_slurm.yaml sets our launcher class and defaults on the submitit
# plugin's option of the same name, and Hydra checks it against that option's schema (what we
# want: its keys and types) with a deprecation warning per composition that users can do nothing
# about. Filtered here: Hydra's plugin scan resets filters set while it imports a plugin.
import warnings as _warnings

_warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore")
