"""K-fold polynomial degree selection (seed 002): the numpy core, what a job logs, the CLI sweep."""
import numpy as np
import pytest

from conftest import all_runs, compose, run_cli, tracking_uri
from cifar_exp.errors import ConfigError
from cifar_exp.tasks import kfold


def test_cross_validation_picks_the_true_degree_on_low_noise_data_with_enough_samples():
    result = kfold.study(true_degree=3, noise=0.05, n_samples=400, max_degree=8, folds=5, repeats=10, seed=0)
    assert (result["chosen_1se"] == 3).all()
    assert np.isin(result["chosen"], [3, 4, 5, 6, 7, 8]).all()  # min CV never underfits here...
    assert np.mean(result["chosen"] == 3) >= 0.5                # ...and mostly finds the true degree


def test_training_error_falls_with_degree_while_validation_error_stops_falling_past_the_true_degree():
    rng = np.random.default_rng(0)
    x, y = kfold.sample(kfold.true_coefficients(2, seed=1), 0.1, 200, rng)
    cv = kfold.cross_validate(x, y, np.arange(1, 9), folds=5, rng=rng)
    assert np.all(np.diff(cv["train_mse"]) <= 1e-12)  # nested least-squares models: never worse in-sample
    assert cv["val_mse"][1] < 0.5 * cv["val_mse"][0]  # degree 2 explains what degree 1 cannot
    assert cv["val_mse"][1:].min() > 0.9 * 0.1 ** 2   # no degree beats the noise floor out of sample


def test_the_one_standard_error_rule_takes_the_simplest_degree_within_one_se_of_the_minimum():
    degrees = np.array([1, 2, 3, 4])
    val = np.array([5.0, 1.05, 1.0, 1.2])
    se = np.array([0.1, 0.1, 0.1, 0.1])
    assert kfold.choose(degrees, val, se) == (3, 2)


def test_a_job_logs_errors_per_degree_the_choice_and_a_figure(fake_tracker):
    cfg = compose(["experiment=kfold_poly", "kfold.repeats=3", "kfold.max_degree=6"])
    metrics = kfold.run(cfg, fake_tracker)
    per_degree = {step: m for step, m in fake_tracker.metrics if "val_mse" in m}
    assert sorted(per_degree) == [1, 2, 3, 4, 5, 6]
    assert {"train_mse", "val_mse", "val_mse_se", "chosen_fraction_min_cv"} <= set(per_degree[1])
    assert 1 <= metrics["chosen_degree"] <= 6 and 1 <= metrics["chosen_degree_1se"] <= metrics["chosen_degree"]
    assert metrics["frac_over_min_cv"] + metrics["frac_exact_min_cv"] + metrics["frac_under_min_cv"] == pytest.approx(1)
    assert fake_tracker.tags["kfold.chosen_degree"] == metrics["chosen_degree"]
    assert {"kfold_degree.png", "kfold_degree.csv"} <= set(fake_tracker.artifacts)


@pytest.mark.parametrize("override,key", [
    ("kfold.max_degree=20", "kfold.max_degree"),   # 20 samples in 5 folds: 16 points cannot fit degree 20
    ("kfold.folds=1", "kfold.folds"),
    ("kfold.noise=-1", "kfold.noise"),
    ("optimized_metric=test_accuracy", "optimized_metric"),
])
def test_bad_kfold_settings_name_the_key(override, key):
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError) as error:
        validate(compose(["experiment=kfold_poly", "kfold.n_samples=20", override]))
    assert error.value.key == key


@pytest.mark.slow
def test_the_sweep_logs_one_run_per_noise_level_and_sample_size(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli(["experiment=kfold_poly", "kfold.noise=0.05,2.0", "kfold.n_samples=30,300", "kfold.repeats=5",
                      f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep summary: 4 finished, 0 failed" in result.stdout
    client, runs = all_runs(uri)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    by_setting = {(r.data.params["kfold.noise"], r.data.params["kfold.n_samples"]): r for r in runs}
    assert set(by_setting) == {("0.05", "30"), ("0.05", "300"), ("2.0", "30"), ("2.0", "300")}
    # Little noise, many samples: the true cubic is found; much noise, few samples: simpler models win.
    assert by_setting[("0.05", "300")].data.metrics["chosen_degree_1se"] == 3
    assert by_setting[("2.0", "30")].data.metrics["mean_chosen_degree_1se"] < 3
    history = client.get_metric_history(by_setting[("0.05", "300")].info.run_id, "val_mse")
    assert sorted(m.step for m in history) == list(range(1, 11))
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"kfold_degree.png", "kfold_degree.csv"} <= artifacts
