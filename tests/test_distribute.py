"""Global batches and replicas: a batch the replicas cannot share fails before the run opens, naming the
key, the replica count and the nearest valid sizes; partial last batches never leave a replica empty;
mixed_float16 on a CPU is called out."""
import logging
import subprocess
import sys
import textwrap

import pytest

from cifar_exp import validate
from cifar_exp.data import resident
from cifar_exp.errors import ConfigError
from cifar_exp.training import distribute
from conftest import ROOT, SMOKE, all_runs, compose, tracking_uri


@pytest.mark.parametrize("batch_size, replicas, nearest", [(3, 2, "2 or 4"), (512, 3, "510 or 513"),
                                                           (1, 2, "2")])
def test_a_batch_the_replicas_cannot_share_names_the_nearest_valid_sizes(monkeypatch, batch_size, replicas, nearest):
    monkeypatch.setattr(distribute, "replicas_in_sync", lambda name: replicas)
    cfg = compose(["trainer.strategy=mirrored", f"trainer.batch_size={batch_size}"])
    with pytest.raises(ConfigError, match=rf"trainer.batch_size={batch_size}\. Allowed: a multiple of the "
                                          rf"{replicas} replicas .*: {nearest}\.$"):
        validate.check_devices(cfg)


def test_a_batch_the_replicas_share_passes(monkeypatch):
    monkeypatch.setattr(distribute, "replicas_in_sync", lambda name: 4)
    validate.check_devices(compose(["trainer.batch_size=512"]))


@pytest.mark.parametrize("n, batch_size, replicas, batches", [
    (513, 4, 2, 128),  # the last batch of 1 would leave a replica empty: dropped
    (515, 4, 2, 129),  # a last batch of 3 is split 2 + 1: kept
    (512, 4, 2, 128), (513, 4, 1, 129),
])
def test_a_last_training_batch_smaller_than_the_replicas_is_dropped(n, batch_size, replicas, batches):
    from cifar_exp.training.fit import TrainBatches

    assert TrainBatches.count(n, batch_size, replicas) == batches


@pytest.mark.parametrize("n, batch_size, replicas, expected", [
    (128, 4, 2, 4), (131, 4, 2, 4),  # no remainder; a remainder of 3 split 2 + 1
    (10241, 512, 8, 504),  # 512 would end with 1 image for 8 GPUs: the nearest smaller size that does not
    (129, 4, 2, 6),  # an odd count ends with 1 image in any even batch up to 4: the next larger one
])
def test_evaluation_batches_never_leave_a_replica_empty(n, batch_size, replicas, expected):
    size = distribute.inference_batch_size(n, batch_size, replicas)
    assert size % replicas == 0 and distribute.last_batch_fits(n, size, replicas)
    assert size == expected
    with pytest.raises(ConfigError, match="3 samples cannot be split across 4 replicas"):
        distribute.inference_batch_size(3, 8, 4)


def test_mixed_float16_without_a_gpu_warns_at_job_start(monkeypatch, caplog):
    monkeypatch.setattr(distribute, "replicas_in_sync", lambda name: 1)
    monkeypatch.setattr(resident, "has_accelerator", lambda: False)
    with caplog.at_level(logging.WARNING, logger="cifar_exp.validate"):
        validate.check_devices(compose(["trainer.precision=float32"]))
        assert not caplog.records
        validate.check_devices(compose(["trainer.precision=mixed_float16"]))
    assert "CPUs emulate float16" in caplog.text and "trainer.precision=float32" in caplog.text
    monkeypatch.setattr(resident, "has_accelerator", lambda: True)
    caplog.clear()
    validate.check_devices(compose(["trainer.precision=mixed_float16"]))
    assert not caplog.records


def test_mirrored_over_two_cpus_refuses_an_odd_batch_before_the_run_and_trains_ragged_splits(tmp_path):
    """The issue's example, then a dataset whose last training and test batches hold 1 image for 2 replicas."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from conftest import SMOKE, compose
        from cifar_exp.errors import ConfigError
        from cifar_exp.job import JobContext, run_job
        base = SMOKE + ["trainer.strategy=mirrored", "trainer.epochs=1", "mlflow.tracking_uri={tracking_uri(tmp_path)}"]
        try:
            run_job(compose(base + ["trainer.batch_size=3"]), JobContext())
        except ConfigError as error:
            print("REFUSED", error)
        print("ACC", run_job(compose(base + ["trainer.batch_size=4", "dataset.train_size=513",
                                             "dataset.test_size=129"]), JobContext()))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": str(ROOT)},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED Invalid config: trainer.batch_size=3. Allowed: a multiple of the 2 replicas" in result.stdout
    assert "2 or 4" in result.stdout
    assert float(result.stdout.split("ACC")[-1]) > 0.2
    _, runs = all_runs(tracking_uri(tmp_path))
    assert [r.info.status for r in runs] == ["FINISHED"]  # the refused job opened no run


def test_multi_worker_replicas_are_counted_from_the_cluster_without_building_the_strategy(monkeypatch):
    import json

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                                                "task": {"type": "chief", "index": 0}}))
    assert distribute.replicas_in_sync("multi_worker") == 3  # one CPU replica per process
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert distribute.replicas_in_sync("multi_worker") == 4
    with pytest.raises(ConfigError, match="trainer.batch_size=510. Allowed: a multiple of the 4 replicas that "
                                          "trainer.strategy=multi_worker splits each batch across: 508 or 512"):
        distribute.check_batch_size("trainer.batch_size", 510, 4, "multi_worker")
