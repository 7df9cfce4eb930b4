"""The sweeper's config: `hydra/sweeper=cifar_exp_optuna`, with `sampler` and `pruner`
sub-groups (`hydra/sweeper/sampler=random`, `hydra/sweeper/pruner=none`).

Each sampler or pruner option carries `name:` plus the arguments of its Optuna class;
`_optuna.build_sampler` / `build_pruner` read them. Registered in Hydra's ConfigStore when
Hydra's plugin scan imports `hydra_plugins.cifar_exp_optuna_sweeper`, which imports this module.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_NAME = "cifar_exp_optuna"


@dataclass
class TPESamplerConf:
    name: str = "tpe"
    n_startup_trials: int = 10  # random trials before TPE models the results
    multivariate: bool = False
    constant_liar: bool = False  # set for n_jobs > 1, so parallel asks spread out


@dataclass
class RandomSamplerConf:
    name: str = "random"


@dataclass
class GridSamplerConf:
    # The grid is the search space: choice(...) and range(...) only, no interval(...).
    name: str = "grid"


@dataclass
class CmaEsSamplerConf:
    # Needs the `cmaes` package; float/int parameters only (choices are sampled at random).
    name: str = "cmaes"
    n_startup_trials: int = 1
    sigma0: Optional[float] = None
    restart_strategy: Optional[str] = None
    use_separable_cma: bool = False


@dataclass
class GPSamplerConf:
    # Gaussian-process Bayesian optimisation; needs `torch`.
    name: str = "gp"
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConf:
    name: str = "qmc"
    qmc_type: str = "sobol"  # sobol | halton | lhs
    scramble: bool = True


@dataclass
class MedianPrunerConf:
    # Stop a trial whose epoch value is worse than the median of earlier trials at that epoch.
    name: str = "median"
    n_startup_trials: int = 5  # finished trials needed before anything is pruned
    n_warmup_steps: int = 0  # no pruning before this epoch (steps are 1-based epochs)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    name: str = "percentile"
    percentile: float = 25.0  # prune below this percentile of earlier trials (maximize)
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    name: str = "successive_halving"
    min_resource: Any = "auto"  # epochs, or auto
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class HyperbandPrunerConf:
    name: str = "hyperband"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"  # epochs, or auto (the longest trial seen)
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    # Stop a trial whose epoch value leaves [lower, upper] (e.g. accuracy stuck at chance).
    name: str = "threshold"
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0


@dataclass
class NoPrunerConf:
    name: str = "none"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: str = "maximize"  # maximize | minimize: what main() returns (optimized_metric)
    # The study's target size: a rerun of the same command only runs the trials it lacks.
    n_trials: int = 20
    n_jobs: int = 1  # trials asked at once and handed together to the launcher
    seed: Optional[int] = None  # the sampler's seed (not the training seed)
    # null: a journal file `optuna.journal` in the sweep dir. A path: a journal file there.
    # A database URL (sqlite:///..., postgresql://user:pass@host/db): shareable by workers
    # on several machines; prefer `${oc.env:OPTUNA_STORAGE}` to writing a password here.
    storage: Optional[str] = None
    study_name: Optional[str] = None  # required with a database URL; null: "study"
    # The Keras log key each job reports per epoch; null: val_<optimized_metric's base>,
    # e.g. val_accuracy (Keras' name for the evaluated split, validation or test).
    monitor: Optional[str] = None
    # Abort the sweep once more than this fraction of this run's trials failed (1.0: never).
    max_failure_rate: float = 1.0
    # A RUNNING trial whose sweeper has not written a heartbeat for this long (s) is taken
    # for an orphan of a crashed run: failed and queued again. On this host, a trial whose
    # sweeper process is gone is an orphan at once.
    heartbeat_s: int = 60
    stale_after_s: int = 600
    # Search space in Hydra's override grammar: `weighting.age: interval(0.5, 5.0)`,
    # `optimizer.lr: tag(log, interval(1e-4, 1))`, `model: choice(lenet, simple_cnn)`,
    # `trainer.batch_size: range(64, 513, 64)`; plain values are fixed for every trial.
    params: Optional[Dict[str, Any]] = None


_SAMPLERS = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "grid": GridSamplerConf,
             "cmaes": CmaEsSamplerConf, "gp": GPSamplerConf, "qmc": QMCSamplerConf}
_PRUNERS = {"median": MedianPrunerConf, "percentile": PercentilePrunerConf,
            "successive_halving": SuccessiveHalvingPrunerConf, "hyperband": HyperbandPrunerConf,
            "threshold": ThresholdPrunerConf, "none": NoPrunerConf}

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name=SWEEPER_NAME, node=OptunaSweeperConf, provider="cifar_exp")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="cifar_exp")
for _name, _node in _PRUNERS.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="cifar_exp")
