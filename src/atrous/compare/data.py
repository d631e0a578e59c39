"""Data for ``atrous compare``: MNIST-1D (generated offline), Fashion-MNIST (IDX files) and the
``fashion-seg`` canvases (dense per-pixel labels).

* **MNIST-1D** (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", 2020/2024): 4000
  train / 1000 test sequences of length 40, 10 classes, generated locally with
  ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` (never ``get_dataset``, which
  downloads) and cached as ``.npz``.
* **Fashion-MNIST** (Xiao, Rasul & Vollgraf, 2017): the four IDX files, from ``--data-dir`` or the
  Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). The IDX reader is
  NumPy-only and validates magic number, dims and sizes.
* **fashion-seg**: 64x64 canvases composed deterministically from 2-4 Fashion-MNIST items; the
  label of a pixel is the class of the item drawn there (``1 + class``) or background ``0``.

Arrays are PyTorch-shaped: inputs ``(N, C, *spatial)`` float32, labels ``(N,)`` or ``(N, *spatial)``
int64.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> write_idx(os.path.join(d, "a.idx"), np.arange(6, dtype=np.uint8).reshape(2, 3))
>>> read_idx(os.path.join(d, "a.idx"))
array([[0, 1, 2],
       [3, 4, 5]], dtype=uint8)
"""

from __future__ import annotations

import difflib
import gzip
import os
from dataclasses import dataclass

import numpy as np

from .._optional import require

__all__ = ["Dataset", "TASKS", "read_idx", "write_idx", "load_mnist1d", "load_fashion_mnist",
           "compose_canvases", "load_task", "check_task", "FASHION_DEBIAN_DIR", "FASHION_FILES"]

TASKS = ("mnist1d", "fashion-mnist", "fashion-seg")
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes (LeCun's format): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Dataset:
    """A train/test split: ``x_*`` ``(N, C, *spatial)`` float32, ``y_*`` ``(N,)`` (classification)
    or ``(N, *spatial)`` (``dense=True``, per-position labels) int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    dense: bool = False

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[2:])


def check_task(task: str) -> str:
    """Validate a task name, suggesting the close match.

    >>> check_task("mnist-1d")
    Traceback (most recent call last):
    ...
    ValueError: task must be one of 'mnist1d', 'fashion-mnist', 'fashion-seg'; got 'mnist-1d' (did you mean 'mnist1d'?)
    """
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {task!r}{hint}")
    return task


# ----------------------------------------------------------------------------------- IDX files

def _open(path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian array ``dims``-shaped.

    Header: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of dims ``n``,
    then ``n`` big-endian uint32 sizes; the data must be exactly ``prod(sizes)`` items.
    A wrong magic number, an unknown type, a truncated or over-long file raise ``ValueError``
    naming the file.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "bad")
    >>> _ = open(p, "wb").write(b"\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x05abc")
    >>> read_idx(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: IDX file ... is truncated or corrupt: header says 5 items of 1 bytes ... found 3
    """
    path = os.fspath(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; truncated gzip -> EOFError
        raise ValueError(f"IDX file {path} cannot be read: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"IDX file {path} has a bad magic number {raw[:4].hex() or '(empty)'}: "
                         "expected 0x0000 followed by a type code and the number of dims")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"IDX file {path} has unknown type code 0x{code:02x}; expected one of "
                         + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES))
    if ndim < 1:
        raise ValueError(f"IDX file {path} declares {ndim} dims; expected >= 1")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"IDX file {path} is truncated: header needs {head} bytes, found {len(raw)}")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    want = count * dtype.itemsize
    have = len(raw) - head
    if have != want:
        raise ValueError(
            f"IDX file {path} is {'truncated or corrupt' if have < want else 'too long'}: header "
            f"says {count} items of {dtype.itemsize} bytes (dims {dims}) = {want} bytes of data, "
            f"found {have}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=head).reshape(dims).astype(
        dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress``); inverse of :func:`read_idx`.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.gz")
    >>> write_idx(p, np.ones((2, 2), np.float32), compress=True)
    >>> read_idx(p).dtype, read_idx(p).shape
    (dtype('float32'), (2, 2))
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in _IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=")
    if key not in codes:
        raise TypeError(f"array dtype must be one of {sorted(str(d) for d in codes)}, got {array.dtype}")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find_idx(data_dir: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    return None


def load_fashion_mnist(data_dir: str | None = None, n_train: int | None = None,
                       n_test: int | None = None) -> Dataset:
    """Fashion-MNIST from the four IDX files in ``data_dir`` (gz or not), else from the Debian
    package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

    Returns ``x`` ``(N, 1, 28, 28)`` float32 in ``[0, 1]`` and ``y`` ``(N,)`` int64; the first
    ``n_train``/``n_test`` items when given. Missing files raise ``FileNotFoundError`` saying where
    it looked and how to get them.
    """
    dirs = [data_dir] if data_dir else []
    dirs.append(FASHION_DEBIAN_DIR)
    for d in dirs:
        paths = {k: _find_idx(d, v) for k, v in FASHION_FILES.items()}
        if all(paths.values()):
            break
    else:
        raise FileNotFoundError(
            "Fashion-MNIST IDX files (" + ", ".join(FASHION_FILES.values()) + ", gz or not) not found "
            f"in {' or '.join(dirs)}: install them with 'apt-get install dataset-fashion-mnist' or "
            "pass --data-dir with the four files")
    arr = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"Fashion-MNIST {split} files disagree: images {x.shape}, labels "
                             f"{y.shape} (expected (N, H, W) and (N,))")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"Fashion-MNIST {split} labels must be in 0..9, got {y.min()}..{y.max()}")
    sl_tr, sl_te = slice(0, n_train), slice(0, n_test)
    return Dataset(
        "fashion-mnist",
        (arr["x_train"][sl_tr, None] / np.float32(255)).astype(np.float32),
        arr["y_train"][sl_tr].astype(np.int64),
        (arr["x_test"][sl_te, None] / np.float32(255)).astype(np.float32),
        arr["y_test"][sl_te].astype(np.int64),
        10)


def compose_canvases(images: np.ndarray, labels: np.ndarray, n: int, size: int = 64, seed: int = 0,
                     threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Compose ``n`` canvases of ``size x size`` from 2-4 items each, deterministically from ``seed``.

    ``images`` ``(M, 1, h, w)`` in ``[0, 1]``, ``labels`` ``(M,)``. Each item is pasted at a random
    position; where its intensity exceeds ``threshold`` it overwrites the canvas and the label map
    gets ``1 + class`` (``0`` is background). Returns ``x`` ``(n, 1, size, size)`` float32 and
    ``y`` ``(n, size, size)`` int64.

    >>> imgs = np.zeros((3, 1, 4, 4), np.float32); imgs[:, :, 1:3, 1:3] = 1
    >>> x, y = compose_canvases(imgs, np.array([0, 5, 9]), n=2, size=8)
    >>> x.shape, y.shape, sorted(set(np.unique(y)) - {0}) <= [1, 6, 10]
    ((2, 1, 8, 8), (2, 8, 8), True)
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (M, 1, h, w), got {images.shape}")
    h, w = images.shape[2:]
    if h > size or w > size:
        raise ValueError(f"size must be >= the item size {(h, w)}, got {size}")
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    y = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for j in rng.integers(0, len(images), size=int(rng.integers(2, 5))):
            r, c = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            item = images[j, 0]
            mask = item > threshold
            x[i, 0, r:r + h, c:c + w][mask] = item[mask]
            y[i, r:r + h, c:c + w][mask] = 1 + int(labels[j])
    return x, y


def _cache_dir(data_dir: str | None) -> str:
    if data_dir:
        return data_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "atrous")


def load_mnist1d(data_dir: str | None = None) -> Dataset:
    """MNIST-1D generated offline with the paper's default arguments, cached as
    ``<data_dir or ~/.cache/atrous>/mnist1d.npz`` (written atomically).

    Returns ``x`` ``(4000, 1, 40)`` / ``(1000, 1, 40)`` float32 and ``y`` int64 in ``0..9``.
    """
    path = os.path.join(_cache_dir(data_dir), "mnist1d.npz")
    keys = ("x", "y", "x_test", "y_test")
    d = None
    if os.path.isfile(path):
        try:
            with np.load(path) as z:
                d = {k: z[k] for k in keys}
        except Exception:  # a stale/corrupt cache is regenerated, never trusted
            d = None
    if d is None:
        mnist1d_data = require("mnist1d.data", "data")
        raw = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
        d = {k: np.asarray(raw[k]) for k in keys}
        from .._io import atomic_write
        with atomic_write(path, "wb") as f:
            np.savez(f, **d)
    return Dataset("mnist1d", d["x"][:, None].astype(np.float32), d["y"].astype(np.int64),
                   d["x_test"][:, None].astype(np.float32), d["y_test"].astype(np.int64), 10)


def _standardize(ds: Dataset) -> Dataset:
    mu, sd = float(ds.x_train.mean()), float(ds.x_train.std()) or 1.0
    ds.x_train = ((ds.x_train - mu) / sd).astype(np.float32)
    ds.x_test = ((ds.x_test - mu) / sd).astype(np.float32)
    return ds


def load_task(task: str, data_dir: str | None = None, n_train: int | None = None,
              n_test: int | None = None, seg_size: int = 64) -> Dataset:
    """The standardized dataset of a task (``'mnist1d'``, ``'fashion-mnist'``, ``'fashion-seg'``),
    optionally cut to the first ``n_train``/``n_test`` examples.

    ``fashion-seg`` composes ``n_train`` (default 4000) train canvases from the Fashion-MNIST train
    items (seed 0) and ``n_test`` (default 1000) test canvases from the test items (seed 1);
    11 classes (background + 10).
    """
    check_task(task)
    if task == "mnist1d":
        ds = load_mnist1d(data_dir)
        ds.x_train, ds.y_train = ds.x_train[:n_train], ds.y_train[:n_train]
        ds.x_test, ds.y_test = ds.x_test[:n_test], ds.y_test[:n_test]
    elif task == "fashion-mnist":
        ds = load_fashion_mnist(data_dir, n_train, n_test)
    else:
        fm = load_fashion_mnist(data_dir)
        xtr, ytr = compose_canvases(fm.x_train, fm.y_train, n_train or 4000, seg_size, seed=0)
        xte, yte = compose_canvases(fm.x_test, fm.y_test, n_test or 1000, seg_size, seed=1)
        ds = Dataset("fashion-seg", xtr, ytr, xte, yte, 11, dense=True)
    return _standardize(ds)
