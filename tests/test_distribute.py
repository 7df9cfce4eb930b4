"""Global batches and replicas: a batch the replicas cannot share fails before the run opens, naming the
key, the replica count and the nearest valid sizes; partial last batches never leave a replica empty;
mixed_float16 on a CPU is called out."""
import logging
import subprocess
import sys
import textwrap

import numpy as np
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


def test_drop_remainder_trains_full_batches_skipping_other_samples_each_epoch():
    """trainer.drop_remainder: one batch shape (one compiled train step); the skipped samples are the
    end of each epoch's shuffled order, so no sample is left out of every epoch."""
    from cifar_exp.training.fit import TrainBatches

    assert TrainBatches.count(50_000, 1024, 1, drop_remainder=True) == 48  # airbench's steps per epoch
    assert TrainBatches.count(50_000, 1024, 1) == 49
    x = np.arange(10, dtype="uint8")[:, None]
    batches = TrainBatches(x, np.arange(10), np.ones(10, "float32"), 4, seed=0, drop_remainder=True)
    seen = []
    for _ in range(3):
        assert len(batches) == 2 and all(len(batches[i][0]) == 4 for i in range(2))
        seen.append({int(v) for i in range(2) for v in batches[i][1]})
        batches.on_epoch_end()
    assert set(range(10)) - set.intersection(*seen) and set.union(*seen) == set(range(10))


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


@pytest.mark.parametrize("n, batch_size, replicas, expected", [
    (10000, 512, 1, 500), (50000, 512, 1, 500), (10000, 1024, 1, 1000),  # equal batches: one compiled shape
    (10000, 512, 8, 400),  # 500 is no multiple of 8
    (600, 512, 1, 300),  # 512 + 88 -> 300 + 300: as many batches
    (997, 512, 1, 512), (10240 + 1, 512, 1, 512),  # no divisor in (256, 512]: the batch size, a shorter last batch
    (256, 512, 1, 512),  # one batch anyway
])
def test_evaluation_batches_are_equal_where_a_size_within_half_the_batch_size_divides_the_split(
        n, batch_size, replicas, expected):
    """XLA compiles one test/predict step per batch shape: a split in equal batches compiles one."""
    assert distribute.inference_batch_size(n, batch_size, replicas) == expected


@pytest.mark.slow
def test_under_jax_a_job_compiles_one_test_step_for_a_split_in_equal_batches(tmp_path):
    """600 test images (512 + 88 before): the per-epoch flip-TTA evaluation compiles one test step, the job one
    train step (512 training images, one batch) and no predict step (the confusion matrix comes from the last
    evaluation). Counted from JAX's compile log (jax_log_compiles; Hydra logs it to stdout), so a change that
    compiles extra programs for the same recipe shows here."""
    from conftest import run_cli

    pytest.importorskip("jax")
    args = ["experiment=resnet9", "model.width=8", "dataset=synthetic", "dataset.train_size=512",
            "dataset.test_size=600", "trainer.epochs=2", "trainer.tta=true", "trainer.verbose=0",
            "trainer.compile_cache=null", f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
            f"hydra.run.dir={tmp_path}/run"]
    out = run_cli(args, cwd=tmp_path, env={"KERAS_BACKEND": "jax", "JAX_LOG_COMPILES": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    compiled = [line.split("Finished XLA compilation of ")[1].split(" in ")[0]
                for line in (out.stdout + out.stderr).splitlines() if "Finished XLA compilation of " in line]
    steps = {name: compiled.count(name) for name in ("jit(train_step)", "jit(test_step)", "jit(predict_step)")}
    assert steps == {"jit(train_step)": 1, "jit(test_step)": 1, "jit(predict_step)": 0}, compiled


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


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
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


def test_drop_remainder_without_a_full_batch_is_refused_before_the_run_opens():
    with pytest.raises(ConfigError, match=r"trainer\.drop_remainder='true'.*batch_size of at most 500"):
        validate.validate(compose(["experiment=airbench", "dataset.limit_train=500"]))
    with pytest.raises(ConfigError, match="at most 900"):  # 10% carved out for validation
        validate.validate(compose(["experiment=airbench", "dataset.limit_train=1000", "dataset.val_fraction=0.1"]))
    validate.validate(compose(["experiment=airbench", "dataset.limit_train=2048"]))


def test_precision_auto_is_float32_on_a_cpu_and_mixed_bfloat16_where_the_accelerator_computes_it(monkeypatch):
    from cifar_exp.data import resident

    if not resident.has_accelerator():  # a CPU-only machine, as CI's
        assert not resident.computes_bfloat16()
        assert resident.precision_policy("auto") == "float32"
    monkeypatch.setattr(resident, "computes_bfloat16", lambda: True)  # an H200, an A100, a TPU
    assert resident.precision_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(resident, "computes_bfloat16", lambda: False)  # a T4, a CPU
    assert resident.precision_policy("auto") == "float32"
    assert resident.precision_policy("mixed_float16") == "mixed_float16"  # an explicit choice is kept


@pytest.mark.parametrize("capability,expected", [("9.0", True), ("8.0", True), ("8.6", True), ("7.5", False),
                                                 ("gfx942", False), (None, False), ("", False)])
def test_bfloat16_units_from_the_compute_capability(capability, expected):
    from cifar_exp.data.resident import bfloat16_capability

    assert bfloat16_capability(capability) is expected


def test_the_config_hash_counts_what_precision_auto_trains_in(monkeypatch):
    from cifar_exp.data import resident
    from cifar_exp.job import config_hash

    monkeypatch.setattr(resident, "computes_bfloat16", lambda: False)
    on_a_cpu = config_hash(compose(["trainer.precision=auto"]))
    assert on_a_cpu == config_hash(compose(["trainer.precision=float32"]))
    monkeypatch.setattr(resident, "computes_bfloat16", lambda: True)
    assert config_hash(compose(["trainer.precision=auto"])) == config_hash(compose(["trainer.precision=mixed_bfloat16"]))
