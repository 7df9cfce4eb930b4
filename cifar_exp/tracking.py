"""MLflow for one job: start a run, log params/tags/metrics/artifacts, always close it.

Uses MlflowClient (not the fluent API) so jobs of one multirun process never share an
"active run", and retries writes that a busy store refuses (sqlite under parallel jobs).
"""
from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager

from cifar_exp.errors import ConfigError

_PASSWORD_IN_URL = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/\s:@]+:)(?P<secret>[^@\s/]+)(?P<tail>@)")
PARAM_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def mask_secrets(text: str) -> str:
    """Hide the password of any URL such as postgresql://user:secret@host/db."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", str(text))


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


def connect(tracking_uri: str):
    """An MlflowClient that has answered once, or a ConfigError saying why not."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///"):])) or "."
        if not os.path.isdir(folder):
            raise ConfigError("mlflow.tracking_uri", mask_secrets(tracking_uri),
                              f"a sqlite:/// path in an existing folder ({folder} does not exist)")
    client = MlflowClient(tracking_uri)
    try:
        with _quick_http_failure():
            client.search_experiments(max_results=1)
    except Exception as error:
        raise ConfigError("mlflow.tracking_uri", mask_secrets(tracking_uri),
                          "a reachable MLflow tracking store (sqlite:///file.db, a folder, or "
                          "http://host:port of a running `mlflow server`); it failed with: "
                          f"{mask_secrets(str(error).splitlines()[0] if str(error) else type(error).__name__)}") from None
    return client


class RunTracker:
    """One MLflow run; everything a job logs goes through here."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def start(cls, client, experiment_name: str, run_name: str, tags: dict[str, str]):
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(experiment_name)
            except MlflowException:  # a parallel job created it first
                experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = _retry(lambda: client.create_run(experiment_id, run_name=run_name,
                                               tags={k: mask_secrets(v) for k, v in tags.items()}))
        return cls(client, run.info.run_id)

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
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=items))

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
        if error is not None:
            message = mask_secrets(f"{type(error).__name__}: {error}")[:5000]
            self.set_tags({"error": message})
        _retry(lambda: self.client.set_terminated(self.run_id, status))
