"""Nothing meaningless is recorded as a success: diverged runs fail, runs at chance level are tagged."""
import json
import math

import numpy as np
import pytest

from cifar_exp.training import outcome
from cifar_exp.training.outcome import TrainingDiverged
from conftest import SMOKE, all_runs, tracking_uri

BOUND_10 = 10 * math.log(10)  # 23.03 nats for 10 classes


# ------------------------------------------------------------------------- the rules

def test_the_explosion_bound_is_ten_times_chance_level_cross_entropy():
    assert outcome.explosion_bound(10) == pytest.approx(BOUND_10)
    assert outcome.explosion_bound(100) == pytest.approx(10 * math.log(100))


@pytest.mark.parametrize("logs, eval_split, message", [
    ({"loss": float("nan")}, "test", "loss became nan in epoch 2"),
    ({"loss": 2.3, "val_loss": float("inf")}, "test", "test_loss became inf"),  # the evaluated split, named
    ({"val_accuracy": float("nan")}, "val", "val_accuracy became nan"),
    ({"loss": 2.4e9, "cross_entropy": 2.4e9}, "test", r"cross_entropy reached 2\.4e\+09 nats"),  # finite, exploded
    ({"unweighted_loss": 1e4}, "test", "unweighted_loss reached"),  # self-paced train_pass's recorder
])
def test_non_finite_or_exploding_values_on_any_split_fail(logs, eval_split, message):
    with pytest.raises(TrainingDiverged, match=message):
        outcome.check_metrics(logs, 10, "epoch 2", eval_split)


def test_the_bound_is_on_training_an_evaluated_split_fails_on_non_finite_values_only():
    # BatchNorm's moving statistics lag the weights early on: an evaluation can score far above the
    # bound while training is healthy (ResNet-9's recipe after 10 steps: 143 nats on test, 2.7 in training).
    outcome.check_metrics({"cross_entropy": 2.7, "val_cross_entropy": 142.9}, 10, "epoch 1", "test")
    outcome.check_metrics({"test_cross_entropy": 142.9, "test_accuracy": 0.1}, 10, "the final evaluation")
    with pytest.raises(TrainingDiverged, match="test_cross_entropy became nan"):
        outcome.check_metrics({"val_cross_entropy": math.nan}, 10, "epoch 1", "test")
    with pytest.raises(TrainingDiverged, match="cross_entropy reached"):
        outcome.check_metrics({"cross_entropy": 142.9}, 10, "epoch 1", "test")


def test_healthy_values_pass_including_a_large_l2_penalty_in_loss():
    # `loss` holds the L2 penalties: only the cross-entropy metrics are bounded.
    outcome.check_metrics({"loss": 80.0, "cross_entropy": 2.2, "val_loss": 81.0, "val_cross_entropy": BOUND_10,
                           "accuracy": 0.3, "spl_lambda": math.inf}, 10, "epoch 1")


def test_the_chance_bound_is_three_binomial_standard_deviations_above_chance():
    assert outcome.chance_bound(0.1, 10_000) == pytest.approx(0.109)
    assert outcome.chance_bound(0.1, 256) == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 256))
    # Chance is the most frequent test class: an unbalanced limit_test raises it.
    assert outcome.chance_accuracy(np.array([0, 0, 0, 1, 2, 3])) == pytest.approx(0.5)
    assert outcome.verdict({"test_accuracy": 0.105, "chance_accuracy_bound": 0.109})[0] == "did_not_learn"
    assert outcome.verdict({"test_accuracy": 0.109, "chance_accuracy_bound": 0.109})[0] == "learned"
    assert outcome.verdict({"chosen_degree": 3.0}) is None  # kfold_poly: no accuracy, no verdict


# ------------------------------------------------------------- what Keras logs, and when it stops

def _tiny_model(lr):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(from_logits=True,
                                                                                   name="cross_entropy")])
    return model


def test_keras_weights_the_loss_but_not_the_compiled_metrics():
    """Why self-paced runs log `cross_entropy`: with sample_weight, Keras' `loss` is sum(v l) / batch
    size, while metrics passed as `metrics=` (not `weighted_metrics=`) ignore the weights."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 10, 64)
    model = _tiny_model(0.01)
    plain = model.test_on_batch(x, y, return_dict=True)
    half = model.test_on_batch(x, y, sample_weight=np.repeat([1.0, 0.0], 32).astype("float32"), return_dict=True)
    assert plain["loss"] == pytest.approx(plain["cross_entropy"], rel=1e-5)
    assert half["loss"] < 0.75 * plain["loss"]  # half the samples weigh nothing
    assert half["cross_entropy"] == pytest.approx(plain["cross_entropy"], rel=1e-5)
    assert half["accuracy"] == pytest.approx(plain["accuracy"])


def test_the_callback_stops_training_at_the_batch_where_it_diverged():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(640, 8)).astype("float32"), rng.integers(0, 10, 640)
    model = _tiny_model(1e6)
    seen = []

    class Count(__import__("keras").callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch \d"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False,
                  callbacks=[outcome.divergence_callback(10, "test"), Count()])
    assert len(seen) < 20  # far from the 60 batches of 3 epochs: stopped within the first epoch


# --------------------------------------------------------------------------- whole jobs

def _context(tmp_path, num, overrides):
    from cifar_exp import job

    return job.JobContext(overrides=overrides, output_dir=str(tmp_path / "sweep" / str(num)),
                          sweep_dir=str(tmp_path / "sweep"), job_num=num, multirun=True)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_diverged_job_fails_with_a_hint_and_a_job_at_chance_is_tagged_and_summarised(tmp_path, capsys, caplog):
    """The new user's command (sgd, constant lr=1e6 on synthetic data) and an all-zeros init, as a sweep."""
    from omegaconf import OmegaConf

    from conftest import compose
    from cifar_exp import job
    from cifar_exp.sweeps.summary import SweepSummary

    uri = tracking_uri(tmp_path)
    jobs = [["optimizer=sgd", "optimizer.lr=1e6"],  # diverges
            ["init=zeros"]]                          # every unit alike: predicts one class, at chance
    values = []
    for num, overrides in enumerate(jobs):
        cfg = compose([*SMOKE, *overrides, f"mlflow.tracking_uri={uri}"])
        values.append(job.run_job(cfg, _context(tmp_path, num, overrides)))
    assert math.isnan(values[0])

    client, runs = all_runs(uri)
    by_init = {r.data.params["init.name"]: r for r in runs}
    diverged, idle = by_init["he_normal"], by_init["zeros"]
    assert diverged.info.status == "FAILED"
    assert "TrainingDiverged" in diverged.data.tags["error"]
    assert "optimizer.lr=1000000.0" in diverged.data.tags["failure_hint"]
    record = json.loads((tmp_path / "sweep" / "0" / "job_status.json").read_text())
    assert record["status"] == "FAILED" and "smaller learning rate" in record["hint"]

    assert idle.info.status == "FINISHED"
    assert idle.data.tags["outcome"] == "did_not_learn"
    assert idle.data.metrics["test_accuracy"] < idle.data.metrics["chance_accuracy_bound"]
    assert "128 test images" in idle.data.tags["outcome_detail"]
    assert json.loads((tmp_path / "sweep" / "1" / "job_status.json").read_text())["outcome"] == "did_not_learn"
    assert "did not learn: test_accuracy" in caplog.text  # the job's closing console line

    summary = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(summary)
    out = capsys.readouterr().out
    assert "Sweep summary: 1 finished, 1 failed, 1 did not learn" in out
    assert "hint: the loss diverged with optimizer.lr=1000000.0" in out
    assert "did not learn: init=zeros" in out


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_nan_in_the_final_test_evaluation_fails_the_run(fake_tracker, monkeypatch):
    from conftest import compose
    from cifar_exp.training import fit as train

    # With a validation split the test split is evaluated only at the end.
    monkeypatch.setattr(train, "_final_test_metrics", lambda *args: {"test_loss": math.nan, "test_accuracy": 0.5})
    cfg = compose([*SMOKE, "trainer.epochs=1", "dataset.val_fraction=0.25"])
    with pytest.raises(TrainingDiverged, match="test_loss became nan in the final evaluation"):
        train.run(cfg, fake_tracker)
    assert "outcome" not in fake_tracker.tags


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
@pytest.mark.parametrize("losses_from", ["eval_pass", "train_pass"])
def test_self_paced_runs_log_the_plain_cross_entropy_beside_the_weighted_loss(fake_tracker, losses_from):
    from conftest import compose
    from cifar_exp.training import fit as train

    cfg = compose([*SMOKE, "weighting=linear", "weighting.warmup_epochs=0", f"weighting.losses_from={losses_from}",
                   "dataset.val_fraction=0.25"])
    final = train.run(cfg, fake_tracker)
    epochs = [metrics for step, metrics in fake_tracker.metrics if "loss" in metrics]
    for m in epochs:
        assert {"loss", "cross_entropy", "accuracy", "val_loss", "val_cross_entropy"} <= set(m)
        # v <= 1 and Keras divides sum(v l) by the batch size: the weighted loss is the smaller.
        assert m["loss"] < m["cross_entropy"]
    assert {"test_loss", "test_accuracy", "test_cross_entropy", "chance_accuracy_bound"} <= set(final)
    assert fake_tracker.tags["outcome"] in ("learned", "did_not_learn")


def test_the_sweep_summary_names_jobs_skipped_as_finished_before(tmp_path, capsys):
    import json

    from cifar_exp.sweeps.summary import summarize

    for i, skipped in enumerate((True, False)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "job_status.json").write_text(json.dumps(
            {"status": "FINISHED", "run_id": str(i), "value": 0.5, "overrides": [], "error": None, "hint": None,
             "outcome": "learned", "skipped": skipped}))
    assert summarize(str(tmp_path))
    assert "Sweep summary: 2 finished (1 skipped: finished before in this MLflow experiment; " \
           "sweep.rerun=true runs them again), 0 failed" in capsys.readouterr().out
