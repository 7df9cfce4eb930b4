"""The Optuna sweeper as a Hydra plugin (`hydra/sweeper=cifar_exp_optuna`).

Hydra's plugin scan imports every module under the `hydra_plugins` namespace package: this one
registers the sweeper's configs in Hydra's ConfigStore, `optuna_sweeper` holds the Sweeper class.
The sweeper's work and configs are in cifar_exp.sweeps.sweeper.
"""
from cifar_exp.sweeps.sweeper import config  # noqa: F401  (registers hydra/sweeper=cifar_exp_optuna)
