"""One job from config to closed MLflow run: validate, connect, train, record the outcome.

Callable without Hydra (tests pass a composed config and a JobContext). In a multirun a
failing job is recorded FAILED and returns NaN so the sweep goes on; alone, it raises.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from cifar_exp import tracking
from cifar_exp.distribute import is_chief
from cifar_exp.errors import ConfigError
from cifar_exp.readers import SPECS, DataError, locate
from cifar_exp.validate import validate

log = logging.getLogger(__name__)
HIDDEN_OVERRIDE_PREFIXES = ("hydra.", "mlflow.", "optuna_trial")
VERSIONED_PACKAGES = ("tensorflow", "keras", "jax", "mlflow", "optuna", "hydra-core", "numpy")


@dataclass
class JobContext:
    """What Hydra knows about this job that the config does not say."""

    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None
    sweep_dir: str | None = None
    job_num: int | None = None
    multirun: bool = False


def run_job(cfg, context: JobContext) -> float:
    tracking.mask_saved_configs(context.output_dir, context.multirun and context.sweep_dir)
    if not is_chief(cfg.trainer.strategy):  # decided before any MLflow call: only the chief logs
        return _run_as_worker(cfg, context)
    try:
        validate(cfg)
        if cfg.task != "kfold_poly":  # kfold_poly generates its data
            find_data(cfg.dataset)
        if cfg.task == "transfer" and cfg.transfer.pretrained:
            find_data(cfg.transfer.pretrain.dataset)
        client = tracking.connect(cfg.mlflow.tracking_uri)
        digest = config_hash(cfg)
        experiment_id = tracking.experiment_id(client, cfg.mlflow.experiment_name)
        earlier = tracking.runs_with_tag(client, experiment_id, "config_hash", digest)
        resumed = run_to_resume(cfg, context, client, digest, earlier)
    except (ConfigError, DataError) as error:
        _write_status(context, "FAILED", error)
        if not context.multirun:
            raise
        log.error("%s", error)
        _record_failed_start(cfg, context, error)
        return math.nan

    finished = [run for run in earlier if run.info.status == "FINISHED"]
    if context.multirun and finished and not cfg.sweep.rerun and resumed is None:
        value = finished[0].data.metrics.get(cfg.optimized_metric, math.nan)
        log.info("skipping: run %s already finished this config (sweep.rerun=true runs it again)",
                 finished[0].info.run_id)
        _write_status(context, "FINISHED", None, finished[0].info.run_id, value)
        return float(value)

    if resumed is not None:
        run, checkpoint_dir = resumed
        tracker = tracking.RunTracker.resume(client, run.info.run_id, context.output_dir)
        log.info("resuming run %s from %s", run.info.run_id, checkpoint_dir)
    else:
        tags = dict(run_tags(cfg, context), config_hash=digest)
        tracker = tracking.RunTracker.start(client, cfg.mlflow.experiment_name, run_name(cfg, context), tags,
                                            context.output_dir)
        checkpoint_dir = str(Path(context.output_dir) / "checkpoint") if context.output_dir else None
    if not cfg.trainer.checkpoint:
        checkpoint_dir = None
    _write_status(context, "RUNNING", None, tracker.run_id)
    try:
        if resumed is None:
            tracker.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        configure_backend(cfg, context, tracker)
        metrics = run_task(cfg, tracker, checkpoint_dir)
        value = float(metrics[cfg.optimized_metric])
    except KeyboardInterrupt as error:
        tracker.finish("KILLED", error)
        _write_status(context, "KILLED", error, tracker.run_id)
        raise
    except Exception as error:
        hint = failure_hint(cfg, error)
        if hint:
            log.error("%s", hint)
            tracker.set_tags({"failure_hint": hint})
        tracker.finish("FAILED", error)
        _write_status(context, "FAILED", error, tracker.run_id, hint=hint)
        if not context.multirun:
            raise
        log.exception("job %s failed; the sweep goes on", context.job_num)
        return math.nan
    tracker.finish("FINISHED")
    _write_status(context, "FINISHED", None, tracker.run_id, value)
    return value


def is_out_of_memory(error: BaseException) -> bool:
    """Memory exhausted on the host or the accelerator, as each backend reports it: Python's
    MemoryError, TensorFlow's ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED (JAX)."""
    text = str(error)
    return (isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"
            or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def failure_hint(cfg, error: BaseException) -> str | None:
    """What to change, for the failures a config change cures."""
    if is_out_of_memory(error):
        return (f"out of memory with trainer.batch_size={cfg.trainer.batch_size}, model={cfg.model.name}, "
                f"trainer.precision={cfg.trainer.precision}: try a smaller trainer.batch_size, "
                "trainer.precision=mixed_bfloat16 (or mixed_float16), or a smaller model")
    if isinstance(error, FloatingPointError):
        return (f"the loss diverged with optimizer.lr={cfg.optimizer.lr}: try a smaller learning rate, "
                "or trainer.precision=float32 if mixed precision is on")
    return None


def find_data(cfg_dataset) -> None:
    """A missing dataset copy is reported before a run is opened (reading waits for training)."""
    if cfg_dataset.get("source", "path") != "download" and cfg_dataset.name in SPECS:
        locate(cfg_dataset.name, cfg_dataset.source, cfg_dataset.path)


def run_task(cfg, tracker, checkpoint_dir: str | None) -> dict[str, float]:
    if cfg.task == "kfold_poly":
        from cifar_exp import kfold  # numpy only

        return kfold.run(cfg, tracker)
    if cfg.task == "transfer":
        from cifar_exp import transfer  # imports Keras

        return transfer.run(cfg, tracker, checkpoint_dir=checkpoint_dir)
    from cifar_exp import distribute, train  # imports Keras: only once a job really runs

    return train.run(cfg, tracker, checkpoint_dir=checkpoint_dir,
                     extra_callbacks=distribute.sync_check_callbacks(cfg.trainer.strategy, tracker))


def configure_backend(cfg, context: JobContext, tracker=None) -> None:
    """Compile cache and GPU memory (backend_setup.py), before run_task first imports Keras; under
    the joblib launcher jobs share the GPU, so `trainer.gpu_memory=auto` grows."""
    from cifar_exp import backend_setup

    applied = backend_setup.configure(cfg.trainer, shared_gpu=context.choices.get("hydra/launcher") == "joblib")
    if tracker is not None and applied:
        tracker.set_tags({f"env.{key}": value for key, value in applied.items()})


def _run_as_worker(cfg, context: JobContext) -> float:
    """A non-chief worker of a multi-worker job: validates and trains in step with the chief, but opens
    no MLflow run (the chief's run holds the results) and logs nothing there."""
    validate(cfg)
    configure_backend(cfg, context)
    checkpoint_dir = (str(Path(context.output_dir) / "checkpoint")
                      if context.output_dir and cfg.trainer.checkpoint else None)
    try:
        metrics = run_task(cfg, tracking.NullTracker(), checkpoint_dir)
    except BaseException as error:
        _write_status(context, "FAILED", error)
        raise
    value = float(metrics[cfg.optimized_metric])
    _write_status(context, "FINISHED", None, None, value)
    return value


# Keys that do not change what a job computes: a run differing only in them is the same job.
CONFIG_HASH_IGNORES = ("resume", "sweep", "mlflow", "trainer.verbose", "trainer.checkpoint",
                       "trainer.data_on_device", "trainer.compile_cache", "trainer.gpu_memory")
# Keys added after runs were already recorded, with the value that means "as before": they
# count only when set otherwise, so earlier runs keep their hash (and are skipped or resumed).
CONFIG_HASH_SINCE = {"trainer.tta": False, "trainer.label_smoothing": 0.0}


def config_hash(cfg) -> str:
    """Identifies a job by its resolved config, to skip or resume it in a later sweep."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for dotted in (*CONFIG_HASH_IGNORES, *CONFIG_HASH_SINCE):
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key, {})
        if dotted in CONFIG_HASH_IGNORES or node.get(leaf) == CONFIG_HASH_SINCE[dotted]:
            node.pop(leaf, None)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_to_resume(cfg, context: JobContext, client, digest: str, earlier):
    """(run, checkpoint folder) of an unfinished run this job continues, or None.

    `resume=<run id>` names it; otherwise a re-run in the same job folder, or a re-run of a
    sweep that was interrupted (matched by the config hash), picks up its checkpoint.
    """
    if cfg.resume:
        try:
            run = client.get_run(str(cfg.resume))
        except Exception:
            raise ConfigError("resume", cfg.resume, "the id of an MLflow run in this tracking store") from None
        if run.data.tags.get("config_hash") != digest:
            raise ConfigError("resume", cfg.resume, "a run of the same config: repeat its overrides: "
                              f"{run.data.tags.get('overrides', '')!r}")
        if run.info.status == "FINISHED":
            raise ConfigError("resume", cfg.resume, "an unfinished run (this one FINISHED)")
        return run, str(Path(run.data.tags.get("output_dir", ".")) / "checkpoint")
    unfinished = [run for run in earlier if run.info.status != "FINISHED"]
    same_folder = [run for run in unfinished if context.output_dir
                   and run.data.tags.get("output_dir") == str(context.output_dir)]
    if same_folder:
        return same_folder[0], str(Path(context.output_dir) / "checkpoint")
    if context.multirun:
        for run in unfinished:
            folder = Path(run.data.tags.get("output_dir", "")) / "checkpoint"
            if run.data.tags.get("output_dir") and folder.is_dir():
                return run, str(folder)
    return None


def run_name(cfg, context: JobContext) -> str:
    if cfg.mlflow.run_name:
        return str(cfg.mlflow.run_name)
    shown = [o for o in context.overrides if not o.lstrip("+~").startswith(HIDDEN_OVERRIDE_PREFIXES)]
    return tracking.mask_secrets(",".join(shown)) if shown else "defaults"


def run_tags(cfg, context: JobContext) -> dict[str, str]:
    tags = {f"choice.{group}": str(option) for group, option in context.choices.items()
            if not group.startswith("hydra") and option is not None}
    tags.update({
        "task": cfg.task,
        "overrides": " ".join(context.overrides),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "python_version": platform.python_version(),
    })
    for package in VERSIONED_PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if context.output_dir:
        tags["output_dir"] = str(context.output_dir)
    if context.multirun and context.sweep_dir:
        tags["sweep_dir"] = str(context.sweep_dir)
        tags["sweep_id"] = sweep_id(context.sweep_dir)
        tags["job_num"] = str(context.job_num)
    tags.update(git_state())
    return tags


def sweep_id(sweep_dir: str) -> str:
    """Shared by every job of one multirun: a short hash of the sweep folder's path."""
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def git_state() -> dict[str, str]:
    """The commit of the code that ran, and whether it had uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}


def _record_failed_start(cfg, context: JobContext, error: Exception) -> None:
    """In a sweep, a job rejected before training still leaves a FAILED run saying why."""
    try:
        client = tracking.connect(cfg.mlflow.tracking_uri)
        tracker = tracking.RunTracker.start(client, str(cfg.mlflow.experiment_name), run_name(cfg, context),
                                            run_tags(cfg, context), context.output_dir)
        tracker.finish("FAILED", error)
    except Exception:  # the store itself is what is wrong: the console message must do
        log.warning("could not record the failed job in MLflow")


def _write_status(context: JobContext, status: str, error, run_id=None, value=None, hint=None) -> None:
    """job_status.json in the job's folder: what the sweep summary counts."""
    if not context.output_dir:
        return
    record = {"status": status, "run_id": run_id, "value": value,
              "overrides": [tracking.mask_secrets(o) for o in context.overrides],
              "error": None if error is None else tracking.mask_secrets(f"{type(error).__name__}: {error}"),
              "hint": hint}
    Path(context.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(context.output_dir) / "job_status.json").write_text(json.dumps(record, indent=1))
