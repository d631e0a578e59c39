"""atrous.compare.data: IDX reader (good and corrupt files), Fashion-MNIST loading from tiny IDX
files written here, fashion-seg canvases, MNIST-1D offline generation + cache. Nothing downloaded."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atrous.compare import data as D

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
         np.float64: 0x0E}


def _idx_bytes(arr):
    """Independent writer (struct, not write_idx): magic, dims, big-endian payload."""
    code = CODES[arr.dtype.type]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@settings(max_examples=30)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       gz=st.booleans(), seed=st.integers(0, 1000))
def test_read_idx_roundtrip_against_struct_writer(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    p = tmp_path_factory.mktemp("idx") / ("a.gz" if gz else "a")
    blob = _idx_bytes(arr)
    p.write_bytes(gzip.compress(blob) if gz else blob)
    got = D.read_idx(p)
    assert got.dtype == np.dtype(dtype) and got.shape == tuple(shape)
    np.testing.assert_array_equal(got, arr)
    # and write_idx produces exactly the bytes of the independent writer
    q = p.with_name("b")
    D.write_idx(q, arr)
    assert q.read_bytes() == blob


@settings(max_examples=20)
@given(cut=st.integers(1, 40), gz=st.booleans())
def test_read_idx_truncated_file_is_a_clear_error(tmp_path_factory, cut, gz):
    blob = _idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    bad = blob[:len(blob) - cut]
    p = tmp_path_factory.mktemp("idx") / "t"
    p.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(ValueError, match=r"IDX file .*(truncated|magic)"):
        D.read_idx(p)


@pytest.mark.parametrize("blob,msg", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01a", "bad magic number"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01a", "unknown type code 0x07"),
    (b"\x00\x00\x08\x00", "declares 0 dims"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header needs 12 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "too long"),
    (b"", "bad magic number"),
])
def test_read_idx_corrupt_headers(tmp_path, blob, msg):
    p = tmp_path / "bad-idx"
    p.write_bytes(blob)
    with pytest.raises(ValueError, match=msg) as e:
        D.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_broken_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.zeros((10, 10), np.uint8)))[:-12])
    with pytest.raises(ValueError, match="IDX file .*"):
        D.read_idx(p)


def _write_fashion(d, n_train=12, n_test=6, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}
    for k, stem in D.FASHION_FILES.items():
        blob = _idx_bytes(arrays[k])
        if gz:
            (d / (stem + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (d / stem).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    a = _write_fashion(tmp_path, gz=gz)
    ds = D.load_fashion_mnist(str(tmp_path))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, a["x_train"], atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, a["y_test"])
    ds = D.load_fashion_mnist(str(tmp_path), n_train=5, n_test=2)
    assert len(ds.x_train) == 5 and len(ds.y_test) == 2


def test_fashion_mnist_missing_and_mismatched(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_DEBIAN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist(str(tmp_path))
    _write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="test files disagree"):
        D.load_fashion_mnist(str(tmp_path))


def test_fashion_seg_canvases(tmp_path):
    a = _write_fashion(tmp_path, n_train=20)
    fm = D.load_fashion_mnist(str(tmp_path))
    x, y = D.compose_canvases(fm.x_train, fm.y_train, n=15, size=64, seed=3)
    assert x.shape == (15, 1, 64, 64) and y.shape == (15, 64, 64)
    # deterministic, and seed-dependent
    x2, y2 = D.compose_canvases(fm.x_train, fm.y_train, n=15, size=64, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(D.compose_canvases(fm.x_train, fm.y_train, 15, 64, seed=4)[1], y)
    # a pixel is labelled iff an item's ink (> threshold) was drawn there; 1..4 items per canvas
    np.testing.assert_array_equal(y > 0, x[:, 0] > 0.2)
    assert (x[:, 0][y == 0] == 0).all()
    for yi in y:
        labels = set(np.unique(yi)) - {0}
        assert 1 <= len(labels) <= 4 and labels <= {1 + int(c) for c in a["y_train"]}
    # every labelled pixel's intensity is a pixel value of some item of that class (oracle: scan)
    vals = {c: set(a["x_train"][a["y_train"] == c].ravel().tolist()) for c in range(10)}
    i, r, c = np.nonzero(y[:3])
    for ii, rr, cc in zip(i[:200], r[:200], c[:200]):
        assert int(round(float(x[ii, 0, rr, cc]) * 255)) in vals[y[ii, rr, cc] - 1]


def test_fashion_seg_task(tmp_path):
    _write_fashion(tmp_path, n_train=10, n_test=5)
    ds = D.load_task("fashion-seg", str(tmp_path), n_train=6, n_test=4)
    assert ds.dense and ds.num_classes == 11 and ds.x_train.shape == (6, 1, 64, 64)
    assert ds.y_test.shape == (4, 64, 64) and ds.y_train.max() <= 10
    assert abs(float(ds.x_train.mean())) < 1e-5        # standardized on the train split


def test_mnist1d_generated_offline_and_cached(tmp_path, monkeypatch):
    import mnist1d.data
    monkeypatch.setattr(mnist1d.data, "get_dataset",
                        lambda *a, **k: pytest.fail("get_dataset downloads; must not be called"))
    ds = D.load_mnist1d(str(tmp_path))
    ref = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())   # oracle: the generator
    np.testing.assert_allclose(ds.x_train[:, 0], ref["x"], rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, ref["y_test"])
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert (tmp_path / "mnist1d.npz").exists()
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a: pytest.fail("cache not used"))
    again = D.load_mnist1d(str(tmp_path))
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    # a corrupt cache is regenerated (the generator is called again), not trusted
    (tmp_path / "mnist1d.npz").write_bytes(b"garbage")
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a: ref)
    np.testing.assert_array_equal(D.load_mnist1d(str(tmp_path)).y_train, ds.y_train)
    with np.load(tmp_path / "mnist1d.npz") as z:
        np.testing.assert_array_equal(z["y"], ref["y"])


def test_task_typo():
    with pytest.raises(ValueError, match="did you mean 'fashion-seg'"):
        D.check_task("fashion-sg")
