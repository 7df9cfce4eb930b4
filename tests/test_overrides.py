"""The command line before Hydra runs: unknown keys refused with the nearest real one, user tags,
`--multirun` anywhere, and a multirun's swept keys leading its run names."""
from __future__ import annotations

import os

import pytest

from cifar_exp import main, overrides
from conftest import all_runs, run_cli, tracking_uri


@pytest.mark.parametrize("override", ["trainer.epoch=3", "+trainer.epoch=3", "++trainer.epoch=3"])
def test_a_misspelt_key_is_refused_with_the_nearest_one(override):
    with pytest.raises(overrides.UnknownKeyError, match=r"did you mean trainer\.epochs\?"):
        main.check_command_line(["dataset=synthetic", override])


@pytest.mark.parametrize("args,key", [
    (["init=zeros", "+init.stddev=0.1"], "init.stddev"),                  # a field this option does not have
    (["init=random_normal,zeros", "init.stddev=0.1", "-m"], "init.stddev"),  # one option of a swept group lacks it
    (["experiment=init_comparison", "init.stddev=0.1"], "init.stddev"),     # ... swept by the preset's params
    (["+kfold.noise=0.1"], "kfold.noise"),                                   # only experiment=kfold_poly has it
])
def test_a_key_some_job_would_ignore_is_refused(args, key):
    with pytest.raises(overrides.UnknownKeyError, match=key):
        main.check_command_line(args)


@pytest.mark.parametrize("args", [
    ["+tags.purpose=baseline", "+tags.owner=ana"],
    ["experiment=optimizer_comparison", "keras_default_lr.adam=0.002"],   # a key the preset adds
    ["experiment=kfold_poly", "kfold.noise=0.2,0.5", "-m"],
    ["experiment=transfer_lenet", "transfer.pretrain.dataset.path=/x"],    # a group placed under another key
    ["init=random_normal,truncated_normal", "init.stddev=0.1", "-m"],
    ["hparams_search=lr_optuna", "optimizer.lr=interval(0.01,0.1)", "hydra.sweeper.n_trials=3"],
    ["++optuna_trial={number:1}", "hydra.job.chdir=false"],
    ["model=alexnet", "--cfg", "job"],
])
def test_keys_of_the_config_pass(args):
    main.check_command_line(args)


@pytest.mark.parametrize("args,message", [
    (["model=alexnett"], r"Unknown model option 'alexnett' \(in model=alexnett\): did you mean model=alexnet\? "
                         r"the options are airbench, alexnet, "),
    (["init=zeros,he_normall", "-m"], r"did you mean init=he_normal\?"),           # one option of a sweep
    (["hydra/launcher=joblibb"], r"did you mean hydra/launcher=joblib\?"),
    (["model=qqqqqq"], r"Unknown model option 'qqqqqq' \(in model=qqqqqq\): the options are airbench, "),
])
def test_a_misspelt_option_is_refused_with_the_nearest_one(args, message):
    with pytest.raises(overrides.UnknownChoiceError, match=message):
        main.check_command_line(args)


def test_a_config_dir_of_ones_own_is_checked_with_its_options(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "recipe").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("defaults:\n  - simple_cnn\n  - _self_\nwidth: 64\n")
    (tmp_path / "recipe" / "wide.yaml").write_text("# @package _global_\ndefaults:\n  - /recipe/simple_cnn\n")
    main.check_command_line(["-cd", str(tmp_path), "model=wide", "model.width=8"])
    with pytest.raises(overrides.UnknownKeyError, match=r"did you mean trainer\.epochs\?"):
        main.check_command_line(["-cd", str(tmp_path), "model=wide", "trainer.epoch=3"])


def test_sweeper_params_are_checked_like_the_command_line():
    def compose(groups):
        return {"trainer": {"epochs": 1}, "hydra": {"sweeper": {"params": {"trainer.epoch": "1,2"}}}}

    with pytest.raises(overrides.UnknownKeyError, match=r"hydra.sweeper.params: trainer.epoch=1,2.*trainer\.epochs"):
        overrides.check_keys([], compose, lambda name: [])


def test_swept_keys_are_those_that_vary():
    params = {"kfold.noise": "0.1,0.5", "kfold.n_samples": "20,50"}
    assert overrides.swept_keys(["kfold.n_samples=30", "seed=0,1", "model=alexnet"], params) == ["kfold.noise", "seed"]
    assert overrides.swept_keys(["optimizer.lr=tag(log, interval(1e-4, 1))"], None) == ["optimizer.lr"]


def test_the_multirun_flag_goes_first():
    assert overrides.multirun_flag_first(["a=1", "--multirun", "b=2,3"]) == ["--multirun", "a=1", "b=2,3"]
    assert overrides.multirun_flag_first(["a=1", "--cfg", "job"]) == ["a=1", "--cfg", "job"]


@pytest.mark.slow
@pytest.mark.parametrize("override", ["trainer.epoch=3", "+trainer.epoch=3"])
def test_the_typo_exits_in_one_line_and_records_nothing(tmp_path, override):
    result = run_cli(["dataset=synthetic", f"mlflow.tracking_uri={tracking_uri(tmp_path, new=True)}", override],
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: Unknown config key trainer.epoch (in {override}): did you mean trainer.epochs?"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_multirun_flag_at_the_end_runs_the_sweep_with_swept_values_first(tmp_path):
    uri = tracking_uri(tmp_path)
    result = run_cli(["experiment=kfold_poly", "kfold.repeats=2", "kfold.n_samples=30", "kfold.noise=0.1,0.5",
                      f"mlflow.tracking_uri={uri}", "+tags.purpose=check", "--multirun"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Sweep summary: 2 finished, 0 failed" in result.stdout
    client, runs = all_runs(uri)
    names = sorted(r.info.run_name for r in runs)
    assert [name.split(",")[0] for name in names] == ["kfold.noise=0.1", "kfold.noise=0.5"]
    assert all({"experiment=kfold_poly", "kfold.repeats=2", "kfold.n_samples=30"} <= set(n.split(",")) for n in names)
    for run in runs:
        assert run.data.tags["swept_keys"] == "kfold.noise"
        assert run.data.tags["swept.kfold.noise"] == run.data.params["kfold.noise"]
        assert run.data.tags["purpose"] == "check"
    experiment = client.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert os.environ.get(overrides.SWEPT_KEYS_ENV) is None  # the child's, not ours
