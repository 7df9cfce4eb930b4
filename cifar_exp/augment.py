"""Preprocessing and augmentation as Keras layers, so they run inside the compiled step.

Both take the uint8 batch as fed; augmentation is active only in training (Keras'
random layers are the identity at inference), preprocessing always.
"""
from __future__ import annotations

import numpy as np


def build_preprocessing(name: str, x_train: np.ndarray):
    import keras

    if name == "scale":
        return keras.layers.Rescaling(1.0 / 255, name="scale")
    raise ValueError(f"dataset.preprocess={name!r} is not available yet")


def build_augmentation(name: str, image_shape):
    import keras

    if name == "none":
        return None
    if name == "flip":
        return keras.layers.RandomFlip("horizontal", name="flip")
    raise ValueError(f"dataset.augment={name!r} is not available yet")
