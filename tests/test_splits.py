"""Subsets and splits: first-N limits (stratified or not), a stratified validation split, stratified
k folds, and symmetric label noise on the training split only; all disjoint and reproducible."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf

from conftest import CONF
from cifar_exp.data.dataset import DataError, load_dataset
from cifar_exp.data.splits import first_n, stratified_folds, stratified_holdout, symmetric_noise


def synthetic(**changes):
    """The synthetic option (512 train / 256 test, 10 classes) with changes; loads in milliseconds."""
    cfg = OmegaConf.load(CONF / "dataset" / "synthetic.yaml")
    for key, value in changes.items():
        cfg[key] = value
    return load_dataset(cfg, seed=0)


def class_counts(y, k=10):
    return np.bincount(y, minlength=k)


# ---------------------------------------------------------------------------------------------
# limit_train / limit_test

def test_limit_keeps_the_first_images_in_order():
    full, small = synthetic(), synthetic(limit_train=100, limit_test=30)
    np.testing.assert_array_equal(small.x_train, full.x_train[:100])
    np.testing.assert_array_equal(small.y_test, full.y_test[:30])
    np.testing.assert_array_equal(small.info["train_index"], np.arange(100))


def test_stratified_limit_takes_the_first_images_of_each_class_in_proportion():
    full, small = synthetic(), synthetic(limit_train=100, limit_test=50, stratify=True)
    assert list(class_counts(small.y_train)) == [10] * 10
    assert list(class_counts(small.y_test)) == [5] * 10
    idx = small.info["train_index"]
    assert np.all(np.diff(idx) > 0)  # original order kept
    for k in range(10):  # the earliest examples of each class, none skipped
        np.testing.assert_array_equal(idx[full.y_train[idx] == k], np.flatnonzero(full.y_train == k)[:10])


def test_limit_beyond_the_split_fails_rather_than_shrinking_silently():
    with pytest.raises(DataError, match=r"dataset\.limit_train=600 but the train split has only 512 images"):
        synthetic(limit_train=600)


# ---------------------------------------------------------------------------------------------
# val_fraction

def test_validation_split_is_disjoint_complete_and_stratified():
    full, data = synthetic(), synthetic(val_fraction=0.2)
    train, val = data.info["train_index"], data.info["val_index"]
    assert len(val) == round(0.2 * 512) and not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(512))
    np.testing.assert_array_equal(data.x_val, full.x_train[val])
    np.testing.assert_array_equal(data.y_val, full.y_train[val])
    assert np.abs(class_counts(data.y_val) - 0.2 * class_counts(full.y_train)).max() <= 1
    np.testing.assert_array_equal(data.x_test, full.x_test)  # tuning never touches test
    assert data.eval_split == "val"


def test_validation_split_follows_split_seed_only():
    a, b = synthetic(val_fraction=0.2), synthetic(val_fraction=0.2)
    c = synthetic(val_fraction=0.2, split_seed=1)
    np.testing.assert_array_equal(a.info["val_index"], b.info["val_index"])
    assert set(a.info["val_index"]) != set(c.info["val_index"])
    # Switching label noise on does not move the split.
    noisy = synthetic(val_fraction=0.2, label_noise=0.4)
    np.testing.assert_array_equal(a.info["val_index"], noisy.info["val_index"])


def test_validation_split_is_carved_after_the_limit():
    data = synthetic(limit_train=200, val_fraction=0.25, stratify=True)
    assert len(data.y_train) == 150 and len(data.y_val) == 50
    limited = synthetic(limit_train=200, stratify=True).info["train_index"]
    assert set(np.concatenate([data.info["train_index"], data.info["val_index"]])) == set(limited)


def test_a_validation_split_too_small_to_hold_an_image_fails():
    with pytest.raises(DataError, match=r"dataset\.val_fraction=0\.0005 leaves 512 training and 0 validation"):
        synthetic(val_fraction=0.0005)


# ---------------------------------------------------------------------------------------------
# folds / fold

def test_folds_partition_train_and_are_stratified():
    full = synthetic()
    runs = [synthetic(folds=5, fold=f) for f in range(5)]
    vals = [r.info["val_index"] for r in runs]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(512))  # each image validates once
    for r in runs:
        assert not set(r.info["train_index"]) & set(r.info["val_index"])
        assert len(r.y_train) + len(r.y_val) == 512
        assert np.abs(class_counts(r.y_val) - class_counts(full.y_train) / 5).max() <= 1
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    np.testing.assert_array_equal(vals[2], synthetic(folds=5, fold=2).info["val_index"])  # reproducible


def test_different_split_seeds_give_different_folds():
    a, b = synthetic(folds=4, fold=0), synthetic(folds=4, fold=0, split_seed=7)
    assert set(a.info["val_index"]) != set(b.info["val_index"])


# ---------------------------------------------------------------------------------------------
# label_noise

@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_label_noise_flips_exactly_the_requested_fraction_of_train_only(fraction):
    clean, noisy = synthetic(val_fraction=0.1), synthetic(val_fraction=0.1, label_noise=fraction)
    mask = noisy.info["noisy_mask"]
    assert mask.sum() == round(fraction * len(noisy.y_train))
    np.testing.assert_array_equal(noisy.y_train != clean.y_train, mask)  # every flip really changes the class
    np.testing.assert_array_equal(noisy.info["y_train_clean"], clean.y_train)
    np.testing.assert_array_equal(noisy.x_train, clean.x_train)
    np.testing.assert_array_equal(noisy.y_val, clean.y_val)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)


def test_label_noise_is_reproducible_and_seeded():
    a, b = synthetic(label_noise=0.3), synthetic(label_noise=0.3)
    c = synthetic(label_noise=0.3, split_seed=3)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.info["noisy_mask"], c.info["noisy_mask"])


def test_label_noise_is_symmetric_over_the_other_classes():
    y = np.arange(20_000) % 10
    noisy, mask = symmetric_noise(y, 0.4, 10, split_seed=0)
    offsets = (noisy[mask] - y[mask]) % 10
    assert offsets.min() == 1 and offsets.max() == 9
    share = np.bincount(offsets, minlength=10)[1:] / mask.sum()
    assert np.abs(share - 1 / 9).max() < 0.01  # 8,000 flips: about 1/9 to each other class


def test_no_noise_no_mask():
    assert "noisy_mask" not in synthetic().info


# ---------------------------------------------------------------------------------------------
# Properties of the split functions on arbitrary label vectors

labels = st.lists(st.integers(0, 4), min_size=10, max_size=300).map(np.array)


@settings(max_examples=60, deadline=None)
@given(y=labels, fraction=st.floats(0.05, 0.95))
def test_holdout_properties(y, fraction):
    train, val = stratified_holdout(y, fraction, split_seed=0)
    assert len(val) == round(fraction * len(y))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    for k in np.unique(y):  # each class within one example of its share
        assert abs((y[val] == k).sum() - fraction * (y == k).sum()) < 1 + 1e-9


@settings(max_examples=60, deadline=None)
@given(y=labels, folds=st.integers(2, 6))
def test_fold_properties(y, folds):
    fold_of = stratified_folds(y, folds, split_seed=0)
    sizes = np.bincount(fold_of, minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    for k in np.unique(y):
        per_fold = np.bincount(fold_of[y == k], minlength=folds)
        assert per_fold.max() - per_fold.min() <= 1


@settings(max_examples=60, deadline=None)
@given(y=labels, n=st.integers(1, 10))
def test_stratified_first_n_properties(y, n):
    keep = first_n(y, n, stratify=True)
    assert len(keep) == n and np.all(np.diff(keep) > 0)
    for k in np.unique(y):
        assert abs((y[keep] == k).sum() - n * (y == k).mean()) < 1 + 1e-9
