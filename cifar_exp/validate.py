"""Every check a config must pass before any data is loaded or any model is built: `validate` reads
the config alone (the checks every task shares here, then the task's own `check`, tasks/);
`check_devices` also asks the backend which devices the job will run on."""
from __future__ import annotations

import logging

from omegaconf import OmegaConf

from cifar_exp.data.augment import TTA_LEVELS
from cifar_exp.data.dataset import check_dataset
from cifar_exp.errors import ConfigError
from cifar_exp.models.registry import check_model
from cifar_exp.models.initializers import check_init
from cifar_exp.spl.weighting import check_weighting
from cifar_exp.tasks import TASKS, load
from cifar_exp.tracking.databases import EXPERIMENT_NAME_LENGTH, check_driver
from cifar_exp.training.backend_setup import check_backend_settings
from cifar_exp.training.distribute import STRATEGIES
from cifar_exp.training.optim import check_optimizer, check_schedule
from cifar_exp.training.shared_steps import mode as shared_steps_mode

log = logging.getLogger(__name__)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
TRIAL_FIELDS = {"storage", "study_name", "number", "trial_id"}  # sweeper/_optuna.py write_trial_file


def _positive_int(key: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(key, value, "a positive integer")


def validate(cfg) -> None:
    if cfg.task not in TASKS:
        raise ConfigError("task", cfg.task, ", ".join(TASKS))
    if not (isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and cfg.seed >= 0):
        raise ConfigError("seed", cfg.seed, "an integer >= 0")
    trainer = cfg.trainer
    _positive_int("trainer.epochs", trainer.epochs)
    _positive_int("trainer.batch_size", trainer.batch_size)
    _positive_int("trainer.validation_freq", trainer.validation_freq)
    if trainer.precision not in PRECISIONS:
        raise ConfigError("trainer.precision", trainer.precision, ", ".join(PRECISIONS))
    if trainer.jit_compile not in ("auto", True, False):
        raise ConfigError("trainer.jit_compile", trainer.jit_compile, "auto, true or false")
    if trainer.strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", trainer.strategy, ", ".join(STRATEGIES))
    if trainer.verbose not in ("auto", 0, 1, 2):
        raise ConfigError("trainer.verbose", trainer.verbose, "auto, 0, 1 or 2")
    if trainer.data_on_device not in ("auto", True, False):
        raise ConfigError("trainer.data_on_device", trainer.data_on_device, "auto, true or false")
    for key, value in (("trainer.deterministic", trainer.deterministic), ("trainer.checkpoint", trainer.checkpoint),
                       ("trainer.drop_remainder", trainer.drop_remainder),
                       ("sweep.rerun", cfg.sweep.rerun), ("mlflow.log_model", cfg.mlflow.log_model)):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
    # Strings checked as strings: 1 == True would pass a plain membership test.
    if not (isinstance(trainer.tta, bool) or isinstance(trainer.tta, str) and trainer.tta in TTA_LEVELS):
        raise ConfigError("trainer.tta", trainer.tta, "false, true (= flip), flip or flip_translate")
    check_backend_settings(trainer)
    shared_steps_mode()  # a misspelt CIFAR_EXP_SHARE_STEPS is refused before any run opens
    smoothing = trainer.label_smoothing
    if not (isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool) and 0 <= smoothing < 1):
        raise ConfigError("trainer.label_smoothing", smoothing, "a number in [0, 1) (0: no smoothing)")
    if cfg.resume is not None and not (isinstance(cfg.resume, str) and cfg.resume):
        raise ConfigError("resume", cfg.resume, "null or an MLflow run id")
    trial = cfg.get("optuna_trial")
    if trial is not None and not (OmegaConf.is_dict(trial) and TRIAL_FIELDS <= set(trial)):
        # Set by main() from the Optuna sweeper's trial file (pruning.job_trial); anything else would fail deep in
        # the pruning callback with a traceback.
        raise ConfigError("optuna_trial", trial, "null (the Optuna sweeper sets it for its jobs: a mapping of "
                          + ", ".join(sorted(TRIAL_FIELDS)) + ")")
    if not (isinstance(cfg.mlflow.tracking_uri, str) and cfg.mlflow.tracking_uri):
        raise ConfigError("mlflow.tracking_uri", cfg.mlflow.tracking_uri, "a tracking URI such as sqlite:///mlflow.db")
    check_driver("mlflow.tracking_uri", cfg.mlflow.tracking_uri)  # postgresql:// needs the postgres extra
    name = cfg.mlflow.experiment_name
    if not (isinstance(name, str) and 0 < len(name) <= EXPERIMENT_NAME_LENGTH):
        # A database store holds 256 characters (sqlite ignores the limit, PostgreSQL refuses the run).
        raise ConfigError("mlflow.experiment_name", name,
                          f"a non-empty name of at most {EXPERIMENT_NAME_LENGTH} characters")
    for key in ("request_timeout_s", "outage_budget_s"):
        value = cfg.mlflow.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")):
            raise ConfigError(f"mlflow.{key}", value, "a finite number of seconds > 0")
    for group, check in (("model", check_model), ("init", check_init), ("optimizer", check_optimizer),
                         ("lr_schedule", lambda c: check_schedule(c, trainer.epochs)),
                         ("dataset", check_dataset), ("weighting", lambda c: check_weighting(c, trainer.epochs))):
        try:
            check(cfg[group])
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as error:
            # A value of a type no check foresaw: still a message, never a traceback.
            raise ConfigError(group, OmegaConf.to_container(cfg[group], resolve=True),
                              f"values of the right types ({type(error).__name__}: {error})") from None
    load(cfg.task).check(cfg)  # the task's own part: its block, its metrics (tasks/__init__.py)
    check_full_batches(cfg)


def check_full_batches(cfg) -> None:
    """With trainer.drop_remainder, the training samples the config implies (dataset.limit_train or
    train_size, less the validation fraction) must fill one batch: refused here, before the run opens
    (training/fit.py checks the loaded count again)."""
    dataset, batch_size = cfg.dataset, cfg.trainer.batch_size
    n = dataset.get("limit_train") or dataset.get("train_size")
    if not (cfg.trainer.drop_remainder and isinstance(n, int)):
        return
    n -= round(n * (dataset.get("val_fraction") or 0.0))
    if n < batch_size:
        raise ConfigError("trainer.drop_remainder", "true", f"false, or a trainer.batch_size of at most {n} "
                          f"(the training samples; no full batch of {batch_size} to train on)")


def check_devices(cfg) -> None:
    """The checks that depend on this machine's devices; call it once the job really runs, before its
    MLflow run is opened (it imports the Keras backend, which `validate` does not).

    Raises ConfigError when trainer.batch_size (or transfer.pretrain.batch_size) does not split evenly
    across the replicas of trainer.strategy; warns when mixed_float16 will run on a CPU.
    """
    if cfg.task == "kfold_poly":  # numpy only: no devices involved
        return
    from cifar_exp.data.resident import has_accelerator
    from cifar_exp.training.distribute import check_batch_size, replicas_in_sync

    strategy = cfg.trainer.strategy
    replicas = replicas_in_sync(strategy)
    check_batch_size("trainer.batch_size", cfg.trainer.batch_size, replicas, strategy)
    if cfg.task == "transfer" and cfg.transfer.pretrained:
        check_batch_size("transfer.pretrain.batch_size", cfg.transfer.pretrain.batch_size, replicas, strategy)
    if cfg.trainer.precision == "mixed_float16" and not has_accelerator():
        # CPUs have no float16 arithmetic units: every op is emulated (issue 13: ~50x slower than float32).
        log.warning("trainer.precision=mixed_float16 on a machine without a GPU: CPUs emulate float16, which "
                    "makes training many times slower than float32; use trainer.precision=float32 (or "
                    "mixed_bfloat16 on CPUs that support bfloat16)")
