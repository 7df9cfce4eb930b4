"""What a person sees of a job: the start line (where it is logged), the epoch line with an ETA,
the slow-CPU warning, the closing line; and what the MLflow UI shows (experiment kind, run names,
swept and user tags)."""
from __future__ import annotations

import json
import logging

import pytest

from cifar_exp import console
from cifar_exp.errors import ConfigError
from cifar_exp.job import JobContext, run_job, run_name, run_tags
from conftest import all_runs, compose, tracking_uri


def test_start_and_closing_lines_say_where_the_run_is_and_how_it_ended(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative default store: the line must name it absolutely
    cfg = compose(["experiment=kfold_poly", "kfold.repeats=2", "kfold.n_samples=30", "+tags.purpose=baseline"])
    with caplog.at_level(logging.INFO):
        value = run_job(cfg, JobContext(overrides=["experiment=kfold_poly"], output_dir=str(tmp_path / "job")))
    client, [run] = all_runs(f"sqlite:///{tmp_path}/mlflow.db")
    lines = [r.getMessage() for r in caplog.records]
    start = next(line for line in lines if line.startswith(f"MLflow run {run.info.run_id}"))
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in start
    assert f"runs/{run.info.run_id}?workflowType=machine_learning" in start  # MLflow 3's UI: open on runs
    assert f"experiment 'cifar_exp'" in start and str(tmp_path / "job") in start
    closing = next(line for line in lines if line.startswith(f"run {run.info.run_id} FINISHED in "))
    assert f"test_mse={value:.4g}" in closing
    assert run.data.tags["purpose"] == "baseline"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_ui_command_serves_where_its_link_points():
    hint = console.ui_hint("sqlite:////data/mlflow.db", "#/experiments/1/runs/abc")
    command, link = hint.removeprefix("see it with: ").split(" (then ")
    assert command == "mlflow ui --backend-store-uri sqlite:////data/mlflow.db --host 127.0.0.1 --port 5000"
    assert link.startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc?")


def test_a_user_tag_may_not_replace_one_the_job_sets(tmp_path):
    uri = tracking_uri(tmp_path)
    cfg = compose(["experiment=kfold_poly", f"mlflow.tracking_uri={uri}", "+tags.sweep_id=mine"])
    with pytest.raises(ConfigError, match="tags.sweep_id"):
        run_job(cfg, JobContext(multirun=False))
    assert not all_runs(uri)[1]


def test_swept_values_lead_the_run_name_and_become_tags():
    cfg = compose(["init=zeros", "seed=1"])
    context = JobContext(overrides=["dataset=synthetic", "init=zeros", "seed=1", "mlflow.experiment_name=x"],
                         multirun=True, swept_keys=["seed", "init"])
    assert run_name(cfg, context) == "seed=1,init=zeros,dataset=synthetic"
    tags = run_tags(cfg, context)
    assert (tags["swept_keys"], tags["swept.seed"], tags["swept.init"]) == ("seed,init", "1", "zeros")
    assert "swept_keys" not in run_tags(cfg, JobContext(overrides=context.overrides))  # a single run sweeps nothing


def test_the_epoch_line_names_the_evaluated_split():
    line = console.epoch_line(3, 24, {"loss": 1.5, "val_accuracy": 0.5}, elapsed_s=125, eta_s=3725, eval_split="test")
    assert line == "Epoch 3/24: loss=1.5, test_accuracy=0.5 | 2m05s elapsed, ETA 1h02m"


def test_the_eta_leaves_out_the_compiling_first_epoch_once_another_is_timed():
    assert console.remaining_s([40.0], 10) == 400.0
    assert console.remaining_s([40.0, 10.0, 12.0], 10) == 110.0


@pytest.mark.parametrize("on_cpu,first_epoch_s,warned", [(True, 100.0, True), (True, 10.0, False), (False, 100.0, False)])
def test_a_long_cpu_job_is_told_the_quicker_options(caplog, monkeypatch, on_cpu, first_epoch_s, warned):
    clock = iter([0.0, first_epoch_s])
    monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
    progress = console.progress_callback(24, "test", on_cpu=on_cpu)
    with caplog.at_level(logging.INFO):
        progress.on_train_begin()
        progress.on_epoch_end(0, {"loss": 2.0})
    assert any(r.getMessage().startswith("Epoch 1/24: loss=2") for r in caplog.records)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warned
    if warned:
        assert "trainer.epochs=3" in warnings[0] and "dataset.limit_train" in warnings[0] and "GPU" in warnings[0]


def test_the_first_batches_give_an_early_estimate_and_warn_a_long_cpu_job_once(caplog, monkeypatch):
    # 100 steps an epoch, 24 epochs; the first batch (compiling) ends at 5 s, then 1 s a batch.
    clock = iter([0.0, 5.0, 15.0, 40.0] + [1000.0])
    monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
    progress = console.progress_callback(24, "test", on_cpu=True)
    progress.params = {"steps": 100, "epochs": 24}
    with caplog.at_level(logging.INFO):
        progress.on_train_begin()
        progress.on_train_batch_end(0)   # 5 s: the first batch, compiling
        progress.on_train_batch_end(10)  # 15 s: too early to judge the pace
        assert not caplog.records
        progress.on_train_batch_end(35)  # 40 s: 35 s for 35 batches, 1 s each
        progress.on_epoch_end(0, {"loss": 2.0})
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Epoch 1/24: batch 36/100 after 40s") and "about 1m44s for this epoch" in lines[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "from its first batches" in warnings[0]  # not again after the epoch


def test_a_sweep_job_points_at_a_shared_view_of_the_sweeps_runs(tmp_path, caplog):
    uri = tracking_uri(tmp_path)
    cfg = compose(["experiment=kfold_poly", "kfold.repeats=2", "kfold.n_samples=30", "kfold.noise=0.5",
                   f"mlflow.tracking_uri={uri}"])
    context = JobContext(overrides=["kfold.noise=0.5", "experiment=kfold_poly"], output_dir=str(tmp_path / "0"),
                         sweep_dir=str(tmp_path), job_num=0, multirun=True, swept_keys=["kfold.noise"])
    with caplog.at_level(logging.INFO):
        run_job(cfg, context)
    client, [run] = all_runs(uri)
    key = f"sweep_{run.data.tags['sweep_id']}"
    view = json.loads(client.get_experiment(run.info.experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    assert view["searchFilter"] == f"tags.sweep_id = '{run.data.tags['sweep_id']}'"
    assert view["selectedColumns"][0] == "metrics.`test_mse`" and "tags.`swept.kfold.noise`" in view["selectedColumns"]
    assert view["orderByAsc"] is True  # a mean squared error: smallest first
    assert any(f"runs?viewStateShareKey={key}&workflowType=machine_learning" in r.getMessage() for r in caplog.records)
