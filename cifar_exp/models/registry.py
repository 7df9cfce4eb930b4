"""Every `model=` option's spec: its builder and the hooks training calls for every model alike.

A model with special needs (airbench: whitening fitted from the training images, a callback that
freezes the whitening bias) brings them here as hooks; training/fit.py never asks for a model by
name. The defaults do nothing. Importing this module does not import Keras (validate.py reads it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    from keras import ops

    from cifar_exp.models.airbench import WHITENING_IMAGES, fit_whitening

    fit_whitening(core, ops.convert_to_numpy(preprocessing(x_train[:WHITENING_IMAGES])))


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
    from cifar_exp.errors import ConfigError

    if name not in MODELS:
        raise ConfigError("model.name", name, ", ".join(MODELS))
    return MODELS[name]
