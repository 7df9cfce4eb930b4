"""Each model brings its seed's recipe (conf/recipe/), and whatever the user chooses wins over it.

Config composition only (Hydra's compose API): no TensorFlow, no training.
"""
import pytest

from conftest import CONF, compose

# model -> (init, optimizer, optimizer.lr, lr_schedule, epochs, batch_size, preprocess, augment):
# the seeds' recipes (sources in each conf/recipe/<model>.yaml).
RECIPES = {
    "simple_cnn": ("default", "adam", 0.001, "constant", 10, 32, "scale", "none"),
    "allcnn_c": ("default", "momentum", 0.021, "piecewise", 150, 32, "per_image_standardization", "none"),
    "alexnet": ("default", "adam", 0.001, "constant", 5, 32, "scale", "none"),
    "resnet50": ("default", "adam", 0.001, "constant", 5, 32, "scale", "none"),
    "lenet": ("default", "adam", 0.001, "constant", 10, 32, "scale", "none"),
    "resnet9": ("torch_uniform", "nesterov", 0.4, "onecycle", 24, 512, "mean_std", "crop_flip"),
    # airbench94's (rate per 1,024 examples); the same as experiment=airbench
    "airbench": ("default", "airbench", 11.5, "triangle", 10, 1024, "mean_std", "alternating_flip_translate"),
}


def recipe_of(cfg):
    return (cfg.init.name, cfg.optimizer.name, cfg.optimizer.lr, cfg.lr_schedule.name, cfg.trainer.epochs,
            cfg.trainer.batch_size, cfg.dataset.preprocess, cfg.dataset.augment)


def test_every_model_has_a_recipe():
    models = {path.stem for path in (CONF / "model").glob("*.yaml")}
    assert models == {path.stem for path in (CONF / "recipe").glob("*.yaml")} == set(RECIPES)


@pytest.mark.parametrize("model", RECIPES)
def test_model_choice_brings_its_recipe(model):
    cfg = compose([f"model={model}"])
    assert cfg.model.name == model
    assert recipe_of(cfg) == RECIPES[model]


def test_the_default_is_seed_003s_recipe():
    assert recipe_of(compose()) == RECIPES["resnet9"]
    assert compose().lr_schedule.peak_epoch is None  # (epochs + 1) // 5: valid for any trainer.epochs


@pytest.mark.parametrize("model", RECIPES)
def test_a_chosen_optimizer_keeps_its_own_rate(model):
    other = "sgd" if RECIPES[model][1] != "sgd" else "adam"
    cfg = compose([f"model={model}", f"optimizer={other}"])
    expected_lr = compose([f"optimizer={other}"]).optimizer.lr  # the option file's rate, not the recipe's
    assert (cfg.optimizer.name, cfg.optimizer.lr) == (other, expected_lr)
    assert recipe_of(cfg)[3:] == RECIPES[model][3:]  # the rest of the recipe stays


@pytest.mark.parametrize("model", RECIPES)
def test_command_line_groups_and_values_win_over_the_recipe(model):
    cfg = compose([f"model={model}", "init=he_normal", "lr_schedule=cosine", "trainer.batch_size=64",
                   "trainer.epochs=3", "dataset.preprocess=mean_std", "dataset.augment=flip"])
    assert (cfg.init.name, cfg.lr_schedule.name, cfg.trainer.batch_size, cfg.trainer.epochs) == (
        "he_normal", "cosine", 64, 3)
    assert (cfg.dataset.preprocess, cfg.dataset.augment) == ("mean_std", "flip")
    assert cfg.optimizer.name == RECIPES[model][1]


def test_the_recipe_applies_to_any_dataset_unless_chosen():
    synthetic = compose(["model=allcnn_c", "dataset=synthetic"])
    assert (synthetic.dataset.name, synthetic.dataset.preprocess, synthetic.dataset.augment) == (
        "synthetic", "per_image_standardization", "none")
    mnist = compose(["model=resnet9", "dataset=mnist", "dataset.augment=none"])  # no flipped digits
    assert (mnist.dataset.preprocess, mnist.dataset.augment) == ("mean_std", "none")


def test_an_experiment_overlay_wins_over_the_recipe():
    cfg = compose(["experiment=init_comparison"])  # alexnet, whose recipe has init=default and no bias rule
    assert (cfg.model.name, cfg.init.name, cfg.init.bias) == ("alexnet", "random_normal", "same")
    cfg = compose(["experiment=spcn"])  # simple_cnn, whose recipe has adam
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.init.name) == ("adadelta", 1.0, "glorot_uniform")


def test_the_command_line_wins_over_an_experiment_overlay():
    cfg = compose(["experiment=allcnn", "trainer.epochs=3", "optimizer=adam"])
    assert (cfg.model.name, cfg.trainer.epochs, cfg.optimizer.name, cfg.lr_schedule.name) == (
        "allcnn_c", 3, "adam", "piecewise")


def test_a_model_chosen_by_an_overlay_brings_its_recipe(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "just_alexnet.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: alexnet\n")
    cfg = compose([f"hydra.searchpath=[file://{tmp_path}]", "experiment=just_alexnet"])
    assert cfg.model.name == "alexnet" and recipe_of(cfg) == RECIPES["alexnet"]


def test_each_job_of_a_multirun_over_models_gets_its_recipe():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(["model=alexnet,resnet9,allcnn_c", "trainer.epochs=3"])
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)  # as the basic sweeper splits them
    for job in jobs:
        cfg = compose(job)
        assert recipe_of(cfg) == (*RECIPES[cfg.model.name][:4], 3, *RECIPES[cfg.model.name][5:])


# What each preset composed to before model recipes existed (pinned so a recipe cannot change them):
# (model, init, init.bias, optimizer, lr, lr_schedule, epochs, batch_size, preprocess, augment).
PRESETS = {
    "init_comparison": ("alexnet", "random_normal", "same", "adam", 0.001, "constant", 5, 32, "scale", "none"),
    "optimizer_comparison": ("resnet50", "default", "default", "adam", 0.001, "constant", 5, 32, "scale", "none"),
    "allcnn": ("allcnn_c", "default", "default", "momentum", 0.021, "piecewise", 150, 32,
               "per_image_standardization", "none"),
    "resnet9": ("resnet9", "torch_uniform", "zeros", "nesterov", 0.4, "onecycle", 24, 512, "mean_std", "crop_flip"),
    "spcn": ("simple_cnn", "glorot_uniform", "zeros", "adadelta", 1.0, "constant", 10, 32, "scale", "none"),
    "spl_noisy_labels": ("resnet9", "torch_uniform", "zeros", "nesterov", 0.4, "onecycle", 20, 512, "mean_std",
                         "crop_flip"),
    "transfer_lenet": ("lenet", "default", "default", "adam", 0.001, "constant", 20, 32, "scale", "none"),
    "kfold_poly": ("resnet9", "torch_uniform", "zeros", "nesterov", 0.4, "onecycle", 24, 512, "mean_std",
                   "crop_flip"),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_to_what_it_did_before_recipes(preset):
    cfg = compose([f"experiment={preset}"])
    assert (cfg.model.name, cfg.init.name, cfg.init.bias, cfg.optimizer.name, cfg.optimizer.lr,
            cfg.lr_schedule.name, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.dataset.preprocess,
            cfg.dataset.augment) == PRESETS[preset]


def test_presets_keep_their_other_settings():
    assert compose(["experiment=spl_noisy_labels"]).lr_schedule.peak_epoch == 5
    # experiment=resnet9 pinned peak_epoch 5 until recipes; null is the seed's (epochs + 1) // 5, also 5 at 24
    # epochs, and keeps `experiment=resnet9 trainer.epochs=3` valid.
    assert compose(["experiment=resnet9"]).lr_schedule.peak_epoch is None
    spcn = compose(["experiment=spcn"])
    assert (spcn.weighting.name, spcn.dataset.limit_train, spcn.mlflow.experiment_name) == ("mixture", 500, "spcn")
    assert compose(["experiment=spl_noisy_labels"]).dataset.label_noise == 0.4
    transfer = compose(["experiment=transfer_lenet"])
    assert (transfer.task, transfer.dataset.name, transfer.transfer.pretrain.dataset.name) == (
        "transfer", "stl10", "mnist")
    assert compose(["experiment=kfold_poly"]).task == "kfold_poly"


@pytest.mark.parametrize("overrides,recipe", [
    (["hparams_search=lr_optuna"], RECIPES["resnet9"]),
    (["experiment=allcnn", "hparams_search=lr_optuna"], RECIPES["allcnn_c"]),
    (["model=alexnet", "hparams_search=lr_optuna"], RECIPES["alexnet"]),
])
def test_an_hparams_search_tunes_the_recipe_it_is_given(overrides, recipe):
    cfg = compose(overrides)
    assert recipe_of(cfg) == recipe and cfg.dataset.val_fraction == 0.1


def test_spl_optuna_keeps_the_spcn_recipe():
    cfg = compose(["experiment=spcn", "hparams_search=spl_optuna"])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.batch_size, cfg.dataset.limit_train) == (
        "adadelta", 1.0, 32, 500)


def test_another_models_recipe_can_be_chosen():
    cfg = compose(["model=simple_cnn", "recipe=resnet9"])
    assert cfg.model.name == "simple_cnn" and recipe_of(cfg) == RECIPES["resnet9"]


def test_model_airbench_composes_as_experiment_airbench():
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(compose(["model=airbench"])) == OmegaConf.to_container(
        compose(["experiment=airbench"]))


def test_the_removed_fast_recipe_fails_composing_with_the_experiments_there_are():
    """experiment=fast was removed once measured (README: experiment=airbench is the fast recipe): composing it
    gets Hydra's message listing the experiments, airbench among them; the command line, one line saying why."""
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'experiment/fast'.*airbench"):
        compose(["experiment=fast"])
    # The command line says why it went and what replaces it, in one line, before Hydra composes.
    from cifar_exp import overrides

    for command_line in (["experiment=fast"], ["trainer.epochs=2", "experiment=resnet9,fast"]):
        with pytest.raises(overrides.RemovedOptionError, match=r"experiment=fast was removed.*experiment=airbench"):
            overrides.check_removed(command_line)
    overrides.check_removed(["experiment=airbench", "+tags.note=fast"])
