"""Every option of every config group composes and passes validation, without TensorFlow."""
import subprocess
from pathlib import Path
import sys

import pytest

from conftest import CONF, ROOT, compose

GROUPS = ["model", "init", "optimizer", "lr_schedule", "dataset", "weighting"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    from cifar_exp.validate import validate

    cfg = compose([f"{group}={option}"])
    assert cfg[group].name == option
    validate(cfg)


@pytest.mark.parametrize("folder", ["experiment", "hparams_search"])
def test_overlays_compose(folder):
    for path in sorted((CONF / folder).glob("*.yaml")):
        cfg = compose([f"{folder}={path.stem}"])
        assert cfg.model.name


def test_config_and_validation_do_not_import_tensorflow():
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "from conftest import compose; from cifar_exp.validate import validate; import cifar_exp.main, cifar_exp.job;"
        "validate(compose(['model=alexnet', 'init=he_normal']));"
        "heavy = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_lists_groups_without_tensorflow(tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cifar_exp", "--help"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "model: airbench, alexnet, allcnn_c, lenet, resnet50, resnet9, simple_cnn" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "tensorflow" not in imported and "keras" not in imported


def test_console_script_works_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "cifar-exp"
    result = subprocess.run([str(script), "model=lenet", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "name: lenet" in result.stdout


def test_the_config_hash_ignores_how_data_is_fed_and_keeps_earlier_runs_matching():
    from omegaconf import OmegaConf, open_dict

    from cifar_exp.job import config_hash

    default = compose()
    before_the_new_keys = compose()
    with open_dict(before_the_new_keys):  # a run recorded before these keys existed
        for key in ("tta", "label_smoothing", "data_on_device", "drop_remainder", "validation_freq"):
            del before_the_new_keys.trainer[key]
    assert config_hash(default) == config_hash(before_the_new_keys)
    assert config_hash(default) == config_hash(compose(["trainer.data_on_device=true"]))
    assert config_hash(default) != config_hash(compose(["trainer.tta=true"]))
    assert config_hash(default) != config_hash(compose(["trainer.label_smoothing=0.1"]))
    assert config_hash(default) != config_hash(compose(["trainer.drop_remainder=true"]))
    assert config_hash(default) != config_hash(compose(["trainer.validation_freq=2"]))
    assert OmegaConf.to_container(default)["trainer"]["tta"] is False  # hashing left the config alone


def test_a_jax_run_is_not_the_tensorflow_run_of_the_same_config(monkeypatch):
    """A sweep comparing backends must not skip the JAX job because the TensorFlow one finished."""
    from cifar_exp.job import config_hash

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    tensorflow = config_hash(compose())
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert config_hash(compose()) == tensorflow  # the default, spelled out: earlier runs keep their hash
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert config_hash(compose()) != tensorflow
