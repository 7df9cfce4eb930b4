"""trainer.strategy=multi_worker: which process is the chief, and two CPU workers on localhost that
train together, end with identical weights, and leave exactly one MLflow run (the chief's)."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import SMOKE, all_runs, tracking_uri
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
