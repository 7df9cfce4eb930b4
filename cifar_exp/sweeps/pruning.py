"""A job's side of an Optuna trial: report the monitored metric after every epoch that logs it (every
epoch, or every `trainer.validation_freq`-th for the evaluated split's metrics), stop training when
the study's pruner says so, and mark the MLflow run and the trial.

`build_trial_callback(cfg, tracker)` returns None unless the sweeper handed this job a
trial: main() puts what `job_trial` reads (the file the sweeper wrote for this job number:
storage, study_name, number, trial_id, monitor) in `cfg.optuna_trial`. A monitored
key Keras does not log fails the job at its first epoch that evaluated and tells the sweeper to
stop: pruning would otherwise be silently off for every trial.
"""
from __future__ import annotations

import math

from cifar_exp.errors import ConfigError


def monitor_key(cfg) -> str:
    """The Keras log key to report each epoch: `optuna_trial.monitor` when set, else
    val_<base of optimized_metric> (Keras calls the evaluated split `val_`, test or not)."""
    configured = cfg.optuna_trial.get("monitor")
    if configured:
        return str(configured)
    base = str(cfg.optimized_metric)
    for prefix in ("test_", "val_"):
        if base.startswith(prefix):
            base = base[len(prefix):]
    return f"val_{base}"


def monitor_setting(cfg) -> str:
    """The config key that chose the monitored metric, for error messages."""
    return "hydra.sweeper.monitor" if cfg.optuna_trial.get("monitor") else "optimized_metric"


class TrialReporter:
    """Keras-free core of the callback: `epoch_end` reports and answers "stop now?".

    Raises ConfigError (naming `setting`, the key and the keys that exist) at an epoch whose logs
    lack the monitored key, after marking the trial so the sweeper stops the sweep. An epoch that
    evaluated nothing (`trainer.validation_freq` > 1: no `val_*` key) reports nothing.
    """

    def __init__(self, trial, key: str, tracker, setting: str = "hydra.sweeper.monitor"):
        self.trial, self.key, self.tracker, self.setting = trial, key, tracker, setting
        self.pruned = False

    def epoch_end(self, epoch: int, logs: dict) -> bool:
        value = _lookup(logs, self.key)
        if value is None and _is_evaluated(self.key) and not any(k.startswith("val_") for k in logs):
            return False  # this epoch did not evaluate (trainer.validation_freq)
        if value is None:
            from cifar_exp.sweeps.sweeper._optuna import SWEEP_ERROR_ATTR

            error = ConfigError(self.setting, self.key, "a key Keras logs each epoch: " + ", ".join(sorted(logs)))
            self.trial.set_user_attr(SWEEP_ERROR_ATTR, {"key": error.key, "value": error.value,
                                                        "allowed": error.allowed})
            raise error
        if not math.isfinite(value):
            return False  # nothing to report; FailOnNonFiniteLoss handles divergence
        step = epoch + 1  # epochs are 1-based, like the MLflow metric steps
        self.trial.report(value, step)
        if not self.trial.should_prune():
            return False
        from cifar_exp.sweeps.sweeper._optuna import PRUNED_ATTR

        self.pruned = True
        self.trial.set_user_attr(PRUNED_ATTR, step)
        self.tracker.set_tags({"optuna.pruned": "true", "optuna.pruned_at_epoch": str(step)})
        return True


def _is_evaluated(key: str) -> bool:
    """Whether `key` names a metric of the evaluated split (test_*, val_*), not of training."""
    return key.startswith(("test_", "val_"))


def _lookup(logs: dict, key: str) -> float | None:
    """logs[key]; `test_x` also finds Keras' `val_x` (the evaluated split is the test split)."""
    if key in logs:
        return float(logs[key])
    for prefix in ("test_", "val_"):
        if key.startswith(prefix) and f"val_{key[len(prefix):]}" in logs:
            return float(logs[f"val_{key[len(prefix):]}"])
    return None


def job_trial(job_num: int | None) -> dict | None:
    """The trial the Optuna sweeper asked for job `job_num` (hydra.job.num, the trial's number) of
    the running sweep, as a mapping (storage, study_name, number, trial_id, monitor); None outside
    one. Read from the file the sweeper wrote in <sweep dir>/.optuna_trials/, in the folder the
    environment variable CIFAR_EXP_OPTUNA_TRIALS names, not from the job's overrides."""
    import json
    import os
    from pathlib import Path

    from cifar_exp.sweeps.sweeper._optuna import TRIALS_ENV

    folder = os.environ.get(TRIALS_ENV)
    if not folder or job_num is None:
        return None
    path = Path(folder, f"{job_num}.json")
    return json.loads(path.read_text()) if path.exists() else None


def open_trial(coordinates):
    """The running Optuna trial named by `cfg.optuna_trial`, with the study's pruner."""
    import optuna

    from cifar_exp.sweeps.sweeper import _optuna as oh
    from cifar_exp.sweeps.sweeper import _private as private

    storage = oh.open_storage(oh.job_storage_location(str(coordinates.storage)))
    try:
        study = optuna.load_study(study_name=str(coordinates.study_name), storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise ConfigError("optuna_trial.study_name", coordinates.study_name,
                          "a study in the storage the sweeper created") from None
    study.pruner = oh.build_pruner(study.user_attrs.get(oh.PRUNER_ATTR))
    return private.attach(study, int(coordinates.trial_id))


def build_trial_callback(cfg, tracker):
    """A Keras callback reporting to the job's trial, or None outside an Optuna sweep."""
    coordinates = cfg.get("optuna_trial")
    if coordinates is None:
        return None
    import keras

    from cifar_exp.sweeps.sweeper._optuna import MLFLOW_RUN_ATTR

    trial = open_trial(coordinates)
    tracker.set_tags({"optuna.study": str(coordinates.study_name), "optuna.trial": str(coordinates.number)})
    trial.set_user_attr(MLFLOW_RUN_ATTR, tracker.run_id)
    reporter = TrialReporter(trial, monitor_key(cfg), tracker, monitor_setting(cfg))
    every = cfg.trainer.get("validation_freq", 1)
    if every > 1 and _is_evaluated(monitor_key(cfg)):
        import logging

        logging.getLogger(__name__).warning(
            "trainer.validation_freq=%s: %s is reported to the Optuna trial every %s epochs and after the last "
            "only, so the pruner decides at those epochs only (trainer.validation_freq=1: every epoch)",
            every, monitor_key(cfg), every)

    class OptunaPruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if reporter.epoch_end(epoch, logs or {}):
                self.model.stop_training = True

    callback = OptunaPruning()
    callback.reporter = reporter
    return callback
