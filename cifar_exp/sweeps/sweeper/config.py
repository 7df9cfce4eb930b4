"""The sweeper's config: `hydra/sweeper=optuna` (the official plugin's name, so its users' configs
run unchanged) or `hydra/sweeper=cifar_exp_optuna`, with `sampler` and `pruner` sub-groups
(`hydra/sweeper/sampler=random`, `hydra/sweeper/pruner=none`).

Sampler options are the official plugin's: the Optuna class as `_target_` plus its arguments,
`seed` included (`hydra.sweeper.sampler.seed=123`). Pruners are ours (the official plugin has
none): `name:` plus the arguments of the Optuna class, rebuilt by each job from the study.
Defaults are the official plugin's where it has the field; docs/optuna.md lists where ours differs.
Registered in Hydra's ConfigStore when Hydra's plugin scan imports
`hydra_plugins.cifar_exp_optuna_sweeper`, which imports this module.
"""
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_NAME = "cifar_exp_optuna"
OFFICIAL_NAME = "optuna"  # hydra-optuna-sweeper's option name; ours takes it unless that plugin is installed


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10  # random trials before TPE models the results
    n_ei_candidates: int = 24
    multivariate: bool = False
    constant_liar: bool = True  # parallel asks (n_jobs > 1) spread out instead of repeating one point


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class GridSamplerConf:
    # The grid is the search space: choice(...) and range(...) only, no interval(...).
    # search_space null: filled from hydra.sweeper.params and the command line.
    _target_: str = "optuna.samplers.GridSampler"
    search_space: Optional[Dict[str, Any]] = None
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConf:
    # Needs the `cmaes` package; float/int parameters only (choices are sampled at random).
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    use_separable_cma: bool = False
    with_margin: bool = False


@dataclass
class NSGAIISamplerConf:
    # Multi-objective (direction: [minimize, maximize, ...]); works single-objective too.
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GPSamplerConf:
    # Gaussian-process Bayesian optimisation; needs `torch`.
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"  # sobol | halton
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
    # The sampler reaches the sweeper as its config, built there: a resumed study reseeds it.
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    sampler: Any = MISSING
    pruner: Any = MISSING
    # minimize | maximize, or a list of them for a multi-objective study (the job returns a
    # tuple or list of as many numbers).
    direction: Any = "minimize"
    # The study's target size: a rerun of the same command only runs the trials it lacks.
    n_trials: int = 20
    n_jobs: int = 2  # trials asked at once and handed together to the launcher
    # null: a journal file `optuna.journal` in the sweep dir. A path: a journal file there.
    # A database URL (sqlite:///..., postgresql://user:pass@host/db): shareable by workers
    # on several machines; prefer `${oc.env:OPTUNA_STORAGE}` to writing a password here.
    storage: Optional[str] = None
    study_name: Optional[str] = None  # required with a database URL; null: "study"
    # Stop the sweep when more than this fraction of a batch's trials failed (0.0: at the first
    # failure, raising that job's own exception; 1.0: never).
    max_failure_rate: float = 0.0
    # Search space in Hydra's override grammar: `weighting.age: interval(0.5, 5.0)`,
    # `optimizer.lr: tag(log, interval(1e-4, 1))`, `model: choice(lenet, simple_cnn)`,
    # `trainer.batch_size: range(64, 513, 64)`; plain values are fixed for every trial.
    params: Optional[Dict[str, Any]] = None
    # A function `module.function` (or `file-stem.function` beside the app) called as
    # fn(cfg, trial) after the params are sampled: conditional or derived parameters.
    custom_search_space: Optional[str] = None
    # --- ours (the official plugin has none of these) ---
    # The Keras log key each cifar_exp job reports per epoch; null: val_<optimized_metric's base>.
    monitor: Optional[str] = None
    # Kept for configs written for earlier versions of this sweeper: sets sampler.seed.
    seed: Optional[int] = None
    # A RUNNING trial whose sweeper has not written a heartbeat for this long (s) is taken
    # for an orphan of a crashed run: failed and queued again. On this host, a trial whose
    # sweeper process is gone is an orphan at once.
    heartbeat_s: int = 60
    stale_after_s: int = 600


_SAMPLERS = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "grid": GridSamplerConf,
             "cmaes": CmaEsSamplerConf, "nsgaii": NSGAIISamplerConf, "gp": GPSamplerConf,
             "qmc": QMCSamplerConf}
_PRUNERS = {"median": MedianPrunerConf, "percentile": PercentilePrunerConf,
            "successive_halving": SuccessiveHalvingPrunerConf, "hyperband": HyperbandPrunerConf,
            "threshold": ThresholdPrunerConf, "none": NoPrunerConf}


def _official_plugin_installed() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except (ImportError, ValueError):
        return False


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name=SWEEPER_NAME, node=OptunaSweeperConf, provider="cifar_exp")
if not _official_plugin_installed():  # never shadow the official plugin where it is installed
    _store.store(group="hydra/sweeper", name=OFFICIAL_NAME, node=OptunaSweeperConf, provider="cifar_exp")
for _name, _node in _SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="cifar_exp")
for _name, _node in _PRUNERS.items():
    _store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="cifar_exp")
