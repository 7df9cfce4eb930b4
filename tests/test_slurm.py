"""Sweeps on a real single-node Slurm (tests/slurm_cluster.py) through `hydra/launcher=submitit_slurm`:
what `scancel`, a requeue and a time limit leave in MLflow, in the sweep's summary and in the queue.

The time-limited sweep is started first and runs beside the other test's sweep (a 2-minute limit
is the shortest Slurm signals reliably before; CI's time budget)."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import CONF, SMOKE, tracking_uri
from cifar_exp.signals import Stopped

BASE = [arg for arg in SMOKE if not arg.startswith("trainer.epochs=")]
# Under pytest-xdist (--dist loadgroup) these tests share one worker: the module's time-limited sweep
# is started once and runs beside the cancel/requeue test, as on one process.
pytestmark = pytest.mark.xdist_group("slurm")


def _sweep(tmp_path, env, name, *overrides, uri=None):
    """The CLI's multirun on Slurm, in the background; its own MLflow store in tmp_path (or `uri`)."""
    full_env = dict(env, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    uri = uri or tracking_uri(tmp_path)
    args = ["-m", *BASE, *overrides, "hydra/launcher=submitit_slurm", f"hydra.launcher.name={name}",
            "hydra.launcher.cpus_per_task=1", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"]
    head = subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=tmp_path, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return head, uri


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments) if experiments else []


def _epochs(uri, job_num):
    """Epochs the run of sweep job `job_num` recorded (0 before it opened)."""
    client, runs = _runs(uri)
    mine = [run for run in runs if run.data.tags.get("job_num") == str(job_num)]
    return len(client.get_metric_history(mine[0].info.run_id, "loss")) if mine else 0


def _until(condition, what, head, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            raise AssertionError(f"{what}: not seen; the sweep said:\n{head.communicate()[0][-4000:]}")
        time.sleep(1)  # polling the store, not a timing assertion


def _slurm_job(env, name, job_num):
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %K"], env=env, capture_output=True, text=True)
    ids = [line.split()[0] for line in out.stdout.splitlines() if line.split()[1:] == [str(job_num)]]
    assert ids, out.stdout
    return ids[0]


def _queue_drains(env, name, timeout=120) -> str:
    """What Slurm still lists of the sweep `name` once it has had `timeout` s to let its jobs exit (a job
    hands its result over before its process has exited); "" as soon as nothing is listed."""
    deadline = time.monotonic() + timeout
    while True:
        listed = subprocess.run(["squeue", "-h", "-n", name], env=env, capture_output=True, text=True).stdout.strip()
        if not listed or time.monotonic() > deadline:
            return listed
        time.sleep(1)


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_slurm' is validated")  # cifar_exp/__init__.py's filter
def test_the_launcher_defaults_fit_a_one_minute_limit_and_requeue():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        launcher = compose("config", ["hydra/launcher=submitit_slurm"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.cifar_exp_submitit_launcher.")
    # Slurm checks limits about every 30 s: a warning due later than that before a 1-minute limit
    # can arrive while Python starts (and kill it) or together with the limit's SIGTERM.
    assert 0 < launcher.signal_delay_s <= 30
    assert launcher.max_num_timeout > 0  # jobs resume from their checkpoints: requeue them


def test_a_stop_without_a_checkpoint_to_resume_is_not_requeued_and_says_why():
    stopped = Stopped(signal.SIGUSR2, "Slurm time limit: requeued, resumes from its checkpoint in this run", True)
    stopped.cannot_resume("trainer.checkpoint=false")
    assert not stopped.requeue
    assert str(stopped) == "SIGUSR2 (Slurm time limit: not requeued (trainer.checkpoint=false))"


@pytest.fixture(scope="module")
def time_limited_sweep(slurm_cluster, tmp_path_factory):
    """A one-job sweep that outlives its 2-minute limit, without requeue (max_num_timeout=0)."""
    tmp_path = tmp_path_factory.mktemp("time_limit")
    head, uri = _sweep(tmp_path, slurm_cluster, "cifar_exp_test_limit", "trainer.epochs=100000",
                       "hydra.launcher.timeout_min=2", "hydra.launcher.max_num_timeout=0")
    yield head, uri
    head.kill()


@pytest.mark.slow
@pytest.mark.cluster
def test_scancel_kills_one_jobs_run_the_sweep_goes_on_and_a_requeued_job_resumes_in_its_run(
        slurm_cluster, time_limited_sweep, tmp_path):
    env, name = slurm_cluster, "cifar_exp_test_cancel"
    head, uri = _sweep(tmp_path, env, name, "trainer.epochs=100000,20")
    try:
        # The first job (the one whose loss made Hydra's launcher give up on the rest): scancel'ed.
        _until(lambda: _epochs(uri, 0) >= 2, "job 0 training", head)
        subprocess.run(["scancel", _slurm_job(env, name, 0)], env=env, check=True)
        # The second: Slurm's warning signal (as before a preemption): it is requeued and resumes.
        _until(lambda: _epochs(uri, 1) >= 2, "job 1 training", head)
        subprocess.run(["scancel", "--signal=USR2", _slurm_job(env, name, 1)], env=env, check=True)
        output = head.communicate(timeout=400)[0]
    finally:
        head.kill()
    assert "Sweep summary: 1 finished, 0 failed, 1 stopped" in output, output[-4000:]
    assert head.returncode == 1  # a job did not finish
    assert _queue_drains(env, name) == ""  # nothing left behind in Slurm
    client, runs = _runs(uri)
    by_job = {}
    for run in runs:
        by_job.setdefault(run.data.tags["job_num"], []).append(run)
    assert sorted(by_job) == ["0", "1"] and all(len(each) == 1 for each in by_job.values())
    cancelled, requeued = by_job["0"][0], by_job["1"][0]
    assert cancelled.info.status == "KILLED" and "SIGTERM" in cancelled.data.tags["error"]
    assert requeued.info.status == "FINISHED" and "error" not in requeued.data.tags
    steps = [m.step for m in client.get_metric_history(requeued.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 21))  # every epoch once: resumed, nothing logged twice
    log = (tmp_path / "sweep" / "1" / "main.log").read_text()
    assert f"resuming run {requeued.info.run_id}" in log


@pytest.mark.slow
@pytest.mark.cluster
def test_a_time_limit_without_requeue_leaves_the_run_killed_saying_time_limit(slurm_cluster, time_limited_sweep):
    head, uri = time_limited_sweep
    output = head.communicate(timeout=400)[0]
    assert "Sweep summary: 0 finished, 0 failed, 1 stopped" in output, output[-4000:]
    assert _queue_drains(slurm_cluster, "cifar_exp_test_limit") == ""
    _, runs = _runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "KILLED", output[-4000:]
    assert "Slurm time limit: not requeued" in runs[0].data.tags["error"]
    assert "SIGUSR2" in runs[0].data.tags["error"]


@pytest.mark.slow
@pytest.mark.cluster
def test_scancel_of_a_multi_worker_job_leaves_its_run_killed_and_the_sweep_summary(slurm_cluster, tmp_path):
    """Two tasks of one Slurm job train one model (MultiWorkerMirroredStrategy): TensorFlow's multi-worker
    runtime catches SIGTERM itself, so cifar_exp's handler never runs and Slurm SIGKILLs the workers after
    KillWait; the launcher closes the chief's run KILLED from the job's Slurm state."""
    env, name = slurm_cluster, "cifar_exp_test_workers"
    head, uri = _sweep(tmp_path, env, name, "trainer.epochs=100000", "hydra.launcher.tasks_per_node=2",
                       "trainer.strategy=multi_worker")
    try:
        _until(lambda: _epochs(uri, 0) >= 1, "the chief's first epoch", head)
        subprocess.run(["scancel", "-n", name], env=env, check=True)  # a one-job sweep: not an array
        output = head.communicate(timeout=300)[0]
    except BaseException:
        subprocess.run(["scancel", "-n", name], env=env)  # leave no job behind for the next tests
        raise
    finally:
        head.kill()
    assert "Sweep summary: 0 finished, 0 failed, 1 stopped" in output, output[-4000:]
    assert _queue_drains(env, name) == ""
    _, runs = _runs(uri)
    assert len(runs) == 1, [run.data.tags.get("mlflow.runName") for run in runs]  # the chief's run only
    assert runs[0].info.status == "KILLED", output[-4000:]
    assert "ended CANCELLED" in runs[0].data.tags["error"]  # the launcher's record, from sacct's state


@pytest.mark.slow
@pytest.mark.cluster
def test_a_multi_worker_job_whose_chief_fails_ends_at_once_instead_of_at_its_time_limit(slurm_cluster, tmp_path):
    """The chief refuses to start (its tracking server does not answer; the other worker only reads the
    store, so it goes on to its first collective step and waits there): the job is killed whole, the
    sweep records it FAILED, and nothing waits for the 10-minute limit."""
    env, name = slurm_cluster, "cifar_exp_test_chief_fails"
    head, _ = _sweep(tmp_path, env, name, "trainer.epochs=3", "hydra.launcher.tasks_per_node=2",
                     "trainer.strategy=multi_worker", "hydra.launcher.timeout_min=10",
                     uri="http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        output = head.communicate(timeout=240)[0]  # far under the limit
    except BaseException:
        subprocess.run(["scancel", "-n", name], env=env)
        raise
    finally:
        head.kill()
    assert "Sweep summary: 0 finished, 1 failed" in output, output[-4000:]
    assert _queue_drains(env, name) == ""
    status = (tmp_path / "sweep" / "0" / "job_status.json").read_text()
    assert '"FAILED"' in status and "mlflow.tracking_uri" in status
