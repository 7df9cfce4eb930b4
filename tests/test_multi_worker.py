"""trainer.strategy=multi_worker: which process is the chief, and two CPU workers on localhost that
train together, end with identical weights, and leave exactly one MLflow run (the chief's)."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE, all_runs, compose, tracking_uri
from cifar_exp.errors import ConfigError
from cifar_exp.training.distribute import is_chief


def _tf_config(task_type, index, chief=False):
    cluster = {"worker": ["localhost:1", "localhost:2"], **({"chief": ["localhost:0"]} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize("env,chief", [
    ({}, True),                                                     # one process: it logs
    ({"TF_CONFIG": _tf_config("worker", 0)}, True),                 # no chief named: worker 0 is it
    ({"TF_CONFIG": _tf_config("worker", 1)}, False),
    ({"TF_CONFIG": _tf_config("chief", 0, chief=True)}, True),
    ({"TF_CONFIG": _tf_config("worker", 0, chief=True)}, False),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}, True),     # a SLURM step without TF_CONFIG
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, False),
])
def test_the_chief_is_the_one_process_that_logs(monkeypatch, env, chief):
    for key in ("TF_CONFIG", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_chief("multi_worker") is chief
    assert is_chief("auto") is True  # other strategies: one process, always logging


def test_malformed_tf_config_is_reported_as_such(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: oops")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        is_chief("multi_worker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_each_non_chief_worker_checkpoints_into_a_folder_of_its_own(monkeypatch, tmp_path):
    from cifar_exp.training import checkpoints
    from cifar_exp.training.distribute import worker_name

    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    chief, worker = checkpoints.folder(str(tmp_path), "abc"), checkpoints.worker_folder(str(tmp_path), "abc",
                                                                                        worker_name())
    assert worker == f"{chief}.worker1"  # beside the chief's, not in it: Keras removes that one after training
    for folder in (chief, worker):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "checkpoint" / "other").mkdir()
    assert checkpoints.others(str(tmp_path), "abc") == [str(tmp_path / "checkpoint" / "other")]  # not another config


@pytest.mark.slow
def test_two_workers_train_together_to_identical_weights_and_one_mlflow_run(tmp_path):
    """As on Slurm (one job, one folder): both workers write in one output folder, each with its own tag."""
    uri = tracking_uri(tmp_path)
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "cifar_exp", *SMOKE, "trainer.strategy=multi_worker", f"mlflow.tracking_uri={uri}",
             f"hydra.run.dir={tmp_path}/job", f"+tags.worker={index}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert "2 replicas in sync" in output
    digests = [re.findall(r"final weights sha256 ([0-9a-f]{64})", output) for output in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1]
    _, runs = all_runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["weights_sha256"] == digests[0][0]
    assert runs[0].data.metrics["test_accuracy"] > 0.2  # they learnt, together
    assert runs[0].data.tags["worker"] == "0"  # the chief's: the other worker opened no run
    status = json.loads((tmp_path / "job" / "job_status.json").read_text())
    assert status["status"] == "FINISHED" and status["run_id"] == runs[0].info.run_id  # the chief's record


def test_without_tf_config_a_slurm_step_describes_the_cluster(monkeypatch):
    from cifar_exp.training.distribute import cluster_resolver

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert cluster_resolver() is None  # one task: a single worker
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    assert cluster_resolver() is None  # TF_CONFIG wins
    monkeypatch.delenv("TF_CONFIG")
    for key, value in {"SLURM_PROCID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]",
                       "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(key, value)
    resolver = cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["gpu07:8888", "gpu08:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert is_chief("multi_worker") is False


def test_a_multi_worker_job_resumes_a_killed_run_only_in_its_own_folder(monkeypatch, tmp_path):
    """A re-run of a sweep in a new folder: one process may resume the killed run from its old folder's
    checkpoint, but the other workers read theirs from this job's folder (none there): a multi-worker
    chief starts a new run instead of training against workers that start from scratch."""
    from mlflow.tracking import MlflowClient

    from cifar_exp import job
    from cifar_exp.training import checkpoints

    for variable in ("TF_CONFIG", "SLURM_STEP_NUM_TASKS"):  # one process, wherever the tests run
        monkeypatch.delenv(variable, raising=False)
    client = MlflowClient(tracking_uri(tmp_path))
    old_folder, new_folder = tmp_path / "sweep_a" / "0", tmp_path / "sweep_b" / "0"
    (Path(checkpoints.folder(str(old_folder), "abc"))).mkdir(parents=True)
    experiment = client.create_experiment("cifar_exp")
    killed = client.create_run(experiment, tags={"config_hash": "abc", "output_dir": str(old_folder)})
    client.set_terminated(killed.info.run_id, "KILLED")
    earlier = [client.get_run(killed.info.run_id)]
    context = job.JobContext(output_dir=str(new_folder), multirun=True)

    one_process = compose(["trainer.strategy=multi_worker"])
    assert job.run_to_resume(one_process, context, client, "abc", earlier)[0].info.run_id == killed.info.run_id
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 0))  # the chief of two workers
    assert job.run_to_resume(one_process, context, client, "abc", earlier) is None
    named = compose(["trainer.strategy=multi_worker", f"resume={killed.info.run_id}"])
    with pytest.raises(ConfigError, match="multi-worker job resumes only"):
        job.run_to_resume(named, context, client, "abc", earlier)
    same_folder = job.JobContext(output_dir=str(old_folder), multirun=True)  # a requeue, or the same sweep folder
    assert job.run_to_resume(one_process, same_folder, client, "abc", earlier)[0].info.run_id == killed.info.run_id


def test_a_non_chief_workers_lines_go_to_a_log_file_of_its_own(tmp_path):
    """The workers of a Slurm job share its folder: Hydra's main.log stays the chief's."""
    import logging

    from cifar_exp import job

    handler = logging.FileHandler(tmp_path / "main.log")  # as Hydra's job logging sets it up (mode "a")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logging.getLogger("cifar_exp.test").warning("before")
        job._log_to_own_file(str(tmp_path), "worker1")
        logging.getLogger("cifar_exp.test").warning("after")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert "before" in (tmp_path / "main.log").read_text() and "after" not in (tmp_path / "main.log").read_text()
    assert (tmp_path / "main.worker1.log").read_text().strip() == "after"
