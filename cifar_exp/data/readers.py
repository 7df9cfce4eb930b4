"""Dataset files as users have them: finding them, decoding every supported layout, checking
their integrity, and caching the decoded arrays as `.npz` keyed by source and checksum.

Pure numpy/Pillow/stdlib; Keras is imported only to download (its `get_file`: cache, hash check,
progress bar).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import re
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(k) for k in range(10))
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer",
                 "dog", "horse", "monkey", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Bump when decoding changes, so caches written by older code are not reused.
READER_VERSION = 1
SPLIT_DIRS = {"train": ("train", "training"), "test": ("test", "testing")}
# Members never read from a tar stream: STL-10's 100,000 unlabelled images (2.7 GB) are unused.
SKIP_MEMBERS = {"unlabeled_X.bin"}


class DataError(ValueError):
    """A dataset file that is missing, truncated, corrupt or not what its layout promises."""


@dataclass(frozen=True)
class Spec:
    """What one dataset looks like on disk and where users usually keep it."""
    title: str
    classes: tuple[str, ...]
    layouts: tuple[str, ...]       # tried in this order
    env_var: str                   # the environment variable its config reads for `path`
    keras_cache: tuple[str, ...]   # names under ~/.keras/datasets, most specific first
    local_copies: str              # what to put on disk, for error messages
    url: str
    archive: str | None = None     # the official archive's file name in Keras' cache...
    archive_url: str | None = None  # ...where it is published...
    archive_md5: str | None = None  # ...and its published MD5: with these, source=auto downloads it
    system_copies: tuple[str, ...] = ()  # where an OS package installs it, tried before Keras' cache
    how_to_get: str = ""           # one line for "no copy found", where there is a one-line way to get it


SPECS = {
    "cifar10": Spec(
        "CIFAR-10", CIFAR10_CLASSES, ("cifar_python", "cifar_binary", "image_folder"), "CIFAR10_PATH",
        # Keras 3 extracts to <fname>/ and keeps the archive as <fname>_archive; Keras 2 used
        # cifar-10-batches-py/ and cifar-10-batches-py.tar.gz.
        ("cifar-10-batches-py-target", "cifar-10-batches-py", "cifar-10-batches-py-target_archive",
         "cifar-10-batches-py.tar.gz", "cifar-10-python.tar.gz", "cifar-10-batches-bin",
         "cifar-10-binary.tar.gz"),
        "cifar-10-python.tar.gz or cifar-10-binary.tar.gz (or their extracted cifar-10-batches-py/, "
        "cifar-10-batches-bin/ folders), or an image-folder tree or .tar.gz/.zip of one "
        "(train/<class>/*.png|jpg, test/<class>/*, classes " + ", ".join(CIFAR10_CLASSES) + ")",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a"),
    "mnist": Spec(
        "MNIST", MNIST_CLASSES, ("mnist_npz", "mnist_idx", "image_folder"), "MNIST_PATH",
        ("mnist.npz",),
        "Keras' mnist.npz, or the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in a folder or archive",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
    "stl10": Spec(
        "STL-10", STL10_CLASSES, ("stl10_binary", "image_folder"), "STL10_PATH",
        ("stl10_binary", "stl10_binary.tar.gz"),
        "stl10_binary.tar.gz or its extracted stl10_binary/ folder (train_X.bin, train_y.bin, test_X.bin, "
        "test_y.bin)",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
    "fashion_mnist": Spec(
        "Fashion-MNIST", FASHION_MNIST_CLASSES, ("mnist_idx",), "FASHION_MNIST_PATH",
        ("fashion-mnist",),  # Keras' fashion_mnist.load_data() keeps the four .gz files there
        "the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in a folder or archive",
        "https://github.com/zalandoresearch/fashion-mnist",
        system_copies=("/usr/share/datasets/fashion-mnist",),  # Debian's dataset-fashion-mnist
        how_to_get="install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or fetch Keras' "
                   "copy once with dataset.source=download, or set dataset.path to a folder of its four IDX files"),
}


# ----------------------------------------------------------------------------------------------
# Finding the source

def keras_datasets_dir() -> Path:
    """Keras' download cache, resolved as Keras resolves it (without importing Keras)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]) / "datasets"
    home = Path("~").expanduser()
    base = home if os.access(home, os.W_OK) else Path("/tmp")
    return base / ".keras" / "datasets"


def _keras_cache_candidates(name: str) -> list[Path]:
    return [keras_datasets_dir() / entry for entry in SPECS[name].keras_cache]


def _local_candidates(name: str) -> list[Path]:
    """Where `source=auto` looks without a path: an OS package's folder, then Keras' cache."""
    return [Path(p) for p in SPECS[name].system_copies] + _keras_cache_candidates(name)


def _missing_copy_message(name: str, why: str) -> str:
    spec = SPECS[name]
    return (f"{why}\nPut a local copy of {spec.title} on this machine: {spec.local_copies} "
            f"(official files: {spec.url}). Then run with dataset.path=/path/to/it "
            f"(or export {spec.env_var}=/path/to/it), or copy it into Keras' cache {keras_datasets_dir()}.")


def _offline_message(name: str, url: str, err: BaseException) -> str:
    """One line for a download that failed: the reason, where to put the archive, what is read."""
    spec = SPECS[name]
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (f"Could not download {spec.title} from {url} ({reason}): put {spec.archive} in "
            f"{keras_datasets_dir()}/ (or pass dataset.path=/path/to/it, or export {spec.env_var}); "
            f"read there: {spec.local_copies}")


def locate(name: str, source: str, path) -> Path:
    """The folder or file to read, by `dataset.source`:
    path: `path` only; auto: `path`, else Keras' cache, else (where the dataset has an official
    archive: CIFAR-10) a download into that cache; download: a download into Keras' cache.

    What is returned holds a readable layout as far as can be told without decoding
    (`check_layout`), so a wrong path is refused before a run opens. Raises DataError.
    """
    if path is not None:
        p = Path(str(path)).expanduser()
        if not p.exists():
            raise DataError(_missing_copy_message(name, f"dataset.path={str(path)!r} does not exist."))
        if source in ("path", "auto"):
            return check_layout(name, p, f"dataset.path={str(path)!r}")
    if source == "path":
        raise DataError(_missing_copy_message(name, "dataset.source=path but dataset.path is not set."))
    if source == "auto":
        for candidate in _local_candidates(name):
            if candidate.exists():
                return check_layout(name, candidate, "its usual place")
        spec = SPECS[name]
        if spec.archive_url:
            return _download(name)
        if spec.how_to_get:
            raise DataError(f"No copy of {spec.title} in {', '.join(map(str, _local_candidates(name)))}: "
                            f"{spec.how_to_get}.")
        raise DataError(_missing_copy_message(
            name, f"No local copy of {SPECS[name].title} found: dataset.path is not set and Keras' cache "
                  f"{keras_datasets_dir()} holds none of {', '.join(SPECS[name].keras_cache)}. "
                  "(dataset.source=download fetches it where there is internet access.)"))
    if source == "download":
        return _download(name)
    raise DataError(f"dataset.source={source!r}: expected auto, download or path")


def fetch_archive(url: str, fname: str, md5: str | None) -> Path:
    """Download `url` to Keras' cache as `fname` (kept there: a second call reads the copy, after
    checking its MD5) with Keras' progress bar; returns the file. Raises whatever urllib or Keras
    raise (no network, HTTP error, an MD5 that does not match: ValueError)."""
    from keras.utils import get_file

    cache = keras_datasets_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return Path(get_file(fname=fname, origin=url, md5_hash=md5, cache_dir=str(cache.parent),
                         cache_subdir=cache.name))


def _download(name: str) -> Path:
    """Fetch into Keras' cache: the official archive where its MD5 is published (CIFAR-10), else
    through Keras' own loader; then read that copy like any other."""
    spec = SPECS[name]
    url = spec.archive_url or spec.url
    try:
        if spec.archive_url:
            return check_layout(name, fetch_archive(spec.archive_url, spec.archive, spec.archive_md5), url)
        import keras

        if name == "mnist":
            keras.datasets.mnist.load_data()
        elif name == "fashion_mnist":
            keras.datasets.fashion_mnist.load_data()
        else:
            keras.utils.get_file(fname="stl10_binary.tar.gz", origin=spec.url)
    except DataError:
        raise
    except Exception as err:  # urllib, socket, hash mismatch...: all mean "no usable download"
        raise DataError(_offline_message(name, url, err)) from None
    for candidate in _keras_cache_candidates(name):
        if candidate.exists():
            return candidate
    raise DataError(f"Keras reported downloading {spec.title}, but none of "
                    f"{', '.join(spec.keras_cache)} is in {keras_datasets_dir()}")


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
# A file name (or folder name) that tells a layout is there, per dataset: enough to accept a folder
# before a run opens; the full check is the decode.
LAYOUT_MARKERS = {"cifar10": (r"data_batch_1(\.bin)?",), "mnist": (r"(train|t10k)-images-idx3-ubyte(\.gz)?",),
                  "fashion_mnist": (r"(train|t10k)-images-idx3-ubyte(\.gz)?",), "stl10": (r"train_X\.bin",)}


def check_layout(name: str, p: Path, given: str) -> Path:
    """`p` when it can hold a dataset: a tar or zip archive (its header read, not its contents), an
    .npz (MNIST), or a folder with a layout's marker file or an image-folder tree. A folder holding
    only archives is refused naming them (the path meant the archive). Raises DataError."""
    spec = SPECS[name]
    if p.is_file():
        if tarfile.is_tarfile(p) or zipfile.is_zipfile(p) or (name == "mnist" and p.suffix == ".npz"):
            return p
        raise DataError(f"{p}: neither a folder nor a readable .tar/.tar.gz/.zip archive (truncated or "
                        f"corrupt, or not a dataset file?; from {given}). Expected {spec.local_copies}.")
    names, markers = [], [re.compile(m) for m in LAYOUT_MARKERS.get(name, ())]
    for d, dirs, files in os.walk(p, followlinks=True):
        dirs[:] = [x for x in dirs if not _ignored(x)]
        rel = Path(d).relative_to(p).as_posix()
        names += [f if rel == "." else f"{rel}/{f}" for f in files if not _ignored(f)]
        if any(m.fullmatch(f) for m in markers for f in files):
            return p
        if any(x in SPLIT_DIRS["train"] for x in Path(d).parts[len(p.parts):]):
            return p  # an image-folder tree: train/<class>/... (the decode checks the classes)
    archives = sorted(n for n in names if n.lower().endswith(ARCHIVE_SUFFIXES))
    found = (f"it holds the archive(s) {', '.join(archives)}: give the archive itself, e.g. "
             f"dataset.path={p / archives[0]}" if archives else f"folder with {len(names)} files")
    raise DataError(f"{p}: no {spec.title} layout found ({found}; from {given}). Expected {spec.local_copies}.")


# ----------------------------------------------------------------------------------------------
# Reading folders and archives alike

def _ignored(rel: str) -> bool:
    """Hidden files and macOS' __MACOSX/ and ._* debris, which archives often carry."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class Tree:
    """The files of a folder, a tar archive (any compression) or a zip, by relative posix path."""

    def __init__(self, root: Path):
        self.root = root
        self._zip = None
        self._bytes: dict[str, bytes] = {}
        if root.is_dir():
            self.kind = "folder"
            self.names = sorted(
                Path(d, f).relative_to(root).as_posix()
                for d, _, files in os.walk(root, followlinks=True) for f in files)
        elif zipfile.is_zipfile(root):
            self.kind = "zip"
            self._zip = zipfile.ZipFile(root)
            self.names = sorted(i.filename for i in self._zip.infolist() if not i.is_dir())
        elif tarfile.is_tarfile(root):
            self.kind = "tar"
            self._read_tar()
            self.names = sorted(self._bytes)
        else:
            raise DataError(f"{root}: neither a folder nor a readable .tar/.tar.gz/.zip archive "
                            "(truncated or corrupt, or not a dataset file?)")
        self.names = [n for n in self.names if not _ignored(n)]

    def _read_tar(self):
        # gzip has no random access, so stream every member once and keep the bytes.
        try:
            with tarfile.open(self.root) as tar:
                for member in tar:
                    if member.isfile() and PurePosixPath(member.name).name not in SKIP_MEMBERS:
                        self._bytes[member.name.removeprefix("./")] = tar.extractfile(member).read()
                # Read to the end so gzip/bz2/xz check their trailer (CRC, length): a cut or
                # damaged archive fails here even when every member happened to be intact.
                while tar.fileobj.read(1 << 20):
                    pass
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataError(f"{self.root}: archive is truncated or corrupt ({err})") from err

    def label(self, name: str) -> str:
        """How error messages name a file: a path, or archive:member."""
        return str(self.root / name) if self.kind == "folder" else f"{self.root}:{name}"

    def read(self, name: str) -> bytes:
        try:
            if self.kind == "folder":
                return (self.root / name).read_bytes()
            if self.kind == "zip":
                return self._zip.read(name)
            return self._bytes[name]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
            raise DataError(f"{self.label(name)}: cannot be read, truncated or corrupt ({err})") from err

    def find(self, basename_pattern: str) -> list[str]:
        """Folders (as 'a/b/' prefixes, '' for the root) holding a file whose name matches, shallowest first."""
        rx = re.compile(basename_pattern)
        hits = {n.rsplit("/", 1)[0] + "/" if "/" in n else "" for n in self.names
                if rx.fullmatch(n.rsplit("/", 1)[-1])}
        return sorted(hits, key=lambda p: (p.count("/"), p))

    def close(self):
        if self._zip is not None:
            self._zip.close()


# ----------------------------------------------------------------------------------------------
# Layouts: each returns {"x_train", "y_train", "x_test", "y_test"}, or None if absent from the tree

def _require(tree: Tree, prefix: str, names) -> None:
    missing = [prefix + n for n in names if prefix + n not in tree.names]
    if missing:
        raise DataError(f"{tree.root}: incomplete dataset, missing {', '.join(missing)}")


def _check_labels(labels: np.ndarray, k: int, where: str, first: int = 0) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((labels < first) | (labels >= first + k))
    if bad.size:
        raise DataError(f"{where}: label {labels[bad[0]]} at index {bad[0]} is outside "
                        f"{first}..{first + k - 1} ({bad.size} such labels)")
    return (labels - first).astype(np.int32)


def _check_names_file(tree: Tree, name: str, spec: Spec) -> None:
    """An optional text file of class names, one per line, must list the official classes."""
    if name in tree.names:
        names = [line.strip() for line in tree.read(name).decode().splitlines() if line.strip()]
        _check_class_names(names, spec.classes, tree.label(name))


def _check_class_names(found, expected, where: str) -> None:
    if tuple(found) != tuple(expected):
        raise DataError(f"{where}: class names {list(found)} differ from the official order {list(expected)}")


class _BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch needs (a dict of numpy arrays, numpy scalars, lists, bytes and str),
    as pickled at protocols 2-5 by numpy 1.x (`numpy.core`) or 2.x (`numpy._core`): no code execution."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),  # arrays, scalars
                             ("numeric", "_frombuffer"))}  # arrays at protocol 5

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


class _Refused(pickle.UnpicklingError):
    """A global outside _BatchUnpickler.ALLOWED: a well-formed pickle, just not a CIFAR batch."""


def _unpickle(tree: Tree, name: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(tree.read(name)), encoding="bytes").load()
    except DataError:
        raise
    except _Refused as err:
        raise DataError(f"{tree.label(name)}: holds a {err} object; a CIFAR-10 batch is a dict of numpy arrays, "
                        "numbers, lists, bytes and str, and nothing else is unpickled (it could run code)") from None
    except Exception as err:  # pickle raises many types on truncated input
        raise DataError(f"{tree.label(name)}: truncated or corrupt, expected a pickled CIFAR-10 batch "
                        f"({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{tree.label(name)}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_python(tree: Tree, spec: Spec, shape):
    prefixes = tree.find(r"data_batch_1")
    if not prefixes:
        return None
    prefix, (h, w, c) = prefixes[0], shape
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    _require(tree, prefix, files["train"] + files["test"])
    if prefix + "batches.meta" in tree.names:
        meta = _unpickle(tree, prefix + "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in meta.get("label_names", [])]
        _check_class_names(names, spec.classes, tree.label(prefix + "batches.meta"))
    out = {}
    for split, batch_names in files.items():
        xs, ys = [], []
        for b in batch_names:
            where = tree.label(prefix + b)
            d = _unpickle(tree, prefix + b)
            data, labels = d.get("data"), d.get("labels")
            if not isinstance(data, np.ndarray) or labels is None:
                raise DataError(f"{where}: expected keys 'data' (uint8 array) and 'labels', found {sorted(d)}")
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != h * w * c:
                raise DataError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, {h * w * c}) "
                                f"rows of {c}x{h}x{w} pixels")
            if len(labels) != len(data):
                raise DataError(f"{where}: {len(labels)} labels for {len(data)} images")
            xs.append(data.reshape(-1, c, h, w).transpose(0, 2, 3, 1))
            ys.append(_check_labels(labels, len(spec.classes), where))
        out["x_" + split], out["y_" + split] = np.concatenate(xs), np.concatenate(ys)
    return out


def read_cifar_binary(tree: Tree, spec: Spec, shape):
    prefixes = tree.find(r"data_batch_1\.bin")
    if not prefixes:
        return None
    prefix, (h, w, c) = prefixes[0], shape
    row = 1 + h * w * c  # one label byte, then the channel planes
    files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    _require(tree, prefix, files["train"] + files["test"])
    _check_names_file(tree, prefix + "batches.meta.txt", spec)
    out = {}
    for split, batch_names in files.items():
        xs, ys = [], []
        for b in batch_names:
            where = tree.label(prefix + b)
            raw = np.frombuffer(tree.read(prefix + b), np.uint8)
            if raw.size == 0 or raw.size % row:
                raise DataError(f"{where}: {raw.size} bytes is not a whole number of {row}-byte records "
                                f"(1 label byte + {c}x{h}x{w} pixels): truncated or corrupt")
            recs = raw.reshape(-1, row)
            xs.append(recs[:, 1:].reshape(-1, c, h, w).transpose(0, 2, 3, 1))
            ys.append(_check_labels(recs[:, 0], len(spec.classes), where))
        out["x_" + split], out["y_" + split] = np.concatenate(xs), np.concatenate(ys)
    return out


def read_mnist_npz(tree: Tree | Path, spec: Spec, shape):
    if isinstance(tree, Path):  # the .npz itself
        blob, where = tree.read_bytes(), str(tree)
    else:
        found = [n for n in tree.names if n.rsplit("/", 1)[-1] == "mnist.npz"]
        if not found:
            return None
        blob, where = tree.read(found[0]), tree.label(found[0])
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{where}: missing arrays {missing}; expected {list(keys)}")
            arrays = {k: z[k] for k in keys}
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{where}: truncated or corrupt .npz ({type(err).__name__}: {err})") from err
    out = {}
    for split in ("train", "test"):
        x = arrays["x_" + split]
        if x.ndim == 3:
            x = x[..., None]  # Keras' file stores N x 28 x 28; the channel axis is implicit
        if x.dtype != np.uint8 or x.shape[1:] != tuple(shape):
            raise DataError(f"{where}: x_{split} is {x.dtype} {x.shape[1:]} per image, expected uint8 {tuple(shape)}")
        out["x_" + split] = x
        out["y_" + split] = _check_labels(arrays["y_" + split], len(spec.classes), f"{where}: y_{split}")
    return out


def _read_idx(tree: Tree, name: str, ndim: int) -> np.ndarray:
    where, raw = tree.label(name), tree.read(name)
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{where}: truncated or corrupt gzip ({err})") from err
    # IDX header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then each
    # dimension as a big-endian int32.
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{where}: not an IDX file of {ndim}-D unsigned bytes (header {raw[:4]!r})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{where}: {len(body)} data bytes, expected {int(np.prod(dims))} for shape {dims}: "
                        "truncated or corrupt")
    return np.frombuffer(body, np.uint8).reshape(dims)


def read_mnist_idx(tree: Tree, spec: Spec, shape):
    prefixes = tree.find(r"train-images[-.]idx3-ubyte(\.gz)?")
    if not prefixes:
        return None
    prefix, out = prefixes[0], {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        found = {}
        for kind, nd in (("images", 3), ("labels", 1)):
            rx = re.compile(re.escape(prefix) + rf"{stem}-{kind}[-.]idx{nd}-ubyte(\.gz)?")
            hits = [n for n in tree.names if rx.fullmatch(n)]
            if not hits:
                raise DataError(f"{tree.root}: incomplete MNIST, missing {prefix}{stem}-{kind}-idx{nd}-ubyte[.gz]")
            found[kind] = (hits[0], _read_idx(tree, hits[0], nd))
        (img_name, x), (lab_name, y) = found["images"], found["labels"]
        if x.shape[1:] != tuple(shape[:2]):
            raise DataError(f"{tree.label(img_name)}: images are {x.shape[1:]}, expected {tuple(shape[:2])}")
        if len(x) != len(y):
            raise DataError(f"{tree.label(lab_name)}: {len(y)} labels for {len(x)} images in {img_name}")
        out["x_" + split] = x[..., None]
        out["y_" + split] = _check_labels(y, len(spec.classes), tree.label(lab_name))
    return out


def read_stl10_binary(tree: Tree, spec: Spec, shape):
    prefixes = tree.find(r"train_X\.bin")
    if not prefixes:
        return None
    prefix, (h, w, c) = prefixes[0], shape
    _require(tree, prefix, ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"])
    _check_names_file(tree, prefix + "class_names.txt", spec)
    out = {}
    for split in ("train", "test"):
        xname, yname = f"{prefix}{split}_X.bin", f"{prefix}{split}_y.bin"
        raw = np.frombuffer(tree.read(xname), np.uint8)
        if raw.size == 0 or raw.size % (h * w * c):
            raise DataError(f"{tree.label(xname)}: {raw.size} bytes is not a whole number of "
                            f"{c}x{h}x{w} images: truncated or corrupt")
        # Each image is stored channel by channel in column-major order, hence (N, C, W, H).
        x = raw.reshape(-1, c, w, h).transpose(0, 3, 2, 1)
        y = np.frombuffer(tree.read(yname), np.uint8)
        if len(y) != len(x):
            raise DataError(f"{tree.label(yname)}: {len(y)} labels for {len(x)} images in {xname}")
        out["x_" + split] = x
        out["y_" + split] = _check_labels(y, len(spec.classes), tree.label(yname), first=1)  # labels 1..10
    return out


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_image_folder(tree: Tree, spec: Spec, shape):
    """train/<class>/* and test/<class>/*, interleaved class by class (image 0 of every class, then
    image 1, ...) so that "the first N images" is balanced, as in the official batches."""
    roots = _image_folder_roots(tree)
    if not roots:
        return None
    root = roots[0]
    items, labels = {}, {}
    for split, aliases in SPLIT_DIRS.items():
        split_dir = next((root + a + "/" for a in aliases if any(n.startswith(root + a + "/") for n in tree.names)),
                         None)
        if split_dir is None:
            raise DataError(f"{tree.root}: image folder has no {'/'.join(aliases)} folder under '{root or '.'}'")
        per_class: dict[str, list[str]] = {}
        for n in tree.names:
            if not n.startswith(split_dir):
                continue
            parts = n[len(split_dir):].split("/")
            if len(parts) != 2:
                raise DataError(f"{tree.label(n)}: expected {split_dir}<class>/<image>, one folder per class "
                                f"named {', '.join(spec.classes)}")
            per_class.setdefault(parts[0], []).append(n)
        unknown = sorted(set(per_class) - set(spec.classes))
        if unknown:
            raise DataError(f"{tree.label(split_dir + unknown[0])}: unexpected class folder {unknown[0]!r}; "
                            f"class folders must be named {', '.join(spec.classes)}")
        missing = [k for k in spec.classes if k not in per_class]
        if missing:
            raise DataError(f"{tree.label(split_dir.rstrip('/'))}: missing class folder(s) {', '.join(missing)} "
                            f"(expected {', '.join(spec.classes)})")
        lists = [sorted(per_class[k], key=_natural_key) for k in spec.classes]
        order = [(lists[k][i], k) for i in range(max(map(len, lists))) for k in range(len(lists))
                 if i < len(lists[k])]
        items[split] = [n for n, _ in order]
        labels[split] = np.array([k for _, k in order], np.int32)
    xs = decode_images(tree, items["train"] + items["test"], shape)
    n_train = len(items["train"])
    return {"x_train": xs[:n_train], "y_train": labels["train"],
            "x_test": xs[n_train:], "y_test": labels["test"]}


def _image_folder_roots(tree: Tree) -> list[str]:
    """Prefixes P such that P+train/ (or training/) holds files."""
    roots = set()
    for n in tree.names:
        parts = n.split("/")
        for i, part in enumerate(parts[:-1]):
            if part in SPLIT_DIRS["train"]:
                roots.add("/".join(parts[:i]) + "/" if i else "")
    return sorted(roots, key=lambda p: (p.count("/"), p))


def _decode_one(where: str, data: bytes, shape) -> np.ndarray:
    from PIL import Image

    h, w, c = shape
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (w, h):
                raise DataError(f"{where}: image is {im.size[0]}x{im.size[1]} pixels, expected {w}x{h}")
            mode = "L" if c == 1 else "RGB"
            arr = np.asarray(im if im.mode == mode else im.convert(mode))
    except DataError:
        raise
    except Exception as err:  # Pillow: UnidentifiedImageError, "image file is truncated", SyntaxError...
        raise DataError(f"{where}: not a readable image, truncated or corrupt ({type(err).__name__}: {err})") from err
    return arr.reshape(h, w, c)


def decode_images(tree: Tree, names: list[str], shape) -> np.ndarray:
    """Decode image files with Pillow, in this process: ~55 us per 32x32 JPEG here. A process pool
    did not pay on the 2 shared cores measured (fork: no gain; spawn: re-imports __main__), and
    the cache makes decoding a once-per-source cost anyway."""
    out = np.empty((len(names), *shape), np.uint8)
    for i, n in enumerate(names):
        out[i] = _decode_one(tree.label(n), tree.read(n), shape)
    return out


READERS = {"cifar_python": read_cifar_python, "cifar_binary": read_cifar_binary, "image_folder": read_image_folder,
           "mnist_npz": read_mnist_npz, "mnist_idx": read_mnist_idx, "stl10_binary": read_stl10_binary}


def decode(name: str, path: Path, shape) -> tuple[dict, str]:
    """Decode whatever supported layout `path` holds; returns the arrays and the layout's name."""
    spec = SPECS[name]
    if name == "mnist" and path.is_file() and _is_npz(path):
        return read_mnist_npz(path, spec, shape), "mnist_npz"
    tree = Tree(path)
    try:
        for layout in spec.layouts:
            arrays = READERS[layout](tree, spec, shape)
            if arrays is not None:
                return arrays, layout
    finally:
        tree.close()
    raise DataError(f"{path}: no {spec.title} layout found ({tree.kind} with {len(tree.names)} files). "
                    f"Expected {spec.local_copies}.")


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".npy") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return path.suffix == ".npz"  # a truncated .npz: let the npz reader name the problem


# ----------------------------------------------------------------------------------------------
# Integrity of the decoded arrays, against the configured expectations

def validate(arrays: dict, shape, num_classes: int, counts: dict, where: str) -> None:
    """Shapes, dtypes, label range and split sizes; `counts` maps split -> expected size or None."""
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.dtype != np.uint8 or x.shape[1:] != tuple(shape):
            raise DataError(f"{where}: {split} images are {x.dtype} {x.shape[1:]}, expected uint8 {tuple(shape)}")
        if len(x) != len(y):
            raise DataError(f"{where}: {split} split has {len(x)} images but {len(y)} labels")
        _check_labels(y, num_classes, f"{where}: {split} labels")
        expected = counts.get(split)
        if expected is not None and len(x) != expected:
            raise DataError(f"{where}: the {split} split has {len(x)} images, expected {expected} "
                            f"(dataset.{split}_size): truncated, incomplete or a different dataset")


# ----------------------------------------------------------------------------------------------
# Cache

def checksum(path: Path) -> tuple[str, str]:
    """sha256 of a file's contents; for a folder, of its listing (relative paths, sizes, mtimes),
    which changes whenever a file does without reading 60,000 files."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest(), "file contents"
    for d, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(d, f))
            rel = os.path.relpath(os.path.join(d, f), path)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest(), "folder listing (paths, sizes, mtimes)"


def cache_file(cache_dir: Path, name: str, path: Path, digest: str) -> Path:
    key = hashlib.sha256(json.dumps([name, str(path.resolve()), digest, READER_VERSION]).encode()).hexdigest()
    return cache_dir / f"{name}-{key[:24]}.npz"


def _read_cache(file: Path) -> tuple[dict, dict] | None:
    """The cached arrays and their metadata, or None if absent or unreadable."""
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}, json.loads(str(z["meta"]))
    except FileNotFoundError:
        return None
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        log.warning("Ignoring unreadable cache %s (%s); decoding again", file, err)
        return None


def _write_cache(file: Path, arrays: dict, meta: dict) -> bool:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.stem, suffix=".tmp")
    except OSError as err:
        log.warning("Not caching decoded data in %s (%s)", file.parent, err)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            # Uncompressed: loading 180 MB of CIFAR-10 then costs a read, not a decompression.
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is shared like any download
        os.replace(tmp, file)  # atomic, so a concurrent run never sees a half-written cache
        return True
    except OSError as err:  # a full disk costs the next run a decode, not this run its data
        log.warning("Not caching decoded data in %s (%s)", file, err)
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_arrays(name: str, source: str, path, cache_dir, shape, counts: dict) -> tuple[dict, dict]:
    """Locate, then load from cache or decode (and cache); validate either way. Returns arrays and info."""
    t0 = time.perf_counter()
    where = locate(name, source, path)
    digest, digest_of = checksum(where)
    info = {"source": str(where), "sha256": digest, "checksum_of": digest_of}
    file = cache_file(Path(str(cache_dir)).expanduser(), name, where, digest) if cache_dir else None
    cached = _read_cache(file) if file else None
    if cached is not None:
        arrays, meta = cached
        info.update(cache="hit", cache_file=str(file), layout=meta.get("layout"))
    else:
        arrays, layout = decode(name, where, shape)
        validate(arrays, shape, len(SPECS[name].classes), {}, str(where))
        info.update(layout=layout, decode_seconds=round(time.perf_counter() - t0, 3),
                    cache="off" if file is None else "not written")
        if file and _write_cache(file, arrays, {"source": str(where), "sha256": digest, "layout": layout}):
            info.update(cache="written", cache_file=str(file))
        log.info("Decoded %s from %s (%s) in %.1f s", SPECS[name].title, where, layout, info["decode_seconds"])
    validate(arrays, shape, len(SPECS[name].classes), counts, str(where))
    info["load_seconds"] = round(time.perf_counter() - t0, 3)
    return arrays, info

