"""Nothing lost, one clear line: stop signals, checkpoints cut short, another config in the same
folder, a re-run sweep's id, a store refusing a job at start, and secrets in any config value."""
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SMOKE, all_runs, compose, default_stop_signals, run_cli, stop_after_epochs, tracking_uri

PASSWORD = "pw-Hunter2-secret"
SECRET_URL = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/x"


# --- stop signals -----------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_stop_signal_becomes_one_stopped_exception_with_the_shells_exit_code(signum):
    """In a fresh interpreter whose stop signals start at their defaults: dispositions are the
    process's, a test worker's can be changed by what ran in it before, and an ignored one is inherited
    (under `nohup` SIGHUP is ignored, and signals.install keeps it so, on purpose)."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from cifar_exp import signals
        signals.install()
        try:
            os.kill(os.getpid(), {int(signum)})
            for _ in range(5000):  # the handler runs at the next bytecode boundary
                time.sleep(0.001)
            print("not raised")
        except KeyboardInterrupt as caught:
            print(type(caught).__name__, isinstance(caught, signals.Stopped), caught.name, caught.exit_code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=default_stop_signals)
    assert done.stdout.split() == ["Stopped", "True", signal.Signals(signum).name, str(128 + signum)], done.stderr


def _wait_for_epochs(job, folder: Path, epochs: int, timeout_s: float = 300):
    """Poll (not sleep-as-sync) until the job's checkpoint holds `epochs` finished epochs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and job.poll() is None:
        for metadata in folder.glob("checkpoint/*/training_metadata.json"):
            try:
                if json.loads(metadata.read_text()).get("epoch", 0) >= epochs:
                    return
            except ValueError:
                pass  # caught mid-write
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be stopped"


def _start(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_stop_signals)


LONG = [*SMOKE, "dataset.train_size=4096", "trainer.epochs=4", "trainer.deterministic=true"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_closes_the_run_killed_with_one_line_and_a_rerun_resumes_it(tmp_path, signum):
    uri = tracking_uri(tmp_path)
    args = [*LONG, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}/job"]
    job = _start(args, tmp_path)
    _wait_for_epochs(job, tmp_path / "job", 1)
    job.send_signal(signum)
    out, err = job.communicate(timeout=120)
    name = signal.Signals(signum).name

    assert job.returncode == 128 + signum
    assert "Traceback" not in out + err
    stop_lines = [line for line in err.splitlines() if line.startswith("Stopped by")]
    assert len(stop_lines) == 1 and name in stop_lines[0] and "KILLED" in stop_lines[0]
    # a single run resumes in its own folder (the same command alone would get a new timestamped one)
    assert f"to resume, re-run it with hydra.run.dir={tmp_path}/job" in stop_lines[0]
    client, [run] = all_runs(uri)
    assert run.info.status == "KILLED" and name in run.data.tags["error"]
    record = json.loads((tmp_path / "job" / "job_status.json").read_text())
    assert record["status"] == "KILLED" and name in record["error"]

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run" in resumed.stdout + resumed.stderr
    client, [run] = all_runs(uri)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags  # why it stopped is history now
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]


# --- checkpoints cut short -------------------------------------------------------------

def _write_state(folder: Path, epoch: int, suffix: str = "", value: float = 0.0):
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"latest.weights.h5{suffix}", "w") as file:
        file.create_dataset("layers/dense/vars/0", data=np.full((256, 256), value, "float32"))
    (folder / f"training_metadata.json{suffix}").write_text(json.dumps({"epoch": epoch, "batch": 0}))


def _truncate(path: Path, fraction: float = 0.5):
    os.truncate(path, int(path.stat().st_size * fraction))


def _weights(folder: Path) -> float:
    import h5py

    with h5py.File(folder / "latest.weights.h5", "r") as file:
        return float(file["layers/dense/vars/0"][0, 0])


def test_a_readable_latest_state_is_resumed(tmp_path):
    from cifar_exp.training.checkpoints import restore_point

    _write_state(tmp_path, 1, ".bkp", value=1)
    _write_state(tmp_path, 2, value=2)
    assert restore_point(str(tmp_path)) == 2 and _weights(tmp_path) == 2


@pytest.mark.parametrize("cut", ["weights", "metadata"])
def test_a_partial_latest_file_falls_back_to_the_backup_which_is_kept(tmp_path, caplog, cut):
    from cifar_exp.training.checkpoints import restore_point

    _write_state(tmp_path, 1, ".bkp", value=1)
    _write_state(tmp_path, 2, value=2)
    _truncate(tmp_path / ("latest.weights.h5" if cut == "weights" else "training_metadata.json"))
    assert restore_point(str(tmp_path)) == 1
    assert "previous epoch's backup" in caplog.text
    assert _weights(tmp_path) == 1
    assert (tmp_path / "latest.weights.h5.bkp").exists() and (tmp_path / "training_metadata.json.bkp").exists()


def test_weights_rewritten_before_their_metadata_resume_the_backup(tmp_path):
    """Keras copies latest -> .bkp, writes the weights, then the metadata: killed in between,
    the new weights sit beside the old epoch number, and only the backup is consistent."""
    from cifar_exp.training.checkpoints import restore_point

    _write_state(tmp_path, 1, ".bkp", value=1)
    _write_state(tmp_path, 1, value=2)
    assert restore_point(str(tmp_path)) == 1 and _weights(tmp_path) == 1


def test_a_backup_cut_short_while_copied_leaves_the_latest_state(tmp_path):
    from cifar_exp.training.checkpoints import restore_point

    _write_state(tmp_path, 1, ".bkp", value=1)
    _write_state(tmp_path, 2, value=2)
    _truncate(tmp_path / "training_metadata.json.bkp")
    _truncate(tmp_path / "latest.weights.h5.bkp")
    assert restore_point(str(tmp_path)) == 2 and _weights(tmp_path) == 2


def test_a_partial_self_paced_state_falls_back_to_the_epoch_whose_state_reads(tmp_path):
    from cifar_exp.training.checkpoints import restore_point

    _write_state(tmp_path, 1, ".bkp", value=1)
    _write_state(tmp_path, 2, value=2)
    for epoch in (1, 2):
        np.savez(tmp_path / f"spl_state_epoch_{epoch:04d}.npz", lam=np.float32(epoch), losses=np.ones(100))
    _truncate(tmp_path / "spl_state_epoch_0002.npz")
    assert restore_point(str(tmp_path)) == 1


def test_nothing_readable_is_moved_aside_not_deleted(tmp_path, caplog):
    from cifar_exp.training.checkpoints import restore_point

    folder = tmp_path / "checkpoint"
    _write_state(folder, 1, ".bkp")
    _write_state(folder, 2)
    _truncate(folder / "latest.weights.h5")
    _truncate(folder / "latest.weights.h5.bkp")
    assert restore_point(str(folder)) == 0
    assert not folder.exists() and (tmp_path / "checkpoint.unreadable" / "latest.weights.h5.bkp").exists()
    assert "starting from scratch" in caplog.text


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("damage", ["weights", "epoch_metrics"])
def test_a_checkpoint_cut_short_loses_at_most_one_epoch_and_logs_every_step_once(tmp_path, fake_tracker, damage):
    """The issue's example (truncate latest.weights.h5 to half) and a partial epoch record."""
    from cifar_exp.training import fit as train

    cfg = compose([*SMOKE, "trainer.epochs=4", "trainer.deterministic=true"])
    train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "reference"))
    reference = {step: m["loss"] for step, m in fake_tracker.metrics if "loss" in m}
    fake_tracker.metrics.clear()

    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "cut"), extra_callbacks=[stop_after_epochs(3)])
    if damage == "weights":
        _truncate(tmp_path / "cut" / "latest.weights.h5")
    else:
        _truncate(tmp_path / "cut" / "epoch_metrics.json")
    train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "cut"))

    steps = [step for step, m in fake_tracker.metrics if "loss" in m]
    assert steps == [1, 2, 3, 4]  # each step once, none twice
    logged = {step: m["loss"] for step, m in fake_tracker.metrics if "loss" in m}
    assert logged == reference  # deterministic: the re-trained epoch equals the one logged first


@pytest.mark.slow
def test_a_job_killed_then_its_checkpoint_truncated_resumes_from_the_backup_logging_each_step_once(tmp_path):
    """The issue's example: SIGKILL after 2 epochs, `truncate -s 50% latest.weights.h5`, re-run."""
    uri = tracking_uri(tmp_path)
    args = [*LONG, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}/job"]
    job = _start(args, tmp_path)
    _wait_for_epochs(job, tmp_path / "job", 2)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    [checkpoint] = (tmp_path / "job" / "checkpoint").iterdir()
    _truncate(checkpoint / "latest.weights.h5")

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "previous epoch's backup" in resumed.stdout + resumed.stderr
    client, [run] = all_runs(uri)
    assert run.info.status == "FINISHED"
    for key in ("loss", "accuracy", "test_loss", "lr", "epoch_time"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3, 4], key


# --- another config in the same folder -------------------------------------------------

def _job(cfg_overrides, output_dir, uri, stop_after=None, monkeypatch=None):
    from cifar_exp import job

    cfg = compose([*SMOKE, *cfg_overrides, f"mlflow.tracking_uri={uri}"])
    context = job.JobContext(overrides=list(cfg_overrides), output_dir=str(output_dir))
    if stop_after is None:
        return job.run_job(cfg, context)
    from cifar_exp.training import fit as train

    def run_task(cfg, tracker, checkpoint_dir):
        return train.run(cfg, tracker, checkpoint_dir=checkpoint_dir, extra_callbacks=[stop_after_epochs(stop_after)])

    monkeypatch.setattr(job, "run_task", run_task)
    try:
        with pytest.raises(KeyboardInterrupt):
            job.run_job(cfg, context)
    finally:
        monkeypatch.undo()


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_another_config_in_the_same_folder_starts_fresh_and_leaves_the_first_ones_checkpoint(
        tmp_path, monkeypatch, caplog):
    uri = tracking_uri(tmp_path)
    x, y = ["optimizer.lr=0.01", "trainer.epochs=3"], ["optimizer.lr=0.005", "trainer.epochs=2"]
    _job(x, tmp_path / "job", uri, stop_after=1, monkeypatch=monkeypatch)
    [x_checkpoint] = (tmp_path / "job" / "checkpoint").iterdir()
    caplog.set_level(logging.INFO)

    _job(y, tmp_path / "job", uri)
    assert "checkpoint of another config" in caplog.text
    assert json.loads((x_checkpoint / "training_metadata.json").read_text())["epoch"] == 1  # untouched
    client, runs = all_runs(uri)
    by_lr = {r.data.params["optimizer.lr"]: r for r in runs}
    y_run = by_lr["0.005"]
    assert y_run.info.status == "FINISHED" and y_run.info.run_id != by_lr["0.01"].info.run_id
    assert sorted(m.step for m in client.get_metric_history(y_run.info.run_id, "loss")) == [1, 2]
    assert [m.value for m in client.get_metric_history(y_run.info.run_id, "lr")] == pytest.approx([0.005, 0.005])

    caplog.clear()
    _job(x, tmp_path / "job", uri)  # X again: resumes its own run from its own checkpoint
    assert "resuming run " + by_lr["0.01"].info.run_id in caplog.text
    client, runs = all_runs(uri)
    x_run = client.get_run(by_lr["0.01"].info.run_id)
    assert x_run.info.status == "FINISHED" and len(runs) == 2
    assert sorted(m.step for m in client.get_metric_history(x_run.info.run_id, "loss")) == [1, 2, 3]


# --- one sweep, one id -----------------------------------------------------------------

def test_a_sweeps_id_comes_from_its_definition_not_its_folder():
    from cifar_exp.sweeps.summary import definition_id

    sweep = ["init=he_normal,zeros", "trainer.epochs=3"]
    first = definition_id([*sweep, "hydra.sweep.dir=multirun/a"], False, "multirun/a")
    again = definition_id([*reversed(sweep), "hydra.sweep.dir=multirun/b", "hydra/launcher=joblib"], False,
                          "multirun/b")
    assert first == again
    assert definition_id(["init=he_normal,ones", "trainer.epochs=3"], False, "multirun/a") != first
    assert definition_id([*sweep, "hydra.sweeper.n_trials=5"], False, "multirun/a") != first
    # The same definition recorded in another MLflow experiment is another sweep (a report must not pool them).
    assert definition_id(sweep, False, "multirun/a", "cifar_exp") == definition_id(sweep, False, "multirun/b", "cifar_exp")
    assert definition_id(sweep, False, "multirun/a", "cifar_exp") != definition_id(sweep, False, "multirun/a", "other")
    # sweep.rerun=true trains every job again: a new sweep each time
    assert definition_id([*sweep, "sweep.rerun=true"], True, "multirun/a") != definition_id(
        [*sweep, "sweep.rerun=true"], True, "multirun/b")


# --- the store refuses the job at start ------------------------------------------------

def _deleted_experiment(uri, name="cifar_exp"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment(name)
    client.delete_experiment(experiment)
    return experiment


def test_a_deleted_experiment_fails_alone_with_one_line_naming_the_way_out(tmp_path):
    from cifar_exp import job
    from cifar_exp.errors import ConfigError

    uri = tracking_uri(tmp_path)
    experiment = _deleted_experiment(uri)
    cfg = compose([*SMOKE, f"mlflow.tracking_uri={uri}"])
    with pytest.raises(ConfigError) as caught:
        job.run_job(cfg, job.JobContext(output_dir=str(tmp_path / "job")))
    message = str(caught.value)
    assert "\n" not in message and "mlflow.experiment_name" in message
    assert f"mlflow experiments restore --experiment-id {experiment}" in message and "another name" in message
    assert json.loads((tmp_path / "job" / "job_status.json").read_text())["status"] == "FAILED"


def _sweep_of_two(tmp_path, uri):
    from cifar_exp import job

    values = []
    for num, seed in enumerate([0, 1]):
        cfg = compose([*SMOKE, "trainer.epochs=1", f"seed={seed}", f"mlflow.tracking_uri={uri}"])
        context = job.JobContext(overrides=[f"seed={seed}"], output_dir=str(tmp_path / "sweep" / str(num)),
                                 sweep_dir=str(tmp_path / "sweep"), job_num=num, multirun=True)
        values.append(job.run_job(cfg, context))
    return values


def _summary(tmp_path, capsys):
    from omegaconf import OmegaConf

    from cifar_exp.sweeps.summary import SweepSummary

    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    return capsys.readouterr().out


def test_a_deleted_experiment_fails_each_job_of_a_sweep_which_still_ends_with_its_summary(tmp_path, capsys):
    uri = tracking_uri(tmp_path)
    _deleted_experiment(uri)
    assert all(math.isnan(v) for v in _sweep_of_two(tmp_path, uri))
    out = _summary(tmp_path, capsys)
    assert "0 finished, 2 failed" in out and out.count("mlflow.experiment_name") == 2


def test_a_store_refusing_to_open_a_run_fails_the_job_with_one_line(tmp_path, monkeypatch, capsys):
    """Permissions, a read-only sqlite file, a server refusing writes: the store answers reads
    but refuses the run. Simulated: create_run raises what MLflow raises for a read-only file."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from cifar_exp import job
    from cifar_exp.errors import ConfigError

    def refuse(self, *args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: INSERT ...]")

    monkeypatch.setattr(MlflowClient, "create_run", refuse)
    uri = tracking_uri(tmp_path)
    cfg = compose([*SMOKE, f"mlflow.tracking_uri={uri}"])
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri=.*refused with: .*readonly database\.$"):
        job.run_job(cfg, job.JobContext(output_dir=str(tmp_path / "job")))
    assert json.loads((tmp_path / "job" / "job_status.json").read_text())["status"] == "FAILED"

    assert all(math.isnan(v) for v in _sweep_of_two(tmp_path, uri))
    assert "0 finished, 2 failed" in _summary(tmp_path, capsys)


# --- secrets in any config value -------------------------------------------------------

def _string_fields(cfg):
    from omegaconf import OmegaConf

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            elif isinstance(value, str) or value is None:
                yield f"{prefix}{key}"

    return list(walk(OmegaConf.to_container(cfg, resolve=True)))


def _leaks(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


FREE_TEXT = ("mlflow.run_name", "mlflow.experiment_name", "notes")  # accepted as they are: one job trains with all


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_password_in_any_string_field_reaches_no_output(tmp_path, capsys, caplog):
    """Every string (or unset) field of the composed config gets a password URL, one job per field
    (most are refused at start, which must not echo it); the free-text fields go into one job that
    trains. Then the console, the log, the output folders, the sqlite store's bytes and the
    artifacts are searched."""
    from omegaconf import OmegaConf

    from cifar_exp import job
    from cifar_exp.tracking.runs import MaskingFormatter

    caplog.handler.setFormatter(MaskingFormatter("%(message)s"))  # as Hydra's logging config does
    caplog.set_level(logging.INFO)
    uri = tracking_uri(tmp_path)
    fields = _string_fields(compose([*SMOKE, "trainer.epochs=1"]))
    assert {"mlflow.run_name", "mlflow.experiment_name", "dataset.name", "model.name"} <= set(fields)
    jobs = [[key] for key in fields if key not in FREE_TEXT] + [list(FREE_TEXT)]
    for num, keys in enumerate(jobs):
        cfg = compose([*SMOKE, "trainer.epochs=1", f"mlflow.tracking_uri={uri}"])
        OmegaConf.set_struct(cfg, False)
        for key in keys:
            OmegaConf.update(cfg, key, SECRET_URL, force_add=True)
        overrides = ["trainer.epochs=1", *(f"{'+' if key == 'notes' else ''}{key}={SECRET_URL}" for key in keys)]
        context = job.JobContext(overrides=overrides, output_dir=str(tmp_path / "sweep" / str(num)),
                                 sweep_dir=str(tmp_path / "sweep"), job_num=num, multirun=True)
        job.run_job(cfg, context)
    printed = capsys.readouterr()
    assert PASSWORD not in printed.out + printed.err + caplog.text
    assert _leaks(tmp_path) == []
    _, runs = all_runs(uri)
    [trained] = [r for r in runs if r.info.status == "FINISHED"]  # the free-text job logged everything
    assert trained.info.run_name == SECRET_URL.replace(PASSWORD, "***")
    assert trained.data.params["notes"] == SECRET_URL.replace(PASSWORD, "***")
    assert len(runs) > len(jobs) // 2  # the refused jobs were recorded as FAILED runs, masked too
