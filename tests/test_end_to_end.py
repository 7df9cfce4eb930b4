"""`python -m cifar_exp` as users run it: runs, multiruns, failures, all read back from MLflow."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, SMOKE, all_runs, run_cli, tracking_uri

pytestmark = pytest.mark.slow


def test_a_run_leaves_a_finished_mlflow_run_with_params_metrics_and_artifacts(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli([*SMOKE, f"mlflow.tracking_uri={uri}", "mlflow.log_model=true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "lenet" and run.data.params["optimizer.lr"] == "0.001"
    assert run.data.tags["choice.init"] == "he_normal"
    assert "model=lenet" in run.data.tags["overrides"]
    for key in ("loss", "accuracy", "test_loss", "test_accuracy", "lr", "epoch_time", "epoch_train_time"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    whole, training = ({m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                       for key in ("epoch_time", "epoch_train_time"))
    assert all(0 < training[step] < whole[step] for step in (1, 2))  # the test pass is left out
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "model.keras"} <= artifacts
    assert run.data.metrics["test_accuracy"] > 0.2  # synthetic classes are learnable: chance is 0.1
    assert "Epoch 2/2" in result.stdout


def test_multirun_over_two_initializers_shares_one_sweep_id(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli([*SMOKE, "init=he_normal,zeros", f"mlflow.tracking_uri={uri}",
                      f"hydra.sweep.dir={tmp_path}/sweep", "--multirun"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = all_runs(uri)
    assert sorted(r.data.tags["choice.init"] for r in runs) == ["he_normal", "zeros"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert "Sweep summary: 2 finished, 0 failed" in result.stdout
    assert (tmp_path / "sweep" / "0" / "job_status.json").exists()
    # The answer: the jobs best first, the best run's page, the report command for this sweep.
    assert "init       status" in result.stdout and "test_accuracy" in result.stdout
    best = max(runs, key=lambda r: r.data.metrics["test_accuracy"])
    assert f"#/experiments/{best.info.experiment_id}/runs/{best.info.run_id}" in result.stdout
    sweep_id = runs[0].data.tags["sweep_id"]
    assert f"cifar-exp report --sweep-id {sweep_id} --tracking-uri {uri}" in result.stdout


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    uri = tracking_uri(tmp_path)
    # lr=1e12 makes the loss overflow to inf/NaN: that job must fail, the other finish.
    result = run_cli([*SMOKE, "optimizer=sgd", "optimizer.lr=0.01,1e12", "trainer.epochs=1",
                      f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep", "--multirun"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Sweep summary: 1 finished, 1 failed" in result.stdout
    _, runs = all_runs(uri)
    status = {r.data.params["optimizer.lr"]: r.info.status for r in runs}
    assert status == {"0.01": "FINISHED", "1000000000000.0": "FAILED"}
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "TrainingDiverged" in failed.data.tags["error"]
    assert "optimizer.lr=1000000000000.0" in failed.data.tags["failure_hint"]
    assert "hint: the loss diverged" in result.stdout


def test_a_diverged_job_alone_exits_non_zero_with_one_error_line_and_no_traceback(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli([*SMOKE, "optimizer=sgd", "optimizer.lr=1e6", f"mlflow.tracking_uri={uri}",
                      f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Error: training diverged: " in result.stderr
    assert "the loss diverged with optimizer.lr=1000000.0" in result.stdout + result.stderr  # the hint, logged
    record = json.loads((tmp_path / "run" / "job_status.json").read_text())
    assert record["status"] == "FAILED" and record["hint"]
    _, runs = all_runs(uri)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_mirrored_strategy_over_two_logical_cpus_with_host_batches_and_resident_images(tmp_path):
    """Both feeds (trainer.data_on_device) in one process: one start-up (TensorFlow, MLflow, a new
    store) instead of two; TensorFlow's logical devices are set once per process anyway."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from conftest import SMOKE, compose
        from cifar_exp.job import JobContext, run_job
        import cifar_exp.training.distribute as d
        assert d.build_strategy("mirrored").num_replicas_in_sync == 2
        for on_device in ("false", "true"):
            cfg = compose(SMOKE + ["trainer.strategy=mirrored", f"trainer.data_on_device={{on_device}}",
                                   "mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
            print("ACC", on_device, run_job(cfg, JobContext()))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = {line.split()[1]: float(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("ACC ")}
    assert set(accuracy) == {"false", "true"} and min(accuracy.values()) > 0.2, accuracy
    _, runs = all_runs(tracking_uri(tmp_path))
    assert sorted(r.data.params["trainer.data_on_device"] for r in runs) == ["False", "True"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]


BAD_INPUTS = [
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["trainer.batch_size=0"], "trainer.batch_size=0"),
    (["trainer.epochs=-1"], "trainer.epochs=-1"),
    (["init.bias=he_normall"], "init.bias='he_normall'"),
    (["init=random_normal", "init.stddev=-1"], "init.stddev=-1"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction=1.0"),
    (["mlflow.tracking_uri=http://127.0.0.1:9"], "mlflow.tracking_uri"),
    (["mlflow.tracking_uri=sqlite:////no/such/folder/mlflow.db"], "mlflow.tracking_uri"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, overrides, message):
    uri = tracking_uri(tmp_path)
    args = [*SMOKE, f"mlflow.tracking_uri={uri}", *overrides]
    result = run_cli(args, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Epoch 1" not in result.stdout
    _, runs = all_runs(uri) if (tmp_path / "mlflow.db").exists() else (None, [])
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_missing_dataset_path_fails_before_training(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli(["dataset.path=/does/not/exist", f"mlflow.tracking_uri={uri}"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "dataset.path" in result.stderr and "/does/not/exist" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() or not all_runs(uri)[1]


def test_unknown_option_names_the_nearest_and_lists_the_choices(tmp_path):
    result = run_cli(["init=he_normall"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: Unknown init option 'he_normall' (in init=he_normall): did you mean init=he_normal? the options "
        "are default, glorot_normal, glorot_uniform, he_normal, he_uniform, lecun_normal, lecun_uniform, ones, "
        "orthogonal, random_normal, random_uniform, torch_uniform, truncated_normal, zeros"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()  # nothing ran


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "jax", reason="the JAX backend's distribution")
def test_jax_data_parallel_over_two_host_devices_with_host_batches_and_resident_images(tmp_path):
    """Both feeds (trainer.data_on_device) in one process, as in the mirrored test: one start-up."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from conftest import SMOKE, compose
        import cifar_exp.training.distribute as d
        from cifar_exp.job import JobContext, run_job
        assert d.build_strategy("auto").num_replicas_in_sync == 2
        for on_device in ("false", "true"):
            cfg = compose(SMOKE + [f"trainer.data_on_device={{on_device}}",
                                   "mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
            print("ACC", on_device, run_job(cfg, JobContext()))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = {line.split()[1]: float(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("ACC ")}
    assert set(accuracy) == {"false", "true"} and min(accuracy.values()) > 0.2, accuracy
    _, runs = all_runs(tracking_uri(tmp_path))
    assert sorted(r.data.params["trainer.data_on_device"] for r in runs) == ["False", "True"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
