"""Shared helpers: compose configs without running Hydra, and run the CLI in a subprocess."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from postgres_engine import postgres_server  # noqa: F401 (a session fixture: a throwaway PostgreSQL server)

from slurm_cluster import slurm_cluster, stop_if_started_by  # noqa: F401  (the `cluster` tests' Slurm fixture)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "cifar_exp" / "conf"

# A job that trains in seconds on a laptop CPU: LeNet on small synthetic images.
SMOKE = [
    "dataset=synthetic", "dataset.image_shape=[28,28,1]", "dataset.train_size=512", "dataset.test_size=128",
    "model=lenet", "optimizer=adam", "lr_schedule=constant", "init=he_normal",
    "trainer.epochs=2", "trainer.batch_size=32", "trainer.verbose=2",
]


def pytest_configure(config):
    # Under pytest-xdist (`-n N`): one id for this run, set by the controller before it starts the
    # workers (they inherit it), so the Slurm cluster a worker starts is stopped once, by the
    # controller, after all workers finished (slurm_cluster.py).
    if not hasattr(config, "workerinput"):
        os.environ.setdefault("CIFAR_EXP_TEST_RUN", f"{os.getpid()}-{uuid.uuid4().hex}")


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput") and os.environ.get("CIFAR_EXP_TEST_RUN"):
        stop_if_started_by(os.environ["CIFAR_EXP_TEST_RUN"])


def compose(overrides=()):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def default_stop_signals() -> None:
    """`preexec_fn` for a child process a test stops with a signal: SIGINT, SIGTERM and SIGHUP at their
    defaults, whatever the test run inherited (a background job ignores SIGINT, `nohup` SIGHUP, and an
    ignored signal stays ignored across exec)."""
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, signal.SIG_DFL)


def run_cli(args, cwd, timeout=600, env=None):
    """`python -m cifar_exp ARGS` in `cwd`; returns the CompletedProcess (never raises)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cifar_exp", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def stop_after_epochs(epochs: int):
    """A Keras callback (placed after the checkpoint) that interrupts training once `epochs` finished."""
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise KeyboardInterrupt(f"interrupted after epoch {epochs}")

    return Stop()


def tracking_uri(tmp_path, new: bool = False) -> str:
    """The sqlite URI of `tmp_path`/mlflow.db, a store that already holds MLflow's tables: a copy of
    one empty store made once per session, since creating a store costs seconds of schema
    migrations (3 s on the dev VM, benchmarks/README.md figure 1) in every test's first process.
    `new=True`: no file, for the tests of what creates a store (or must not)."""
    path = tmp_path / "mlflow.db"
    if not new and not path.exists():
        shutil.copyfile(_empty_store(), path)
    return f"sqlite:///{path}"


@functools.cache
def _empty_store() -> Path:
    # Made in a subprocess: the test process itself must not import MLflow (tests check what it imports).
    path = Path(tempfile.mkdtemp(prefix="cifar_exp_empty_store_")) / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments(max_results=1)", f"sqlite:///{path}"],
                   check=True, capture_output=True, timeout=300)
    return path


def all_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    if not experiments:
        return client, []
    return client, client.search_runs([e.experiment_id for e in experiments], max_results=1000)


@pytest.fixture
def fake_tracker():
    class FakeTracker:
        run_id = "fake"

        def __init__(self):
            self.metrics, self.tags, self.artifacts = [], {}, []

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

        def set_tags(self, tags):
            self.tags.update(tags)

        def logged_epochs(self):
            return max((step for step, metrics in self.metrics if "loss" in metrics), default=0)

        def logged_history(self):
            steps = {}
            for step, metrics in self.metrics:
                steps.setdefault(step, {}).update(metrics)
            return [steps.get(step, {}) for step in range(1, self.logged_epochs() + 1)]

        def log_params(self, params):
            pass

        def log_artifact(self, path, artifact_path=None):
            self.artifacts.append(Path(path).name)

        def log_figure(self, figure, artifact_file):
            self.artifacts.append(artifact_file)

        def log_text(self, text, artifact_file):
            self.artifacts.append(artifact_file)

    return FakeTracker()


class lazy:
    """A module imported at its first attribute access (`keras = lazy("keras")`), so that collecting
    the tests imports no Keras or TensorFlow: only the tests that use it pay for the import."""

    def __init__(self, name: str):
        self._lazy_name = name

    def __getattr__(self, attr):
        import importlib

        if attr.startswith("_") or attr.startswith("pytest"):  # pytest's probes while collecting
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._lazy_name), attr)
