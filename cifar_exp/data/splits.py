"""Subsets and splits of a loaded dataset: first-N limits, a stratified validation split, stratified
k-fold splits, and symmetric label noise on the training split. Pure numpy, seeded by split_seed.
"""
from __future__ import annotations

import numpy as np

from cifar_exp.data.readers import DataError

# Independent random streams per purpose, so switching label noise on does not move the
# validation split, and the same split_seed gives the same folds whatever else changes.
STREAM_VAL, STREAM_FOLDS, STREAM_NOISE = 1, 2, 3


def _rng(split_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(split_seed), stream])


def _quotas(y: np.ndarray, n: int) -> np.ndarray:
    """Per-class counts summing to n, proportional to the class frequencies (largest remainder)."""
    freq = np.bincount(y, minlength=int(y.max()) + 1 if y.size else 0)
    exact = freq * n / max(len(y), 1)
    quota = np.floor(exact).astype(int)
    short = n - quota.sum()
    order = np.argsort(-(exact - quota), kind="stable")  # ties go to the lower class index
    quota[order[:short]] += 1
    return quota


def first_n(y: np.ndarray, n: int, stratify: bool) -> np.ndarray:
    """Indices of the first n examples; stratified: the first examples of each class, in proportion."""
    if n > len(y):
        raise ValueError(f"cannot keep {n} of {len(y)} examples")
    if not stratify:
        return np.arange(n)
    quota = _quotas(y, n)
    keep = np.concatenate([np.flatnonzero(y == k)[:q] for k, q in enumerate(quota)] or [np.array([], int)])
    return np.sort(keep)


def stratified_holdout(y: np.ndarray, fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, val holding round(fraction * n) examples in the classes' proportions."""
    rng = _rng(split_seed, STREAM_VAL)
    quota = _quotas(y, int(round(fraction * len(y))))
    val = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:q] for k, q in enumerate(quota)])
    mask = np.zeros(len(y), bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def stratified_folds(y: np.ndarray, folds: int, split_seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every example: each class is shuffled and dealt round-robin, class after
    class, so folds differ by at most one example overall and per class."""
    rng = _rng(split_seed, STREAM_FOLDS)
    order = np.concatenate([rng.permutation(np.flatnonzero(y == k)) for k in np.unique(y)])
    fold_of = np.empty(len(y), int)
    fold_of[order] = np.arange(len(y)) % folds
    return fold_of


def symmetric_noise(y: np.ndarray, fraction: float, num_classes: int, split_seed: int):
    """Exactly round(fraction * n) labels, chosen at random, replaced by a different class drawn
    uniformly. Returns the noisy labels and the mask of changed ones."""
    rng = _rng(split_seed, STREAM_NOISE)
    flip = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    mask = np.zeros(len(y), bool)
    mask[flip] = True
    return noisy, mask


def apply_splits(data, cfg):
    """limit_train/limit_test, then a validation split (val_fraction or folds/fold) carved from train,
    then label noise on what remains for training. Indices into the full splits go to `data.info`."""
    stratify = bool(cfg.get("stratify"))
    train_idx, test_idx = np.arange(len(data.y_train)), np.arange(len(data.y_test))
    for split, key in (("train", "limit_train"), ("test", "limit_test")):
        n = cfg.get(key)
        if n is None:
            continue
        y = getattr(data, "y_" + split)
        if n > len(y):
            raise DataError(f"dataset.{key}={n} but the {split} split has only {len(y)} images")
        keep = first_n(y, n, stratify)
        setattr(data, "x_" + split, getattr(data, "x_" + split)[keep])
        setattr(data, "y_" + split, y[keep])
        if split == "train":
            train_idx = train_idx[keep]
        else:
            test_idx = test_idx[keep]

    val = None
    if cfg.get("folds"):
        fold_of = stratified_folds(data.y_train, cfg.folds, cfg.split_seed)
        train, val = np.flatnonzero(fold_of != cfg.fold), np.flatnonzero(fold_of == cfg.fold)
    elif cfg.get("val_fraction"):
        train, val = stratified_holdout(data.y_train, cfg.val_fraction, cfg.split_seed)
    if val is not None and (len(val) == 0 or len(train) == 0):
        key = "dataset.folds" if cfg.get("folds") else "dataset.val_fraction"
        raise DataError(f"{key}={cfg.folds if cfg.get('folds') else cfg.val_fraction} leaves "
                        f"{len(train)} training and {len(val)} validation images of {len(data.y_train)}")
    if val is not None:
        data.x_val, data.y_val = data.x_train[val], data.y_train[val]
        data.x_train, data.y_train = data.x_train[train], data.y_train[train]
        data.info["val_index"] = train_idx[val]
        train_idx = train_idx[train]
    data.info["train_index"], data.info["test_index"] = train_idx, test_idx

    if cfg.get("label_noise"):
        clean = data.y_train
        data.y_train, mask = symmetric_noise(clean, cfg.label_noise, data.num_classes, cfg.split_seed)
        data.info.update(y_train_clean=clean, noisy_mask=mask)
    return data
