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
