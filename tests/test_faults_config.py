"""A user's own config folder (-cd) that cannot be composed, and a launcher chosen where a sweep
would ignore it: one line naming the file (or where the launcher belongs), before anything runs."""
from __future__ import annotations

import pytest

from cifar_exp import main, overrides
from conftest import run_cli, tracking_uri

GOOD = "# @package _global_\ntrainer:\n  epochs: 1\n"
BAD_YAML = "# @package _global_\ntrainer:\n  epochs: [1\n  bad: : x\n"
MISSING_OPTION = "# @package _global_\ndefaults:\n  - override /optimizer: nosuch\n"
WITH_LAUNCHER = "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib\ntrainer:\n  epochs: {}\n"


def _folder(tmp_path, **files) -> str:
    (tmp_path / "experiment").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "experiment" / f"{name}.yaml").write_text(text)
    return str(tmp_path)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    folder = _folder(tmp_path, broken=BAD_YAML)
    with pytest.raises(overrides.ConfigFileError) as error:
        main.check_command_line(["-cd", folder, "experiment=broken", "dataset=synthetic"])
    assert str(error.value).startswith(f"YAML syntax error in {folder}/experiment/broken.yaml, line 4, column 6:")


def test_a_defaults_entry_naming_a_missing_option_names_the_users_file_and_the_choices(tmp_path):
    folder = _folder(tmp_path, miss=MISSING_OPTION)
    with pytest.raises(overrides.ConfigFileError) as error:
        main.check_command_line(["-cd", folder, "experiment=miss", "dataset=synthetic"])
    message = str(error.value)
    assert message.startswith(f"{folder}/experiment/miss.yaml, line 3: the defaults entry "
                              "`- override /optimizer: nosuch` chooses optimizer option 'nosuch'")
    assert "recipe/" not in message and "adam, adamw" in message


def test_a_broken_overlay_among_swept_ones_is_found_before_the_sweep(tmp_path):
    folder = _folder(tmp_path, good=GOOD, broken=BAD_YAML)
    with pytest.raises(overrides.ConfigFileError, match="broken.yaml, line 4"):
        main.check_command_line(["-m", "-cd", folder, "experiment=good,broken", "dataset=synthetic"])


def test_a_launcher_in_swept_overlays_is_refused_saying_where_it_belongs(tmp_path):
    folder = _folder(tmp_path, a=WITH_LAUNCHER.format(1), b=WITH_LAUNCHER.format(2))
    with pytest.raises(overrides.LauncherInSweptOverlayError) as error:
        main.check_command_line(["-m", "-cd", folder, "experiment=a,b", "dataset=synthetic"])
    assert "experiment=a sets the launcher (hydra/launcher: joblib)" in str(error.value)
    assert "on the command line (hydra/launcher=joblib" in str(error.value)


@pytest.mark.parametrize("args", [
    ["experiment=a"],  # one overlay: Hydra composes it before choosing the launcher
    ["-m", "experiment=a"],
    ["-m", "hydra/launcher=joblib", "experiment=a,b"],  # the sweep's own launcher is the same
])
def test_a_launcher_hydra_honours_passes(tmp_path, args):
    folder = _folder(tmp_path, a=WITH_LAUNCHER.format(1), b=WITH_LAUNCHER.format(2))
    main.check_command_line(["-cd", folder, *args, "dataset=synthetic"])


@pytest.mark.slow
def test_a_broken_config_folder_exits_in_one_line_and_starts_nothing(tmp_path):
    (tmp_path / "user").mkdir()
    folder = _folder(tmp_path / "user", good=GOOD, miss=MISSING_OPTION)
    result = run_cli(["-m", "-cd", folder, "experiment=good,miss", "dataset=synthetic",
                      f"mlflow.tracking_uri={tracking_uri(tmp_path, new=True)}"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: {folder}/experiment/miss.yaml, line 3: the defaults entry `- override /optimizer: nosuch` "
        "chooses optimizer option 'nosuch', which does not exist; optimizer's options: adadelta, adagrad, adam, "
        "adamw, airbench, momentum, nadam, nesterov, rmsprop, sgd"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_a_config_folder_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nosuch"
    result = run_cli(["-cd", str(missing), "dataset=synthetic"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: Invalid config: --config-dir='{missing}'. Allowed: a folder that exists ({missing} does not)."]
