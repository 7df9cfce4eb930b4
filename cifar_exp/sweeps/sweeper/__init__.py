"""A Hydra sweeper on current Optuna (ask-and-tell): `hydra/sweeper=optuna` (the official
plugin's name and config schema) or `hydra/sweeper=cifar_exp_optuna`.

Hydra finds it as the plugin `hydra_plugins.cifar_exp_optuna_sweeper` (in this repository's
hydra_plugins/, installed with the package): that plugin holds the Sweeper class and imports
`config` here, so the public modules stay light; Optuna is imported only by the underscore
modules, once a sweep really starts. This module holds the one hook an app may use.
"""
from __future__ import annotations

from typing import Callable

PREFLIGHT_ATTR = "optuna_sweeper_preflight"


class SweepStopped(Exception):
    """The sweep stopped (too many failed trials, none completed): one line, no traceback."""


def preflight(check: Callable) -> Callable:
    """Decorator for a Hydra task function, placed under `@hydra.main`: before the first trial, the
    sweeper composes the config of trials at the low, middle and high ends of the search space and
    calls `check(cfg)` on each. An exception raised at all three ends the sweep before any trial
    runs (its message is the error); raised at some, a warning says which trials will fail.

        @hydra.main(config_path="conf", config_name="config", version_base=None)
        @preflight(my_checks)
        def main(cfg): ...

    Without it (any other app) nothing is composed in advance."""
    def mark(task_function: Callable) -> Callable:
        setattr(task_function, PREFLIGHT_ATTR, check)
        return task_function

    return mark
