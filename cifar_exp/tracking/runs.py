"""MLflow for one job: start a run, log params/tags/metrics/artifacts, always close it.

Uses MlflowClient (not the fluent API) so jobs of one multirun process never share an
"active run", and retries writes that a busy store refuses (sqlite under parallel jobs).
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

from cifar_exp.errors import ConfigError
from cifar_exp.tracking import health, outbox
from cifar_exp.tracking.databases import error_line, fitting_run_name, schema_lock
from cifar_exp.tracking.outbox import StoreUnavailable  # noqa: F401 - raised by finish("FINISHED")
from cifar_exp.tracking.secrets import mask_secrets  # (moved: tracking/outbox.py needs it too)

log = logging.getLogger(__name__)
PARAM_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
# MLflow 3's UI opens an experiment of unknown kind on its (empty) GenAI "Traces" page; this
# kind opens it on its runs table (the values are the UI's ExperimentKind enum).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class MaskingFormatter(logging.Formatter):
    """A log formatter that hides URL passwords; Hydra's logging config uses it."""

    def __init__(self, fmt=None, datefmt=None, format=None, **kwargs):  # noqa: A002 - dictConfig passes `format`
        super().__init__(fmt or format, datefmt, **kwargs)

    def format(self, record):
        return mask_secrets(super().format(record))


def mask_saved_configs(*folders) -> None:
    """Hydra saves the raw config and overrides (.hydra/*.yaml, multirun.yaml): mask them."""
    from pathlib import Path

    for folder in filter(None, folders):
        for path in [*Path(folder).glob(".hydra/*.yaml"), Path(folder) / "multirun.yaml"]:
            if path.is_file():
                text = path.read_text()
                if mask_secrets(text) != text:
                    path.write_text(mask_secrets(text))


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists stay one value."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = mask_secrets(value)
    return flat


def _retry(call, attempts: int = 6, first_wait_s: float = 0.2):
    """Run `call`, retrying with exponential backoff when the store is busy."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:  # MlflowException wraps sqlite's OperationalError
            busy = "locked" in str(error).lower() or "busy" in str(error).lower()
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 2 ** attempt)


@contextmanager
def _quick_http_failure():
    """MLflow's client retries an unreachable server for minutes by default; at start-up
    we want an answer in seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def sqlite_creation_lock(tracking_uri: str):
    """Parallel jobs (joblib launcher) or Optuna workers opening a new sqlite store at once race
    to create its tables; neither MLflow nor Optuna guards that, so a file lock beside the
    database does."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(os.path.abspath(tracking_uri[len("sqlite:///"):]) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(tracking_uri: str):
    """An MlflowClient that has answered once, or a ConfigError saying why not."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///"):])) or "."
        if not os.path.isdir(folder):
            raise ConfigError("mlflow.tracking_uri", mask_secrets(tracking_uri),
                              f"a sqlite:/// path in an existing folder ({folder} does not exist)")
    health.check_sqlite(tracking_uri)  # a damaged file: refused before any run writes into it
    try:
        with _quick_http_failure(), sqlite_creation_lock(tracking_uri):
            health.check_not_empty(tracking_uri)  # an empty file where a store was: never filled silently
            with schema_lock(tracking_uri, "mlflow"):  # (which creates a new sqlite file: checked before)
                client = MlflowClient(tracking_uri)
                client.search_experiments(max_results=1)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError("mlflow.tracking_uri", mask_secrets(tracking_uri),
                          "a reachable MLflow tracking store (sqlite:///file.db, a folder, or "
                          "http://host:port of a running `mlflow server`); it failed with: "
                          f"{mask_secrets(error_line(error))}") from None
    return client


def experiment_id(client, name: str) -> str:
    """The id of the named experiment (its name masked as everywhere), created on first use.

    Raises ConfigError when the experiment was deleted (MLflow keeps the name, refuses new runs), and
    when a client that talks to the database itself opens an experiment that an MLflow server
    created: its artifacts live at `mlflow-artifacts:/` URIs, which only a client of that server can
    write (the job would train, then fail at its first artifact).
    """
    from mlflow.exceptions import MlflowException

    name = mask_secrets(name)
    experiment = _retry(lambda: client.get_experiment_by_name(name))
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError("mlflow.experiment_name", name,
                          f"an active experiment; experiment {experiment.experiment_id} of that name is deleted: "
                          f"restore it (`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                          f"with MLFLOW_TRACKING_URI={mask_secrets(client.tracking_uri)}, or "
                          f"MlflowClient().restore_experiment('{experiment.experiment_id}')) or choose another name")
    if experiment is not None:
        served = str(experiment.artifact_location).startswith("mlflow-artifacts:")
        if served and not client.tracking_uri.startswith(("http://", "https://")):
            raise ConfigError("mlflow.tracking_uri", mask_secrets(client.tracking_uri),
                              f"the http(s):// address of the MLflow server that created experiment '{name}' "
                              f"(its artifacts are the server's: {experiment.artifact_location}); for direct "
                              "access to the database, another mlflow.experiment_name")
        return experiment.experiment_id
    # MLflow puts a sqlite store's artifacts in ./mlruns of whatever folder the process runs
    # in; keep them beside the database instead (the same place for the default store).
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        from pathlib import Path

        location = (Path(client.tracking_uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS))
    except MlflowException:  # a parallel job created it first
        return client.get_experiment_by_name(name).experiment_id


def refused(error: Exception, tracking_uri: str) -> ConfigError:
    """A store that answered but refused to open or write a run (permissions, a read-only sqlite
    file, a server gone or refusing), as the one line a user sees."""
    if isinstance(error, ConfigError):
        return error
    return ConfigError("mlflow.tracking_uri", mask_secrets(tracking_uri), "a tracking store this job can write "
                       f"runs to; it refused with: {mask_secrets(error_line(error))}")


def runs_with_tag(client, experiment: str, key: str, value: str):
    """Runs of the experiment carrying tag key=value, newest first."""
    return _retry(lambda: client.search_runs([experiment], filter_string=f"tags.{key} = '{value}'",
                                             order_by=["attributes.start_time DESC"], max_results=100))


class RunTracker:
    """One MLflow run; everything a job logs goes through here.

    Writes a store cannot take (a server gone, a full disk, a damaged file) wait in the job
    folder's outbox and go with the next write (tracking/outbox.py); training never stops for
    them. `finish("FINISHED")` raises StoreUnavailable, the run left open, while any still wait.
    Metrics refused for another reason are kept, then saved to `pending_metrics.json`.
    """

    def __init__(self, client, run_id: str, output_dir: str | None = None):
        # Writes the store cannot take wait in the job folder (tracking/outbox.py): training goes on.
        self.client, self.run_id, self.output_dir = outbox.buffered(client, run_id, output_dir), run_id, output_dir
        self.pending: list = []
        # The step of this process's `time/*` and `memory/rss_mb` figures: 0 for the run's first
        # process, then one more for each process that resumes it (each step is logged once).
        self.phase_step = 0

    @classmethod
    def resume(cls, client, run_id: str, output_dir: str | None = None):
        """Continue an unfinished run: same id, new metrics appended, this process its owner
        (owner.py). The tags that said why it stopped (`error`, `failure_hint`, `ended_by`)
        go: they would contradict the run once it finishes."""
        from cifar_exp.tracking import owner

        _retry(lambda: client.update_run(run_id, status="RUNNING"))
        tracker = cls(client, run_id, output_dir)
        tracker.set_tags(owner.owner())
        stale = [key for key in ("error", "failure_hint", owner.ENDED_BY) if key in client.get_run(run_id).data.tags]
        for key in stale:
            _retry(lambda key=key: client.delete_tag(run_id, key))
        if output_dir:  # what an earlier process of this job could not send
            tracker.client.resume_outbox()
        earlier = _retry(lambda: client.get_metric_history(run_id, "time/setup"))
        tracker.phase_step = 1 + max(m.step for m in earlier) if earlier else 0
        return tracker

    @classmethod
    def start(cls, client, experiment_name: str, run_name: str, tags: dict[str, str], output_dir: str | None = None):
        """A new RUNNING run owned by this process (owner.py: host, pid, process start)."""
        from cifar_exp.tracking import owner

        experiment = experiment_id(client, experiment_name)
        name, name_tags = fitting_run_name(mask_secrets(run_name))  # a database's column holds 250 characters
        tags = {**{k: mask_secrets(v) for k, v in {**tags, **name_tags}.items()}, **owner.owner()}
        run = _retry(lambda: client.create_run(experiment, run_name=name, tags=tags))
        return cls(client, run.info.run_id, output_dir)

    def find_runs(self, experiment_name: str, filter_string: str, max_results: int = 5) -> list:
        experiment = _retry(lambda: self.client.get_experiment_by_name(mask_secrets(experiment_name)))
        if experiment is None:
            return []
        return _retry(lambda: self.client.search_runs([experiment.experiment_id], filter_string=filter_string,
                                                      order_by=["attributes.start_time DESC"],
                                                      max_results=max_results))

    def has_artifact(self, run_id: str, path: str) -> bool:
        folder = path.rpartition("/")[0] or None
        return any(a.path == path for a in _retry(lambda: self.client.list_artifacts(run_id, folder)))

    def download_artifact(self, run_id: str, path: str, folder: str) -> str:
        return _retry(lambda: self.client.download_artifacts(run_id, path, folder))

    def open_run(self, experiment_name: str, run_name: str, tags: dict[str, str]) -> "RunTracker":
        return RunTracker.start(self.client, experiment_name, run_name, tags)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, mask_secrets(v)) for k, v in tags.items()]))

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), PARAM_BATCH):
            chunk = items[start:start + PARAM_BATCH]
            _retry(lambda: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._flush_metrics()

    def _flush_metrics(self) -> bool:
        batch = self.pending[:1000]  # MLflow takes at most 1000 metrics per call
        while batch:
            try:
                _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))
            except Exception as error:
                log.warning("MLflow refused %d metric values (%s); kept for the next attempt",
                            len(self.pending), mask_secrets(str(error).splitlines()[0] if str(error) else error))
                return False
            self.pending = self.pending[len(batch):]
            batch = self.pending[:1000]
        return True

    def logged_epochs(self) -> int:
        """The last epoch (step) of the `loss` metric the store holds; 0 if none."""
        history = _retry(lambda: self.client.get_metric_history(self.run_id, "loss"))
        return max((m.step for m in history), default=0)

    def logged_history(self) -> list[dict[str, float]]:
        """The per-epoch metrics the store holds: [{key: value} of step 1, of step 2, ...]."""
        run = _retry(lambda: self.client.get_run(self.run_id))
        steps: dict[int, dict[str, float]] = {}
        for key in run.data.metrics:
            for metric in _retry(lambda: self.client.get_metric_history(self.run_id, key)):
                steps.setdefault(metric.step, {}).setdefault(key, metric.value)
        return [steps.get(step, {}) for step in range(1, max(steps, default=0) + 1)]

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, local_path, artifact_path))

    def log_figure(self, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        _retry(lambda: self.client.log_figure(self.run_id, figure, artifact_file))
        plt.close(figure)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.run_id, mask_secrets(text), artifact_file))

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Close the run; FAILED/KILLED runs carry the error as a tag."""
        if self.pending and not self._flush_metrics():
            self._save_pending()
        if error is not None:
            message = mask_secrets(f"{type(error).__name__}: {error}")[:5000]
            self.set_tags({"error": message})
        _retry(lambda: self.client.set_terminated(self.run_id, status))

    def _save_pending(self) -> None:
        import json
        from pathlib import Path

        if not self.output_dir:
            log.error("%d metric values could not be sent to MLflow and are lost", len(self.pending))
            return
        path = Path(self.output_dir) / "pending_metrics.json"
        path.write_text(json.dumps([{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                                    for m in self.pending]))
        log.error("%d metric values could not be sent to MLflow; saved to %s", len(self.pending), path)


class NullTracker:
    """RunTracker's stand-in on the non-chief workers of a multi-worker job: only the chief logs.
    It honours the whole Tracker protocol (protocol.py). With a client it reads the store as the
    chief does (so both reuse the same pretraining and stay in step); without one it finds no
    runs. A run it opens is another NullTracker."""

    run_id = None
    phase_step = 0

    def __init__(self, client=None):
        self._reader = RunTracker(client, "") if client is not None else None

    def find_runs(self, experiment_name: str, filter_string: str, max_results: int = 5) -> list:
        return self._reader.find_runs(experiment_name, filter_string, max_results) if self._reader else []

    def has_artifact(self, run_id: str, path: str) -> bool:
        return bool(self._reader) and self._reader.has_artifact(run_id, path)

    def download_artifact(self, run_id: str, path: str, folder: str) -> str:
        if not self._reader:
            raise FileNotFoundError(f"a worker without a store reads no artifacts ({path} of run {run_id})")
        return self._reader.download_artifact(run_id, path, folder)

    def open_run(self, experiment_name: str, run_name: str, tags: dict[str, str]) -> "NullTracker":
        return NullTracker(self._reader.client if self._reader else None)

    def set_tags(self, tags: dict) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def logged_epochs(self) -> int:
        return 0

    def logged_history(self) -> list:
        return []

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        plt.close(figure)

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        pass
