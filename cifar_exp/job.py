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
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from cifar_exp import console, signals
from cifar_exp.data.readers import SPECS, DataError, locate
from cifar_exp.errors import ConfigError
from cifar_exp.overrides import is_inert
from cifar_exp.tracking import lifecycle
from cifar_exp.tracking import runs as tracking
from cifar_exp.tracking.run_info import git_state
from cifar_exp.training import checkpoints, outcome
from cifar_exp.training.backend_setup import keras_backend
from cifar_exp.training.distribute import is_chief, worker_count, worker_name
from cifar_exp.validate import check_devices, validate

log = logging.getLogger(__name__)
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
    swept_keys: list[str] = field(default_factory=list)  # the keys a multirun varies


def run_job(cfg, context: JobContext) -> float:
    """Run one job; its folder is locked for the job's life (lifecycle.FolderLock): a second
    process given the same folder is refused in one line (ConfigError) before anything runs.
    The other workers of a multi-worker job share the chief's folder: only the chief locks it."""
    folder = context.output_dir if is_chief(cfg.trainer.strategy) else None
    with lifecycle.folder_lock(folder, "hydra.sweep.dir" if context.multirun else "hydra.run.dir"):
        return _run_job(cfg, context)


def _run_job(cfg, context: JobContext) -> float:
    started = time.monotonic()
    tracking.mask_saved_configs(context.output_dir, context.multirun and context.sweep_dir)
    if not is_chief(cfg.trainer.strategy):  # decided before any MLflow call: only the chief logs
        return _run_as_worker(cfg, context)
    try:
        validate(cfg)
        tracking.outbox.configure(cfg.mlflow.request_timeout_s, cfg.mlflow.outage_budget_s)
        backend_env = configure_backend(cfg, context)  # before anything imports Keras (check_devices does)
        if cfg.task != "kfold_poly":  # kfold_poly generates its data
            find_data(cfg.dataset)
        if cfg.task == "transfer" and cfg.transfer.pretrained:
            find_data(cfg.transfer.pretrain.dataset)
        # The store before the devices: a wrong tracking URI is then refused in a second or two,
        # not after the Keras backend has loaded (TensorFlow's import: several seconds).
        client = tracking.connect(cfg.mlflow.tracking_uri)
        check_devices(cfg)
        digest = config_hash(cfg)
        try:
            experiment_id = tracking.experiment_id(client, cfg.mlflow.experiment_name)
            reap_gone_owners(client, experiment_id, digest, context)
            earlier = tracking.runs_with_tag(client, experiment_id, "config_hash", digest)
        except Exception as error:  # a deleted experiment, a store refusing reads
            raise tracking.refused(error, cfg.mlflow.tracking_uri) from None
        resumed = run_to_resume(cfg, context, client, digest, earlier)
        tags = dict(run_tags(cfg, context), config_hash=digest)  # refuses a clashing user tag
    except (ConfigError, DataError) as error:
        return _refuse_start(cfg, context, error)

    finished = [run for run in earlier if run.info.status == "FINISHED"]
    if context.multirun and finished and not cfg.sweep.rerun and resumed is None:
        value = finished[0].data.metrics.get(cfg.optimized_metric, math.nan)
        log.info("skipping: run %s already finished this config (sweep.rerun=true runs it again)",
                 finished[0].info.run_id)
        _write_status(context, "FINISHED", None, finished[0].info.run_id, value,
                      outcome=finished[0].data.tags.get("outcome"), skipped=True)
        return float(value)

    try:
        tracker, checkpoint_dir = _open_run(cfg, context, client, digest, resumed, tags)
    except Exception as error:  # the store refused the run: permissions, read-only sqlite, server gone
        return _refuse_start(cfg, context, tracking.refused(error, cfg.mlflow.tracking_uri))
    if not cfg.trainer.checkpoint:
        checkpoint_dir = None
    page = console.share_runs_view(client, experiment_id, tracker.run_id, cfg.optimized_metric,
                                   tags.get("sweep_id"), list(swept_values(context)))
    log.info("%s", console.start_line(tracker.run_id, cfg.mlflow.experiment_name, cfg.mlflow.tracking_uri,
                                      context.output_dir, page, resumed is not None))
    _write_status(context, "RUNNING", None, tracker.run_id)
    try:
        if resumed is None:
            tracker.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        if backend_env:
            tracker.set_tags({f"env.{key}": value for key, value in backend_env.items()})
        # Validation, the store, the devices, the run and its params: the job's seconds before its task.
        tracker.log_metrics({"time/setup": time.monotonic() - started}, step=tracker.phase_step)
        metrics = run_task(cfg, tracker, checkpoint_dir)
        value = float(metrics[cfg.optimized_metric])
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM, SIGHUP (signals.Stopped): ends a sweep too
        stopped = signals.as_stopped(error)
        if checkpoint_dir is None:  # a requeued job would start over in this run: not requeued
            stopped.cannot_resume("trainer.checkpoint=false")
        tracker.finish("KILLED", stopped)
        _write_status(context, "KILLED", stopped, tracker.run_id)
        stopped.summary = stop_line(cfg, context, stopped, tracker, resumable=checkpoint_dir is not None)
        stopped.sweep_dir = context.sweep_dir if context.multirun else None
        raise stopped from None
    except Exception as error:
        hint = failure_hint(cfg, error)
        if hint:
            log.error("%s", hint)
            tracker.set_tags({"failure_hint": hint})
        tracker.finish("FAILED", error)
        _write_status(context, "FAILED", error, tracker.run_id, hint=hint)
        if not context.multirun:
            raise
        if hint:  # a failure the hint explains (divergence, out of memory): no traceback
            log.error("job %s failed (%s: %s); the sweep goes on", context.job_num, type(error).__name__, error)
        else:
            log.exception("job %s failed; the sweep goes on", context.job_num)
        return math.nan
    try:
        tracker.finish("FINISHED")
    except tracking.StoreUnavailable as error:  # trained, but part of its record waits in the job folder
        _write_status(context, "UNSYNCED", error, tracker.run_id, value)
        if not context.multirun:
            raise
        log.error("job %s: %s", context.job_num, error)
        return value
    judged = outcome.verdict(metrics)  # None for tasks without a test accuracy
    if judged and judged[0] == outcome.DID_NOT_LEARN:
        log.warning("did not learn: %s", judged[1])
    _write_status(context, "FINISHED", None, tracker.run_id, value, outcome=judged and judged[0])
    log.info("%s", console.closing_line(tracker.run_id, metrics, cfg.optimized_metric, time.monotonic() - started))
    return value


def reap_gone_owners(client, experiment_id: str, digest: str, context: JobContext) -> None:
    """Runs of this job (its config hash) or of its sweep (its sweep id) left RUNNING by a process
    that is gone (kill -9, the OOM killer, a crash) are closed KILLED before this job looks for a
    run to resume or skip (it still resumes them). A store that refuses the search is left to the
    reads that follow to report."""
    where = [f"tags.config_hash = '{digest}'"]
    if context.multirun and context.sweep_dir:
        where.append(f"tags.sweep_id = '{sweep_id(context.sweep_dir)}'")
    for each in where:
        lifecycle.reap(client, [experiment_id], each, here=context.output_dir)


def _open_run(cfg, context: JobContext, client, digest: str, resumed, tags: dict[str, str]):
    """(tracker, checkpoint folder): the resumed run, or a new one with its own checkpoint folder."""
    if resumed is not None:
        run, checkpoint_dir = resumed
        tracker = tracking.RunTracker.resume(client, run.info.run_id, context.output_dir)
        if context.multirun and context.sweep_dir:  # it is this sweep's job now (output_dir stays: the
            # checkpoint is still written there, and a later re-run must find it)
            tracker.set_tags({"sweep_dir": str(context.sweep_dir), "sweep_id": sweep_id(context.sweep_dir),
                              "job_num": str(context.job_num)})
        log.info("resuming run %s from %s", run.info.run_id, checkpoint_dir)
        return tracker, checkpoint_dir
    checkpoint_dir = checkpoints.folder(context.output_dir, digest)
    if cfg.trainer.checkpoint and checkpoints.others(context.output_dir, digest):
        log.info("%s holds the checkpoint of another config (left as it is); this config starts from "
                 "epoch 1 in %s", Path(context.output_dir) / "checkpoint", checkpoint_dir)
    tracker = tracking.RunTracker.start(client, cfg.mlflow.experiment_name, run_name(cfg, context), tags,
                                        context.output_dir)
    return tracker, checkpoint_dir


def _refuse_start(cfg, context: JobContext, error: Exception) -> float:
    """A job that cannot start (bad config, missing data, a store refusing it): FAILED in
    job_status.json; alone, the error goes up to main's one-line message; in a sweep it is
    logged, recorded as a FAILED run where the store allows, and the sweep goes on."""
    _write_status(context, "FAILED", error)
    if not context.multirun:
        raise error
    log.error("%s", error)
    _record_failed_start(cfg, context, error)
    return math.nan


def stop_line(cfg, context: JobContext, stopped: signals.Stopped, tracker, resumable: bool) -> str:
    """'Stopped by SIGTERM after epoch 3/20; run <id> KILLED; re-run the same command to resume'.

    A sweep's re-run finds its interrupted jobs by config; a single run resumes in its own
    folder (a re-run of the same command gets a new timestamped one) or by run id."""
    where = ""
    if cfg.task != "kfold_poly":
        try:
            where = f" after epoch {tracker.logged_epochs()}/{cfg.trainer.epochs}"
        except Exception:  # the store is what failed: the line must still be printed
            pass
    if not resumable:
        then = "trainer.checkpoint=false: a re-run starts from epoch 1"
    elif context.multirun:
        then = "re-run the same command to resume"
    else:
        then = (f"to resume, re-run it with hydra.run.dir={context.output_dir} (or resume={tracker.run_id})"
                if context.output_dir else f"to resume, re-run it with resume={tracker.run_id}")
    if stopped.requeue:
        then = "Slurm requeues the job and it resumes in this run"
    return f"Stopped by {stopped}{where}; run {tracker.run_id} KILLED; {then}"


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
    if isinstance(error, FloatingPointError):  # outcome.TrainingDiverged among them
        return (f"the loss diverged with optimizer.lr={cfg.optimizer.lr}: try a smaller learning rate "
                f"(e.g. optimizer.lr={cfg.optimizer.lr / 10:g} or lower), optimizer.clipnorm, another init than "
                f"init={cfg.init.name}, or trainer.precision=float32 if mixed precision is on")
    return None


def find_data(cfg_dataset) -> None:
    """A missing dataset copy is reported before a run is opened (reading waits for training)."""
    if cfg_dataset.get("source", "path") != "download" and cfg_dataset.name in SPECS:
        locate(cfg_dataset.name, cfg_dataset.source, cfg_dataset.path)


def run_task(cfg, tracker, checkpoint_dir: str | None) -> dict[str, float]:
    from cifar_exp.tasks import load  # the task's module, imported only now (classify and transfer import Keras)

    return load(cfg.task).run(cfg, tracker, checkpoint_dir)


def configure_backend(cfg, context: JobContext) -> dict[str, str]:
    """Compile cache and GPU memory (backend_setup.py), before anything imports Keras; under the
    joblib launcher jobs share the GPU, so `trainer.gpu_memory=auto` grows. Returns the environment
    variables it set (tagged `env.<name>` on the run)."""
    from cifar_exp.training import backend_setup

    return backend_setup.configure(cfg.trainer, shared_gpu=context.choices.get("hydra/launcher") == "joblib") or {}


def _run_as_worker(cfg, context: JobContext) -> float:
    """A non-chief worker of a multi-worker job: validates and trains in step with the chief, but opens
    no MLflow run (the chief's run holds the results) and logs nothing there. On Slurm the workers of
    a job share its folder: the chief's job_status.json is the job's, and each worker checkpoints
    into a folder of its own."""
    _log_to_own_file(context.output_dir, worker_name())
    validate(cfg)
    configure_backend(cfg, context)
    checkpoint_dir = (checkpoints.worker_folder(context.output_dir, config_hash(cfg), worker_name())
                      if cfg.trainer.checkpoint else None)
    try:  # the store is read as the chief reads it (a pretraining to reuse), never written
        client = tracking.connect(cfg.mlflow.tracking_uri)
    except ConfigError:
        client = None
    metrics = run_task(cfg, tracking.NullTracker(client), checkpoint_dir)
    return float(metrics[cfg.optimized_metric])


def _log_to_own_file(folder: str | None, worker: str) -> None:
    """Send this worker's log lines to `<job>.<worker>.log` (main.worker1.log) in the job folder instead
    of Hydra's `<job>.log`, which the chief writes: the workers share the folder, and their lines would
    interleave with the chief's."""
    if not folder:
        return
    for handler in logging.getLogger().handlers:
        path = Path(handler.baseFilename) if isinstance(handler, logging.FileHandler) else None
        if path and path.parent.resolve() == Path(folder).resolve() and not path.stem.endswith(f".{worker}"):
            handler.close()  # reopened at the next line, under the new name (mode "a")
            handler.baseFilename = str(path.with_suffix(f".{worker}.log"))


# Keys added after runs were already recorded, with the value that means "as before": they
# count only when set otherwise, so earlier runs keep their hash (and are skipped or resumed).
CONFIG_HASH_SINCE = {"trainer.tta": False, "trainer.label_smoothing": 0.0, "trainer.drop_remainder": False,
                     "trainer.validation_freq": 1}


def config_hash(cfg) -> str:
    """Identifies a job by its resolved config and its Keras backend, to skip or resume it in a later
    sweep (a JAX run is not the TensorFlow run of the same config: other kernels, other numbers)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    if keras_backend() != "tensorflow":  # counted only when not the default: earlier runs keep their hash
        tree["keras_backend"] = keras_backend()
    tree = _without_inert(tree)
    if tree.get("trainer", {}).get("precision") == "auto":  # what it trains in here (bf16 on a GPU, f32 on a CPU)
        from cifar_exp.data.resident import precision_policy

        tree["trainer"]["precision"] = precision_policy("auto")
    for dotted, before in CONFIG_HASH_SINCE.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key, {})
        if node.get(leaf) == before:
            node.pop(leaf, None)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_inert(tree: dict, prefix: str = "") -> dict:
    """The config tree without the keys of overrides.INERT_KEYS (they compute nothing)."""
    return {key: _without_inert(value, f"{prefix}{key}.") if isinstance(value, dict) else value
            for key, value in tree.items() if not is_inert(f"{prefix}{key}")}


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
        if lifecycle.is_owned_by_live_process(run):
            raise ConfigError("resume", cfg.resume, "a run no live process is running (process "
                              f"{run.data.tags.get(lifecycle.OWNER_PID)} on {run.data.tags.get(lifecycle.OWNER_HOST)} "
                              "still runs this one)")
        if _several_workers(cfg) and run.data.tags.get("output_dir") != str(context.output_dir):
            raise ConfigError("resume", cfg.resume, "a run of this job folder: a multi-worker job resumes only "
                              "where its workers' checkpoints are; re-run with hydra.run.dir (or hydra.sweep.dir) "
                              f"set to the run's folder {run.data.tags.get('output_dir')!r}")
        return run, checkpoints.folder(run.data.tags.get("output_dir", "."), digest)
    # Another live process's run is its own (two sweeps of one config at once): never taken over.
    unfinished = [run for run in earlier
                  if run.info.status != "FINISHED" and not lifecycle.is_owned_by_live_process(run)]
    same_folder = [run for run in unfinished if context.output_dir
                   and run.data.tags.get("output_dir") == str(context.output_dir)]
    if same_folder:
        return same_folder[0], checkpoints.folder(context.output_dir, digest)
    if context.multirun:
        for run in unfinished:
            folder = checkpoints.folder(run.data.tags.get("output_dir"), digest)
            if folder and Path(folder).is_dir():
                if _several_workers(cfg):
                    log.warning("run %s (%s) is left as it is: a multi-worker job resumes only in its own job "
                                "folder, where each worker finds its checkpoint; this job starts from epoch 1. "
                                "To resume that run, re-run with hydra.sweep.dir=%s", run.info.run_id,
                                run.data.tags.get("output_dir"), run.data.tags.get("sweep_dir") or "<its sweep folder>")
                    return None
                return run, folder
    return None


def _several_workers(cfg) -> bool:
    """A multi-worker job of two processes or more: its other workers read their checkpoints from this
    job's folder (checkpoints.worker_folder), never from the run the chief resumes."""
    return cfg.trainer.strategy == "multi_worker" and worker_count() > 1


def run_name(cfg, context: JobContext) -> str:
    """`mlflow.run_name`, else the overrides, the swept ones first: in the MLflow UI's table and
    chart legends, what tells the runs of a sweep apart is then what shows."""
    if cfg.mlflow.run_name:
        return tracking.mask_secrets(cfg.mlflow.run_name)
    # Keys that compute nothing (overrides.INERT_KEYS) are not named; nor is the Optuna trial (its
    # number is the run's `optuna.trial` tag).
    shown = [o for o in context.overrides if not is_inert(o) and not _override_key(o).startswith("optuna_trial")]
    swept = swept_values(context)
    shown = [f"{k}={v}" for k, v in swept.items()] + [o for o in shown if _override_key(o) not in swept]
    return tracking.mask_secrets(",".join(shown)) if shown else "defaults"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_values(context: JobContext) -> dict[str, str]:
    """{key: this job's value} for the keys its multirun varies, in the sweep's order."""
    values = {_override_key(o): o.split("=", 1)[1] for o in context.overrides if "=" in o}
    return {key: values[key] for key in context.swept_keys if key in values and context.multirun}


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
    swept = swept_values(context)
    if swept:  # columns to sort and group the sweep's runs by in the MLflow UI
        tags["swept_keys"] = ",".join(swept)
        tags.update({f"swept.{key}": value for key, value in swept.items()})
    tags.update(git_state())
    return {**user_tags(cfg, tags), **tags}


# Tags a job sets only in a multirun, or after it started: a user tag may not take their name.
LATER_TAGS = ("sweep_id", "sweep_dir", "job_num", "swept_keys", "error", "failure_hint", "weights_sha256",
              "config_hash", "full_run_name",  # full_run_name: tracking/databases.py, for a name over 250 characters
              "precision", "outcome", "outcome_detail", "shared_steps")  # set while training or after it
LATER_TAG_PREFIXES = ("mlflow.", "data.", "transfer.", "kfold.", "optuna.", "swept.", "choice.", "version.")


def user_tags(cfg, job_tags: dict[str, str]) -> dict[str, str]:
    """The `tags` config entries (`+tags.purpose=baseline`) as MLflow tags of the same name;
    one the job sets itself is refused (ConfigError) rather than silently lost."""
    given = tracking.flatten(OmegaConf.to_container(cfg.tags, resolve=True)) if cfg.get("tags") else {}
    for name, value in given.items():
        if name in job_tags or name in LATER_TAGS or name.startswith(LATER_TAG_PREFIXES):
            raise ConfigError(f"tags.{name}", value, "a tag name the job does not set itself "
                              f"(it sets {', '.join(sorted(job_tags)[:6])}, ... and mlflow.*)")
    return given


def sweep_id(sweep_dir: str) -> str:
    """Shared by every job of one multirun: the id sweeps.summary.SweepSummary derived from the
    sweep's definition (so a re-run of a stopped sweep keeps it) and wrote in the sweep folder;
    without it (callbacks replaced), a short hash of the sweep folder's path."""
    from cifar_exp.sweeps.summary import SWEEP_ID_FILE

    saved = Path(sweep_dir) / SWEEP_ID_FILE
    if saved.is_file():
        return saved.read_text().strip()
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def _record_failed_start(cfg, context: JobContext, error: Exception) -> None:
    """In a sweep, a job rejected before training still leaves a FAILED run saying why."""
    try:
        client = tracking.connect(cfg.mlflow.tracking_uri)
        tracker = tracking.RunTracker.start(client, str(cfg.mlflow.experiment_name), run_name(cfg, context),
                                            run_tags(cfg, context), context.output_dir)
        tracker.finish("FAILED", error)
    except Exception:  # the store itself is what is wrong: the console message must do
        log.warning("could not record the failed job in MLflow")


def _write_status(context: JobContext, status: str, error, run_id=None, value=None, hint=None,
                  outcome=None, skipped=False) -> None:
    """job_status.json in the job's folder: what the sweep summary counts. `outcome`: learned,
    did_not_learn (outcome.py), or None (not finished, or a task without a test accuracy);
    `skipped`: an earlier run finished this config, so nothing ran."""
    if not context.output_dir:
        return
    record = {"status": status, "run_id": run_id, "value": value, "skipped": skipped, "owner": lifecycle.owner(),
              "overrides": [tracking.mask_secrets(o) for o in context.overrides],
              "error": None if error is None else tracking.mask_secrets(f"{type(error).__name__}: {error}"),
              "hint": None if hint is None else tracking.mask_secrets(hint), "outcome": outcome}
    Path(context.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(context.output_dir) / "job_status.json").write_text(json.dumps(record, indent=1))
