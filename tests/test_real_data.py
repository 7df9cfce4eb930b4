"""The real CIFAR-10 (CIFAR10_PATH, e.g. ../shared/data/cifar10-jpeg.tar.gz): full counts per class,
the cache, and a small model learning well above chance from a stratified subset."""
from __future__ import annotations

import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CONF
from cifar_exp.data.dataset import CIFAR10_CLASSES, load_dataset

pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("CIFAR10_PATH"), reason="CIFAR10_PATH is not set"),
]


def cifar10(cache_dir, **changes):
    cfg = OmegaConf.load(CONF / "dataset" / "cifar10.yaml")  # path: ${oc.env:CIFAR10_PATH}
    cfg.cache_dir = str(cache_dir)
    for key, value in changes.items():
        cfg[key] = value
    return load_dataset(cfg, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_real_cifar10_has_the_official_counts_and_is_cached(cache_dir):
    data = cifar10(cache_dir)
    assert data.x_train.shape == (50_000, 32, 32, 3) and data.x_test.shape == (10_000, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.class_names == CIFAR10_CLASSES
    assert list(np.bincount(data.y_train)) == [5_000] * 10
    assert list(np.bincount(data.y_test)) == [1_000] * 10
    assert 100 < data.x_train.mean() < 150  # natural images, not blank or noise
    again = cifar10(cache_dir)
    assert data.info["cache"] == "written" and again.info["cache"] == "hit"
    np.testing.assert_array_equal(again.x_test, data.x_test)


def test_small_model_learns_well_above_chance(cache_dir):
    import keras

    from cifar_exp.data.augment import build_augmentation, build_preprocessing

    keras.utils.set_random_seed(0)
    data = cifar10(cache_dir, limit_train=5_000, limit_test=2_000, stratify=True)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    h = build_preprocessing("mean_std", data.x_train)(build_augmentation("flip", (32, 32, 3))(inputs))
    for width in (32, 64):
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h))
    h = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, h)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=128, epochs=6, verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy > 0.3, accuracy  # chance is 0.10; this recipe reached 0.40 when written
