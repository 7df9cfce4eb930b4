"""Every `model=` option's spec: its builder and the hooks training calls for every model alike.

A model with special needs (airbench: whitening fitted from the training images, a callback that
freezes the whitening bias) brings them here as hooks; training/fit.py never asks for a model by
name. The defaults do nothing. Importing this module does not import Keras (validate.py reads it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cifar_exp.errors import ConfigError
from cifar_exp.models import builders


def _nothing(*args, **kwargs) -> None:
    return None


def _no_callbacks(cfg_model, classifier) -> list:
    return []


@dataclass(frozen=True)
class ModelSpec:
    """What a model brings to a job.

    build(input_shape, num_classes, **args) -> keras.Model from float images to logits.
    check(cfg_model): raise ConfigError for fields the generic checks do not know (before training).
    prepare(core, preprocessing, x_train): after the core is built and initialised, before fit, with
        the preprocessing layer and the uint8 training images (N, H, W, C).
    callbacks(cfg_model, classifier) -> list of Keras callbacks that `model.fit` must be given.
    """

    build: Callable
    check: Callable = _nothing
    prepare: Callable = _nothing
    callbacks: Callable = _no_callbacks


def _airbench_prepare(core, preprocessing, x_train) -> None:
    # Its first layer whitens 2x2 patches of the preprocessed training images (the first 5,000).
    from cifar_exp.models.airbench import WHITENING_IMAGES, fit_whitening_from_pixels

    fit_whitening_from_pixels(core, preprocessing, x_train[:WHITENING_IMAGES])


def _airbench_callbacks(cfg_model, classifier) -> list:
    from cifar_exp.models.airbench import training_callbacks

    return training_callbacks(cfg_model, classifier)


MODELS: dict[str, ModelSpec] = {
    "simple_cnn": ModelSpec(builders.simple_cnn),
    "allcnn_c": ModelSpec(builders.allcnn_c),
    "alexnet": ModelSpec(builders.alexnet),
    "resnet50": ModelSpec(builders.resnet50),
    "lenet": ModelSpec(builders.lenet),
    "resnet9": ModelSpec(builders.resnet9),
    "airbench": ModelSpec(builders.airbench, check=builders.check_airbench, prepare=_airbench_prepare,
                          callbacks=_airbench_callbacks),
}


def model_spec(name: str) -> ModelSpec:
    """The spec of `model.name`; ConfigError naming the options for an unknown one."""
    if name not in MODELS:
        raise ConfigError("model.name", name, ", ".join(MODELS))
    return MODELS[name]


def build_model(cfg, input_shape, num_classes: int):
    """The network of `cfg` (the `model` group): its builder, with every other field of cfg.model as an
    argument; a keras.Model from float images (`input_shape`) to `num_classes` logits."""
    args = {k: v for k, v in cfg.items() if k not in ("name", "kernel_l2", "bias_l2")}
    return model_spec(cfg.name).build(tuple(input_shape), num_classes, **args)


def check_model(cfg) -> None:
    """Model fields by kind (rates in [0, 1), sizes positive integers, penalties >= 0), then the model's
    own `check`; raises ConfigError."""
    spec = model_spec(cfg.name)  # ConfigError naming the options for an unknown model
    for key, value in cfg.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key.startswith("dropout") and not (number and 0 <= value < 1):
            raise ConfigError(f"model.{key}", value, "a rate in [0, 1)")
        if key in ("width", "dense_units") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"model.{key}", value, "a positive integer")
        if key.endswith("_l2") and not (number and value >= 0):
            raise ConfigError(f"model.{key}", value, "a number >= 0 (0 disables it)")
        if key == "logit_scale" and not (number and value > 0):
            raise ConfigError(f"model.{key}", value, "a positive number")
    spec.check(cfg)  # the model's own fields (airbench: builders.check_airbench)

