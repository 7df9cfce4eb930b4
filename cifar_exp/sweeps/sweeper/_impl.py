"""The sweep loop: ask `n_jobs` trials, hand them to the configured launcher as overrides,
tell Optuna what came back, until the study holds `n_trials` trials; then write
`optimization_results.yaml` in the sweep dir (the best trial, or the Pareto front of a
multi-objective study) and print it.

Any Hydra app can be swept. An app that hands the sweeper a pre-flight check (the `preflight`
decorator in cifar_exp.sweeps.sweeper; cifar_exp's main does) has the config every trial shares
composed and checked first, at the low, middle and high ends of the search space, so a mistake
they all share fails once, not n_trials times.
A rerun resumes: finished trials count towards `n_trials`, and trials a dead sweeper left
RUNNING are failed and queued again; a rerun whose settings (direction, metrics, search space,
fixed overrides) differ from the study's is refused before it asks for a trial. A job learns its
trial from a file in the sweep dir (_optuna.write_trial_file), never from its overrides; cifar_exp
jobs report epochs to it themselves (cifar_exp.sweeps.pruning).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from cifar_exp.errors import ConfigError
from cifar_exp.tracking.runs import mask_secrets

from . import PREFLIGHT_ATTR, SweepStopped
from . import _optuna as oh
from . import _private as private

log = logging.getLogger(__name__)

WORKER_ATTR = "cifar_exp.worker"  # trial system attr: host:pid of the sweeper that asked it
HEARTBEAT_ATTR = "cifar_exp.heartbeat"  # trial system attr: time.time() of its last beat
RESULTS_FILE = "optimization_results.yaml"
HOST = socket.gethostname()
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
DIRECTIONS = ("minimize", "maximize")


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def directions_of(direction) -> list[str]:
    """`direction` as a list of "minimize"/"maximize", one per objective: a string, a list of them,
    or the official plugin's Direction enum members. Raises ConfigError otherwise."""
    given = _plain(direction)
    items = given if isinstance(given, (list, tuple)) else [given]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(name not in DIRECTIONS for name in names):
        raise ConfigError("hydra.sweeper.direction", given,
                          "minimize or maximize, or a list of them (one per objective the job returns)")
    return names


class OptunaSweeperImpl(Sweeper):
    def __init__(self, *, sampler, direction="minimize", n_trials: int = 20, n_jobs: int = 2, storage=None,
                 study_name=None, max_failure_rate: float = 0.0, params=None, custom_search_space=None,
                 pruner=None, seed=None, monitor=None, heartbeat_s: int = 60, stale_after_s: int = 600) -> None:
        self.directions = directions_of(direction)
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs), ("heartbeat_s", heartbeat_s),
                           ("stale_after_s", stale_after_s)):
            if not (isinstance(value, int) and value > 0):
                raise ConfigError(f"hydra.sweeper.{key}", value, "a positive integer")
        if not (isinstance(max_failure_rate, (int, float)) and 0.0 <= max_failure_rate <= 1.0):
            raise ConfigError("hydra.sweeper.max_failure_rate", max_failure_rate, "a fraction in [0, 1]")
        self.sampler_spec, self.pruner_spec = _plain(sampler), _plain(pruner)
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        self.storage, self.study_name, self.monitor = storage, study_name, monitor
        self.max_failure_rate, self.heartbeat_s, self.stale_after_s = max_failure_rate, heartbeat_s, stale_after_s
        self.params = _plain(params) or {}
        self.custom_search_space = custom_search_space
        self.preflight = self.extend_space = None  # set by setup(): the app's check, custom_search_space
        self._in_flight: set[int] = set()

    @property
    def direction(self):
        """The study's direction as configured: a string, or a list for several objectives."""
        return self.directions[0] if len(self.directions) == 1 else list(self.directions)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.preflight = getattr(task_function, PREFLIGHT_ATTR, None)
        if self.custom_search_space:
            from hydra.utils import get_method

            try:
                self.extend_space = get_method(str(self.custom_search_space))
            except Exception as error:
                raise ConfigError("hydra.sweeper.custom_search_space", self.custom_search_space,
                                  f"a function `module.function` the app can import ({error})") from None

    # ------------------------------------------------------------------------ the sweep

    def sweep(self, arguments: list[str]) -> None:
        space = oh.parse_search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        for key, stop in space.excluded_stops.items():
            log.warning("%s: range(...) samples values below its stop %s, as Hydra's range does (the official "
                        "Optuna plugin also sampled the stop): raise the stop by one step to include it", key, stop)
        if self.preflight is not None:
            self._check_shared_config(space)
        trials_dir = str(Path(self.sweep_dir, oh.TRIALS_DIR).resolve())
        before = os.environ.get(oh.TRIALS_ENV)
        os.environ[oh.TRIALS_ENV] = trials_dir  # every launcher's jobs inherit it (see oh.write_trial_file)
        try:
            self._sweep(space, trials_dir)
        finally:
            if before is None:
                os.environ.pop(oh.TRIALS_ENV, None)
            else:
                os.environ[oh.TRIALS_ENV] = before

    def _sweep(self, space: oh.SearchSpace, trials_dir: str) -> None:
        study = self._open_study(space)
        target = self.n_trials
        grid = space.grid() if oh.is_grid(self.sampler_spec) else None
        if grid is not None:
            target = min(target, math.prod(len(values) for values in grid.values()))
        launched = 0
        while True:
            self._recover_orphans(study)
            remaining = target - sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))
            if remaining <= 0:
                break
            trials = [study.ask() for _ in range(min(self.n_jobs, remaining))]
            try:
                batch = [self._configure(study, trial, space, trials_dir) for trial in trials]
                self.validate_batch_is_legal(batch)
            except Exception:
                for trial in trials:  # never ran: must not count towards n_trials
                    private.set_user_attr(study, private.trial_id(trial), oh.NOT_RUN_ATTR, "invalid overrides")
                    study.tell(trial, state=TrialState.FAIL)
                raise
            ids = [private.trial_id(t) for t in trials]
            with _Heartbeat(private.storage_of(study), ids, self.heartbeat_s):
                self._in_flight = set(ids)
                returns = self._launch(trials, batch)
                self._in_flight = set()
            failed = [ret for trial, ret in zip(trials, returns) if not self._tell(study, trial, ret)]
            self._stop_on_shared_error(study, trials)
            launched += len(trials)
            # As the official plugin counts it: the failed fraction of this batch.
            if failed and len(failed) / len(trials) > self.max_failure_rate:
                self._write_results(study)
                log.error("Failed %d times out of %d with max_failure_rate=%s", len(failed), len(trials),
                          self.max_failure_rate)
                for ret in failed:
                    if ret.status == JobStatus.FAILED:
                        ret.return_value  # raises the job's own exception, with its traceback
                raise SweepStopped(f"{len(failed)} of {len(trials)} trials of this batch failed (see their logs), "
                                   f"more than hydra.sweeper.max_failure_rate={self.max_failure_rate}")
        if launched == 0:
            log.info("Study %r already has its %d trials: nothing to run (raise hydra.sweeper.n_trials "
                     "to extend it)", study.study_name, target)
        if not self._write_results(study) and launched:
            raise SweepStopped(f"no trial of study {study.study_name!r} completed (see the trials' logs; "
                               f"hydra.sweeper.max_failure_rate={self.max_failure_rate} let the sweep go on)")

    def _launch(self, trials, batch) -> list:
        """Launch the batch so that each job's number (hydra.job.num) is its trial's number: in runs
        of consecutive numbers (another sweeper sharing the study may have asked the numbers between)."""
        returns: list = []
        start = 0
        while start < len(trials):
            end = start + 1
            while end < len(trials) and trials[end].number == trials[end - 1].number + 1:
                end += 1
            returns += list(self.launcher.launch(batch[start:end], initial_job_idx=trials[start].number))
            start = end
        return returns

    def _open_study(self, space: oh.SearchSpace):
        location = oh.storage_location(self.storage, self.sweep_dir)
        if oh.is_database_url(location) and not self.study_name:
            raise ConfigError("hydra.sweeper.study_name", None,
                              "a name with a database storage, so that reruns and other workers find the study")
        if mask_secrets(location) != location:
            os.environ[oh.STORAGE_ENV] = location  # jobs see the URL masked (it is logged)
        self.location = location
        if not oh.is_database_url(location):
            repaired = oh.repair_journal(location)
            if repaired:
                log.warning("%s", repaired)
        study = optuna.create_study(storage=oh.open_storage(location),
                                    study_name=self.study_name or oh.DEFAULT_STUDY_NAME,
                                    directions=self.directions, load_if_exists=True,
                                    pruner=oh.build_pruner(self.pruner_spec))
        existing_directions = [d.name.lower() for d in study.directions]
        if existing_directions != self.directions:
            shown = existing_directions[0] if len(existing_directions) == 1 else existing_directions
            raise ConfigError("hydra.sweeper.direction", self.direction,
                              f"{shown}, the direction of the existing study {study.study_name!r} "
                              "(or a new hydra.sweeper.study_name)")
        self._check_settings(study, space)
        existing = len(study.get_trials(deepcopy=False))
        # A resumed study must not replay the random draws of its first run.
        own_seed = self.sampler_spec.get("seed") if isinstance(self.sampler_spec, dict) else None
        seed = self.seed if self.seed is not None else own_seed
        seed = None if seed is None else seed + existing
        study.sampler = oh.build_sampler(self.sampler_spec, seed=seed, grid=space.grid())
        study.set_user_attr(oh.PRUNER_ATTR, self.pruner_spec)
        log.info("Optuna study %r in %s: %d trials already, target %d; sampler %s, pruner %s, %s",
                 study.study_name, mask_secrets(location), existing, self.n_trials, type(study.sampler).__name__,
                 (self.pruner_spec or {}).get("name", "none"), self.direction)
        log.info("Search space: %s", space.distributions or "(none: replicates of the fixed config)")
        return study

    def _check_shared_config(self, space: oh.SearchSpace) -> None:
        """Compose the config of trials at the low, middle and high ends of the search space and
        hand each to the app's pre-flight check. Failing at all three, the error is one every trial
        shares: raise it before any trial runs. Failing at some, a region of the space is invalid:
        warn (those trials will fail)."""
        from hydra.errors import HydraException

        failures = []
        points = oh.probe_points(space)
        for params in points:
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, space.overrides(params))
                self.preflight(cfg)
            except HydraException as error:  # an override the composed config cannot take
                failures.append((params, _composition_error(error, space.overrides(params))))
            except Exception as error:  # the app's check refused it
                failures.append((params, error))
        if len(failures) == len(points):
            raise failures[0][1]
        for params, error in failures:
            log.warning("Trials near %s will fail: %s", params, error)

    def _check_settings(self, study, space: oh.SearchSpace) -> None:
        """A resumed study runs the same experiment: refuse a rerun whose direction, metrics, search
        space or fixed overrides differ, before a trial is asked (Optuna would fail on a changed
        distribution mid-ask and leave the trial RUNNING; other changes would mix experiments)."""
        settings = oh.study_settings(space, self.direction, str(self.config.get("optimized_metric")), self.monitor)
        stored = study.user_attrs.get(oh.SETTINGS_ATTR)
        trials = study.get_trials(deepcopy=False)
        if stored is None and trials:  # a study from before settings were stored: its trials' space
            stored = {"search_space": oh.space_of_trials(trials), "fixed_overrides": settings["fixed_overrides"]}
        change = None if stored is None else oh.settings_change(stored, settings)
        if change is not None:
            key, before, after = change
            raise ConfigError(key, after, f"{before}, as in the existing study {study.study_name!r} "
                              f"({mask_secrets(self.location)}); for other settings start a new study with "
                              "another hydra.sweeper.study_name (or hydra.sweep.dir)")
        if study.user_attrs.get(oh.SETTINGS_ATTR) != settings:
            study.set_user_attr(oh.SETTINGS_ATTR, settings)

    def _stop_on_shared_error(self, study, trials) -> None:
        """A job found a config error every trial shares (a monitored metric Keras does not log):
        stop the sweep rather than fail the remaining trials one by one."""
        for trial in trials:
            error = private.frozen(study, private.trial_id(trial)).user_attrs.get(oh.SWEEP_ERROR_ATTR)
            if error:
                self._write_results(study)
                raise ConfigError(error["key"], error["value"], error["allowed"])

    def _configure(self, study, trial, space: oh.SearchSpace, trials_dir: str) -> list[str]:
        """Sample the trial's parameters (then custom_search_space's) and write the file its job
        reads; its overrides: the sampled parameters, then the fixed ones."""
        for key, dist in space.distributions.items():
            _suggest(trial, key, dist)
        if self.extend_space is not None:
            self.extend_space(self.config, trial)
        trial_id = private.trial_id(trial)
        private.set_system_attr(private.storage_of(study), trial_id, WORKER_ATTR, f"{HOST}:{os.getpid()}")
        oh.write_trial_file(trials_dir, trial.number, self.location, study.study_name, trial_id, self.monitor)
        return space.overrides(trial.params)

    def _tell(self, study, trial, ret) -> bool:
        """Tell Optuna how the trial ended; False when it failed."""
        values, problem = None, None
        if ret.status != JobStatus.COMPLETED:
            problem = f"the job raised {mask_secrets(repr(ret._return_value))}"
        else:
            returned = ret.return_value
            try:
                if len(self.directions) == 1:
                    values = [float(returned)]
                else:
                    values = [float(v) for v in returned]
            except (TypeError, ValueError):
                problem = (f"the job returned {returned!r}, not a number" if len(self.directions) == 1 else
                           f"the job returned {returned!r}, not a list or tuple of {len(self.directions)} numbers")
            if values is not None and len(values) != len(self.directions):
                problem = f"the job returned {len(values)} values for {len(self.directions)} directions"
            elif values is not None and not all(math.isfinite(v) for v in values):
                problem = f"the job returned {returned} (a failed or diverged run)"
        attrs = private.frozen(study, private.trial_id(trial)).user_attrs
        try:
            if problem is not None:
                log.warning("Trial %d failed: %s", trial.number, problem)
                study.tell(trial, state=TrialState.FAIL)
            elif oh.PRUNED_ATTR in attrs:
                log.info("Trial %d pruned at epoch %s", trial.number, attrs[oh.PRUNED_ATTR])
                study.tell(trial, state=TrialState.PRUNED)
            else:
                log.info("Trial %d: %s", trial.number, values[0] if len(values) == 1 else values)
                study.tell(trial, values)
        except RuntimeError as error:
            # GridSampler calls Study.stop() after the last grid point, which only works
            # inside Study.optimize; the trial has been told all the same.
            if "Study.stop" not in str(error):
                raise
        return problem is None

    # ------------------------------------------------------------------- resumption

    def _recover_orphans(self, study) -> None:
        """Fail and re-queue RUNNING trials whose sweeper is gone (a crash or Ctrl-C)."""
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.system_attrs.get(WORKER_ATTR)
            if worker is None or private.trial_id(trial) in self._in_flight:
                continue  # not asked by this sweeper, or running right now
            host, _, pid = worker.rpartition(":")
            beat = trial.system_attrs.get(HEARTBEAT_ATTR, now)
            gone = host == HOST and (int(pid) == os.getpid() or not _alive(int(pid)))
            if not (gone or now - beat > self.stale_after_s):
                continue
            try:
                private.set_user_attr(study, private.trial_id(trial), oh.ORPHAN_ATTR, True)
                study.tell(trial.number, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, RuntimeError, ValueError):
                continue  # another worker got there first
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            log.warning("Trial %d was left running by %s; failed it and queued its parameters again",
                        trial.number, worker)

    # ------------------------------------------------------------------------ results

    def _write_results(self, study) -> bool:
        """optimization_results.yaml in the sweep dir, as the official plugin writes it (name,
        best_params and best_value; or `solutions`, the Pareto front, for several objectives) plus
        the study's coordinates and trial counts; printed too. True when a trial completed."""
        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
        results: dict[str, Any] = {
            "name": "optuna", "study_name": study.study_name, "storage": mask_secrets(self.location),
            "direction": self.direction, "n_trials": {k: v for k, v in counts.items() if v},
        }
        completed = any(t.state == TrialState.COMPLETE for t in trials)
        if len(self.directions) > 1:
            front = study.best_trials if completed else []
            results["solutions"] = [{"number": t.number, "params": dict(t.params), "values": list(t.values),
                                     "mlflow_run_id": t.user_attrs.get(oh.MLFLOW_RUN_ATTR)} for t in front]
            log.info("Number of Pareto solutions: %d", len(front))
            for t in front:
                log.info("    Trial %d: values %s, params %s", t.number, t.values, t.params)
        else:
            results.update(best_trial=None, best_value=None, best_params=None, best_mlflow_run_id=None)
            if completed:
                best = study.best_trial
                results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                               best_mlflow_run_id=best.user_attrs.get(oh.MLFLOW_RUN_ATTR))
                log.info("Best trial %d: %s = %s", best.number, best.params, best.value)
        if not completed:
            log.warning("Study %r has no completed trial yet", study.study_name)
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir, RESULTS_FILE))
        return completed


def _composition_error(error, overrides: list[str]) -> ConfigError:
    """Hydra's composition error (several lines, the reason in its cause) as one ConfigError naming the
    override it could not apply, e.g. weighting.gamma under weighting=hard, which has no gamma."""
    import re

    reason = str(error.__cause__ or error).splitlines()[0].strip()
    found = re.search(r"override '([^']+)'", str(error))
    if found is None:
        return ConfigError("hydra.sweeper.params", " ".join(overrides), f"overrides Hydra can compose ({reason})")
    key = found.group(1)
    value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    return ConfigError(key, value, f"a key the composed config has ({reason}): drop it from the search or "
                       "choose the config group option it belongs to")


def _counts(trial) -> bool:
    """Whether a trial counts towards n_trials: all but queued ones, orphans and trials
    whose overrides did not compose."""
    if trial.state == TrialState.FAIL:
        return not (trial.user_attrs.get(oh.ORPHAN_ATTR) or trial.user_attrs.get(oh.NOT_RUN_ATTR))
    return trial.state in _COUNTED


def _suggest(trial, key: str, dist) -> None:
    if isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(key, dist.choices)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    elif isinstance(dist, FloatDistribution):
        trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        raise TypeError(f"unsupported distribution {dist!r} for {key}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """While its trials run, write a timestamp to each every `interval_s` seconds, so that
    sweepers on other hosts can tell a live study from one whose sweeper crashed."""

    def __init__(self, storage, trial_ids: Sequence[int], interval_s: int):
        self.storage, self.trial_ids, self.interval_s = storage, list(trial_ids), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def __enter__(self):
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                private.set_system_attr(self.storage, trial_id, HEARTBEAT_ATTR, time.time())
            except UpdateFinishedTrialError:
                pass
            except Exception as error:  # a busy database must not end the sweep
                log.debug("heartbeat of trial %d failed: %s", trial_id, error)
