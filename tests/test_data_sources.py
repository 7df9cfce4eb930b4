"""Every supported source layout, written here in its official form (a few images per class), loads
to the same arrays; the cache is used; each kind of damaged or mismatched source fails clearly."""
from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, ROOT
from cifar_exp.data import readers
from cifar_exp.data.dataset import CIFAR10_CLASSES, DataError, check_dataset, load_dataset
from cifar_exp.data.readers import MNIST_CLASSES, STL10_CLASSES
from cifar_exp.errors import ConfigError

PER_CLASS = {"train": 3, "test": 2}


def make_images(shape, seed=0):
    """Random images in the official label order's interleaving (label = index mod 10), which is
    also the order an image folder loads in, so every layout must give identical arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in PER_CLASS.items():
        n = 10 * k
        out["x_" + split] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        out["y_" + split] = (np.arange(n) % 10).astype(np.int32)
    return out


@pytest.fixture(scope="module")
def cifar():
    return make_images((32, 32, 3))


def dataset_cfg(name, path, cache_dir, **overrides):
    cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    cfg.path = str(path) if path is not None else None
    cfg.cache_dir = str(cache_dir) if cache_dir is not None else None  # None: no cache (not a folder 'None')
    cfg.train_size, cfg.test_size = 10 * PER_CLASS["train"], 10 * PER_CLASS["test"]
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def assert_same(data, arrays):
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(data, key), arrays[key], err_msg=key)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int32


# ---------------------------------------------------------------------------------------------
# Writers of the official layouts

def tar_folder(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname if arcname is not None else folder.name)
    return archive


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    return archive


def write_cifar_python(root: Path, a, labels=None, protocol=2, keys="bytes", label_type="int") -> Path:
    """cifar-10-batches-py/: five training batches and a test batch, each a pickled dict with bytes
    keys and a (N, 3072) uint8 array of R, G, B planes, plus batches.meta. The official files are
    protocol 2 with bytes keys and labels a list of ints; users' own Python 3 code writes other
    `protocol`s, str `keys`, and labels as numpy ints (`label_type="numpy"`) or an array ("array")."""
    as_labels = {"int": lambda y: [int(v) for v in y], "numpy": lambda y: list(y.astype(np.int64)),
                 "array": lambda y: y.astype(np.int64)}[label_type]
    key = (lambda k: k.encode()) if keys == "bytes" else (lambda k: k)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = np.array_split(np.arange(len(a["y_train"])), 5)
    batches = [(f"data_batch_{i + 1}", a["x_train"][idx], a["y_train"][idx]) for i, idx in enumerate(train)]
    batches.append(("test_batch", a["x_test"], a["y_test"]))
    for name, x, y in batches:
        d = {key("batch_label"): name.encode(), key("labels"): as_labels(y),
             key("data"): x.transpose(0, 3, 1, 2).reshape(len(x), -1),
             key("filenames"): [f"img_{i}.png".encode() for i in range(len(x))]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    meta = {key("num_cases_per_batch"): len(train[0]), key("num_vis"): 3072,
            key("label_names"): [key(c) for c in (labels or CIFAR10_CLASSES)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    (folder / "readme.html").write_text("<html></html>")
    return folder


def write_cifar_binary(root: Path, a) -> Path:
    """cifar-10-batches-bin/: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    train = np.array_split(np.arange(len(a["y_train"])), 5)
    batches = [(f"data_batch_{i + 1}.bin", a["x_train"][idx], a["y_train"][idx]) for i, idx in enumerate(train)]
    batches.append(("test_batch.bin", a["x_test"], a["y_test"]))
    for name, x, y in batches:
        recs = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(len(x), -1)], axis=1)
        (folder / name).write_bytes(recs.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    (folder / "readme.html").write_text("<html></html>")
    return folder


def write_image_folder(root: Path, a, classes=CIFAR10_CLASSES, ext="png") -> Path:
    """train/<class>/NNNN.<ext> and test/<class>/NNNN.<ext>, numbered in the official order within a class."""
    for split in ("train", "test"):
        counts = {}
        for x, y in zip(a["x_" + split], a["y_" + split]):
            folder = root / split / classes[y]
            folder.mkdir(parents=True, exist_ok=True)
            i = counts[y] = counts.get(y, -1) + 1
            Image.fromarray(x.squeeze(-1) if x.shape[-1] == 1 else x).save(folder / f"{i:04d}.{ext}")
    return root


def write_mnist_idx(root: Path, a, gz=True) -> Path:
    """The four IDX files: 0x00 0x00 0x08 ndim, big-endian int32 dims, then the bytes."""
    root.mkdir(parents=True, exist_ok=True)
    for split, stem in (("train", "train"), ("test", "t10k")):
        x, y = a["x_" + split][..., 0], a["y_" + split].astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            blob = head + arr.tobytes()
            name = f"{stem}-{kind}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
    return root


def write_stl10(root: Path, a) -> Path:
    """stl10_binary/: images as channel planes in column-major order, labels 1..10, plus the
    unlabelled images and fold indices, which are not read."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(a["x_" + split].transpose(0, 3, 2, 1).tobytes())
        (folder / f"{split}_y.bin").write_bytes((a["y_" + split] + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(a["x_test"][:2].transpose(0, 3, 2, 1).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    (folder / "fold_indices.txt").write_text("0 1 2\n")
    return folder


# ---------------------------------------------------------------------------------------------
# Every CIFAR-10 layout loads to the same arrays

CIFAR_SOURCES = {
    "python folder": lambda d, a: write_cifar_python(d, a),
    "python archive": lambda d, a: tar_folder(write_cifar_python(d / "src", a), d / "cifar-10-python.tar.gz"),
    "binary folder": lambda d, a: write_cifar_binary(d, a),
    "binary archive": lambda d, a: tar_folder(write_cifar_binary(d / "src", a), d / "cifar-10-binary.tar.gz"),
    "image folder": lambda d, a: write_image_folder(d / "cifar10", a),
    "image folder .tar.gz with a top folder": lambda d, a: tar_folder(
        write_image_folder(d / "cifar10", a), d / "cifar10-png.tar.gz"),
    "image folder .zip": lambda d, a: zip_folder(write_image_folder(d / "cifar10", a), d / "cifar10-png.zip"),
}


@pytest.mark.parametrize("layout", list(CIFAR_SOURCES))
def test_every_cifar10_layout_loads_identical_arrays(tmp_path, cifar, layout):
    path = CIFAR_SOURCES[layout](tmp_path, cifar)
    data = load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0)
    assert_same(data, cifar)
    assert data.class_names == CIFAR10_CLASSES and data.image_shape == (32, 32, 3)
    assert data.info["source"] == str(path) and len(data.info["sha256"]) == 64


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("keys, label_type", [("bytes", "int"), ("str", "numpy"), ("bytes", "array")])
def test_python_batches_written_by_users_own_python_3_code_load(tmp_path, cifar, protocol, keys, label_type):
    path = write_cifar_python(tmp_path, cifar, protocol=protocol, keys=keys, label_type=label_type)
    assert_same(load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0), cifar)


def test_a_python_batch_holding_other_objects_is_refused_but_not_called_corrupt(tmp_path, cifar):
    import collections

    path = write_cifar_python(tmp_path, cifar)
    d = pickle.loads((path / "data_batch_4").read_bytes(), encoding="bytes")
    d[b"labels"] = collections.deque(d[b"labels"])
    (path / "data_batch_4").write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(DataError, match=r"data_batch_4: holds a collections\.deque object") as caught:
        load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0)
    assert "corrupt" not in str(caught.value)


def test_jpeg_image_folder_loads_what_pillow_decodes_in_official_order(tmp_path, cifar):
    folder = write_image_folder(tmp_path / "jpg", cifar, ext="jpg")
    path = tar_folder(folder, tmp_path / "jpg.tar.gz", arcname="")  # no top folder, like the real archive
    data = load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0)
    np.testing.assert_array_equal(data.y_train, cifar["y_train"])
    # Image i of the official order is the (i // 10)-th file of its class folder.
    expected = [np.asarray(Image.open(folder / "train" / CIFAR10_CLASSES[y] / f"{i // 10:04d}.jpg"))
                for i, y in enumerate(cifar["y_train"])]
    np.testing.assert_array_equal(data.x_train, np.stack(expected))


@pytest.mark.parametrize("keras_layout", ["keras 3 folder", "keras 3 archive", "keras 2 folder"])
def test_auto_finds_keras_own_cache(tmp_path, monkeypatch, cifar, keras_layout):
    datasets = tmp_path / "keras_home" / "datasets"
    if keras_layout == "keras 3 folder":
        write_cifar_python(datasets / "cifar-10-batches-py-target", cifar)
    elif keras_layout == "keras 3 archive":  # what get_file keeps: the .tar.gz under a name without suffix
        datasets.mkdir(parents=True)
        tar_folder(write_cifar_python(tmp_path / "src", cifar), datasets / "cifar-10-batches-py-target_archive")
    else:
        write_cifar_python(datasets, cifar)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    data = load_dataset(dataset_cfg("cifar10", None, tmp_path / "cache", source="auto"), seed=0)
    assert_same(data, cifar)
    assert data.info["source"].startswith(str(datasets))


def test_source_path_without_a_path_says_where_to_put_a_copy_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"(?s)dataset.source=path but dataset.path is not set.*CIFAR10_PATH"):
        readers.locate("cifar10", "path", None)
    assert not (tmp_path / "empty").exists()


def test_cifar10_downloads_the_official_archive_with_its_published_md5():
    spec = readers.SPECS["cifar10"]
    assert spec.archive_url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert spec.archive_md5 == "c58f30108f718f92721af3b95e74349a"
    assert spec.archive in spec.keras_cache  # the downloaded archive is found there next time


@pytest.fixture
def web(tmp_path):
    """A real HTTP server on localhost serving tmp_path/www (no network needed)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def serve_cifar(monkeypatch, web, tmp_path, cifar, md5=None):
    """An archive like the official one (cifar-10-batches-py/ in a .tar.gz), published at a local
    URL with its MD5, in place of the official URL and MD5."""
    import dataclasses
    import hashlib

    root, base = web
    archive = tar_folder(write_cifar_python(tmp_path / "src", cifar),
                         root / "cifar-10-python.tar.gz")
    md5 = md5 or hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(readers.SPECS, "cifar10", dataclasses.replace(
        readers.SPECS["cifar10"], archive_url=f"{base}/cifar-10-python.tar.gz", archive_md5=md5))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return archive


@pytest.mark.slow  # imports Keras (its downloader)
def test_auto_without_a_copy_downloads_the_archive_into_keras_cache_then_reads_it_there(
        tmp_path, monkeypatch, web, cifar, capfd):
    archive = serve_cifar(monkeypatch, web, tmp_path, cifar)
    data = load_dataset(dataset_cfg("cifar10", None, tmp_path / "cache", source="auto"), seed=0)
    assert_same(data, cifar)
    kept = tmp_path / "keras_home" / "datasets" / "cifar-10-python.tar.gz"
    assert kept.read_bytes() == archive.read_bytes() and data.info["source"] == str(kept)
    assert "Downloading data from" in capfd.readouterr().out  # Keras' progress output
    archive.unlink()  # the next job reads the cached copy: no server needed
    assert readers.locate("cifar10", "auto", None) == kept


@pytest.mark.slow  # imports Keras (its downloader)
def test_a_download_whose_md5_differs_is_refused_in_one_line(tmp_path, monkeypatch, web, cifar):
    serve_cifar(monkeypatch, web, tmp_path, cifar, md5="0" * 32)
    with pytest.raises(DataError) as refused:
        readers.locate("cifar10", "auto", None)
    message = str(refused.value)
    assert "\n" not in message and "Could not download CIFAR-10" in message
    assert "cifar-10-python.tar.gz in " + str(tmp_path / "keras_home" / "datasets") in message


@pytest.mark.slow  # imports Keras (its downloader)
def test_offline_one_line_says_where_to_put_the_archive_and_which_forms_are_read(tmp_path, monkeypatch, web, cifar):
    serve_cifar(monkeypatch, web, tmp_path, cifar)
    spec = readers.SPECS["cifar10"]
    import dataclasses
    import socket

    with socket.socket() as s:  # a port nothing listens on: the connection is refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(readers.SPECS, "cifar10", dataclasses.replace(
        spec, archive_url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"))
    with pytest.raises(DataError) as refused:
        readers.locate("cifar10", "auto", None)
    message = str(refused.value)
    assert "\n" not in message
    assert f"put cifar-10-python.tar.gz in {tmp_path / 'keras_home' / 'datasets'}/" in message
    assert "cifar-10-batches-py/" in message and "dataset.path=" in message and "CIFAR10_PATH" in message


def test_a_folder_given_where_the_archive_is_expected_is_refused_naming_the_archive(tmp_path, cifar):
    folder = tmp_path / "data"
    folder.mkdir()
    tar_folder(write_cifar_python(tmp_path / "src", cifar), folder / "cifar10.tar.gz")
    with pytest.raises(DataError, match=r"no CIFAR-10 layout found \(it holds the archive\(s\) cifar10.tar.gz: "
                                        r"give the archive itself, e.g. dataset.path=\S*cifar10.tar.gz;"):
        readers.locate("cifar10", "auto", str(folder))
    assert readers.locate("cifar10", "auto", str(folder / "cifar10.tar.gz")) == folder / "cifar10.tar.gz"


def test_a_file_that_is_no_archive_is_refused_before_decoding(tmp_path):
    bad = tmp_path / "cifar.tar.gz"
    bad.write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="cifar.tar.gz: neither a folder nor a readable .tar/.tar.gz/.zip archive"):
        readers.locate("cifar10", "path", str(bad))


# ---------------------------------------------------------------------------------------------
# MNIST and STL-10

@pytest.fixture(scope="module")
def mnist():
    return make_images((28, 28, 1), seed=1)


MNIST_SOURCES = {
    "keras mnist.npz": lambda d, a: (np.savez(d / "mnist.npz", **{k: v[..., 0] if k[0] == "x" else v.astype(np.uint8)
                                                                for k, v in a.items()}), d / "mnist.npz")[1],
    "gzipped IDX folder": lambda d, a: write_mnist_idx(d / "mnist", a),
    "IDX .tar.gz": lambda d, a: tar_folder(write_mnist_idx(d / "mnist", a, gz=False), d / "mnist.tar.gz"),
    "image folder": lambda d, a: write_image_folder(d / "mnist_png", a, classes=MNIST_CLASSES),
}


@pytest.mark.parametrize("layout", list(MNIST_SOURCES))
def test_every_mnist_layout_loads_identical_arrays(tmp_path, mnist, layout):
    path = MNIST_SOURCES[layout](tmp_path, mnist)
    data = load_dataset(dataset_cfg("mnist", path, tmp_path / "cache"), seed=0)
    assert_same(data, mnist)
    assert data.image_shape == (28, 28, 1) and data.class_names == MNIST_CLASSES


@pytest.fixture(scope="module")
def stl():
    return make_images((96, 96, 3), seed=2)


@pytest.mark.parametrize("archived", [False, True], ids=["folder", "archive"])
def test_stl10_binary_loads_identical_arrays(tmp_path, stl, archived):
    path = write_stl10(tmp_path / "src", stl)
    if archived:
        path = tar_folder(path, tmp_path / "stl10_binary.tar.gz")
    data = load_dataset(dataset_cfg("stl10", path, tmp_path / "cache"), seed=0)
    assert_same(data, stl)
    assert data.image_shape == (96, 96, 3) and data.class_names == STL10_CLASSES


# ---------------------------------------------------------------------------------------------
# Cache

def test_second_load_comes_from_the_cache_without_decoding(tmp_path, monkeypatch, cifar):
    path = tar_folder(write_image_folder(tmp_path / "cifar10", cifar), tmp_path / "cifar10.tar.gz")
    cfg = dataset_cfg("cifar10", path, tmp_path / "cache")
    first = load_dataset(cfg, seed=0)
    assert first.info["cache"] == "written" and Path(first.info["cache_file"]).parent == tmp_path / "cache"
    assert not list((tmp_path / "cache").glob("*.tmp"))  # written atomically, nothing left behind

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(readers, "decode", no_decoding)
    second = load_dataset(cfg, seed=0)
    assert second.info["cache"] == "hit" and second.info["layout"] == "image_folder"
    assert_same(second, cifar)


def test_changed_source_is_decoded_again(tmp_path, cifar):
    path = write_cifar_binary(tmp_path, cifar)
    cfg = dataset_cfg("cifar10", path, tmp_path / "cache")
    load_dataset(cfg, seed=0)
    recs = np.fromfile(path / "test_batch.bin", np.uint8).reshape(-1, 3073)
    recs[0, 0] = 9  # relabel test image 0: same size, new contents
    (path / "test_batch.bin").write_bytes(recs.tobytes())
    again = load_dataset(cfg, seed=0)
    assert again.info["cache"] == "written" and again.y_test[0] == 9


def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, cifar):
    cfg = dataset_cfg("cifar10", write_cifar_python(tmp_path, cifar), tmp_path / "cache")
    cache_file = Path(load_dataset(cfg, seed=0).info["cache_file"])
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    again = load_dataset(cfg, seed=0)
    assert again.info["cache"] == "written"
    assert_same(again, cifar)


def test_cache_can_be_switched_off(tmp_path, cifar):
    cfg = dataset_cfg("cifar10", write_cifar_python(tmp_path, cifar), tmp_path / "cache")
    cfg.cache_dir = None
    assert load_dataset(cfg, seed=0).info["cache"] == "off"
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# Integrity: a damaged or mismatched source fails, naming the file and what was expected

def truncate(f: Path, keep: float = 0.5):
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])


def relabel_python_batch(f: Path, label: int):
    d = pickle.loads(f.read_bytes(), encoding="bytes")
    d[b"labels"][1] = label
    f.write_bytes(pickle.dumps(d, protocol=2))


def reshape_python_batch(f: Path):
    d = pickle.loads(f.read_bytes(), encoding="bytes")
    d[b"data"] = d[b"data"][:, :3000]
    f.write_bytes(pickle.dumps(d, protocol=2))


def corrupt_image(root: Path):
    (root / "train" / "cat" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


def wrong_size_image(root: Path):
    Image.fromarray(np.zeros((31, 32, 3), np.uint8)).save(root / "test" / "dog" / "0000.png")


def python_tree(tmp_path, cifar):
    return write_cifar_python(tmp_path, cifar)


def image_tree(tmp_path, cifar):
    return write_image_folder(tmp_path / "cifar10", cifar)


def binary_tree(tmp_path, cifar):
    return write_cifar_binary(tmp_path, cifar)


def notes_only(root: Path) -> Path:
    (root / "x").mkdir()
    (root / "x" / "notes.txt").write_text("not a dataset")
    return root / "x"


INTEGRITY = {
    "truncated python batch": (python_tree, lambda p: truncate(p / "data_batch_3"),
                               r"data_batch_3: truncated or corrupt, expected a pickled CIFAR-10 batch"),
    "missing python batch": (python_tree, lambda p: (p / "data_batch_5").unlink(),
                             r"incomplete dataset, missing .*data_batch_5"),
    "python label outside 0..9": (python_tree, lambda p: relabel_python_batch(p / "data_batch_2", 10),
                                  r"data_batch_2: label 10 at index 1 is outside 0\.\.9"),
    "python wrong image size": (python_tree, lambda p: reshape_python_batch(p / "test_batch"),
                                r"test_batch: data is uint8 \(20, 3000\), expected uint8 \(N, 3072\)"),
    "python class names": (lambda d, a: write_cifar_python(d, a, labels=list(CIFAR10_CLASSES[::-1])), None,
                           r"batches.meta: class names .* differ from the official order"),
    "truncated binary batch": (binary_tree, lambda p: truncate(p / "data_batch_1.bin", 0.7),
                               r"data_batch_1\.bin: \d+ bytes is not a whole number of 3073-byte records"),
    "binary label outside 0..9": (binary_tree, lambda p: (p / "test_batch.bin").write_bytes(
        b"\x0c" + (p / "test_batch.bin").read_bytes()[1:]), r"test_batch\.bin: label 12 at index 0 is outside 0\.\.9"),
    "truncated archive": (lambda d, a: tar_folder(write_cifar_python(d / "src", a), d / "c.tar.gz"), truncate,
                          r"c\.tar\.gz: archive is truncated or corrupt"),
    "archive missing its last bytes": (lambda d, a: tar_folder(write_cifar_python(d / "src", a), d / "c.tar.gz"),
                                       lambda p: p.write_bytes(p.read_bytes()[:-8]),
                                       r"c\.tar\.gz: archive is truncated or corrupt"),
    "truncated zip": (lambda d, a: zip_folder(write_image_folder(d / "src", a), d / "c.zip"), truncate,
                      r"c\.zip: neither a folder nor a readable \.tar/\.tar\.gz/\.zip archive"),
    "corrupt image": (image_tree, corrupt_image, r"train/cat/0001\.png: not a readable image"),
    "wrong image size": (image_tree, wrong_size_image, r"test/dog/0000\.png: image is 32x31 pixels, expected 32x32"),
    "missing class folder": (image_tree, lambda p: [f.unlink() for f in (p / "test" / "cat").iterdir()],
                             r"cifar10/test: missing class folder\(s\) cat \(expected airplane, automobile"),
    "misnamed class folder": (image_tree, lambda p: (p / "train" / "airplane").rename(p / "train" / "aeroplane"),
                              r"train/aeroplane: unexpected class folder 'aeroplane'; class folders must be named"),
    "image outside a class folder": (image_tree, lambda p: (p / "train" / "cat" / "0000.png").rename(
        p / "train" / "0000.png"), r"train/0000\.png: expected .*train/<class>/<image>"),
    "no known layout": (lambda d, a: notes_only(d), None,
                        r"no CIFAR-10 layout found .* Expected cifar-10-python\.tar\.gz"),
}


@pytest.mark.parametrize("case", list(INTEGRITY))
def test_damaged_source_fails_naming_file_and_expectation(tmp_path, cifar, case):
    write, damage, message = INTEGRITY[case]
    path = write(tmp_path, cifar)
    if damage:
        damage(path)
    with pytest.raises(DataError, match=message):
        load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0)
    assert not list((tmp_path / "cache").glob("*.npz")) if (tmp_path / "cache").exists() else True


@pytest.mark.parametrize("split,size", [("train", 31), ("test", 19)])
def test_split_with_the_wrong_count_fails(tmp_path, cifar, split, size):
    cfg = dataset_cfg("cifar10", write_cifar_python(tmp_path, cifar), tmp_path / "cache", **{f"{split}_size": size})
    n = 10 * PER_CLASS[split]
    with pytest.raises(DataError, match=rf"the {split} split has {n} images, expected {size} \(dataset\.{split}_size\)"):
        load_dataset(cfg, seed=0)


def test_wrong_count_is_caught_from_the_cache_too(tmp_path, cifar):
    path = write_cifar_python(tmp_path, cifar)
    load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache"), seed=0)
    with pytest.raises(DataError, match=r"expected 50000 \(dataset\.train_size\)"):
        load_dataset(dataset_cfg("cifar10", path, tmp_path / "cache", train_size=50000), seed=0)


def test_truncated_idx_file_fails(tmp_path, mnist):
    path = write_mnist_idx(tmp_path / "mnist", mnist, gz=False)
    truncate(path / "t10k-images-idx3-ubyte", 0.9)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: \d+ data bytes, expected 15680 for shape \(20, 28, 28\)"):
        load_dataset(dataset_cfg("mnist", path, tmp_path / "cache"), seed=0)


def test_stl10_label_outside_1_to_10_fails(tmp_path, stl):
    path = write_stl10(tmp_path, stl)
    (path / "train_y.bin").write_bytes(b"\x00" + (path / "train_y.bin").read_bytes()[1:])
    with pytest.raises(DataError, match=r"train_y\.bin: label 0 at index 0 is outside 1\.\.10"):
        load_dataset(dataset_cfg("stl10", path, tmp_path / "cache"), seed=0)


# ---------------------------------------------------------------------------------------------
# check_dataset: bad values fail before loading, naming the full key

def option(option_name, **changes):
    cfg = OmegaConf.load(CONF / "dataset" / f"{option_name}.yaml")
    cfg.path = None
    for key, value in changes.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")))
def test_shipped_dataset_options_pass(name):
    check_dataset(option(name))


BAD = [
    ({"preprocess": "zscore"}, "dataset.preprocess", "scale | per_image_standardization | mean_std"),
    ({"augment": "cutmix"}, "dataset.augment", "none | flip | crop_flip | crop_flip_cutout"),
    ({"source": "internet"}, "dataset.source", "auto | download | path"),
    ({"val_fraction": 1.0}, "dataset.val_fraction", "[0, 1)"),
    ({"val_fraction": -0.1}, "dataset.val_fraction", "[0, 1)"),
    ({"label_noise": 1.0}, "dataset.label_noise", "[0, 1)"),
    ({"label_noise": -0.2}, "dataset.label_noise", "[0, 1)"),
    ({"folds": 5, "fold": 5}, "dataset.fold", "0..4"),
    ({"folds": 5, "fold": None}, "dataset.fold", "0..4"),
    ({"folds": 1, "fold": 0}, "dataset.folds", ">= 2"),
    ({"fold": 0}, "dataset.fold", "unless dataset.folds"),
    ({"folds": 5, "fold": 0, "val_fraction": 0.1}, "dataset.val_fraction", "the fold is the validation split"),
    ({"limit_train": 0}, "dataset.limit_train", "positive integer"),
    ({"limit_test": -5}, "dataset.limit_test", "positive integer"),
    ({"path": "/no/such/cifar"}, "dataset.path", "existing folder or archive"),
    ({"source": "path"}, "dataset.path", "when dataset.source=path"),
    ({"num_classes": 100}, "dataset.num_classes", "10 for cifar10"),
    ({"name": "cifar100"}, "dataset.name", "cifar10 | mnist | stl10"),
]


@pytest.mark.parametrize("changes,key,allowed", BAD, ids=[str(c) for c, _, _ in BAD])
def test_bad_values_name_the_key_and_what_is_allowed(changes, key, allowed):
    with pytest.raises(ConfigError) as err:
        check_dataset(option("cifar10", **changes))
    assert err.value.key == key and allowed in str(err.value)


def test_data_modules_do_not_import_tensorflow():
    code = ("import sys, cifar_exp.data.dataset, cifar_exp.data.readers, cifar_exp.data.splits, cifar_exp.data.augment;"
            "heavy = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
