"""The engine's promises beyond values (issue 12): memory budget, cost that follows the output,
PyTorch's NaN/inf semantics, bit-identical results under any scheduling.

Oracles: tracemalloc peaks against a bound computed from the array sizes; PyTorch float64
(F.conv*d, F.conv_transpose*d, autograd) for huge strides/dilations and for NaN/inf placements;
the engine's own serial result for determinism (bit for bit).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_conv import STRATEGIES, arrays, conv_case, kw, ref_conv, ref_grads, strategy, torch_conv

import atrous
from atrous import geometry

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (extra 'torch')")
engine = importlib.import_module("atrous.conv")   # the module (atrous.conv is the function)


# ------------------------------------------------------------------------------------- memory
def _peak(fn):
    """(result, peak bytes traced while fn ran, above what was allocated before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _warm_up():
    """One small call of each kind, so that one-time set-up (imports, the thread pool, the BLAS
    controller) is not counted as the peak of the measured call."""
    x, w = np.ones((2, 2, 9, 9), np.float32), np.ones((2, 2, 3, 3), np.float32)
    atrous.conv_grad(atrous.conv(x, w), x, w)
    atrous.conv_transpose(x, w)


def _nbytes(shape, dtype=np.float32):
    return math.prod(shape) * np.dtype(dtype).itemsize


# (x shape, weight shape, kwargs, budget, what a budget-blind engine would allocate at least:
# the whole im2col patch, or the patch of one output line or one plane)
MEMORY_CASES = [
    ((2, 16, 48, 40), (16, 16, 3, 3), dict(padding="same", dilation=2), 64 * 1024, "all"),
    ((1, 16, 3, 8000), (16, 16, 3, 5), dict(padding=(1, 2)), 32 * 1024, "line"),
    ((1, 4, 3, 40, 60), (8, 4, 3, 3, 3), dict(padding="same", dilation=(1, 2, 3)), 16 * 1024, "plane"),
    ((2, 6, 80, 80), (6, 2, 3, 3), dict(padding=2, stride=2, dilation=2, groups=3), 8 * 1024, "all"),
    ((3, 12, 500), (12, 12, 5), dict(padding="causal", dilation=4), 4 * 1024, "all"),
    ((2, 8, 24, 24), (8, 1, 3, 3), dict(padding="same", groups=8), 4 * 1024, None),   # depthwise
]


@contextlib.contextmanager
def pool(parallel):
    """Run every call on the chunk thread pool (``parallel``) or serially; normal chunk sizes."""
    old = engine._PAR_MIN_FLOPS, engine._PARALLEL
    engine._PAR_MIN_FLOPS, engine._PARALLEL = (0, True) if parallel else (old[0], False)
    try:
        yield
    finally:
        engine._PAR_MIN_FLOPS, engine._PARALLEL = old


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("case", range(len(MEMORY_CASES)))
def test_peak_memory_stays_within_arrays_plus_budget(case, parallel):
    xs, ws, kwargs, budget, blind = MEMORY_CASES[case]
    rng = np.random.default_rng(case)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    nd, k, groups = len(ws) - 2, ws[2:], kwargs.get("groups", 1)
    s = geometry.normalize_tuple(kwargs.get("stride", 1), nd, "stride")
    d = geometry.normalize_tuple(kwargs.get("dilation", 1), nd, "dilation")
    pads = geometry.resolve_padding(kwargs.get("padding", 0), xs[2:], k, s, d)
    padded = _nbytes(xs[:2] + tuple(m + lo + hi for m, (lo, hi) in zip(xs[2:], pads)))
    ys = (xs[0], ws[0]) + geometry.conv_output_shape(xs[2:], k, s, d, pads)
    # the arrays themselves: a padded copy of the input (plus the plane that flat windows may run
    # past), the output, weight copies (and per-thread partials), a little for Python objects
    slack = padded // xs[2] + 5 * w.nbytes + 64 * 1024
    allowed = budget + padded + _nbytes(ys) + slack
    patch = {"all": _nbytes((xs[0] * math.prod(ys[2:]), xs[1] * math.prod(k))),
             "line": _nbytes((ys[-1], xs[1] * math.prod(k))),
             "plane": _nbytes((math.prod(ys[-2:]), xs[1] * math.prod(k))), None: math.inf}[blind]
    assert patch > allowed                  # a budget-blind engine fails this test
    with pool(parallel):
        _warm_up()
        y, peak = _peak(lambda: atrous.conv(x, w, memory_budget=budget, **kwargs))
        assert y.shape == ys
        assert peak <= allowed, (peak, allowed)
        gy = rng.standard_normal(ys, dtype=np.float32)
        (gx, gw, _), peak = _peak(lambda: atrous.conv_grad(gy, x, w, memory_budget=budget, **kwargs))
        assert peak <= allowed + padded + gx.nbytes + gy.nbytes, (peak, allowed)
        # the transposed conv of gy with the same weight (PyTorch layout: (C_in, C_out/g, *k))
        targs = dict(stride=s, padding=tuple(lo for lo, _ in pads), dilation=d, groups=groups)
        gpad = _nbytes(ys[:2] + tuple(o + 2 * dd * (kk - 1) for o, dd, kk in zip(ys[2:], d, k)))
        z, peak = _peak(lambda: atrous.conv_transpose(gy, w, memory_budget=budget, **targs))
        assert peak <= budget + gpad + z.nbytes + slack, (peak, budget + gpad + z.nbytes + slack)
    # chunking never changes the values
    np.testing.assert_allclose(y, atrous.conv(x, w, **kwargs), rtol=1e-5, atol=1e-4)
    ref = atrous.conv_grad(gy, x, w, **kwargs)
    np.testing.assert_allclose(gx, ref[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(gw, ref[1], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(z, atrous.conv_transpose(gy, w, **targs), rtol=1e-5, atol=1e-4)


def test_weight_gradient_keeps_one_partial_per_thread_not_per_chunk():
    # 160 chunks of a 128x128x3x3 weight gradient (590 KB): one partial per chunk would need 94 MB
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 128, 20, 20), dtype=np.float32)
    w = rng.standard_normal((128, 128, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((4, 128, 20, 20), dtype=np.float32)
    budget = 128 * 1024
    with pool(True):
        _warm_up()
        (gx, gw, _), peak = _peak(lambda: atrous.conv_grad(gy, x, w, padding=1, memory_budget=budget))
    arrays_ = 2 * x.nbytes + gx.nbytes + gy.nbytes + 6 * w.nbytes    # padded copies, weight copies
    assert peak <= arrays_ + budget + 256 * 1024, peak
    ref = ref_grads(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), (1, 1),
                    ((1, 1), (1, 1)), (1, 1), 1)
    np.testing.assert_allclose(gw, ref[1], rtol=1e-3, atol=1e-2)


# --------------------------------------------------------------------- cost follows the output
@needs_torch
@pytest.mark.parametrize("kwargs", [
    dict(stride=1000),
    dict(stride=10**6),
    dict(stride=(3, 10**6), padding=(1, 2)),
    dict(stride=7, padding=5, dilation=(4, 9)),
    dict(dilation=(10**10, 1), padding=(10**10, 1)),          # only the centre tap reads input
    dict(padding=10**4, stride=10**3, dilation=7),             # outputs that read only padding
])
def test_huge_stride_dilation_padding_match_torch_at_small_cost(kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 10))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ref = F.conv2d(xt, wt, bt, **kwargs)
    gy = rng.standard_normal(tuple(ref.shape))
    ref.backward(torch.from_numpy(gy))
    (y, peak) = _peak(lambda: atrous.conv(x, w, b, **kwargs))
    out_bytes = y.nbytes + x.nbytes + w.nbytes
    assert peak <= 64 * out_bytes + 2**20                 # proportional to the arrays, not to s, d, p
    (gx, gw, gb), peak = _peak(lambda: atrous.conv_grad(gy, x, w, b, **kwargs))
    assert peak <= 64 * out_bytes + 2**20
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-10, atol=1e-10)
    for ours, theirs in ((gx, xt), (gw, wt), (gb, bt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-10)


@needs_torch
def test_same_padding_with_dilation_1e10_on_ten_samples():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 10))
    w = rng.standard_normal((3, 2, 3))
    y, peak = _peak(lambda: atrous.conv(x, w, padding="same", dilation=10**10))
    assert peak < 2**20                                   # not 149 GiB
    ref = F.conv1d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=10**10)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-12)
    # the outer taps read only padding: only the centre tap counts
    np.testing.assert_allclose(y, np.einsum("oc,nct->not", w[:, :, 1], x), rtol=1e-12)
    gy = rng.standard_normal(y.shape)
    gx, gw, _ = atrous.conv_grad(gy, x, w, padding="same", dilation=10**10)
    assert not gw[:, :, [0, 2]].any()
    np.testing.assert_allclose(gx, np.einsum("oc,not->nct", w[:, :, 1], gy), rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("kwargs", [
    dict(stride=1, padding=10**9, dilation=10**9),            # out = n: centre tap only
    dict(stride=(1, 2), padding=(3 * 10**8, 2), dilation=(3 * 10**8, 1), output_padding=(0, 1)),
    dict(stride=50, padding=100, dilation=3),
])
def test_conv_transpose_huge_dilation_and_stride_match_torch(kwargs):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    out, peak = _peak(lambda: atrous.conv_transpose(x, w, **kwargs))
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), **kwargs).numpy()
    assert out.shape == ref.shape
    assert peak <= 64 * (out.nbytes + x.nbytes) + 2**20
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@st.composite
def sparse_case(draw):
    """Configurations where strides, dilations and paddings dwarf the input: most taps and most
    phases are never read."""
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, 6)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 2, 5, 17, 1000, 10**6])) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from([1, 3, 8, 1000, 10**9])) for _ in range(nd))
    pads = tuple((draw(st.sampled_from([0, 1, 7, 999, 10**9])), draw(st.sampled_from([0, 2, 10**9])))
                 for _ in range(nd))
    out = []
    for m, (lo, hi), k, s, d in zip(size, pads, kernel, stride, dilation):
        span = m + lo + hi - d * (k - 1)
        out.append((span - 1) // s + 1 if span >= 1 else 0)
    assume(min(out) >= 1 and math.prod(out) * math.prod(kernel) <= 300)
    return dict(nd=nd, size=size, kernel=kernel, stride=stride, dilation=dilation, pads=pads,
                groups=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**31 - 1)))


@needs_torch
@given(sparse_case())
@settings(max_examples=60)
def test_sparse_geometry_matches_torch(c):
    rng = np.random.default_rng(c["seed"])
    G = c["groups"]
    x = rng.standard_normal((2, 2 * G) + c["size"])
    w = rng.standard_normal((3 * G, 2) + c["kernel"])
    y = atrous.conv(x, w, stride=c["stride"], padding=c["pads"], dilation=c["dilation"], groups=G)
    gy = rng.standard_normal(y.shape)
    gx, gw, _ = atrous.conv_grad(gy, x, w, stride=c["stride"], padding=c["pads"],
                                 dilation=c["dilation"], groups=G)
    # Oracle: PyTorch, given symmetric padding directly (it does not materialise it) or asymmetric
    # padding through F.pad when that is small; else (10**9 zeros on one side) a brute-force loop
    # over the (output, tap) pairs that read a real input.
    symmetric = all(lo == hi for lo, hi in c["pads"])
    if symmetric or max(max(p) for p in c["pads"]) < 10**4:
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        conv = getattr(F, f"conv{c['nd']}d")
        if symmetric:
            ref = conv(xt, wt, stride=c["stride"], padding=tuple(lo for lo, _ in c["pads"]),
                       dilation=c["dilation"], groups=G)
        else:
            flat = [v for pair in reversed(c["pads"]) for v in pair]
            ref = conv(F.pad(xt, flat), wt, stride=c["stride"], dilation=c["dilation"], groups=G)
        ref.backward(torch.from_numpy(gy))
        ry, rx, rw = ref.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()
    else:
        ry, rx, rw = _sparse_reference(x, w, gy, c)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx, rx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-10)


def _sparse_reference(x, w, gy, c):
    """Brute force over (output, tap) pairs that read a real input: y, grad_x, grad_w."""
    G = c["groups"]
    cgi, cgo = x.shape[1] // G, w.shape[0] // G
    y = np.zeros(gy.shape)
    gx = np.zeros(x.shape)
    gw = np.zeros(w.shape)
    for t in np.ndindex(*gy.shape[2:]):
        for j in np.ndindex(*w.shape[2:]):
            i = tuple(tt * s + jj * d - lo for tt, jj, s, d, (lo, _)
                      in zip(t, j, c["stride"], c["dilation"], c["pads"]))
            if not all(0 <= ii < m for ii, m in zip(i, c["size"])):
                continue
            for g in range(G):
                go, gi = slice(g * cgo, (g + 1) * cgo), slice(g * cgi, (g + 1) * cgi)
                wj = w[(go, slice(None)) + j]                                     # (cgo, cgi)
                xi = x[(slice(None), gi) + i]                                     # (N, cgi)
                y[(slice(None), go) + t] += xi @ wj.T
                gx[(slice(None), gi) + i] += gy[(slice(None), go) + t] @ wj
                gw[(go, slice(None)) + j] += gy[(slice(None), go) + t].T @ xi
    return y, gx, gw


def test_sparse_reference_agrees_with_the_dense_reference():
    # the brute-force oracle above, checked once against the padded tap loop of test_conv
    c = dict(groups=2, stride=(2, 1), dilation=(1, 3), pads=((1, 2), (3, 0)), size=(5, 6))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 2, 3))
    y = ref_conv(x, w, None, c["stride"], c["pads"], c["dilation"], 2)
    gy = rng.standard_normal(y.shape)
    ry, rx, rw = _sparse_reference(x, w, gy, c)
    np.testing.assert_allclose(ry, y, rtol=1e-12)
    dx, dw, _ = ref_grads(gy, x, w, c["stride"], c["pads"], c["dilation"], 2)
    np.testing.assert_allclose(rx, dx, rtol=1e-12)
    np.testing.assert_allclose(rw, dw, rtol=1e-12)


# -------------------------------------------------------------------------------- NaN and inf
SPECIALS = [np.nan, np.inf, -np.inf]


def _poison(rng, a, draw_count):
    a = a.copy()
    for _ in range(draw_count):
        a[tuple(rng.integers(0, n) for n in a.shape)] = SPECIALS[rng.integers(0, 3)]
    return a


@needs_torch
@given(conv_case(), st.integers(0, 3), st.integers(0, 2), st.integers(0, 3), st.integers(0, 1),
       st.sampled_from(STRATEGIES))
@settings(max_examples=80)
def test_nan_and_inf_like_torch(c, n_x, n_w, n_gy, zero_gy, how):
    rng, x, w, b = arrays(c)
    x, w = _poison(rng, x, n_x), _poison(rng, w, n_w)
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    ref = torch_conv(xt, wt, None, c)
    gy = rng.standard_normal(tuple(ref.shape))
    if zero_gy:
        gy[rng.random(gy.shape) < 0.5] = 0.0          # zeros times inf weights: NaN in PyTorch
    gy = _poison(rng, gy, n_gy)
    ref.backward(torch.from_numpy(gy))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no RuntimeWarning for non-finite data
        with strategy(how, c["parallel"]):
            y = atrous.conv(x, w, **kw(c))
            gx, gw, _ = atrous.conv_grad(gy, x, w, **kw(c))
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)


@needs_torch
@given(conv_case(max_size=5), st.integers(0, 3), st.integers(0, 2), st.sampled_from(STRATEGIES))
@settings(max_examples=60)
def test_conv_transpose_nan_and_inf_like_torch(c, n_x, n_w, how):
    rng = np.random.default_rng(c["seed"])
    G = c["groups"]
    x = _poison(rng, rng.standard_normal((c["n"], G * c["cgi"]) + c["size"]), n_x)
    x[rng.random(x.shape) < 0.3] = 0.0
    w = _poison(rng, rng.standard_normal((G * c["cgi"], c["cgo"]) + c["kernel"]), n_w)
    args = dict(stride=c["stride"], padding=tuple(lo for lo, _ in c["pads"]), groups=G,
                dilation=c["dilation"])
    try:
        ref = getattr(F, f"conv_transpose{c['nd']}d")(torch.from_numpy(x), torch.from_numpy(w), **args)
    except RuntimeError:                                # output size < 1
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with strategy(how, c["parallel"]):
            y = atrous.conv_transpose(x, w, **args)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)


@needs_torch
def test_issue_example_nan_input_poisons_only_the_taps_that_read_it():
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 8)
    x[0, 0, 4] = np.nan
    w = np.ones((1, 1, 3))
    gx, gw, _ = atrous.conv_grad(np.ones((1, 1, 3)), x, w, stride=2)
    # outputs read x[0:3], x[2:5], x[4:7]: tap 0 reads x[4] (output 2), tap 2 reads it (output 1)
    np.testing.assert_array_equal(gw, [[[np.nan, 9.0, np.nan]]])
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    F.conv1d(xt, wt, stride=2).backward(torch.ones(1, 1, 3, dtype=torch.float64))
    np.testing.assert_array_equal(gw, wt.grad.numpy())
    np.testing.assert_array_equal(gx, xt.grad.numpy())


# ------------------------------------------------------------------------------ determinism
def _calls(x, w, gy, wt):
    kwargs = dict(padding="same", dilation=(2, 3))
    return (atrous.conv(x, w, **kwargs), *atrous.conv_grad(gy, x, w, **kwargs),
            atrous.conv_transpose(gy, wt, stride=2, padding=1, dilation=2))


def test_bit_identical_under_any_scheduling_and_concurrent_callers():
    pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 24, 30, 26), dtype=np.float32)
    w = rng.standard_normal((20, 24, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((3, 20, 30, 26), dtype=np.float32)
    wt = rng.standard_normal((20, 5, 3, 3), dtype=np.float32)
    with strategy(None, parallel=True):
        engine._PARALLEL = False
        try:
            serial = _calls(x, w, gy, wt)
        finally:
            engine._PARALLEL = True
        results, errors = [None] * 6, []

        def caller(i):
            try:
                results[i] = [_calls(x, w, gy, wt) for _ in range(2)]
            except Exception as e:          # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for res in results:
        for got in res:
            for a, b in zip(got, serial):
                np.testing.assert_array_equal(a, b)
    # and the values are right
    ref = ref_conv(x.astype(np.float64), w.astype(np.float64), None, (1, 1), ((2, 2), (3, 3)), (2, 3), 1)
    np.testing.assert_allclose(serial[0], ref, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------- slow sweeps
@pytest.mark.slow
@needs_torch
@given(sparse_case())
@settings(max_examples=800)
def test_slow_sparse_geometry(c):
    test_sparse_geometry_matches_torch.hypothesis.inner_test(c)


@pytest.mark.slow
@needs_torch
@given(conv_case(), st.integers(0, 3), st.integers(0, 2), st.integers(0, 3), st.integers(0, 1),
       st.sampled_from(STRATEGIES))
@settings(max_examples=1000)
def test_slow_nan_and_inf(c, n_x, n_w, n_gy, zero_gy, how):
    test_nan_and_inf_like_torch.hypothesis.inner_test(c, n_x, n_w, n_gy, zero_gy, how)


@pytest.mark.slow
@needs_torch
@given(conv_case(max_size=5), st.integers(0, 3), st.integers(0, 2), st.sampled_from(STRATEGIES))
@settings(max_examples=600)
def test_slow_conv_transpose_nan_and_inf(c, n_x, n_w, how):
    test_conv_transpose_nan_and_inf_like_torch.hypothesis.inner_test(c, n_x, n_w, how)


def test_blas_threads_restored_and_results_equal_from_any_thread():
    # threadpoolctl >= 3.6 lets only the first thread that set an OpenBLAS limit change it; the
    # engine takes and gives back control, so a call from another thread runs single-threaded
    # BLAS too (multi-threaded OpenBLAS rounds differently on some machines) and the user's
    # setting is back afterwards
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 24, 30, 26), dtype=np.float32)
    w = rng.standard_normal((20, 24, 3, 3), dtype=np.float32)
    gy = rng.standard_normal((2, 20, 30, 26), dtype=np.float32)
    ctl = threadpoolctl.ThreadpoolController()
    before = [lc.num_threads for lc in ctl.lib_controllers]
    threadpoolctl.threadpool_limits(limits=max(before, default=1), user_api="blas")   # main controls
    for parallel in (True, False):      # calls that may take the pool, and small ones
        with strategy(None, parallel=parallel):
            here = atrous.conv_grad(gy, x, w, padding="same", dilation=(2, 3))
            there = []
            t = threading.Thread(target=lambda: there.append(
                atrous.conv_grad(gy, x, w, padding="same", dilation=(2, 3))))
            t.start()
            t.join()
        for a, b in zip(here, there[0]):
            np.testing.assert_array_equal(a, b)
        assert [lc.num_threads for lc in ctl.lib_controllers] == before
