"""Runs survive interruption, sweeps skip finished work, MLflow outages lose nothing,
results are reproducible, and secrets never reach logs or the tracking store."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SMOKE, all_runs, default_stop_signals, run_cli, stop_after_epochs, tracking_uri

# Long enough epochs (about a second each on 2 CPU cores) to kill the job between them.
RESUMABLE = [*SMOKE, "dataset.train_size=4096", "trainer.epochs=4", "trainer.deterministic=true",
             "mlflow.log_model=true"]


def _final_weights(client, run):
    from cifar_exp.tracking.saved import load_model  # registers this package's classes, as users load it

    path = client.download_artifacts(run.info.run_id, "model.keras")
    return load_model(path).get_weights()


@pytest.mark.slow
def test_a_killed_job_resumes_its_run_and_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Same final weights and epoch metrics as an uninterrupted run of the same deterministic config (which also
    specifies that two deterministic runs agree: a test of its own once, two more processes for no more check)."""
    uri = tracking_uri(tmp_path)
    reference = run_cli([*RESUMABLE, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}/reference"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    args = [*RESUMABLE, f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}/killed"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    job = subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        # checkpoint/<config hash>/: one folder per config
        metadata = next((tmp_path / "killed").glob("checkpoint/*/training_metadata.json"), None)
        if metadata and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.02)
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run" in resumed.stdout + resumed.stderr

    client, runs = all_runs(uri)
    by_folder = {r.data.tags["output_dir"]: r for r in runs}
    assert len(runs) == 2 and set(by_folder) == {f"{tmp_path}/reference", f"{tmp_path}/killed"}
    killed = by_folder[f"{tmp_path}/killed"]
    assert killed.info.status == "FINISHED"
    for key in ("loss", "test_accuracy", "lr"):
        assert sorted(m.step for m in client.get_metric_history(killed.info.run_id, key)) == [1, 2, 3, 4]
    reference_run = by_folder[f"{tmp_path}/reference"]
    for a, b in zip(_final_weights(client, reference_run), _final_weights(client, killed)):
        np.testing.assert_array_equal(a, b)
    history = lambda run, key: [(m.step, m.value) for m in
                                sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
    for key in ("loss", "accuracy", "test_loss"):
        assert history(reference_run, key) == history(killed, key), key


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_jobs_unless_asked(tmp_path):
    uri = tracking_uri(tmp_path)
    sweep = [*SMOKE, "trainer.epochs=1", "init=he_normal,zeros", f"mlflow.tracking_uri={uri}"]
    first = run_cli([*sweep, f"hydra.sweep.dir={tmp_path}/first", "--multirun"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli([*sweep, f"hydra.sweep.dir={tmp_path}/again", "--multirun"], cwd=tmp_path)
    assert again.returncode == 0 and "Sweep summary: 2 finished (2 skipped: finished before" in again.stdout
    assert "skipping" in again.stdout + again.stderr
    assert len(all_runs(uri)[1]) == 2
    forced = run_cli([*sweep, "sweep.rerun=true", f"hydra.sweep.dir={tmp_path}/forced", "--multirun"], cwd=tmp_path)
    assert forced.returncode == 0
    assert len(all_runs(uri)[1]) == 4


@pytest.mark.slow
def test_secrets_are_masked_everywhere(tmp_path):
    """A password URL in a free-form tag, the run name and the experiment name (tests/test_interruptions.py
    puts one into every string field of the config, in-process)."""
    uri = tracking_uri(tmp_path)
    secret = "postgresql://alice:hunter2@db.example:5432/prod"
    result = run_cli([*SMOKE, "trainer.epochs=1", f"+tags.notes={secret}", f"mlflow.run_name=run-{secret}",
                      f"mlflow.experiment_name=exp-{secret}", f"mlflow.tracking_uri={uri}",
                      "optimizer.lr=0.001,0.002", f"hydra.sweep.dir={tmp_path}/sweep", "--multirun"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hunter2" not in result.stdout + result.stderr
    # Every byte written: Hydra's saved configs and logs, job_status.json, the sqlite store, the artifacts.
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]
    assert leaks == []
    client, runs = all_runs(uri)
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["tags.notes"] == "postgresql://alice:***@db.example:5432/prod"
        assert run.data.tags["notes"] == "postgresql://alice:***@db.example:5432/prod"  # the free-form tag
        assert run.info.run_name == "run-postgresql://alice:***@db.example:5432/prod"
        assert "hunter2" not in json.dumps(run.data.tags) + run.info.run_name
        assert "hunter2" not in open(client.download_artifacts(run.info.run_id, "config.yaml")).read()


@pytest.fixture
def run_during_outage(tmp_path):
    """(client, tracker, restore): a run whose metric writes fail until restore() is called."""
    from mlflow.tracking import MlflowClient

    from cifar_exp.tracking import runs as tracking

    client = MlflowClient(tracking_uri(tmp_path))
    tracker = tracking.RunTracker.start(client, "outage", "run", {}, str(tmp_path))
    real_log_batch = client.log_batch
    client.log_batch = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("server gone"))
    return client, tracker, lambda: setattr(client, "log_batch", real_log_batch)


def test_metrics_survive_a_tracking_outage_and_are_reconciled(tmp_path, run_during_outage):
    client, tracker, restore = run_during_outage
    tracker.log_metrics({"loss": 2.0}, step=1)
    tracker.log_metrics({"loss": 1.5}, step=2)
    assert len(list((tmp_path / "mlflow_outbox").glob("*/ops.jsonl"))) == 1  # they wait in the job folder
    restore()
    tracker.log_metrics({"loss": 1.0}, step=3)
    tracker.finish()
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1, 2, 3]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert not (tmp_path / "mlflow_outbox").exists()


def test_metrics_that_never_reach_the_store_wait_locally_and_the_run_is_not_finished(tmp_path, run_during_outage):
    from cifar_exp.tracking import outbox

    client, tracker, restore = run_during_outage
    tracker.log_metrics({"loss": 2.0}, step=1)
    with pytest.raises(outbox.StoreUnavailable, match=f"cifar-exp sync {tmp_path}"):
        tracker.finish()
    restore()
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    assert outbox.sync([str(tmp_path)]) == 0
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_an_unreadable_checkpoint_is_moved_aside_with_a_warning(tmp_path, caplog):
    from cifar_exp.training.checkpoints import restore_point

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "latest.weights.h5").write_bytes(b"truncated")
    (folder / "training_metadata.json").write_text('{"epoch": 2}')
    assert restore_point(str(folder)) == 0
    assert "unreadable" in caplog.text
    assert not folder.exists() and (tmp_path / "checkpoint.unreadable" / "latest.weights.h5").exists()


@pytest.mark.slow
def test_four_parallel_jobs_share_one_new_sqlite_store_without_losses(tmp_path):
    uri = tracking_uri(tmp_path, new=True)  # the jobs race to create it
    # (not init=ones: LeNet's cross-entropy explodes with it, 4.9e5 nats at batch 2, and the job fails as diverged)
    result = run_cli([*SMOKE, "init=he_normal,zeros,lecun_normal,glorot_uniform", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=4", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep",
                      "--multirun"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep summary: 4 finished, 0 failed" in result.stdout
    client, runs = all_runs(uri)
    assert sorted(r.data.tags["choice.init"] for r in runs) == ["glorot_uniform", "he_normal", "lecun_normal", "zeros"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2]


@pytest.mark.slow
def test_ctrl_c_marks_the_running_job_killed_and_a_rerun_skips_the_finished_ones(tmp_path):
    uri = tracking_uri(tmp_path)
    args = [*SMOKE, "dataset.train_size=4096", "trainer.epochs=3", "init=he_normal,zeros",
            f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep", "--multirun"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    sweep = subprocess.Popen([sys.executable, "-m", "cifar_exp", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_stop_signals)
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None and not any(
            (tmp_path / "sweep" / "1").glob("checkpoint/*/training_metadata.json")):
        time.sleep(0.05)
    assert sweep.poll() is None, "the sweep ended before the second job was interrupted"
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    # A deliberate stop: one line and the sweep's summary, no traceback, the shell's code for SIGINT.
    assert sweep.returncode == 130 and "Traceback" not in out + err
    assert len([line for line in err.splitlines() if line.startswith("Stopped by SIGINT")]) == 1
    assert "Sweep summary: 1 finished, 0 failed, 1 stopped" in out
    _, runs = all_runs(uri)
    assert {r.data.tags["choice.init"]: r.info.status for r in runs} == {"he_normal": "FINISHED", "zeros": "KILLED"}

    again = run_cli(args[:-2] + [f"hydra.sweep.dir={tmp_path}/again", "--multirun"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipping" in again.stdout + again.stderr and "resuming run" in again.stdout + again.stderr
    client, runs = all_runs(uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # One sweep, one id: the re-run (another folder) has the first sweep's id, so
    # `report --sweep-id latest` sees both jobs.
    from cifar_exp.sweeps.report import latest_sweep_id

    assert {r.data.tags["sweep_id"] for r in runs} == {(tmp_path / "again" / "sweep_id").read_text()}
    assert latest_sweep_id(client, [runs[0].info.experiment_id]) == runs[0].data.tags["sweep_id"]


@pytest.mark.slow
def test_two_optuna_workers_share_one_study_without_losing_trials_or_runs(tmp_path):
    uri = tracking_uri(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    workers = [subprocess.Popen(
        [sys.executable, "-m", "cifar_exp", *SMOKE, "trainer.epochs=1", "hparams_search=lr_optuna", "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
         f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=4",
         f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/worker{k}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    import optuna

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4
    client, runs = all_runs(uri)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == sorted(t.number for t in complete)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]


class _FinalWeights:
    def __new__(cls, into: list):
        import keras

        class Keep(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                into[:] = self.model.get_weights()

        return Keep()


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("losses_from", ["eval_pass", "train_pass"])
def test_a_resumed_self_paced_job_weights_and_ends_as_if_never_interrupted(tmp_path, fake_tracker, losses_from):
    """λ (grown by μ from a quantile anchor, so not recomputable from the losses) and the
    recorded training losses are part of the checkpoint."""
    from conftest import compose

    from cifar_exp.training import fit as train

    cfg = compose([*SMOKE, "trainer.epochs=4", "trainer.deterministic=true", "weighting=linear",
                   "weighting.age_quantile=0.5", "weighting.mu=1.5", "weighting.warmup_epochs=1",
                   f"weighting.losses_from={losses_from}"])
    reference_weights, resumed_weights = [], []
    train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "reference"),
              extra_callbacks=[_FinalWeights(reference_weights)])
    reference = [metrics for _, metrics in fake_tracker.metrics]

    fake_tracker.metrics.clear()
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "killed"), extra_callbacks=[stop_after_epochs(2)])
    assert sorted(p.name for p in (tmp_path / "killed").glob("spl_state_*")) == [
        "spl_state_epoch_0001.npz", "spl_state_epoch_0002.npz"]
    train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path / "killed"),
              extra_callbacks=[_FinalWeights(resumed_weights)])
    resumed = [metrics for _, metrics in fake_tracker.metrics]

    assert [m["spl_lambda"] for m in resumed if "spl_lambda" in m] == [
        m["spl_lambda"] for m in reference if "spl_lambda" in m]
    assert len([m for m in reference if "spl_lambda" in m]) == 3
    assert [m["loss"] for m in resumed if "loss" in m] == [m["loss"] for m in reference if "loss" in m]
    for a, b in zip(reference_weights, resumed_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_resumed_self_paced_job_without_saved_state_warns_and_re_anchors(tmp_path, fake_tracker, caplog):
    from conftest import compose

    from cifar_exp.training import fit as train

    cfg = compose([*SMOKE, "trainer.epochs=3", "weighting=linear", "weighting.warmup_epochs=0"])
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path), extra_callbacks=[stop_after_epochs(1)])
    for state in tmp_path.glob("spl_state_*"):
        state.unlink()
    train.run(cfg, fake_tracker, checkpoint_dir=str(tmp_path))
    assert "no saved state for epoch 1" in caplog.text
    assert sum("spl_lambda" in m for _, m in fake_tracker.metrics) == 3


def _tf_out_of_memory():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[512,64,32,32]")


@pytest.mark.parametrize("make_error", [
    _tf_out_of_memory,
    lambda: RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2147483648 bytes."),  # XLA/JAX
    lambda: MemoryError(),
], ids=["tensorflow", "xla", "host"])
@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_running_out_of_memory_fails_the_job_with_a_hint_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys,
                                                                                make_error):
    from conftest import compose

    from cifar_exp import job
    from cifar_exp.sweeps.summary import SweepSummary

    real_run_task = job.run_task
    calls = []

    def first_job_runs_out_of_memory(cfg, tracker, checkpoint_dir):
        calls.append(cfg.seed)
        if len(calls) == 1:
            raise make_error()
        return real_run_task(cfg, tracker, checkpoint_dir)

    monkeypatch.setattr(job, "run_task", first_job_runs_out_of_memory)
    uri = tracking_uri(tmp_path)
    values = []
    for num, seed in enumerate([0, 1]):
        cfg = compose([*SMOKE, "trainer.epochs=1", f"seed={seed}", f"mlflow.tracking_uri={uri}"])
        context = job.JobContext(overrides=[f"seed={seed}"], output_dir=str(tmp_path / "sweep" / str(num)),
                                 sweep_dir=str(tmp_path / "sweep"), job_num=num, multirun=True)
        values.append(job.run_job(cfg, context))
    assert np.isnan(values[0]) and 0 <= values[1] <= 1

    _, runs = all_runs(uri)
    status = {r.data.params["seed"]: r for r in runs}
    assert status["1"].info.status == "FINISHED"
    failed = status["0"]
    assert failed.info.status == "FAILED"
    assert "out of memory with trainer.batch_size=32" in failed.data.tags["failure_hint"]
    assert type(make_error()).__name__ in failed.data.tags["error"]
    record = json.loads((tmp_path / "sweep" / "0" / "job_status.json").read_text())
    assert record["status"] == "FAILED" and "smaller trainer.batch_size" in record["hint"]

    from omegaconf import OmegaConf

    summary = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(summary)
    printed = capsys.readouterr().out
    assert "1 finished, 1 failed" in printed and "hint: out of memory" in printed
