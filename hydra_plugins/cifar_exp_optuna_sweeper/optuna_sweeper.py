"""The Hydra Sweeper class Hydra finds by scanning `hydra_plugins`; its work is in
cifar_exp.sweeps.sweeper._impl, imported only when Hydra instantiates the sweeper for a multirun.

The class lives here, not in cifar_exp: Hydra instantiates only plugin classes defined in a
`hydra_plugins.` module (`Plugins.is_in_toplevel_plugins_module`), a re-export is refused.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Each batch: ask Optuna for `n_jobs` trials, launch them, tell their outcomes. The arguments
    are the official hydra-optuna-sweeper's, then ours (pruner, monitor, seed, heartbeat)."""

    def __init__(self, sampler: Any, direction: Any, storage: Optional[str], study_name: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Optional[DictConfig],
                 custom_search_space: Optional[str] = None, pruner: Any = None, monitor: Optional[str] = None,
                 seed: Optional[int] = None, heartbeat_s: int = 60, stale_after_s: int = 600) -> None:
        from cifar_exp.sweeps.sweeper._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler=sampler, direction=direction, storage=storage, study_name=study_name, n_trials=n_trials,
            n_jobs=n_jobs, max_failure_rate=max_failure_rate, params=params,
            custom_search_space=custom_search_space, pruner=pruner, monitor=monitor, seed=seed,
            heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        from cifar_exp.data.readers import DataError
        from cifar_exp.errors import ConfigError
        from cifar_exp.sweeps.sweeper import SweepStopped

        try:
            return self.sweeper.sweep(arguments)
        except (ConfigError, DataError) as error:  # bad input: one line, as main() prints a job's
            from cifar_exp.tracking.runs import mask_secrets

            print(f"Error: {mask_secrets(error)}", file=sys.stderr)
            sys.exit(2)
        except SweepStopped as error:
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(1)
