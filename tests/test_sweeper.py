"""The Optuna sweeper plugin: search-space parsing, samplers, pruners, the hand-off of a
trial to a job, resumption; then (slow) real sweeps on synthetic data, read back from the
study and optimization_results.yaml."""
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cifar_exp.errors import ConfigError
from cifar_exp.sweeps import pruning
from cifar_exp.sweeps.sweeper import _optuna as oh
from conftest import CONF, SMOKE, all_runs, run_cli, tracking_uri

# --------------------------------------------------------------------- search space


def test_search_space_reads_hydra_sweep_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = oh.parse_search_space([
        "optimizer.lr=tag(log, interval(1e-4, 1.0))", "weighting.age=interval(0.5, 5.0)",
        "trainer.batch_size=range(64, 257, 64)", "model=choice(lenet, simple_cnn)",
        "+extra=tag(int, interval(1, 8))", "dataset=synthetic", "seed=choice(0, 1)", "seed=3",
    ])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 1.0, log=True)
    assert d["weighting.age"] == FloatDistribution(0.5, 5.0)
    assert d["trainer.batch_size"] == IntDistribution(64, 256, step=64)  # range() excludes its stop
    assert d["model"] == CategoricalDistribution(["lenet", "simple_cnn"])
    assert d["extra"] == IntDistribution(1, 8)
    assert "seed" not in d  # the later, fixed override wins (the command line beats `params`)
    assert space.fixed == ["dataset=synthetic", "seed=3"]
    overrides = space.overrides({"optimizer.lr": 0.00123, "weighting.age": 2.5, "trainer.batch_size": 128,
                                 "model": "lenet", "extra": 4})
    assert overrides == ["optimizer.lr=0.00123", "weighting.age=2.5", "trainer.batch_size=128", "model=lenet",
                         "+extra=4", "dataset=synthetic", "seed=3"]


def test_grid_lists_discrete_parameters_only():
    space = oh.parse_search_space(["model=choice(lenet, simple_cnn)", "trainer.epochs=range(1, 4)",
                                   "optimizer.lr=range(0.1, 0.35, 0.1)"])
    assert space.grid() == {"model": ["lenet", "simple_cnn"], "trainer.epochs": [1, 2, 3],
                            "optimizer.lr": [0.1, 0.2, 0.3]}
    continuous = oh.parse_search_space(["optimizer.lr=interval(0.1, 1)"])
    assert continuous.grid() is None
    with pytest.raises(ConfigError, match="choice"):
        oh.build_sampler({"_target_": "optuna.samplers.GridSampler"}, grid=continuous.grid())


@pytest.mark.parametrize("bad, message", [
    ("x=tag(log, interval(0, 1))", "positive lower end"),
    ("x=tag(exp, interval(1, 2))", "log and int only"),
])
def test_search_space_errors_name_the_key(bad, message):
    with pytest.raises(ConfigError, match=message) as error:
        oh.parse_search_space([bad])
    assert error.value.key == "x"


# --------------------------------------------------------------- samplers and pruners


@pytest.mark.parametrize("name, cls", [("tpe", "TPESampler"), ("random", "RandomSampler"),
                                       ("qmc", "QMCSampler"), ("grid", "GridSampler"),
                                       ("nsgaii", "NSGAIISampler")])
def test_samplers_are_built_from_their_target_and_arguments(name, cls):
    from cifar_exp.sweeps.sweeper import config

    spec = OmegaConf.to_container(OmegaConf.structured(config._SAMPLERS[name]))
    assert spec["_target_"] == f"optuna.samplers.{cls}" and spec["seed"] is None  # the official schema
    sampler = oh.build_sampler(spec, seed=3, grid={"model": ["lenet", "simple_cnn"]})
    assert type(sampler).__name__ == cls


@pytest.mark.parametrize("spec, message", [
    ({"_target_": "optuna.samplers.TPESampler", "n_startup": 3}, "the arguments of optuna.samplers.TPESampler"),
    ({"_target_": "optuna.pruners.MedianPruner"}, "an Optuna sampler class"),
    ({"_target_": "optuna.samplers.NoSuchSampler"}, "an Optuna sampler class"),
])
def test_a_sampler_option_optuna_cannot_build_is_one_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        oh.build_sampler(spec)


def test_a_seed_given_to_the_sampler_option_makes_draws_repeat():
    import optuna

    def draws(spec):
        study = optuna.create_study(sampler=oh.build_sampler(spec))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    spec = {"_target_": "optuna.samplers.RandomSampler", "seed": 123}
    assert draws(spec) == draws(spec) != draws({**spec, "seed": 124})


@pytest.mark.parametrize("name, package", [("cmaes", "cmaes"), ("gp", "torch")])
def test_samplers_with_optional_dependencies_say_what_to_install(name, package):
    from cifar_exp.sweeps.sweeper import config

    spec = OmegaConf.to_container(OmegaConf.structured(config._SAMPLERS[name]))
    try:
        __import__(package)
    except ImportError:
        with pytest.raises(ConfigError, match=f"pip install {package}"):
            oh.build_sampler(spec, seed=0)
    else:
        assert oh.build_sampler(spec, seed=0) is not None


@pytest.mark.parametrize("name, cls", [("median", "MedianPruner"), ("percentile", "PercentilePruner"),
                                       ("successive_halving", "SuccessiveHalvingPruner"),
                                       ("hyperband", "HyperbandPruner"), ("none", "NopPruner")])
def test_pruners_are_built_by_name_with_their_arguments(name, cls):
    from cifar_exp.sweeps.sweeper import config

    spec = OmegaConf.to_container(OmegaConf.structured(config._PRUNERS[name]))
    assert type(oh.build_pruner(spec)).__name__ == cls
    assert type(oh.build_pruner({"name": "threshold", "lower": 0.2})).__name__ == "ThresholdPruner"
    with pytest.raises(ConfigError, match="median"):
        oh.build_pruner({"name": "medain"})


# ------------------------------------------------------------------ trial hand-off


def test_a_job_finds_its_trial_in_a_file_with_the_storage_password_masked(tmp_path, monkeypatch):
    url = "postgresql://me:s3cret@db.example/optuna"
    path = oh.write_trial_file(str(tmp_path), 3, url, "lr", 7, None)
    assert "s3cret" not in path.read_text() and "me:***@" in path.read_text()
    assert pruning.job_trial(3) is None  # outside a sweep (no folder in the environment): no trial
    monkeypatch.setenv(oh.TRIALS_ENV, str(tmp_path))
    assert pruning.job_trial(3) == {"storage": "postgresql://me:***@db.example/optuna", "study_name": "lr",
                                    "number": 3, "trial_id": 7, "monitor": None}
    assert pruning.job_trial(4) is None and pruning.job_trial(None) is None
    monkeypatch.setenv(oh.STORAGE_ENV, url)
    assert oh.job_storage_location("postgresql://me:***@db.example/optuna") == url
    monkeypatch.setenv(oh.STORAGE_ENV, "postgresql://me:other@elsewhere/optuna")
    with pytest.raises(ConfigError, match=oh.STORAGE_ENV):
        oh.job_storage_location("postgresql://me:***@db.example/optuna")


def test_the_default_storage_is_a_journal_file_in_the_sweep_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert oh.storage_location(None, "multirun/x") == str(tmp_path / "multirun/x" / "optuna.journal")
    assert oh.storage_location("studies/a.journal", "multirun/x") == str(tmp_path / "studies/a.journal")
    assert oh.storage_location("sqlite:///a.db", "multirun/x") == "sqlite:///a.db"


def _study(tmp_path, pruner=None):
    import optuna

    location = str(tmp_path / "optuna.journal")
    study = optuna.create_study(storage=oh.open_storage(location), study_name="s", direction="maximize")
    study.set_user_attr(oh.PRUNER_ATTR, pruner)
    return study, location


def test_monitor_key_follows_the_optimized_metric():
    cfg = OmegaConf.create({"optimized_metric": "test_accuracy", "optuna_trial": {"monitor": None}})
    assert pruning.monitor_key(cfg) == "val_accuracy"  # Keras' name for the evaluated split
    cfg.optimized_metric = "val_loss"
    assert pruning.monitor_key(cfg) == "val_loss"
    cfg.optuna_trial.monitor = "accuracy"
    assert pruning.monitor_key(cfg) == "accuracy"


def test_no_trial_no_callback(fake_tracker):
    assert pruning.build_trial_callback(OmegaConf.create({"optuna_trial": None}), fake_tracker) is None


def test_a_job_reports_epochs_and_is_pruned_when_worse_than_the_median(tmp_path, fake_tracker):
    study, location = _study(tmp_path, {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    good = study.ask()
    for step, value in enumerate([0.3, 0.5, 0.7], start=1):
        good.report(value, step)
    study.tell(good, 0.7)

    def job(epochs):
        asked = study.ask()
        coordinates = OmegaConf.create({"storage": location, "study_name": "s", "number": asked.number,
                                        "trial_id": asked._trial_id, "monitor": None})
        reporter = pruning.TrialReporter(pruning.open_trial(coordinates), "val_accuracy", fake_tracker)
        stops = [reporter.epoch_end(epoch, {"val_accuracy": value}) for epoch, value in enumerate(epochs)]
        return asked, stops

    fine, stops = job([0.35, 0.6, 0.8])
    assert stops == [False, False, False]
    bad, stops = job([0.1])
    assert stops == [True]
    frozen = study._storage.get_trial(bad._trial_id)
    assert frozen.intermediate_values == {1: 0.1}
    assert frozen.user_attrs[oh.PRUNED_ATTR] == 1
    assert fake_tracker.tags == {"optuna.pruned": "true", "optuna.pruned_at_epoch": "1"}


def test_an_epoch_that_evaluated_nothing_reports_nothing_and_a_missing_key_is_still_refused(tmp_path, fake_tracker):
    study, location = _study(tmp_path, {"name": "none"})
    asked = study.ask()
    coordinates = OmegaConf.create({"storage": location, "study_name": "s", "number": asked.number,
                                    "trial_id": asked._trial_id, "monitor": None})
    reporter = pruning.TrialReporter(pruning.open_trial(coordinates), "val_accuracy", fake_tracker)
    # trainer.validation_freq=2: epoch 1 has training keys only, epoch 2 the evaluated split's too
    assert reporter.epoch_end(0, {"loss": 1.0, "accuracy": 0.3}) is False
    assert reporter.epoch_end(1, {"loss": 0.8, "accuracy": 0.4, "val_accuracy": 0.35}) is False
    assert study._storage.get_trial(asked._trial_id).intermediate_values == {2: 0.35}
    with pytest.raises(ConfigError, match="val_acc"):  # evaluated, but no such key: a typo, not a skip
        pruning.TrialReporter(pruning.open_trial(coordinates), "val_acc", fake_tracker).epoch_end(
            2, {"loss": 0.7, "val_accuracy": 0.4})


def _sweeper(**overrides):
    from cifar_exp.sweeps.sweeper._impl import OptunaSweeperImpl

    args = dict(sampler={"_target_": "optuna.samplers.RandomSampler"}, pruner={"name": "none"}, direction="maximize", n_trials=4,
                n_jobs=1, seed=0, storage=None, study_name=None, monitor=None, max_failure_rate=1.0,
                heartbeat_s=60, stale_after_s=600, params=None)
    args.update(overrides)
    return OptunaSweeperImpl(**args)


def test_trials_left_running_by_a_dead_sweeper_are_failed_and_queued_again(tmp_path):
    import time

    from optuna.trial import TrialState

    from cifar_exp.sweeps.sweeper import _impl

    study, _ = _study(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def running(worker, beat):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study._storage.set_trial_system_attr(trial._trial_id, _impl.WORKER_ATTR, worker)
        study._storage.set_trial_system_attr(trial._trial_id, _impl.HEARTBEAT_ATTR, beat)
        return trial

    orphan = running(f"{_impl.HOST}:{dead.pid}", time.time())
    elsewhere_alive = running("other-host:1", time.time())
    elsewhere_stale = running("other-host:2", time.time() - 3600)
    _sweeper()._recover_orphans(study)

    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [orphan.number, elsewhere_stale.number]
    # The retry is asked with the orphan's parameters.
    retry = next(t for t in retries if t.user_attrs["retry_of"] == orphan.number)
    asked = study.ask()
    assert asked.number == retry.number and asked.suggest_float("x", 0, 1) == orphan.params["x"]
    study.tell(asked, state=TrialState.FAIL)
    trials = study.get_trials()
    # Orphans do not count towards n_trials; the live trial elsewhere does.
    assert [_impl._counts(t) for t in trials] == [False, True, False, True, False]
    assert elsewhere_alive.number == 1


@pytest.mark.parametrize("override", ["optuna_trial=1", "++optuna_trial={storage:a}"])
def test_an_optuna_trial_not_shaped_as_the_sweeper_sets_it_is_refused_before_training(override):
    """Found by test_fuzz_config: `optuna_trial=1` failed in the pruning callback with a traceback."""
    from cifar_exp.validate import validate
    from conftest import compose

    with pytest.raises(ConfigError, match=r"optuna_trial=.*Allowed: null \(the Optuna sweeper sets it"):
        validate(compose([*SMOKE, override]))


def test_config_errors_come_before_any_trial():
    with pytest.raises(ConfigError, match="minimize or maximize, or a list of them"):
        _sweeper(direction="max")
    with pytest.raises(ConfigError, match="a fraction in"):
        _sweeper(max_failure_rate=2)
    with pytest.raises(ConfigError, match="n_trials"):
        _sweeper(n_trials=0)


def test_probe_points_span_each_parameter_low_middle_high():
    space = oh.parse_search_space(["optimizer.lr=tag(log, interval(1e-4, 1))", "trainer.batch_size=range(32, 161, 32)",
                                   "model=choice(lenet, simple_cnn, alexnet)", "seed=0"])
    low, middle, high = oh.probe_points(space)
    assert low == {"optimizer.lr": 1e-4, "trainer.batch_size": 32, "model": "lenet"}
    assert middle["optimizer.lr"] == pytest.approx(1e-2) and middle["trainer.batch_size"] == 96
    assert high == {"optimizer.lr": 1.0, "trainer.batch_size": 160, "model": "alexnet"}
    assert oh.probe_points(oh.parse_search_space(["seed=0"])) == [{}]
    described = {key: oh.describe(dist) for key, dist in space.distributions.items()}
    assert described == {"optimizer.lr": "tag(log, interval(0.0001, 1.0))", "trainer.batch_size": "32..160 step 32",
                         "model": "choice(lenet, simple_cnn, alexnet)"}


def test_a_config_error_at_every_end_of_the_space_fails_the_sweep_and_at_some_warns(caplog):
    import logging
    import types

    from cifar_exp.main import check_trial_config
    from conftest import compose

    sweeper = _sweeper()
    sweeper.config, sweeper.preflight = None, check_trial_config
    sweeper.hydra_context = types.SimpleNamespace(config_loader=types.SimpleNamespace(
        load_sweep_config=lambda master, overrides: compose(overrides)))
    with pytest.raises(ConfigError, match="optimizer.lr=-2.0"):
        sweeper._check_shared_config(oh.parse_search_space(["optimizer.lr=interval(-2, -1)", "dataset=synthetic"]))
    with pytest.raises(ConfigError, match="trainer.epochs=0"):
        sweeper._check_shared_config(oh.parse_search_space(["optimizer.lr=interval(0.1, 1)", "trainer.epochs=0"]))
    with caplog.at_level(logging.WARNING):
        sweeper._check_shared_config(oh.parse_search_space(["optimizer.lr=interval(-1, 1)", "dataset=synthetic"]))
    assert "Trials near {'optimizer.lr': -1.0} will fail: Invalid config: optimizer.lr=-1.0" in caplog.text
    assert "Trials near {'optimizer.lr': 0.0}" in caplog.text and "{'optimizer.lr': 1.0}" not in caplog.text


def _opened(tmp_path, overrides, **settings):
    sweeper = _sweeper(**settings)
    sweeper.sweep_dir, sweeper.config = str(tmp_path), OmegaConf.create({"optimized_metric": "val_accuracy"})
    return sweeper._open_study(oh.parse_search_space(overrides))


LR = ["optimizer.lr=tag(log, interval(1e-4, 1))", "dataset=synthetic", "mlflow.tracking_uri=sqlite:///a.db"]


@pytest.mark.parametrize("rerun, key, old, new", [
    (["optimizer.lr=choice(0.01,0.1)", *LR[1:]], "optimizer.lr", "tag(log, interval(0.0001, 1.0))",
     "choice(0.01, 0.1)"),
    ([*LR, "model.kernel_l2=interval(0, 1)"], "model.kernel_l2", "not searched", "interval(0.0, 1.0)"),
    ([*LR, "trainer.epochs=2"], "trainer.epochs", "not set", "trainer.epochs=2"),
    ([LR[0], "dataset=cifar10", LR[2]], "dataset", "dataset=synthetic", "dataset=cifar10"),
])
def test_a_rerun_with_other_settings_is_refused_before_any_trial(tmp_path, rerun, key, old, new):
    from optuna.trial import TrialState

    study = _opened(tmp_path, LR)
    trial = study.ask()
    trial.suggest_float("optimizer.lr", 1e-4, 1, log=True)
    study.tell(trial, 0.5)
    with pytest.raises(ConfigError, match="hydra.sweeper.study_name") as caught:
        _opened(tmp_path, rerun)
    assert (caught.value.key, caught.value.value) == (key, new) and caught.value.allowed.startswith(old)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]  # nothing asked, nothing left RUNNING
    # Where results are logged, and the trial count, may change; a study from before settings were
    # stored is checked against its trials' distributions.
    _opened(tmp_path, [*LR[:2], "mlflow.tracking_uri=sqlite:///b.db"], n_trials=9)
    study._storage.set_study_user_attr(study._study_id, oh.SETTINGS_ATTR, None)
    with pytest.raises(ConfigError, match="optimizer.lr"):
        _opened(tmp_path, ["optimizer.lr=choice(0.01,0.1)"])


def test_a_rerun_with_another_metric_or_monitor_is_refused(tmp_path):
    _opened(tmp_path, LR)
    with pytest.raises(ConfigError, match="hydra.sweeper.monitor='val_loss'"):
        _opened(tmp_path, LR, monitor="val_loss")


def test_a_monitored_key_keras_does_not_log_stops_the_job_and_the_sweep(tmp_path, fake_tracker):
    from optuna.trial import TrialState

    study, location = _study(tmp_path)
    asked = study.ask()
    coordinates = OmegaConf.create({"storage": location, "study_name": "s", "number": asked.number,
                                    "trial_id": asked._trial_id, "monitor": "val_acc"})
    reporter = pruning.TrialReporter(pruning.open_trial(coordinates), "val_acc", fake_tracker)
    logs = {"loss": 2.0, "accuracy": 0.2, "val_loss": 2.1, "val_accuracy": 0.1}
    with pytest.raises(ConfigError, match=r"hydra.sweeper.monitor='val_acc'. Allowed: a key Keras logs each "
                                          r"epoch: accuracy, loss, val_accuracy, val_loss"):
        reporter.epoch_end(0, logs)
    study.tell(asked, state=TrialState.FAIL)
    sweeper = _sweeper()
    sweeper.sweep_dir, sweeper.location = str(tmp_path), location
    with pytest.raises(ConfigError, match="val_acc"):
        sweeper._stop_on_shared_error(study, [asked])
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").n_trials == {"fail": 1}


# ----------------------------------------------------------------------- config


def _compose_with_hydra(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("search, keys", [
    ("lr_optuna", {"optimizer.lr", "model.kernel_l2"}),
    ("spl_optuna", {"weighting.age", "weighting.mu", "weighting.gamma", "weighting.age_quantile"}),
])
def test_hparams_search_files_choose_this_sweeper_and_a_search_space(search, keys):
    cfg = _compose_with_hydra([f"hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.sampler._target_, sweeper.pruner.name) == ("optuna.samplers.TPESampler", "median")
    # what they need, set explicitly (the sweeper's defaults are the official plugin's: minimize, 0.0)
    assert (sweeper.direction, sweeper.n_jobs, sweeper.max_failure_rate) == ("maximize", 1, 1.0)
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "trial_${hydra.job.num}"
    assert set(sweeper.params) == keys and sweeper.study_name == search
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.optimized_metric == "val_accuracy"
    assert cfg.dataset.val_fraction > 0  # tuned on a validation split, not on test
    space = oh.parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space.distributions  # the grammar parses
    if search == "spl_optuna":  # a scheme whose fields it searches, not weighting=none
        assert cfg.weighting.name == "mixture" and {"age", "mu", "gamma"} <= set(cfg.weighting)


def test_comparison_presets_set_their_own_sweep():
    cfg = _compose_with_hydra(["experiment=init_comparison"])
    assert (cfg.model.name, cfg.optimizer.name, cfg.init.bias, cfg.trainer.epochs) == ("alexnet", "adam", "same", 5)
    assert (cfg.trainer.batch_size, cfg.dataset.preprocess, cfg.dataset.augment) == (32, "scale", "none")
    params = cfg.hydra.sweeper.params
    # seed 002's 10 initializers (not orthogonal: with init.bias=same it is refused before training)
    assert len(params.init.split(",")) == 10 and "orthogonal" not in params.init and params.seed == "0,1,2"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"

    lrs = {name: _compose_with_hydra(["experiment=optimizer_comparison", f"optimizer={name}"]).optimizer.lr
           for name in ("rmsprop", "adagrad", "adam", "sgd", "nesterov")}
    assert lrs == {"rmsprop": 0.001, "adagrad": 0.001, "adam": 0.001, "sgd": 0.01, "nesterov": 0.01}

    allcnn = _compose_with_hydra(["experiment=allcnn"])
    assert (allcnn.model.name, allcnn.optimizer.name, allcnn.lr_schedule.name, allcnn.trainer.epochs) == (
        "allcnn_c", "momentum", "piecewise", 150)
    resnet9 = _compose_with_hydra(["experiment=resnet9"])
    assert (resnet9.model.name, resnet9.init.name, resnet9.trainer.epochs, resnet9.trainer.batch_size) == (
        "resnet9", "torch_uniform", 24, 512)


# ------------------------------------------------------------------ real sweeps (slow)

FAST_TRIALS = [*SMOKE, "trainer.epochs=1", "hydra.sweeper.seed=0"]


def _study_in(sweep_dir, name):
    import optuna

    return optuna.load_study(study_name=name, storage=oh.open_storage(str(sweep_dir / oh.JOURNAL_FILE)))


@pytest.mark.slow
def test_a_study_grows_to_n_trials_and_a_rerun_resumes_it(tmp_path):
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    # Rates up to 1e-2 (the preset searches up to 1.0, where Adam on LeNet diverges and its trial
    # fails, which the sweep reports with a non-zero exit): here every trial must complete.
    args = ["hparams_search=lr_optuna", *FAST_TRIALS, f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
            f"hydra.sweep.dir={sweep}", "optimizer.lr=tag(log, interval(1e-4, 1e-2))"]

    first = run_cli([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study = _study_in(sweep, "lr_optuna")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == max(t.value for t in study.trials)
    assert set(results.best_params) == {"optimizer.lr", "model.kernel_l2"}
    _, runs = all_runs(tracking_uri(tmp_path))
    assert sorted(r.data.tags["optuna.trial"] for r in runs) == ["0", "1", "2"]
    assert {r.data.tags["optuna.study"] for r in runs} == {"lr_optuna"}
    assert results.best_mlflow_run_id in {r.info.run_id for r in runs}
    # A job's overrides are its parameters: the trial reached it through a file, not `++optuna_trial`
    assert "optuna_trial" not in first.stdout + first.stderr
    assert not any("optuna_trial" in o for o in OmegaConf.load(sweep / "trial_0" / ".hydra" / "overrides.yaml"))
    assert {r.data.params["optuna_trial.trial_id"] for r in runs} == {str(t._trial_id) for t in study.trials}

    second = run_cli([*args, "hydra.sweeper.n_trials=6"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(_study_in(sweep, "lr_optuna").trials) == 6
    assert (sweep / "trial_5").is_dir()

    third = run_cli([*args, "hydra.sweeper.n_trials=6"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "nothing to run" in third.stdout + third.stderr
    assert len(_study_in(sweep, "lr_optuna").trials) == 6
    _, runs = all_runs(tracking_uri(tmp_path))
    assert len(runs) == 6


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_built_to_be_bad(tmp_path):
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    args = ["--multirun", "hydra/sweeper=cifar_exp_optuna", "hydra.sweeper.direction=maximize",
            "hydra.sweeper.n_jobs=1", *SMOKE, "trainer.epochs=3",
            f"mlflow.tracking_uri={tracking_uri(tmp_path)}", f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=2"]
    # One study, one search space: the grid's order under seed 1 runs the good init first, then
    # zeros (chance accuracy). (The study cannot be resumed with another fixed init: a study
    # refuses a rerun whose settings differ, so both inits are grid points.)
    bad = run_cli([*args, "hydra/sweeper/sampler=grid", "hydra.sweeper.seed=1", "init=choice(he_uniform,zeros)",
                   "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert bad.returncode == 0, bad.stderr[-3000:]

    trials = _study_in(sweep, oh.DEFAULT_STUDY_NAME).trials
    assert [t.params["init"] for t in trials] == ["he_uniform", "zeros"]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], bad.stdout[-3000:]
    assert trials[1].user_attrs[oh.PRUNED_ATTR] == 2 and sorted(trials[1].intermediate_values) == [1, 2]
    client, runs = all_runs(tracking_uri(tmp_path))
    pruned = next(r for r in runs if r.data.tags["optuna.trial"] == "1")
    assert pruned.data.tags["optuna.pruned"] == "true"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "loss")] == [1, 2]  # not 3 epochs
    assert OmegaConf.load(sweep / "optimization_results.yaml").n_trials == {"complete": 1, "pruned": 1}


@pytest.mark.slow
def test_a_config_error_every_trial_shares_fails_once_before_any_trial(tmp_path):
    uri = tracking_uri(tmp_path, new=True)  # nothing may create it
    for overrides, message in [
        (["weighting=mixture", "trainer.epochs=1", "hydra.sweeper.n_trials=3"],
         "Error: Invalid config: weighting.warmup_epochs=1. Allowed: fewer than trainer.epochs=1."),
        # the command line's key check (main.check_command_line) meets it first, in the search space
        (["weighting=hard"], "Error: Unknown config key weighting.gamma (in hydra.sweeper.params: weighting.gamma="),
    ]:
        result = run_cli(["hparams_search=spl_optuna", "dataset=synthetic", f"mlflow.tracking_uri={uri}",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides], cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "Trial" not in result.stdout + result.stderr
        assert not (tmp_path / "sweep" / oh.JOURNAL_FILE).exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_monitored_metric_that_does_not_exist_stops_the_sweep_at_the_first_epoch(tmp_path):
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    result = run_cli(["hparams_search=lr_optuna", *FAST_TRIALS, "trainer.epochs=2", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.monitor=val_acc", f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 2
    assert ("Error: Invalid config: hydra.sweeper.monitor='val_acc'. Allowed: a key Keras logs each epoch: "
            "accuracy, cross_entropy, loss, val_accuracy, val_cross_entropy, val_loss") in result.stderr, result.stderr[-3000:]
    trials = _study_in(sweep, "lr_optuna").trials
    assert [t.state for t in trials] == [TrialState.FAIL]  # the second trial never started
    _, runs = all_runs(tracking_uri(tmp_path))
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_a_resumed_study_with_another_search_space_or_config_says_so_and_leaves_no_trial_running(tmp_path):
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    args = ["hparams_search=lr_optuna", *FAST_TRIALS, f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
            f"hydra.sweep.dir={sweep}"]
    first = run_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for rerun, message in [
        (["hydra.sweeper.n_trials=2", "optimizer.lr=choice(0.01,0.1)"],
         "Error: Invalid config: optimizer.lr='choice(0.01, 0.1)'. Allowed: tag(log, interval(0.0001, 1.0)), "
         "as in the existing study 'lr_optuna'"),
        (["hydra.sweeper.n_trials=1", "trainer.epochs=2"],
         "Error: Invalid config: trainer.epochs='trainer.epochs=2'. Allowed: trainer.epochs=1, as in the existing"),
    ]:
        result = run_cli([*args, *rerun], cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr and "hydra.sweeper.study_name" in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert [t.state for t in _study_in(sweep, "lr_optuna").trials] == [TrialState.COMPLETE]
