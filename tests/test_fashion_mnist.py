"""Fashion-MNIST (`dataset=fashion_mnist`): its IDX files, written here, load with its class names
from a path, from Debian's folder or from Keras' cache without one; without any copy, one line says
how to get it. With FASHION_MNIST_PATH set (CI installs Debian's dataset-fashion-mnist), the real
files load and LeNet learns from them."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from conftest import all_runs, run_cli, tracking_uri
from cifar_exp.data import readers
from cifar_exp.data.dataset import DataError, load_dataset
from cifar_exp.data.readers import FASHION_MNIST_CLASSES
from test_data_sources import assert_same, dataset_cfg, make_images, write_mnist_idx

REAL = os.environ.get("FASHION_MNIST_PATH")
needs_real = pytest.mark.skipif(not (REAL and Path(REAL).exists()),
                                reason="FASHION_MNIST_PATH is not set to the real files "
                                       "(apt-get install dataset-fashion-mnist: /usr/share/datasets/fashion-mnist)")


@pytest.fixture(scope="module")
def fashion():
    return make_images((28, 28, 1), seed=3)


@pytest.fixture
def system_copy(tmp_path, monkeypatch):
    """Where Debian's package would put it, moved under tmp_path (this machine may have the real one)."""
    folder = tmp_path / "usr_share_datasets" / "fashion-mnist"
    spec = dataclasses.replace(readers.SPECS["fashion_mnist"], system_copies=(str(folder),))
    monkeypatch.setitem(readers.SPECS, "fashion_mnist", spec)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return folder


def test_idx_files_load_from_a_path_with_fashions_class_names(tmp_path, fashion):
    data = load_dataset(dataset_cfg("fashion_mnist", write_mnist_idx(tmp_path / "f", fashion), tmp_path / "cache"), 0)
    assert_same(data, fashion)
    assert data.image_shape == (28, 28, 1) and data.class_names == FASHION_MNIST_CLASSES


def test_found_without_a_path_in_debians_folder_first(tmp_path, fashion, system_copy):
    write_mnist_idx(system_copy, fashion)
    write_mnist_idx(tmp_path / "keras_home" / "datasets" / "fashion-mnist", make_images((28, 28, 1), seed=4))
    data = load_dataset(dataset_cfg("fashion_mnist", None, tmp_path / "cache"), 0)
    assert_same(data, fashion)
    assert data.info["source"] == str(system_copy)


def test_found_without_a_path_in_keras_cache(tmp_path, fashion, system_copy):
    cached = write_mnist_idx(tmp_path / "keras_home" / "datasets" / "fashion-mnist", fashion)
    data = load_dataset(dataset_cfg("fashion_mnist", None, tmp_path / "cache"), 0)
    assert_same(data, fashion)
    assert data.info["source"] == str(cached)


def test_without_any_copy_one_line_says_how_to_get_it(tmp_path, system_copy):
    with pytest.raises(DataError) as caught:
        load_dataset(dataset_cfg("fashion_mnist", None, tmp_path / "cache"), 0)
    message = str(caught.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.source=download" in message
    assert str(system_copy) in message  # where it looked


@needs_real
def test_the_real_files_load_as_published():
    data = load_dataset(dataset_cfg("fashion_mnist", REAL, None, train_size=60000, test_size=10000), 0)
    assert (len(data.x_train), len(data.x_test)) == (60000, 10000)
    assert data.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, T-shirt, ...: the official order
    assert [int((data.y_train == k).sum()) for k in range(10)] == [6000] * 10


@needs_real
@pytest.mark.slow
def test_lenet_learns_real_fashion_mnist(tmp_path):
    uri = tracking_uri(tmp_path)
    done = run_cli(["dataset=fashion_mnist", f"dataset.path={REAL}", "dataset.limit_train=5000",
                    "dataset.limit_test=2000", "model=lenet", "trainer.epochs=2", "trainer.batch_size=32",
                    "trainer.checkpoint=false", "trainer.verbose=2", f"mlflow.tracking_uri={uri}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, [run] = all_runs(uri)
    assert run.data.params["dataset.name"] == "fashion_mnist"
    assert run.data.metrics["test_accuracy"] > 0.6  # chance is 0.1; the issue measured 0.763 in this setting
