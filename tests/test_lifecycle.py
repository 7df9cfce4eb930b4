"""A run's lifecycle across processes: one process per job folder and per sweep folder, runs left
RUNNING by a process that is gone closed KILLED (by the next command, by `cifar-exp reap`, by the
joblib launcher when a worker dies), one list of the keys that compute nothing, and one Tracker
protocol that every tracker honours. Faults are real: real processes, real SIGKILL, real flocks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SMOKE, all_runs, compose, run_cli, tracking_uri

ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def _holder(folder: Path) -> subprocess.Popen:
    """A real process holding `folder`'s lock (as a job or a sweep in it would) until killed."""
    code = ("import sys; from cifar_exp.tracking.lifecycle import FolderLock; "
            "lock = FolderLock(sys.argv[1], 'hydra.run.dir'); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


# --- one process per folder ------------------------------------------------------------------

def test_a_folder_lock_is_exclusive_and_a_killed_holder_holds_nothing(tmp_path):
    from cifar_exp.errors import ConfigError
    from cifar_exp.tracking.lifecycle import FolderLock

    holder = _holder(tmp_path)
    with pytest.raises(ConfigError, match=f"process {holder.pid} on"):
        FolderLock(str(tmp_path), "hydra.run.dir")
    holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
    holder.wait()
    FolderLock(str(tmp_path), "hydra.run.dir").release()


@pytest.mark.slow
def test_a_second_run_in_a_busy_job_folder_is_refused_in_one_line_before_hydra_writes_or_a_run_opens(tmp_path):
    # issue 20: both finished the same MLflow run; later, Hydra wrote the refused run's .hydra files
    # over the first job's.
    uri = tracking_uri(tmp_path)
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (folder / ".hydra" / name).write_text("the first job's\n")
    holder = _holder(folder)
    try:
        result = run_cli([*SMOKE, "seed=7", f"mlflow.tracking_uri={uri}", f"hydra.run.dir={folder}"], cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    line = _one_error_line(result)
    assert line.startswith(f"Error: Invalid config: hydra.run.dir='{folder}'") and f"process {holder.pid}" in line
    assert all_runs(uri)[1] == []  # refused before a run opened: nothing can be logged twice
    assert not (folder / "job_status.json").exists()
    assert {p.name: p.read_text() for p in (folder / ".hydra").iterdir()} == {
        name: "the first job's\n" for name in ("config.yaml", "overrides.yaml", "hydra.yaml")}


@pytest.mark.slow
def test_a_second_sweep_in_a_busy_sweep_folder_is_refused_before_anything_trains(tmp_path):
    uri = tracking_uri(tmp_path)
    folder = tmp_path / "sweep"
    holder = _holder(folder)
    try:
        result = run_cli([*SMOKE, "init=he_normal,zeros", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder}",
                          "--multirun"], cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "hydra.sweep.dir" in line and str(folder) in line
    assert all_runs(uri)[1] == [] and not list(folder.glob("*/job_status.json"))
    assert not (folder / "sweep_id").exists()  # the running sweep's id is left as it is


# --- runs whose process is gone ----------------------------------------------------------------

def _orphan_run(uri: str, tags: str = "{}") -> str:
    """A run opened by a real process that then dies by SIGKILL without closing it; its id."""
    code = ("import os, sys, json; from cifar_exp.tracking import runs; "
            "t = runs.RunTracker.start(runs.connect(sys.argv[1]), 'cifar_exp', 'orphan', json.loads(sys.argv[2])); "
            "t.log_metrics({'loss': 1.0}, step=1); print(t.run_id, flush=True); "
            "os.kill(os.getpid(), 9)")
    result = subprocess.run([sys.executable, "-c", code, uri, tags], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.slow
def test_reap_closes_killed_the_runs_of_dead_processes_and_leaves_live_ones(tmp_path):
    from cifar_exp.tracking import runs as tracking

    uri = tracking_uri(tmp_path)
    dead = _orphan_run(uri)
    live = tracking.RunTracker.start(tracking.connect(uri), "cifar_exp", "alive", {}).run_id  # owned by this process
    result = subprocess.run([sys.executable, "-m", "cifar_exp", "reap", "--store", uri], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Reaped 1 run(s)" in result.stdout and dead in result.stdout
    client, runs = all_runs(uri)
    status = {r.info.run_id: r for r in runs}
    assert status[dead].info.status == "KILLED" and status[live].info.status == "RUNNING"
    assert "ended without closing" in status[dead].data.tags["ended_by"]
    assert [m.step for m in client.get_metric_history(dead, "loss")] == [1]  # nothing logged is lost


@pytest.mark.slow
def test_reap_tells_each_closed_run_once_and_how_to_resume_one_with_a_checkpoint(tmp_path):
    # issue 20: the same command in a new default folder starts a NEW run; the line must say what resumes.
    uri = tracking_uri(tmp_path)
    folder = tmp_path / "job"
    (folder / "checkpoint" / "abc123").mkdir(parents=True)
    (folder / "checkpoint" / "abc123" / "training_metadata.json").write_text('{"epoch": 0}')
    dead = _orphan_run(uri, json.dumps({"output_dir": str(folder), "config_hash": "abc123"}))
    result = subprocess.run([sys.executable, "-m", "cifar_exp", "reap", "--store", uri], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    lines = [line for line in out.splitlines() if dead in line]
    assert len(lines) == 1, out  # told once, not as a log line and again as 'KILLED: run ...'
    line = lines[0]
    assert "closed KILLED" in line and f"resume={dead}" in line and f"hydra.run.dir={folder}" in line


@pytest.mark.slow
def test_the_next_run_of_a_job_killed_by_sigkill_closes_its_run_killed_then_resumes_it(tmp_path):
    uri = tracking_uri(tmp_path)
    folder = tmp_path / "run"
    args = [*SMOKE, "dataset.train_size=4096", f"mlflow.tracking_uri={uri}",
            f"hydra.run.dir={folder}"]
    job = subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=tmp_path, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while (time.time() < deadline and job.poll() is None
           and not list(folder.glob("checkpoint/*/training_metadata.json"))):
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed"
    job.kill()  # kill -9: the job closes nothing
    job.wait()
    _, runs = all_runs(uri)
    assert [r.info.status for r in runs] == ["RUNNING"]
    killed = runs[0].info.run_id

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"run {killed} closed KILLED" in log and f"resuming run {killed}" in log
    client, runs = all_runs(uri)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed, "FINISHED")]
    assert "ended_by" not in runs[0].data.tags  # it ended FINISHED after all
    assert sorted(m.step for m in client.get_metric_history(killed, "loss")) == [1, 2]  # each step once
    assert f"resume={killed}" not in log  # this job resumes it: no advice to do so
    # The resuming process's phase figures go at a step of their own (issue 20: time/setup twice at 0).
    assert sorted(m.step for m in client.get_metric_history(killed, "time/setup")) == [0, 1]
    for key in [k for k in runs[0].data.metrics if k.startswith(("time/", "memory/"))]:
        steps = [m.step for m in client.get_metric_history(killed, key)]
        assert len(steps) == len(set(steps)), (key, steps)


# --- a killed joblib worker ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_joblib_worker_loses_only_its_job_which_ends_killed_and_is_listed(tmp_path):
    uri = tracking_uri(tmp_path)
    sweep_dir = tmp_path / "sweep"
    # Job 0 trains long enough to be killed; jobs 1 and 2 are short, job 2 starts only after one ends.
    args = [*SMOKE, "dataset.train_size=8192,512,256", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={sweep_dir}", "--multirun"]
    sweep = subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=tmp_path, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = sweep_dir / "0" / "job_status.json"
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None and not list(
            (sweep_dir / "0").glob("checkpoint/*/training_metadata.json")):
        time.sleep(0.05)
    assert sweep.poll() is None, "the sweep ended before its worker could be killed"
    worker = int(json.loads(status.read_text())["owner"]["owner.pid"])
    assert worker != sweep.pid
    os.kill(worker, signal.SIGKILL)  # as the OOM killer does
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, err[-3000:]
    assert "Sweep summary: 2 finished, 0 failed, 1 stopped" in out
    listed = [line for line in out.splitlines() if line.startswith("  KILLED:")]
    assert len(listed) == 1 and "dataset.train_size=8192" in listed[0] and "killed by SIGKILL" in listed[0]
    client, runs = all_runs(uri)
    by_size = {r.data.params["dataset.train_size"]: r for r in runs}
    assert {size: r.info.status for size, r in by_size.items()} == {"8192": "KILLED", "512": "FINISHED",
                                                                   "256": "FINISHED"}
    assert "killed by SIGKILL" in by_size["8192"].data.tags["ended_by"]
    for size in ("512", "256"):
        assert sorted(m.step for m in client.get_metric_history(by_size[size].info.run_id, "loss")) == [1, 2]


# --- keys that compute nothing -------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["+tags.owner=ana", "trainer.gpu_memory=grow", "trainer.verbose=0",
                                   "mlflow.experiment_name=other", "trainer.compile_cache=null"])
def test_keys_that_compute_nothing_change_neither_hash_nor_study_settings_nor_run_name(extra):
    from cifar_exp.job import JobContext, config_hash, run_name
    from cifar_exp.overrides import is_inert
    from cifar_exp.sweeps.sweeper._optuna import SearchSpace, settings_change, study_settings

    base = ["dataset=synthetic", "model=lenet"]
    assert is_inert(extra)
    assert config_hash(compose(base)) == config_hash(compose([*base, extra]))
    assert run_name(compose([*base, extra]), JobContext(overrides=[*base, extra])) == \
        run_name(compose(base), JobContext(overrides=base))
    old = study_settings(SearchSpace({}, {}, base), "maximize", "test_accuracy", None)
    new = study_settings(SearchSpace({}, {}, [*base, extra]), "maximize", "test_accuracy", None)
    assert settings_change(old, new) is None


def test_keys_that_compute_something_are_not_inert():
    from cifar_exp.overrides import is_inert

    assert is_inert("override hydra/launcher=joblib") and is_inert("hydra.sweep.dir=x")
    for key in ("trainer.epochs=3", "optimizer.lr=0.1", "model=lenet", "trainer.tta=true", "seed=1",
                "trainer.gpu_memoryx=1", "tagsx=1"):
        assert not is_inert(key), key


# --- the Tracker protocol --------------------------------------------------------------------------

def test_every_tracker_honours_the_whole_protocol():
    from cifar_exp.tasks.transfer import find_pretraining
    from cifar_exp.tracking.protocol import Tracker
    from cifar_exp.tracking.runs import NullTracker, RunTracker

    names = [n for n in dir(Tracker) if not n.startswith("_")]
    for tracker in (NullTracker, RunTracker):
        missing = [n for n in names if n != "run_id" and not callable(getattr(tracker, n, None))]
        assert not missing, (tracker, missing)
    null = NullTracker()
    assert isinstance(null, Tracker) and isinstance(null.open_run("e", "n", {}), Tracker)
    # A non-chief worker of a pretrained transfer job asks its tracker for the pretraining (it had no `.client`).
    assert find_pretraining(null, "cifar_exp", "0123456789abcdef") is None


def test_a_record_left_running_by_a_dead_process_counts_as_killed_in_the_summary(tmp_path, capsys):
    from cifar_exp.sweeps.summary import summarize

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a real process, gone
    for num, (status, pid) in enumerate([("FINISHED", os.getpid()), ("RUNNING", dead.pid)]):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "job_status.json").write_text(json.dumps({
            "status": status, "run_id": None, "value": None, "skipped": False, "overrides": [f"seed={num}"],
            "error": None, "hint": None, "outcome": None,
            "owner": {"owner.host": os.uname().nodename, "owner.pid": str(pid), "owner.start": ""}}))
    assert summarize(str(tmp_path)) is False
    out = capsys.readouterr().out
    assert "1 finished, 0 failed, 1 stopped" in out and "KILLED: seed=1" in out


def test_the_workers_of_a_multi_worker_job_share_the_chiefs_locked_folder(tmp_path, monkeypatch):
    from cifar_exp.errors import ConfigError
    from cifar_exp.job import JobContext, run_job

    holder = _holder(tmp_path)  # the chief, working in the job folder
    try:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                    "task": {"type": "worker", "index": 1}}))
        cfg = compose(["dataset=synthetic", "trainer.strategy=multi_worker", "trainer.epochs=0"])
        # A non-chief worker gets past the chief's lock, to the check of its own config.
        with pytest.raises(ConfigError, match="trainer.epochs"):
            run_job(cfg, JobContext(output_dir=str(tmp_path)))
    finally:
        holder.kill()
        holder.wait()
