"""Datasets as in-memory uint8 arrays: which split is which, and how to get them.

`load_dataset(cfg.dataset, seed)` is the one entry point; it returns `DataSplits`.
Images are uint8 N x H x W x C, labels int32 N; preprocessing and augmentation happen
later, inside the model (see augment.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass
class DataSplits:
    name: str
    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # e.g. source path, checksum, noise mask

    @property
    def eval_split(self) -> str:
        """The split evaluated every epoch: validation if carved out, else test (as the seeds did)."""
        return "val" if self.x_val is not None else "test"

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_synthetic(num_classes: int, image_shape, n: int, seed: int):
    """Images whose class sets the mean colour and the position of a bright square.

    Learnable by any of the models within an epoch or two, yet not trivially separable
    pixel by pixel because of the noise.
    """
    rng = np.random.default_rng(seed)
    h, w, c = image_shape
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, c))
    images = rng.normal(0, 30, size=(n, h, w, c)) + palette[labels][:, None, None, :]
    side = max(2, h // 4)
    for k in range(num_classes):
        idx = labels == k
        top = (k * 7) % max(1, h - side)
        left = (k * 11) % max(1, w - side)
        images[idx, top:top + side, left:left + side, :] += 60
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)


def load_dataset(cfg, seed: int) -> DataSplits:
    """Load the configured dataset and apply its splits."""
    if cfg.name == "synthetic":
        shape = tuple(cfg.image_shape)
        x_train, y_train = make_synthetic(cfg.num_classes, shape, cfg.train_size, seed=10_000 + cfg.split_seed)
        x_test, y_test = make_synthetic(cfg.num_classes, shape, cfg.test_size, seed=20_000 + cfg.split_seed)
        names = tuple(f"class_{k}" for k in range(cfg.num_classes))
        data = DataSplits("synthetic", names, x_train, y_train, x_test, y_test)
    else:
        raise NotImplementedError(f"dataset.name={cfg.name!r} is not readable yet")
    return apply_splits(data, cfg)


def apply_splits(data: DataSplits, cfg) -> DataSplits:
    """limit_train / limit_test (first N) and a validation split from train."""
    if cfg.get("limit_train"):
        data.x_train, data.y_train = data.x_train[: cfg.limit_train], data.y_train[: cfg.limit_train]
    if cfg.get("limit_test"):
        data.x_test, data.y_test = data.x_test[: cfg.limit_test], data.y_test[: cfg.limit_test]
    if cfg.get("val_fraction"):
        rng = np.random.default_rng(cfg.split_seed)
        order = rng.permutation(len(data.y_train))
        n_val = int(round(cfg.val_fraction * len(order)))
        val, train = order[:n_val], order[n_val:]
        data.x_val, data.y_val = data.x_train[val], data.y_train[val]
        data.x_train, data.y_train = data.x_train[train], data.y_train[train]
    return data
