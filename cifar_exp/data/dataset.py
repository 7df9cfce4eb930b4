"""Datasets as in-memory uint8 arrays: which split is which, and how to get them.

`load_dataset(cfg.dataset, seed)` is the one entry point; it returns `DataSplits`. Images are
uint8 N x H x W x C, labels int32 N; file formats live in readers.py, subsets in splits.py, and
preprocessing and augmentation happen later, inside the model (augment.py).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_exp.data.augment import AUGMENTATIONS, PREPROCESSING
from cifar_exp.data.readers import CIFAR10_CLASSES, SPECS, DataError, load_arrays
from cifar_exp.data.splits import apply_splits
from cifar_exp.errors import ConfigError

__all__ = ["CIFAR10_CLASSES", "DataError", "DataSplits", "apply_splits", "check_dataset", "load_dataset",
           "make_synthetic"]


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
    # source, sha256, layout, cache, *_seconds; arrays: train/val/test_index (into the full
    # splits), and with label noise y_train_clean and noisy_mask.
    info: dict = field(default_factory=dict)

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
    """Load the configured dataset and apply its splits.

    The data depend on `dataset.split_seed` only, not on the training `seed`, so runs that differ
    in seed train and evaluate on the same examples.
    """
    if isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
    check_dataset(cfg)
    if cfg.name == "synthetic":
        shape = tuple(cfg.image_shape)
        x_train, y_train = make_synthetic(cfg.num_classes, shape, cfg.train_size, seed=10_000 + cfg.split_seed)
        x_test, y_test = make_synthetic(cfg.num_classes, shape, cfg.test_size, seed=20_000 + cfg.split_seed)
        names = tuple(f"class_{k}" for k in range(cfg.num_classes))
        data = DataSplits("synthetic", names, x_train, y_train, x_test, y_test, info={"source": "synthetic"})
    else:
        arrays, info = load_arrays(
            cfg.name, cfg.get("source", "auto"), cfg.get("path"), cfg.get("cache_dir"), tuple(cfg.image_shape),
            {"train": cfg.get("train_size"), "test": cfg.get("test_size")})
        data = DataSplits(cfg.name, SPECS[cfg.name].classes, arrays["x_train"], arrays["y_train"],
                          arrays["x_test"], arrays["y_test"], info=info)
    return apply_splits(data, cfg)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_dataset(cfg) -> None:
    """Raise ConfigError for a dataset config that cannot work, before anything is loaded."""
    def get(key):
        return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)

    names = ("synthetic", *SPECS)
    if get("name") not in names:
        raise ConfigError("dataset.name", get("name"), " | ".join(names))
    if get("source") is not None and get("source") not in ("auto", "download", "path"):
        raise ConfigError("dataset.source", get("source"), "auto | download | path")
    path = get("path")
    if path is not None and not Path(str(path)).expanduser().exists():
        raise ConfigError("dataset.path", path, "null or an existing folder or archive "
                          "(official layout, image-folder tree, or .tar.gz/.zip of either)")
    if get("source") == "path" and path is None:
        raise ConfigError("dataset.path", None, "a folder or archive when dataset.source=path")
    if get("preprocess") not in PREPROCESSING:
        raise ConfigError("dataset.preprocess", get("preprocess"), " | ".join(PREPROCESSING))
    if get("augment") not in AUGMENTATIONS:
        raise ConfigError("dataset.augment", get("augment"), " | ".join(AUGMENTATIONS))
    for key in ("val_fraction", "label_noise"):
        v = get(key)
        if v is not None and not (_is_number(v) and 0 <= v < 1):
            raise ConfigError(f"dataset.{key}", v, "a number in [0, 1)")
    for key in ("limit_train", "limit_test", "train_size", "test_size"):
        v = get(key)
        if v is not None and not (_is_int(v) and v > 0):
            raise ConfigError(f"dataset.{key}", v, "null or a positive integer")
    if not _is_int(get("split_seed")):
        raise ConfigError("dataset.split_seed", get("split_seed"), "an integer")
    if get("stratify") is not None and not isinstance(get("stratify"), bool):
        raise ConfigError("dataset.stratify", get("stratify"), "true | false")
    folds, fold = get("folds"), get("fold")
    if folds is not None:
        if not (_is_int(folds) and folds >= 2):
            raise ConfigError("dataset.folds", folds, "null or an integer >= 2")
        if not (_is_int(fold) and 0 <= fold < folds):
            raise ConfigError("dataset.fold", fold, f"an integer in 0..{folds - 1} (dataset.folds={folds})")
        if get("val_fraction"):
            raise ConfigError("dataset.val_fraction", get("val_fraction"),
                              "0 when dataset.folds is set (the fold is the validation split)")
    elif fold is not None:
        raise ConfigError("dataset.fold", fold, "null unless dataset.folds is set")
    shape = get("image_shape")
    if not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) != 3 or not all(
            _is_int(s) and s > 0 for s in shape):
        raise ConfigError("dataset.image_shape", shape, "[height, width, channels] of positive integers")
    if get("name") in SPECS:
        k = len(SPECS[get("name")].classes)
        if get("num_classes") is not None and get("num_classes") != k:
            raise ConfigError("dataset.num_classes", get("num_classes"), f"{k} for {get('name')}")
    elif not (_is_int(get("num_classes")) and get("num_classes") >= 2):
        raise ConfigError("dataset.num_classes", get("num_classes"), "an integer >= 2")
