"""Issue 24: where a job's seconds go (time/*), which batches are read from the device, per-model hooks;
issue 20.12: memory across the jobs of one multirun process."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cifar_exp.training import phases
from conftest import SMOKE, all_runs, run_cli, tracking_uri


def test_nested_phases_count_each_second_once(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 10.0])  # train opens at 0, tracking 1..3 inside it, train closes at 10
    monkeypatch.setattr(phases.time, "perf_counter", lambda: next(clock))
    timer = phases.PhaseTimer()
    with timer.phase("train"):
        with timer.phase("tracking"):
            pass
    timer.add("compile", 4.0)  # nothing open: counted for compile only
    assert timer.seconds == {"tracking": 2.0, "train": 8.0, "compile": 4.0}
    assert timer.metrics()["time/train"] == 8.0 and set(timer.metrics()) >= {"time/tracking", "time/compile"}


def test_a_timed_proxy_counts_calls_of_the_target_and_passes_attributes():
    class Target:
        run_id = "abc"

        def log(self, value):
            return value * 2

    timer = phases.PhaseTimer()
    proxy = timer.timed(Target(), "tracking")
    assert proxy.run_id == "abc" and proxy.log(2) == 4 and "tracking" in timer.seconds


class _CountedValue:
    """A log value that counts how often it is converted: each conversion is a device-to-host read."""

    reads = 0

    def __array__(self, dtype=None, copy=None):
        _CountedValue.reads += 1
        return np.asarray(1.0, dtype=dtype)


def test_batch_logs_are_read_only_for_the_batches_a_callback_wants():
    import keras

    from cifar_exp.training.batch_reads import ReadOnDemand

    class EpochsOnly(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    class EveryThird(keras.callbacks.Callback):
        seen = []

        def wants_batch(self, batch):
            return batch % 3 == 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append((batch, logs["loss"]))

    _CountedValue.reads = 0
    callbacks = ReadOnDemand([EpochsOnly()], model=None, verbose=0, epochs=1, steps=9)
    for batch in range(9):
        callbacks.on_train_batch_end(batch, {"loss": _CountedValue()})
        callbacks.on_test_batch_end(batch, {"loss": _CountedValue()})
    assert _CountedValue.reads == 0  # Keras' own list reads all 18

    every_third = EveryThird()
    callbacks = ReadOnDemand([EpochsOnly(), every_third], model=None, verbose=0, epochs=1, steps=9)
    for batch in range(9):
        callbacks.on_train_batch_end(batch, {"loss": _CountedValue()})
    assert _CountedValue.reads == 3 and every_third.seen == [(0, 1.0), (3, 1.0), (6, 1.0)]


@pytest.mark.parametrize("verbose,expected_reads", [(2, 0), (1, 4)])
def test_keras_progress_bar_reads_a_batch_only_when_it_redraws(monkeypatch, capsys, verbose, expected_reads):
    """verbose=2 prints one line per epoch from the epoch's logs: no batch is read; a terminal's bar
    (verbose=1) is redrawn from a batch at most every PROGRESS_BAR_EVERY_S (Keras' own read all 90)."""
    from cifar_exp.training import batch_reads

    now = [0.0]
    monkeypatch.setattr(batch_reads.time, "monotonic", lambda: now[0])
    _CountedValue.reads = 0
    callbacks = batch_reads.ReadOnDemand([], model=_tiny_model(0.1), verbose=verbose, epochs=1, steps=90)
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for batch in range(90):
        now[0] = batch * 0.02  # 20 ms a batch: 1.8 s in all
        callbacks.on_train_batch_end(batch, {"loss": _CountedValue()})
    callbacks.on_epoch_end(0, {"loss": 0.5})
    assert _CountedValue.reads == expected_reads  # verbose=1: batches 0, 25, 50 and 75 (0, 0.5, 1.0, 1.5 s)
    printed = capsys.readouterr().out
    assert "90/90" in printed and "loss: 0.5" in printed  # the epoch's line, from the epoch's logs


def test_the_early_estimate_reads_the_first_batch_and_then_only_the_one_where_it_is_due(monkeypatch):
    from cifar_exp import console

    now = [0.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    progress = console.progress_callback(24, "test")
    progress.params = {"steps": 1000, "epochs": 24}
    progress.on_train_begin()
    wanted = []
    for batch in range(1000):
        now[0] = 5.0 + batch  # the first batch ends at 5 s (compiling), then 1 s a batch
        if progress.wants_batch(batch):
            wanted.append(batch)
            progress.on_train_batch_end(batch)
    assert wanted == [0, console.EARLY_ESTIMATE_S]  # the first batch, then 30 s after it; no other read


def _tiny_model(lr):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="cross_entropy")])
    return model


@pytest.mark.parametrize("every_s,where", [(0.0, r"epoch 1, batch \d+"), (math.inf, r"in epoch 1(?!, batch)")])
def test_divergence_is_caught_at_a_read_batch_or_at_the_epoch_end(every_s, where):
    """Under fit.py's callback list: reading every batch stops at the batch; reading none, at the
    end of the same first epoch (always checked), never later."""
    from cifar_exp.training.batch_reads import ReadOnDemand
    from cifar_exp.training.outcome import TrainingDiverged, divergence_callback

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(640, 8)).astype("float32"), rng.integers(0, 10, 640)
    model = _tiny_model(1e6)
    callbacks = ReadOnDemand([divergence_callback(10, "test", every_s=every_s)], model, verbose=0, epochs=3,
                             steps=20)
    with pytest.raises(TrainingDiverged, match=where):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=callbacks)


def test_channel_statistics_are_computed_once_per_data_identity():
    from cifar_exp.data.augment import channel_stats

    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    first = channel_stats(images, key=("test", "same images"))
    # The same key names the same images: the kept result is returned, nothing is recomputed.
    again = channel_stats(np.zeros_like(images), key=("test", "same images"))
    assert again is first
    assert not np.allclose(channel_stats(np.zeros_like(images))[0], first[0])  # no key: computed


def test_every_model_has_a_spec_and_training_asks_for_none_by_name():
    from pathlib import Path

    from cifar_exp.models.registry import MODELS

    conf = Path(__file__).resolve().parent.parent / "cifar_exp" / "conf" / "model"
    assert {p.stem for p in conf.glob("*.yaml")} == set(MODELS)
    for path in ("cifar_exp/training/fit.py", "cifar_exp/training/optim.py"):
        source = (Path(__file__).resolve().parent.parent / path).read_text()
        assert '== "airbench"' not in source and "model.name ==" not in source, path


# ----------------------------------------------------------------- a multirun in one process

JOBS, WARMUP = 6, 2
MAX_GROWTH_MB_PER_JOB = 2.0


@pytest.mark.slow
def test_a_multirun_logs_where_each_jobs_seconds_went_and_does_not_grow_per_job(tmp_path):
    """6 tiny jobs in one basic-launcher process: each run carries its time/* phases and its RSS
    after the job (memory/rss_mb); after 2 jobs of warm-up, the process grows at most 2 MB a job
    (least-squares slope; issue 20.12)."""
    uri = tracking_uri(tmp_path)
    tiny = [o for o in SMOKE if not o.startswith(("trainer.epochs", "dataset.train_size", "dataset.test_size"))]
    done = run_cli(["--multirun", *tiny, "trainer.epochs=1", "dataset.train_size=256", "dataset.test_size=64",
                    f"seed=range(0,{JOBS})", f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, runs = all_runs(uri)
    runs = sorted(runs, key=lambda run: int(run.data.tags["job_num"]))
    assert len(runs) == JOBS
    for run in runs:
        assert {"time/setup", "time/data", "time/build", "time/compile", "time/train", "time/validate",
                "time/evaluate", "time/plots", "time/tracking", "time/checkpoint"} <= set(run.data.metrics)
        assert all(run.data.metrics[k] >= 0 for k in run.data.metrics if k.startswith("time/"))
    rss = [run.data.metrics["memory/rss_mb"] for run in runs][WARMUP:]
    n = len(rss)
    growth = sum((i - (n - 1) / 2) * (v - sum(rss) / n) for i, v in enumerate(rss)) / sum(
        (i - (n - 1) / 2) ** 2 for i in range(n))
    # Before fit.release_job_state dropped TensorFlow's custom gradients: 12.7 MB a job here.
    assert growth <= MAX_GROWTH_MB_PER_JOB, rss


def test_a_failed_jobs_objects_are_not_frozen_at_its_release():
    """release_job_state freezes what outlives a job (gc.freeze) so the next collections skip it; a job
    that failed still holds its model through the exception's traceback: that must stay collectable."""
    import gc
    import weakref

    from cifar_exp.training.fit import release_job_state

    class Model:
        pass

    model = Model()
    model.itself = model  # a cycle: only the collector frees it
    alive = weakref.ref(model)
    try:
        raise RuntimeError(model)  # the failed job's error, holding its model
    except RuntimeError:
        release_job_state()
    del model
    gc.collect()
    assert alive() is None


VALIDATE_SCRIPT = """
import json, os
os.environ["KERAS_BACKEND"] = "jax"
from conftest import compose
from cifar_exp.training import fit
from cifar_exp.training.phases import PhaseTimer
from cifar_exp.tracking.runs import NullTracker

class Recorder(NullTracker):
    epochs = []
    def log_metrics(self, metrics, step=None):
        if "epoch_time" in metrics:
            self.epochs.append(metrics)

timer, tracker = PhaseTimer(), Recorder()
fit.run(compose(["model=simple_cnn", "model.width=16", "dataset=synthetic", "dataset.train_size=2048",
                 "dataset.test_size=64", "trainer.batch_size=128", "trainer.epochs=2", "trainer.verbose=0",
                 "trainer.checkpoint=false"]), tracker, timer=timer)
print(json.dumps({"validate": timer.seconds["validate"], "train": timer.seconds["train"],
                  "evaluating": sum(e["epoch_time"] - e["epoch_train_time"] for e in tracker.epochs)}))
"""


@pytest.mark.slow
def test_under_jax_validate_counts_the_evaluations_not_the_training_steps_still_queued(tmp_path):
    """JAX dispatches asynchronously: when an epoch's evaluation begins, the epoch's training steps can
    still be queued on the device (a whole epoch on a CPU). time/validate starts after them, as the
    epochs' epoch_time - epoch_train_time does (a new user found validate 7 s for a 0.1-s test pass)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("jax")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cc"))
    done = subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = json.loads(done.stdout.strip().splitlines()[-1])
    assert seconds["validate"] <= seconds["evaluating"] + 0.25, seconds
    assert seconds["validate"] < 0.5 * seconds["train"], seconds
