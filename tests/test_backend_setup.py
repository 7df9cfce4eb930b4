"""trainer.compile_cache and trainer.gpu_memory: validated before training, applied to the process
environment before the backend starts, and left out of the config hash."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, compose

from cifar_exp.errors import ConfigError
from cifar_exp.job import config_hash
from cifar_exp.training import backend_setup
from cifar_exp.validate import validate

ENV_KEYS = ("JAX_COMPILATION_CACHE_DIR", "TF_XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
            "XLA_PYTHON_CLIENT_MEM_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH", "XDG_CACHE_HOME",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_auto_cache_is_a_per_user_folder(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backend_setup.cache_folder("auto") == tmp_path / "cifar_exp" / "xla"
    clean_env.delenv("XDG_CACHE_HOME")
    assert backend_setup.cache_folder("auto") == Path.home() / ".cache" / "cifar_exp" / "xla"
    assert backend_setup.cache_folder(None) is None
    assert backend_setup.cache_folder("~/x") == Path.home() / "x"


def test_jax_cache_and_growth_under_the_joblib_launcher(clean_env, tmp_path):
    clean_env.setenv("KERAS_BACKEND", "jax")
    trainer = compose([f"trainer.compile_cache={tmp_path}/cc"]).trainer
    applied = backend_setup.configure(trainer, shared_gpu=True)
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == f"{tmp_path}/cc/jax"
    # Every program cached: a job's many sub-second compiles add up to seconds per job.
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert applied["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # ...unless the user set a threshold in the environment.
    clean_env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
    backend_setup.configure(trainer, shared_gpu=True)
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"


def test_a_cache_folder_in_the_environment_wins_over_auto(clean_env, tmp_path):
    clean_env.setenv("KERAS_BACKEND", "jax")
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    backend_setup.configure(compose(["trainer.compile_cache=auto"]).trainer)
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    backend_setup.configure(compose([f"trainer.compile_cache={tmp_path}/cc"]).trainer)  # explicit: the key wins
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == f"{tmp_path}/cc/jax"


def test_alone_a_job_keeps_the_backends_preallocation_and_a_fraction_sets_it(clean_env, tmp_path):
    clean_env.setenv("KERAS_BACKEND", "jax")
    backend_setup.configure(compose(["trainer.compile_cache=null"]).trainer, shared_gpu=False)
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
    backend_setup.configure(compose(["trainer.compile_cache=null", "trainer.gpu_memory=0.2"]).trainer)
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.200"


def test_tensorflow_gets_its_xla_cache_flag_and_memory_growth(clean_env, tmp_path):
    clean_env.setenv("KERAS_BACKEND", "tensorflow")
    backend_setup.configure(compose([f"trainer.compile_cache={tmp_path}", "trainer.gpu_memory=grow"]).trainer)
    assert f"--tf_xla_persistent_cache_directory={tmp_path}/tensorflow" in os.environ["TF_XLA_FLAGS"]
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


@pytest.mark.parametrize("override, message", [
    ("trainer.compile_cache=''", "trainer.compile_cache"),
    ("trainer.compile_cache=s3://bucket/xla", "a local folder"),
    ("trainer.compile_cache=off", "null to switch the cache off"),
    ("trainer.compile_cache=None", "null to switch the cache off"),
    ("trainer.compile_cache=/dev/null/xla", "a folder this user can create"),  # under a file
    ("trainer.gpu_memory=lots", "trainer.gpu_memory"),
    ("trainer.gpu_memory=1.5", "trainer.gpu_memory"),
])
def test_bad_values_fail_before_training(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose([override]))


def test_null_switches_the_cache_off_and_validates():
    validate(compose(["trainer.compile_cache=null"]))  # it raised TypeError ('in' on None) before


def test_a_fraction_is_refused_under_tensorflow(clean_env):
    clean_env.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match="JAX only"):
        validate(compose(["trainer.gpu_memory=0.5"]))


def test_the_settings_do_not_change_the_config_hash():
    base = config_hash(compose([]))
    assert config_hash(compose(["trainer.compile_cache=null", "trainer.gpu_memory=grow"])) == base


def test_a_job_sets_the_environment_before_the_backend_is_imported(tmp_path):
    """In a fresh process, run_job applies the settings before the first step that imports Keras/JAX
    (check_devices counts the replicas before the run opens; run_task trains)."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        from conftest import compose
        from cifar_exp import job
        seen = {{}}
        def first_backend_step(*args):
            if not seen:
                seen.update(jax_imported="jax" in sys.modules, keras_imported="keras" in sys.modules,
                            cache=os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                            prealloc=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
            return {{"test_accuracy": 0.5}}
        job.check_devices = first_backend_step
        job.run_task = first_backend_step
        cfg = compose(["dataset=synthetic", "trainer.compile_cache={tmp_path}/cc",
                       "mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
        job.run_job(cfg, job.JobContext(output_dir="{tmp_path}/out", choices={{"hydra/launcher": "joblib"}}))
        print(seen)
    """)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = eval(out.stdout.strip().splitlines()[-1])
    assert seen == {"jax_imported": False, "keras_imported": False, "cache": f"{tmp_path}/cc/jax",
                    "prealloc": "false"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    # airbench: AirbenchSGD's own variables (peak rate, decay, total steps).
    ["experiment=airbench", "model.widths=[8,16,16]"],
    # The default recipe (ResNet-9, Nesterov, one-cycle): the schedule's numbers (OptimizerVariables).
    ["model.width=8"],
], ids=["airbench", "resnet9"])
def test_under_jax_jobs_differing_in_swept_numbers_reuse_the_compiled_steps(tmp_path, recipe):
    """Two processes, the second with another optimizer.lr, trainer.epochs, label smoothing and L2
    factor: the second writes no new entry to the persistent cache (its train, test and predict
    steps are the first's programs)."""
    from conftest import run_cli

    pytest.importorskip("jax")
    cache = tmp_path / "cc"
    common = [*recipe, "dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64",
              "trainer.batch_size=64", "trainer.verbose=0", "trainer.checkpoint=false",
              f"trainer.compile_cache={cache}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    # The defaults: trainer.compile_cache caches every program, however fast it compiled.
    env = {"KERAS_BACKEND": "jax"}
    entries = []
    if "experiment=airbench" in recipe:  # from its 0.2 smoothing; its decay is the optimizer's
        second = ["optimizer.lr=5.0", "trainer.label_smoothing=0.1"]
    else:  # from no smoothing and the recipe's 2.5e-4 L2
        second = ["optimizer.lr=0.1", "trainer.label_smoothing=0.1", "model.kernel_l2=1e-4", "model.bias_l2=1e-5"]
    for i, overrides in enumerate((["trainer.epochs=2"], ["trainer.epochs=3", *second])):
        out = run_cli([*common, *overrides, f"hydra.run.dir={tmp_path}/run{i}"], cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        entries.append({p.name for p in (cache / "jax").iterdir() if not p.name.startswith(".")})
    assert entries[0], "the first job wrote nothing to the cache"
    assert entries[1] == entries[0], f"new programs: {sorted(entries[1] - entries[0])}"
