"""The package installs like any Python tool: a wheel holds every module and every config,
and a non-editable install runs from any directory, Optuna sweeper included; a folder of the
user's own configs joins the shipped ones (README, *Your own configs*)."""
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, SMOKE, all_runs, compose, tracking_uri

HEAVY = {"tensorflow", "keras", "jax", "mlflow"}  # what --help and --cfg job must not import


def found_packages() -> set[str]:
    """What setuptools' discovery finds with pyproject.toml's [tool.setuptools.packages.find]."""
    import tomllib

    from setuptools import find_namespace_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return set(find_namespace_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ())))


def test_setuptools_finds_every_package_and_config_group_without_a_hand_kept_list():
    assert "packages = [" not in (ROOT / "pyproject.toml").read_text()
    assert CONF == ROOT / "cifar_exp" / "conf" and not (ROOT / "conf").exists()
    folders = {".".join(f.parent.relative_to(ROOT).parts) for top in ("cifar_exp", "hydra_plugins")
               for pattern in ("*.py", "*.yaml") for f in (ROOT / top).rglob(pattern)}
    assert folders <= found_packages()
    assert {"cifar_exp.conf", "cifar_exp.conf.model", "hydra_plugins.cifar_exp_optuna_sweeper"} <= folders
    assert not any("__pycache__" in p for p in found_packages())
    # hydra_plugins itself has no __init__.py: a namespace package that other plugins share.
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()


# ---------------------------------------------------------------- the user's own configs


def readme_own_configs(folder: Path) -> list[str]:
    """Writes the documentation's example files (docs/recipes.md, "Your own configs") under `folder`;
    returns their paths relative to it."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    section = text[text.index("## Your own configs"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    written = []
    for relative, body in re.findall(r"`~/my_conf/([\w/]+\.yaml)`:\n\n```yaml\n(.*?)```", section, flags=re.S):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(body)
        written.append(relative)
    return written


def test_a_folder_of_ones_own_configs_adds_a_model_and_an_experiment(tmp_path):
    from cifar_exp.validate import validate

    assert readme_own_configs(tmp_path) == ["model/simple_cnn_wide.yaml", "recipe/simple_cnn_wide.yaml",
                                            "experiment/wide_adam.yaml"]
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"

    wide = compose([searchpath, "model=simple_cnn_wide"]).model
    shipped = compose(["model=simple_cnn"]).model
    assert (wide.name, wide.width, wide.dense_units) == ("simple_cnn", 64, 1024)
    assert {k: v for k, v in wide.items() if k not in ("width", "dense_units")} == \
           {k: v for k, v in shipped.items() if k not in ("width", "dense_units")}

    cfg = compose([searchpath, "experiment=wide_adam"])
    assert (cfg.model.width, cfg.optimizer.name, cfg.lr_schedule.name, cfg.trainer.epochs) == \
           (64, "adam", "constant", 10)
    assert cfg.trainer.batch_size == compose(["model=simple_cnn"]).trainer.batch_size  # simple_cnn's recipe
    validate(cfg)


# ------------------------------------------------------- a wheel in a fresh environment (slow)


def build_wheel(tmp_path) -> Path:
    """`pip wheel` of a copy of what the Dockerfile copies: a build writes build/ and *.egg-info into
    its source, and a stale build/lib would carry deleted modules into the next wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("cifar_exp", "hydra_plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # pip's isolated build, as users get it: the backend (setuptools) comes from pip's cache or the index.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("cifar_exp-*.whl")
    return wheel


def fresh_venv_with(wheel: Path, venv: Path) -> Path:
    """A new virtual environment with the wheel installed (not editable); returns its site-packages.

    The dependencies (TensorFlow alone is GBs) are not installed again: a .pth file, written after
    the install so pip never sees them, puts this environment's site-packages after the new one on
    sys.path. The new one comes first, so cifar_exp and its plugin are the wheel's; .pth files of
    the old one (an editable install's import hook) are not run, as it is no site directory there.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    new_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (new_site / "test_install_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return new_site


def imported_top_level(importtime_stderr: str) -> set[str]:
    """Top-level package names from `PYTHONPROFILEIMPORTTIME=1` lines (`import time: ... | name`)."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in importtime_stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_environment_runs_from_any_directory(tmp_path):
    wheel = build_wheel(tmp_path)
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("cifar_exp-")}
    in_repo = {str(path.relative_to(ROOT)) for top in ("cifar_exp", "hydra_plugins")
               for path in (ROOT / top).rglob("*.py")}
    in_repo |= {f"cifar_exp/conf/{path.relative_to(CONF)}" for path in CONF.rglob("*.yaml")}
    assert shipped == in_repo

    venv = tmp_path / "venv"
    new_site = fresh_venv_with(wheel, venv)
    elsewhere = tmp_path / "elsewhere"  # no repository on sys.path, no conf/ around
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")

    def run(*args, **extra_env):
        return subprocess.run([str(a) for a in args], cwd=elsewhere, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=600)

    where = run(venv / "bin" / "python", "-c", "import cifar_exp.main as m, hydra_plugins.cifar_exp_optuna_sweeper"
                ".optuna_sweeper as s; print(m.__file__); print(m.CONFIG_DIR); print(s.__file__)")
    assert where.returncode == 0, where.stderr
    main_file, config_dir, sweeper_file = where.stdout.split()
    assert Path(main_file) == new_site / "cifar_exp" / "main.py"
    assert Path(config_dir) == new_site / "cifar_exp" / "conf"
    assert Path(sweeper_file) == new_site / "hydra_plugins" / "cifar_exp_optuna_sweeper" / "optuna_sweeper.py"

    cli = venv / "bin" / "cifar-exp"
    helped = run(cli, "--help", PYTHONPROFILEIMPORTTIME="1")
    assert helped.returncode == 0, helped.stderr[-3000:]
    models = ", ".join(sorted(path.stem for path in (CONF / "model").glob("*.yaml")))
    assert f"model: {models}" in helped.stdout
    assert not HEAVY & imported_top_level(helped.stderr)

    job = run(cli, "model=lenet", "--cfg", "job", PYTHONPROFILEIMPORTTIME="1")
    assert job.returncode == 0, job.stderr[-3000:]
    assert OmegaConf.create(job.stdout).model.name == "lenet"
    assert not HEAVY & imported_top_level(job.stderr)

    own = tmp_path / "my_conf"
    readme_own_configs(own)
    mine = run(cli, "--config-dir", own, "experiment=wide_adam", "--cfg", "job")
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert OmegaConf.create(mine.stdout).model.width == 64

    # One Optuna trial of a one-epoch synthetic job: Hydra's plugin scan found the sweeper in the
    # installed hydra_plugins, instantiated it, and it ran and told the job's result.
    sweep = tmp_path / "sweep"
    uri = tracking_uri(tmp_path, new=True)  # the installed MLflow makes the store
    swept = run(venv / "bin" / "python", "-m", "cifar_exp", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=1",
                "hydra.sweeper.seed=0", *SMOKE, "trainer.epochs=1", f"mlflow.tracking_uri={uri}",
                f"hydra.sweep.dir={sweep}")
    assert swept.returncode == 0, swept.stderr[-3000:]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.n_trials.complete == 1 and results.study_name == "lr_optuna"
    _, runs = all_runs(tracking_uri(tmp_path))
    assert [(r.info.status, r.data.tags["optuna.study"]) for r in runs] == [("FINISHED", "lr_optuna")]
    assert results.best_mlflow_run_id == runs[0].info.run_id
