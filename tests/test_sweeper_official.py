"""The Optuna sweeper as a drop-in for the official hydra-optuna-sweeper: its config schema, search
spaces as Hydra writes them, several objectives, custom_search_space, failures, and jobs whose
overrides carry nothing but their parameters. The slow tests sweep tiny Hydra apps that know
nothing of cifar_exp (tests/optuna_apps/), in subprocesses, and read the sweep's results file and
study back."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_exp.errors import ConfigError
from cifar_exp.sweeps.sweeper import _optuna as oh

APPS = Path(__file__).resolve().parent / "optuna_apps"
ROOT = APPS.parent.parent


def _distribution(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return oh.to_distribution(OverridesParser.create().parse_overrides([f"key={text}"])[0])


@pytest.mark.parametrize("text, expected", [
    ("interval(1, 5)", ("FloatDistribution", 1.0, 5.0, False, None)),
    ("int(interval(1, 5))", ("IntDistribution", 1, 5, False, 1)),
    ("tag(log, interval(1, 5))", ("FloatDistribution", 1.0, 5.0, True, None)),
    ("tag(log, int(interval(1, 5)))", ("IntDistribution", 1, 5, True, 1)),
    ("tag(int, interval(1, 5))", ("IntDistribution", 1, 5, False, 1)),
    # Hydra's range excludes its stop (as its basic sweeper does); the official plugin sampled it
    ("range(1, 3)", ("IntDistribution", 1, 2, False, 1)),
    ("range(0.5, 5.5, step=1)", ("FloatDistribution", 0.5, 4.5, False, 1.0)),
])
def test_search_spaces_as_hydra_writes_them(text, expected):
    dist = _distribution(text)
    assert (type(dist).__name__, dist.low, dist.high, dist.log, dist.step) == expected
    assert all(type(v) is type(expected[1]) for v in (dist.low, dist.high))  # int(...) samples integers


def test_a_range_whose_stop_the_official_plugin_sampled_is_named_for_a_warning():
    space = oh.parse_search_space(["a=range(1, 3)", "b=range(0, 1, 0.3)", "c=shuffle(range(1, 3))",
                                   "d=choice(1, 2)"])
    assert space.excluded_stops == {"a": 3}  # 1, 2 (official: 1, 2, 3); b's stop 1 is off its grid


def test_direction_is_a_string_or_a_list_and_defaults_as_the_official_plugin():
    from cifar_exp.sweeps.sweeper import config
    from cifar_exp.sweeps.sweeper._impl import directions_of

    defaults = OmegaConf.structured(config.OptunaSweeperConf)
    assert (defaults.direction, defaults.max_failure_rate, defaults.n_jobs, defaults.n_trials) == ("minimize", 0.0, 2, 20)
    assert directions_of("maximize") == ["maximize"]
    assert directions_of(OmegaConf.create(["minimize", "maximize"])) == ["minimize", "maximize"]
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=.*a list of them"):
        directions_of(["minimize", "up"])


def test_the_official_option_name_selects_this_sweeper():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(APPS / "conf"), version_base=None):
        cfg = compose("sphere", overrides=["hydra.sweeper.sampler.seed=7"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.sampler._target_, sweeper.sampler.seed, sweeper.direction) == ("optuna.samplers.TPESampler", 7,
                                                                                   "minimize")


def test_cifar_exp_refuses_to_minimise_an_accuracy_before_any_trial():
    """The sweeper's default direction is the official minimize: a cifar_exp sweep without a preset
    that sets it would optimise accuracy the wrong way."""
    from hydra import compose, initialize_config_dir

    from cifar_exp.main import check_trial_config
    from conftest import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=cifar_exp_optuna", "optimized_metric=val_accuracy"],
                      return_hydra_config=True)
    with pytest.raises(ConfigError, match="hydra.sweeper.direction='minimize'. Allowed: maximize for "
                                          "optimized_metric=val_accuracy"):
        check_trial_config(cfg)


def test_the_preflight_hook_marks_the_task_function():
    from cifar_exp.main import check_trial_config, main
    from cifar_exp.sweeps.sweeper import PREFLIGHT_ATTR, preflight

    assert getattr(main.__wrapped__, PREFLIGHT_ATTR) is check_trial_config  # cifar_exp hands over its check

    def task(cfg):
        return 0.0

    assert preflight(print)(task) is task and getattr(task, PREFLIGHT_ATTR) is print


# ----------------------------------------------------------------- tiny apps (slow)


def _sweep(app, tmp_path, *overrides):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(APPS / app), "--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                           *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _study(tmp_path, name):
    import optuna

    return optuna.load_study(study_name=name, storage=oh.open_storage(str(tmp_path / "sweep" / oh.JOURNAL_FILE)))


@pytest.mark.slow
def test_an_official_style_config_runs_unchanged_and_jobs_see_only_their_parameters(tmp_path):
    """Items 1, 2, 3 and 7 of issue 22: an app that is not cifar_exp, the official schema (its
    default direction minimize, the sampler's seed), int(interval(...)), and overrides that carry
    the sampled parameters alone (the job folders are named by ${hydra.job.override_dirname})."""
    result = _sweep("sphere.py", tmp_path, "hydra.sweep.subdir=${hydra.job.override_dirname}")
    assert result.returncode == 0, result.stderr[-3000:]
    study = _study(tmp_path, "sphere")
    values = [t.value for t in study.trials]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.name == "optuna" and len(values) == 10
    assert results.best_value == min(values) and results.best_value < 2  # minimised: x**2 + y**2 near 0
    assert all(isinstance(t.params["y"], int) for t in study.trials)  # int(interval(-3, 3)): integers
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(folders) == 10 and all(f.startswith("x=") and ",y=" in f and f.count("=") == 2 for f in folders)
    assert "optuna_trial" not in result.stdout + result.stderr
    # The same seed again (a new sweep folder) samples the same parameters.
    (tmp_path / "again").mkdir()
    again = _sweep("sphere.py", tmp_path / "again", "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.params for t in _study(tmp_path / "again", "sphere").trials] == [t.params for t in study.trials[:3]]


@pytest.mark.slow
def test_two_objectives_write_and_print_the_pareto_front(tmp_path):
    result = _sweep("pareto.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.direction == ["minimize", "minimize"]
    front = OmegaConf.to_container(results.solutions)
    trials = _study(tmp_path, "study").trials
    assert len(trials) == 12 and front
    assert {(s["params"]["x"], s["params"]["y"]) for s in front} == {
        (t.params["x"], t.params["y"]) for t in trials
        if not any(all(o <= v for o, v in zip(u.values, t.values)) and u.values != t.values for u in trials)}
    output = result.stdout + result.stderr
    assert f"Number of Pareto solutions: {len(front)}" in output
    # range(0, 5.5, step=0.5): the official plugin sampled 5.5 as well; this one says it does not
    assert "x: range(...) samples values below its stop 5.5" in output and "y: range(...)" in output


@pytest.mark.slow
def test_custom_search_space_adds_conditional_parameters(tmp_path):
    result = _sweep("sphere.py", tmp_path, "hydra.sweeper.custom_search_space=sphere.conditional",
                    "hydra.sweeper.n_trials=4")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _study(tmp_path, "sphere").trials
    assert all(abs(t.params["z"] - t.params["x"]) <= 0.5 and 0 <= t.params["+w"] <= 1 for t in trials)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert set(results.best_params) == {"x", "y", "z", "+w"}


@pytest.mark.slow
def test_a_failure_stops_the_sweep_with_the_jobs_own_traceback(tmp_path):
    stopped = _sweep("sphere.py", tmp_path, "fail=true")  # max_failure_rate: 0.0, the official default
    assert stopped.returncode == 1
    assert "RuntimeError: the sphere job refused x=" in stopped.stderr and "sphere.py" in stopped.stderr
    assert "Traceback" in stopped.stderr
    assert len(_study(tmp_path, "sphere").trials) == 1  # the first batch (n_jobs=1) stopped it

    (tmp_path / "t").mkdir()
    tolerated = _sweep("sphere.py", tmp_path / "t", "fail=true", "hydra.sweeper.max_failure_rate=1.0",
                       "hydra.sweeper.n_trials=3")
    assert tolerated.returncode == 1  # all failed: never a silent exit 0
    assert "RuntimeError: the sphere job refused" not in tolerated.stderr
    assert tolerated.stderr.strip().splitlines()[-1].startswith("Error: no trial of study 'sphere' completed")
    assert [t.state.name for t in _study(tmp_path / "t", "sphere").trials] == ["FAIL"] * 3


def test_the_failure_rate_is_counted_per_batch_as_the_official_plugin_counts_it(tmp_path):
    """n_jobs=2, max_failure_rate=0.5: a batch with one failure of two goes on; the next, with two,
    stops the sweep by raising the failing job's own exception."""
    import types

    from hydra.core.utils import JobReturn, JobStatus

    from cifar_exp.sweeps.sweeper._impl import OptunaSweeperImpl

    outcomes = iter([[1.0, RuntimeError("job 1")], [RuntimeError("job 2"), RuntimeError("job 3")], [1.0, 1.0]])
    launched = []

    def launch(batch, initial_job_idx):
        launched.append((initial_job_idx, len(batch)))
        returns = []
        for outcome in next(outcomes):
            ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
            if isinstance(outcome, Exception):
                ret.status = JobStatus.FAILED
            ret._return_value = outcome
            returns.append(ret)
        return returns

    sweeper = OptunaSweeperImpl(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0}, n_trials=6,
                                n_jobs=2, max_failure_rate=0.5, params={"x": "interval(0, 1)"})
    sweeper.config, sweeper.sweep_dir = OmegaConf.create({}), str(tmp_path)
    sweeper.launcher = types.SimpleNamespace(launch=launch)
    sweeper.hydra_context = types.SimpleNamespace(config_loader=types.SimpleNamespace(
        load_sweep_config=lambda master_config, sweep_overrides: master_config))
    with pytest.raises(RuntimeError, match="job 2"):
        sweeper.sweep([])
    assert launched == [(0, 2), (2, 2)]  # each job numbered as its trial
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.n_trials == {"complete": 1, "fail": 3} and results.best_value == 1.0
    assert sorted(p.name for p in (tmp_path / oh.TRIALS_DIR).iterdir()) == ["0.json", "1.json", "2.json", "3.json"]
