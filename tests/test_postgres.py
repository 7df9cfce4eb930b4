"""PostgreSQL as MLflow's tracking store and Optuna's study storage, and an MLflow tracking server on
PostgreSQL (issue 21): a missing driver refused in one line naming the `postgres` extra, a fresh
database opened by several workers at once, run names longer than MLflow's column, the database's own
refusals, and a sweep logging runs, metrics and models through the server. The tests marked `cluster`
run against a real server (tests/postgres_engine.py) and a real `mlflow server`; nothing stands in.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, SMOKE, all_runs, compose, run_cli
from postgres_engine import PASSWORD, free_port

# The CLI with psycopg unimportable, as in an environment installed without the extra.
WITHOUT_DRIVER = ("import runpy, sys; sys.modules['psycopg'] = None; sys.argv[0] = 'cifar_exp'; "
                  "runpy.run_module('cifar_exp', run_name='__main__')")
SECRET = "hunter2-secret"


def test_a_run_name_longer_than_mlflows_column_is_shortened_and_kept_whole_in_a_tag():
    from cifar_exp.tracking.databases import FULL_RUN_NAME_TAG, RUN_NAME_LENGTH, fitting_run_name

    assert fitting_run_name("x" * RUN_NAME_LENGTH) == ("x" * RUN_NAME_LENGTH, {})
    first, tags = fitting_run_name("optimizer.lr=0.1," + "y" * 300)
    second, _ = fitting_run_name("optimizer.lr=0.2," + "y" * 300)
    assert len(first) == len(second) == RUN_NAME_LENGTH
    assert first.startswith("optimizer.lr=0.1,") and first != second  # the start shows, the hash tells apart
    assert tags == {FULL_RUN_NAME_TAG: "optimizer.lr=0.1," + "y" * 300}


def test_a_user_tag_may_not_take_the_name_of_the_full_run_name_tag():
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import user_tags

    with pytest.raises(ConfigError, match="tags.full_run_name"):
        user_tags(compose([*SMOKE, "+tags.full_run_name=mine"]), {})


@pytest.mark.parametrize("key, value, allowed", [
    ("mlflow.tracking_uri", f"postgres://lab:{SECRET}@db.example/mlflow", "postgresql://user:password@host"),
    ("mlflow.experiment_name", "e" * 257, "at most 256 characters"),
])
def test_what_a_database_store_cannot_take_is_refused_before_training(key, value, allowed):
    from cifar_exp.errors import ConfigError
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError) as refused:
        validate(compose([*SMOKE, f"{key}={value}"]))
    assert refused.value.key == key and allowed in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("override", [
    f"mlflow.tracking_uri=postgresql://lab:{SECRET}@127.0.0.1:9/mlflow",
    f"hydra.sweeper.storage=postgresql://lab:{SECRET}@127.0.0.1:9/optuna",
])
def test_without_the_driver_a_postgresql_url_gets_one_line_naming_the_extra(tmp_path, override):
    args = [*SMOKE, "hparams_search=lr_optuna", "hydra.sweeper.n_trials=1", override]
    done = subprocess.run([sys.executable, "-c", WITHOUT_DRIVER, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    key = override.split("=", 1)[0]
    assert lines[0].startswith(f"Error: Invalid config: {key}='postgresql://lab:***@127.0.0.1:9/")
    assert 'pip install "cifar_exp[postgres]"' in lines[0] and SECRET not in done.stdout + done.stderr
    assert not list(tmp_path.rglob("job_status.json"))  # no trial, no job started


# ------------------------------------------------------------------- against a real PostgreSQL

OPEN_AT_ONCE = """
import json, multiprocessing, sys
import mlflow.store.tracking.sqlalchemy_store, optuna, psycopg, sqlalchemy  # imported once, before the fork
from cifar_exp.sweeps.sweeper import _optuna
from cifar_exp.tracking import runs

def open_both(barrier, results):
    barrier.wait()  # all at once, on databases no one has opened yet
    try:
        runs.connect(sys.argv[1])
        _optuna.open_storage(sys.argv[2])
        results.put("opened")
    except BaseException as error:
        results.put(f"{type(error).__name__}: {error}")

context = multiprocessing.get_context("fork")
barrier, results = context.Barrier(int(sys.argv[3])), context.Queue()
workers = [context.Process(target=open_both, args=(barrier, results)) for _ in range(int(sys.argv[3]))]
for worker in workers:
    worker.start()
print(json.dumps([results.get(timeout=240) for _ in workers]))
for worker in workers:
    worker.join()
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.cluster
@pytest.mark.slow
def test_workers_opening_a_fresh_database_at_once_create_its_tables_once(postgres_server):
    tracking = postgres_server.create_database("fresh_mlflow")
    storage = postgres_server.create_database("fresh_optuna")
    done = python(OPEN_AT_ONCE, tracking, storage, "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["opened"] * 3, done.stderr[-3000:]
    for database, table in (("fresh_mlflow", "experiments"), ("fresh_optuna", "studies")):
        assert postgres_server.sql("SELECT count(*) FROM alembic_version", database) == "1"
        assert postgres_server.sql(f"SELECT to_regclass('{table}') IS NOT NULL", database) == "t"


STORE_REFUSALS = """
import json, sys
import psycopg
from cifar_exp.errors import ConfigError
from cifar_exp.sweeps.sweeper import _optuna
from cifar_exp.tracking import runs

url, long_name = sys.argv[1], sys.argv[2]
client = runs.connect(url)
tracker = runs.RunTracker.start(client, "names", long_name, {"purpose": "test"})
tracker.finish()
run = client.get_run(tracker.run_id)
seen = {"name": run.info.run_name, "status": run.info.status, "tags": run.data.tags}
with psycopg.connect(url, autocommit=True) as connection:  # the role may read runs, not add them
    connection.execute("REVOKE INSERT ON runs FROM CURRENT_USER")
try:
    runs.RunTracker.start(client, "names", "refused", {})
except Exception as error:
    seen["refused"] = str(runs.refused(error, url))
try:
    _optuna.open_storage(url)
except ConfigError as error:
    seen["optuna_in_mlflows_database"] = str(error)
print(json.dumps(seen))
"""


@pytest.mark.cluster
@pytest.mark.slow
def test_the_database_takes_long_run_names_and_its_refusals_are_reported_as_it_says_them(postgres_server):
    url = postgres_server.create_database("refusals")
    long_name = ",".join(f"model.layer_{i}.filters={i * 16}" for i in range(12))  # 323 characters
    done = python(STORE_REFUSALS, url, long_name)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["status"] == "FINISHED" and len(seen["name"]) == 250 and long_name.startswith(seen["name"][:237])
    assert seen["tags"]["full_run_name"] == long_name and seen["tags"]["purpose"] == "test"
    # The database's own words, not SQLAlchemy's advice about autoflush it puts first.
    assert "permission denied for table runs" in seen["refused"] and "autoflush" not in seen["refused"]
    assert "***" in seen["refused"] and postgres_server.url("refusals") not in seen["refused"]
    assert "hydra.sweeper.storage" in seen["optuna_in_mlflows_database"]
    assert "holds MLflow's tables" in seen["optuna_in_mlflows_database"]


@pytest.fixture
def tracking_server(postgres_server, tmp_path):
    """`mlflow server` on a PostgreSQL database with an artifact destination, as docs/scaling-out.md
    starts it (the store's URL through the environment); its URL and artifact folder."""
    artifacts, port = tmp_path / "mlartifacts", free_port()
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=postgres_server.create_database("tracking_server"),
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # its GenAI job runner: 7 more processes, unused
    log = open(tmp_path / "mlflow_server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--artifacts-destination", str(artifacts), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # its start imports MLflow's server and creates the tables
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)  # not listening yet
        else:
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow_server.log').read_text()[-3000:]}")
        yield url, artifacts
    finally:  # the server and its uvicorn process, a session of their own
        for stop, grace_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(server.pid, stop)
                server.wait(timeout=grace_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        log.close()


@pytest.mark.cluster
@pytest.mark.slow
def test_a_sweep_logs_runs_metrics_and_models_through_an_mlflow_server_on_postgresql(
        postgres_server, tracking_server, tmp_path):
    import mlflow.artifacts
    import optuna

    url, artifacts = tracking_server
    storage = postgres_server.create_database("study")
    long_name = "lenet on synthetic images " * 12  # 312 characters
    done = run_cli([*SMOKE, "trainer.epochs=1", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.seed=0", "optimizer.lr=tag(log, interval(1e-4, 1e-2))",  # no diverging trial
                    "hydra.sweeper.storage=${oc.env:OPTUNA_STORAGE}", f"mlflow.tracking_uri={url}",
                    "mlflow.log_model=true", "mlflow.experiment_name=scale_out", f"mlflow.run_name='{long_name}'"],
                   cwd=tmp_path, env={"OPTUNA_STORAGE": storage})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Sweep summary: 2 finished, 0 failed" in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr  # the storage URL's, masked in all the sweep prints

    _, runs = all_runs(url)
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    study = optuna.load_study(study_name="lr_optuna", storage=storage)
    assert sorted(t.user_attrs["mlflow_run_id"] for t in study.trials) == sorted(r.info.run_id for r in runs)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for run in runs:
        assert len(run.info.run_name) == 250 and run.data.tags["full_run_name"] == long_name
        assert {"val_accuracy", "test_accuracy", "loss"} <= set(run.data.metrics)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored through the server
        model = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model.keras",
                                                         dst_path=str(tmp_path / run.info.run_id), tracking_uri=url))
        assert zipfile.is_zipfile(model)  # a Keras 3 archive, downloaded through the server
        assert list(artifacts.rglob(f"{run.info.run_id}/artifacts/model.keras"))  # in the artifact destination


def test_a_direct_client_is_refused_an_experiment_whose_artifacts_an_mlflow_server_keeps(tmp_path):
    """An experiment created through `mlflow server --artifacts-destination` stores its artifacts at
    mlflow-artifacts:/ URIs; a job talking to the database itself would train, then fail at its first
    artifact. Refused when the experiment is opened, naming the way out. (A real sqlite store; the
    experiment is given the location such a server gives.)"""
    from mlflow.tracking import MlflowClient

    from cifar_exp.errors import ConfigError
    from cifar_exp.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("served", artifact_location="mlflow-artifacts:/1")
    client = runs.connect(uri)
    with pytest.raises(ConfigError) as refused:
        runs.experiment_id(client, "served")
    assert "mlflow.tracking_uri" in str(refused.value) and "another mlflow.experiment_name" in str(refused.value)
    assert runs.experiment_id(client, "direct")  # an experiment of its own is fine
