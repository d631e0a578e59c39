"""The NumPy engine (atrous.conv): values, gradients, transpose, dtypes, memory, bad input.

Oracles: PyTorch (F.conv{1,2,3}d, F.conv_transpose{1,2,3}d, autograd) where installed; a slow
tap-loop reference below (np.pad + one strided slice per tap + einsum per group, no phase layout,
no flattening) that is written independently of the engine; the adjoint identities
<conv(x, w), g> = <x, grad_x> = <w, grad_w>; float64 finite differences; closed-form sizes.
Randomized configurations come from hypothesis (tiny shapes; `-m slow` runs 5000+ more).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import atrous
from atrous import geometry

engine = importlib.import_module("atrous.conv")   # the module (atrous.conv is the function)

try:
    import torch
    import torch.nn.functional as F
except ImportError:     # the torch-oracle tests skip; the reference-loop tests still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (extra 'torch')")

# (strategy, window mode): None is the engine's own choice
STRATEGIES = (None, "im2col", "tap", "elementwise", ("im2col", "flat"), ("im2col", "crop"),
              ("im2col", "shift"))


@contextlib.contextmanager
def strategy(name, parallel=False):
    """Force one engine strategy -- "im2col", "tap" or "elementwise", or a (strategy, window mode) pair
    with mode "flat", "crop" or "shift" (None: the engine's own choice); ``parallel`` runs even tiny calls
    on the chunk thread pool (it needs threadpoolctl, as in the dev extra)."""
    old = (engine._FORCE, engine._FORCE_MODE, engine._PAR_MIN_FLOPS, engine._MIN_ROWS,
           engine._CHUNK_ELEMS)
    engine._FORCE, engine._FORCE_MODE = name if isinstance(name, tuple) else (name, None)
    if parallel:                    # many small chunks, all on the pool
        engine._PAR_MIN_FLOPS, engine._MIN_ROWS, engine._CHUNK_ELEMS = 0, 4, 8
    try:
        yield
    finally:
        (engine._FORCE, engine._FORCE_MODE, engine._PAR_MIN_FLOPS, engine._MIN_ROWS,
         engine._CHUNK_ELEMS) = old


# ------------------------------------------------------------------------------ slow reference
def ref_conv(x, w, b, stride, pads, dilation, groups):
    """Tap loop: pad with np.pad, take one strided slice per tap, contract per group."""
    nd = w.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    # output positions: every t with t*s + d*(k-1) inside the padded input
    outs = [len(range(0, xp.shape[2 + a] - dilation[a] * (w.shape[2 + a] - 1), stride[a]))
            for a in range(nd)]
    cgi, cgo = x.shape[1] // groups, w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0], *outs))
    for j in np.ndindex(*w.shape[2:]):
        sl = tuple(slice(j[a] * dilation[a], j[a] * dilation[a] + stride[a] * (outs[a] - 1) + 1,
                         stride[a]) for a in range(nd))
        patch = xp[(slice(None), slice(None)) + sl]               # (N, C_in, *out)
        for g in range(groups):
            y[:, g * cgo:(g + 1) * cgo] += np.einsum(
                "nc...,oc->no...", patch[:, g * cgi:(g + 1) * cgi],
                w[(slice(g * cgo, (g + 1) * cgo), slice(None)) + j])
    if b is not None:
        y += b.reshape((-1,) + (1,) * nd)
    return y


def ref_grads(gy, x, w, stride, pads, dilation, groups):
    """The same tap loop run backwards: scatter into the padded input, correlate for the weight."""
    nd = w.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    outs = gy.shape[2:]
    cgi, cgo = x.shape[1] // groups, w.shape[0] // groups
    for j in np.ndindex(*w.shape[2:]):
        sl = tuple(slice(j[a] * dilation[a], j[a] * dilation[a] + stride[a] * (outs[a] - 1) + 1,
                         stride[a]) for a in range(nd))
        for g in range(groups):
            gi, go = slice(g * cgi, (g + 1) * cgi), slice(g * cgo, (g + 1) * cgo)
            gxp[(slice(None), gi) + sl] += np.einsum("no...,oc->nc...", gy[:, go], w[(go, slice(None)) + j])
            red = [0] + list(range(2, 2 + nd))                      # sum over N and space
            gw[(go, slice(None)) + j] = np.tensordot(gy[:, go], xp[(slice(None), gi) + sl],
                                                     axes=(red, red))
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[2:]))
    return gxp[(slice(None), slice(None)) + crop], gw, gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))


# ---------------------------------------------------------------------------- random configs
@st.composite
def conv_case(draw, max_size=7):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cgi = draw(st.integers(1, 3))
    cgo = draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    dilation = tuple(draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd)))
    size = tuple(draw(st.lists(st.integers(1, max_size if nd < 3 else 5), min_size=nd,
                               max_size=nd)))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same", "causal", "full"]),
        st.integers(0, 3),
        st.tuples(*[st.integers(0, 3)] * nd),
        st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3))] * nd),
    ))
    causal_axes = draw(st.integers(0, nd - 1))
    pads = geometry.resolve_padding(padding, size, kernel, stride, dilation, causal_axes)
    assume(all(m + lo + hi >= geometry.effective_kernel(k, d)
               for m, (lo, hi), k, d in zip(size, pads, kernel, dilation)))
    how = draw(st.sampled_from(STRATEGIES))
    parallel = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(nd=nd, groups=groups, cgi=cgi, cgo=cgo, n=n, kernel=kernel, stride=stride,
                dilation=dilation, size=size, padding=padding, causal_axes=causal_axes,
                pads=pads, how=how, parallel=parallel, seed=seed)


def arrays(c, dtype=np.float64):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["groups"] * c["cgi"]) + c["size"]).astype(dtype)
    w = rng.standard_normal((c["groups"] * c["cgo"], c["cgi"]) + c["kernel"]).astype(dtype)
    b = rng.standard_normal(c["groups"] * c["cgo"]).astype(dtype)
    return rng, x, w, b


def kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                groups=c["groups"], causal_axes=c["causal_axes"])


def torch_conv(x, w, b, c):
    """PyTorch's conv with the resolved (possibly asymmetric) padding applied by F.pad."""
    flat = [v for pair in reversed(c["pads"]) for v in pair]
    xt = F.pad(x, flat)
    return getattr(F, f"conv{c['nd']}d")(xt, w, b, stride=c["stride"], dilation=c["dilation"],
                                         groups=c["groups"])


# ------------------------------------------------------------------ values against the oracles
@given(conv_case())
@settings(max_examples=60)
def test_forward_matches_tap_loop_reference(c):
    _, x, w, b = arrays(c)
    with strategy(c["how"], c["parallel"]):
        y = atrous.conv(x, w, b, **kw(c))
    ref = ref_conv(x, w, b, c["stride"], c["pads"], c["dilation"], c["groups"])
    assert y.shape == ref.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@given(conv_case())
@settings(max_examples=40)
def test_grads_match_tap_loop_reference_and_adjoint_identity(c):
    rng, x, w, _ = arrays(c)
    with strategy(c["how"], c["parallel"]):
        y = atrous.conv(x, w, **kw(c))
        gy = rng.standard_normal(y.shape)
        gx, gw, gb = atrous.conv_grad(gy, x, w, **kw(c))
    rx, rw, rb = ref_grads(gy, x, w, c["stride"], c["pads"], c["dilation"], c["groups"])
    np.testing.assert_allclose(gx, rx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-10)
    # conv is bilinear: <conv(x, w), gy> = <x, grad_x> = <w, grad_w>
    inner = float(np.vdot(y, gy))
    assert math.isclose(inner, float(np.vdot(x, gx)), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(inner, float(np.vdot(w, gw)), rel_tol=1e-9, abs_tol=1e-9)


@needs_torch
@given(conv_case())
@settings(max_examples=80)
def test_forward_matches_torch_float64(c):
    _, x, w, b = arrays(c)
    with strategy(c["how"], c["parallel"]):
        y = atrous.conv(x, w, b, **kw(c))
    ref = torch_conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), c).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@needs_torch
@given(conv_case())
@settings(max_examples=60)
def test_grads_match_torch_autograd_float64(c):
    rng, x, w, b = arrays(c)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    out = torch_conv(xt, wt, bt, c)
    gy = rng.standard_normal(tuple(out.shape))
    out.backward(torch.from_numpy(gy))
    with strategy(c["how"], c["parallel"]):
        gx, gw, gb = atrous.conv_grad(gy, x, w, b, **kw(c))
    for ours, theirs in ((gx, xt), (gw, wt), (gb, bt)):
        assert ours.shape == tuple(theirs.shape)
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-10)


@st.composite
def transpose_case(draw):
    c = draw(conv_case(max_size=5))
    nd = c["nd"]
    pad = tuple(draw(st.lists(st.integers(0, 2), min_size=nd, max_size=nd)))
    opad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(c["stride"], c["dilation"]))
    full = [geometry.transpose_output_size(m, k, s, d, p, o) for m, k, s, d, p, o
            in zip(c["size"], c["kernel"], c["stride"], c["dilation"], pad, opad)]
    assume(min(full) >= 1)
    c.update(tpad=pad, opad=opad)
    return c


@needs_torch
@given(transpose_case())
@settings(max_examples=60)
def test_conv_transpose_matches_torch_float64(c):
    rng = np.random.default_rng(c["seed"])
    G = c["groups"]
    x = rng.standard_normal((c["n"], G * c["cgi"]) + c["size"])
    w = rng.standard_normal((G * c["cgi"], c["cgo"]) + c["kernel"])     # (C_in, C_out/g, *k)
    b = rng.standard_normal(G * c["cgo"])
    args = dict(stride=c["stride"], padding=c["tpad"], output_padding=c["opad"], groups=G,
                dilation=c["dilation"])
    with strategy(c["how"], c["parallel"]):
        y = atrous.conv_transpose(x, w, b, **args)
    ref = getattr(F, f"conv_transpose{c['nd']}d")(torch.from_numpy(x), torch.from_numpy(w),
                                                  torch.from_numpy(b), **args).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@needs_torch
@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_float32_matches_torch_relative_1e4(nd, how):
    rng = np.random.default_rng(nd)
    size = {1: (50,), 2: (13, 17), 3: (7, 6, 9)}[nd]
    x = rng.standard_normal((2, 12) + size).astype(np.float32)
    w = rng.standard_normal((8, 6) + (3,) * nd).astype(np.float32)
    gy = rng.standard_normal((2, 8) + size).astype(np.float32)
    with strategy(how):
        y = atrous.conv(x, w, padding=2, dilation=2, groups=2)
        gx, gw, _ = atrous.conv_grad(gy, x, w, padding=2, dilation=2, groups=2)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    ref = getattr(F, f"conv{nd}d")(xt, wt, padding=2, dilation=2, groups=2)
    ref.backward(torch.from_numpy(gy))
    assert y.dtype == gx.dtype == gw.dtype == np.float32
    for ours, theirs in ((y, ref), (gx, xt.grad), (gw, wt.grad)):
        theirs = theirs.detach().numpy()
        assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


# ------------------------------------------------------------------------ closed-form checks
def test_finite_differences_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((4, 1, 2, 3))
    gy = rng.standard_normal(atrous.conv(x, w, stride=(2, 1), padding="same", dilation=(1, 2),
                                         groups=2).shape)
    loss = lambda x_, w_: float(np.vdot(atrous.conv(x_, w_, stride=(2, 1), padding="same",  # noqa
                                                    dilation=(1, 2), groups=2), gy))
    gx, gw, _ = atrous.conv_grad(gy, x, w, stride=(2, 1), padding="same", dilation=(1, 2), groups=2)
    eps = 1e-6
    for arr, grad, which in ((x, gx, 0), (w, gw, 1)):
        for idx in list(np.ndindex(arr.shape))[::5]:
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, w) if which == 0 else (x, plus)
            args_m = (minus, w) if which == 0 else (x, minus)
            fd = (loss(*args_p) - loss(*args_m)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-6


@given(st.integers(1, 40), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=30)
def test_same_gives_ceil_n_over_stride(n, k, d, s):
    y = atrous.conv(np.ones((1, 1, n)), np.ones((1, 1, k)), stride=s, padding="same", dilation=d)
    assert y.shape[-1] == -(-n // s)


@given(st.integers(4, 30), st.integers(2, 4), st.integers(1, 5), st.data())
@settings(max_examples=20)
def test_causal_output_never_sees_the_future(n, k, d, data):
    rng = np.random.default_rng(n * 100 + k * 10 + d)
    x = rng.standard_normal((1, 2, n))
    w = rng.standard_normal((3, 2, k))
    t = data.draw(st.integers(0, n - 1))
    y = atrous.conv(x, w, padding="causal", dilation=d)
    x2 = x.copy()
    x2[..., t + 1:] = rng.standard_normal(x2[..., t + 1:].shape)   # change only the future
    y2 = atrous.conv(x2, w, padding="causal", dilation=d)
    assert y.shape == (1, 3, n)
    np.testing.assert_array_equal(y[..., :t + 1], y2[..., :t + 1])
    if t + 1 < n:
        assert not np.allclose(y[..., t + 1:], y2[..., t + 1:])


def test_causal_axes_picks_the_time_axis_in_2d():
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 8))
    w = np.ones((1, 1, 3, 3))
    y = atrous.conv(x, w, padding="causal", dilation=2, causal_axes=1)
    # axis 1 causal: output column t sums x columns t-4, t-2, t; axis 0 is "same"
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (4, 0)))
    expect = sum(xp[:, :, i:i + 6, j:j + 8] for i in (0, 2, 4) for j in (0, 2, 4))
    np.testing.assert_allclose(y, expect, rtol=1e-12)


def test_readme_example_shapes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    y = atrous.conv(x, w, bias=None, stride=1, padding="same", dilation=(2, 4), groups=1)
    assert y.shape == (2, 32, 20, 20)
    gx, gw, gb = atrous.conv_grad(np.ones_like(y), x, w, stride=1, padding="same", dilation=(2, 4))
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (32,)
    np.testing.assert_allclose(gb, np.full(32, 2 * 20 * 20))
    # the adjoint of conv(x, w): PyTorch's transposed-conv weight layout (C_in=32, C_out=16, k)
    z = atrous.conv_transpose(y, w, stride=2, padding=1, output_padding=1, dilation=2)
    assert z.shape == (2, 16, 2 * 19 - 2 + 4 + 1 + 1, 42)
    with pytest.raises(ValueError, match=r"weight.shape\[0\]=16 must equal C_in=32"):
        atrous.conv_transpose(y, w.transpose(1, 0, 2, 3), stride=2, padding=1, output_padding=1,
                              dilation=2)


# ------------------------------------------------------------- dtypes, layouts, edge shapes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(dtype):
    x = np.ones((1, 2, 5), dtype)
    w = np.ones((3, 2, 2), dtype)
    y = atrous.conv(x, w)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in atrous.conv_grad(y, x, w))
    assert atrous.conv_transpose(y, w).dtype == dtype


def test_float16_computed_in_float32_returned_float16():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9)).astype(np.float16)
    w = rng.standard_normal((4, 3, 3)).astype(np.float16)
    y = atrous.conv(x, w, padding=1)
    assert y.dtype == np.float16
    ref = ref_conv(x.astype(np.float64), w.astype(np.float64), None, (1,), ((1, 1),), (1,), 1)
    np.testing.assert_allclose(y, ref, rtol=1e-2, atol=1e-2)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 8, 12, 10))
    x = base[::2, 1::2, :, ::-1].transpose(0, 1, 3, 2)       # (2, 4, 10, 12), strided, reversed
    w = rng.standard_normal((6, 4, 3, 3))[:, :, ::-1].transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = atrous.conv(x, w, stride=(1, 2), padding="same", dilation=(3, 1))
    expect = atrous.conv(np.ascontiguousarray(x), np.ascontiguousarray(w), stride=(1, 2),
                         padding="same", dilation=(3, 1))
    np.testing.assert_array_equal(y, expect)
    gy = rng.standard_normal(y.shape[:-1] + (2 * y.shape[-1],))[..., ::2]
    for a, b in zip(atrous.conv_grad(gy, x, w, stride=(1, 2), padding="same", dilation=(3, 1)),
                    atrous.conv_grad(np.ascontiguousarray(gy), np.ascontiguousarray(x),
                                     np.ascontiguousarray(w), stride=(1, 2), padding="same",
                                     dilation=(3, 1))):
        np.testing.assert_array_equal(a, b)


def test_empty_batch_and_channel_edge_cases():
    w = np.ones((6, 2, 3))
    y = atrous.conv(np.ones((0, 4, 9)), w, padding="same", groups=2)
    assert y.shape == (0, 6, 9)
    gx, gw, gb = atrous.conv_grad(y, np.ones((0, 4, 9)), w, padding="same", groups=2)
    assert gx.shape == (0, 4, 9) and gw.shape == w.shape and not gw.any() and gb.shape == (6,)
    assert atrous.conv_transpose(np.ones((0, 6, 9)), w, groups=2).shape == (0, 4, 11)
    # C_out == groups (one output per group) and depthwise with a channel multiplier
    x = np.random.default_rng(0).standard_normal((2, 4, 9))
    for w in (np.ones((2, 2, 3)), np.ones((8, 1, 3))):
        g = 2 if w.shape[1] == 2 else 4
        y = atrous.conv(x, w, groups=g, dilation=2)
        np.testing.assert_allclose(y, ref_conv(x, w, None, (1,), ((0, 0),), (2,), g))


def test_nan_and_inf_propagate_like_a_convolution():
    x = np.zeros((1, 1, 12))
    x[0, 0, 5] = np.nan
    x[0, 0, 9] = np.inf
    y = atrous.conv(x, np.ones((1, 1, 3)), padding="same", dilation=2)
    # output t reads t-2, t, t+2: NaN reaches 3, 5, 7; inf reaches 7 (-> nan), 9, 11
    assert np.isnan(y[0, 0, [3, 5, 7]]).all()
    assert np.isposinf(y[0, 0, [9, 11]]).all()
    finite = [t for t in range(12) if t not in (3, 5, 7, 9, 11)]
    assert np.isfinite(y[0, 0, finite]).all()


# ------------------------------------------------------------------------------------- memory
def _peak(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_memory_budget_bounds_the_patch_buffers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 160, 160)).astype(np.float32)         # 0.4 MB
    w = rng.standard_normal((8, 4, 7, 7)).astype(np.float32)
    # an unchunked im2col patch: K * C_in * rows * 4 B = 49 * 4 * 172^2 * 4 B = 23 MB
    patch = 49 * 4 * (160 + 12) ** 2 * 4
    budget = 2 * 2**20
    arrays_ = 8 * x.nbytes        # padded input copy, output on the grid, output: O(data), not O(patch)
    with strategy("im2col"):
        y, peak = _peak(lambda: atrous.conv(x, w, padding="same", dilation=2,
                                            memory_budget=budget))
        assert peak < budget + arrays_ < patch / 4
        old = atrous.set_memory_budget(budget)
        try:
            (gx, gw, _), peak_b = _peak(lambda: atrous.conv_grad(y, x, w, padding="same",
                                                                 dilation=2))
        finally:
            atrous.set_memory_budget(old)
        assert peak_b < budget + 2 * arrays_ < patch / 2
        # chunking does not change the result
        np.testing.assert_allclose(y, atrous.conv(x, w, padding="same", dilation=2), rtol=1e-5,
                                   atol=1e-4)
        gx2, gw2, _ = atrous.conv_grad(y, x, w, padding="same", dilation=2)
        np.testing.assert_allclose(gx, gx2, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(gw, gw2, rtol=1e-4, atol=1e-1)


@pytest.mark.parametrize("how", STRATEGIES)
def test_tiny_budget_still_correct(how):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 9, 7))
    w = rng.standard_normal((2, 1, 2, 3))
    kwargs = dict(stride=(2, 1), padding="same", dilation=(3, 2), groups=2)
    with strategy(how):
        y = atrous.conv(x, w, memory_budget=1, **kwargs)
        g = atrous.conv_grad(y, x, w, memory_budget=1, **kwargs)
    pads = ((1, 2), (2, 2))         # "same": out = (5, 7); totals 3 and 4, extra one on the high side
    np.testing.assert_allclose(y, ref_conv(x, w, None, (2, 1), pads, (3, 2), 2), rtol=1e-12)
    for a, b in zip(g, ref_grads(y, x, w, (2, 1), pads, (3, 2), 2)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_set_memory_budget_validates_and_restores():
    old = atrous.set_memory_budget(1024)
    try:
        assert atrous.get_memory_budget() == 1024
        with pytest.raises(ValueError, match=r"nbytes must be >= 1 byte, got 0"):
            atrous.set_memory_budget(0)
        with pytest.raises(TypeError, match=r"nbytes must be an int number of bytes, got 1.5"):
            atrous.set_memory_budget(1.5)
        atrous.set_memory_budget(None)
        assert atrous.get_memory_budget() == 256 * 2**20
    finally:
        atrous.set_memory_budget(old)


# ---------------------------------------------------------------------------------- bad input
X1, W1 = np.ones((1, 4, 10)), np.ones((6, 2, 3))
BAD = [
    # (call, exception, message regex)
    (lambda: atrous.conv(X1, W1, groups=2, stride=0), ValueError,
     r"stride must be >= 1 per axis, got 0"),
    (lambda: atrous.conv(X1, W1, groups=2, stride=-1), ValueError, r"stride must be >= 1.*-1"),
    (lambda: atrous.conv(np.ones((1, 1, 9, 9)), np.ones((1, 1, 3, 3)), dilation=(2, 0)),
     ValueError, r"dilation must be >= 1 per axis, got \(2, 0\)"),
    (lambda: atrous.conv(np.ones((1, 1, 9, 9)), np.ones((1, 1, 3, 3)), dilation=(1, 2, 3)),
     ValueError, r"dilation must be an int or a tuple of 2 ints.*\(1, 2, 3\)"),
    (lambda: atrous.conv(X1, W1, groups=2, dilation=1.5), TypeError, r"dilation.*1\.5"),
    (lambda: atrous.conv(X1, np.ones((6, 1, 3)), groups=3), ValueError,
     r"C_in=4 \(x.shape\[1\]\) must be divisible by groups=3"),
    (lambda: atrous.conv(X1, np.ones((5, 2, 3)), groups=2), ValueError,
     r"C_out=5 \(weight.shape\[0\]\) must be divisible by groups=2"),
    (lambda: atrous.conv(X1, np.ones((6, 3, 3))), ValueError,
     r"weight.shape\[1\]=3 must equal C_in // groups = 4 // 1"),
    (lambda: atrous.conv(X1, W1, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (lambda: atrous.conv(np.ones((4, 10)), W1, groups=2), ValueError,
     r"x must have shape \(N, C, \*spatial\) with 1 spatial axes.*x.shape=\(4, 10\)"),
    (lambda: atrous.conv(X1, np.ones((6, 2))), ValueError, r"weight must have shape.*\(6, 2\)"),
    (lambda: atrous.conv(X1, W1, groups=2, dilation=5), ValueError,
     r"effective kernel 11 \(kernel 3, dilation 5\) is larger than the padded input 10"),
    (lambda: atrous.conv(X1, W1, groups=2, padding="sme"), ValueError,
     r"got 'sme' \(did you mean 'same'\?\)"),
    (lambda: atrous.conv(X1, W1, groups=2, padding=-1), ValueError,
     r"padding must be >= 0, got -1"),
    (lambda: atrous.conv(X1, W1, groups=2, padding=((1, -2),)), ValueError,
     r"padding must be >= 0 per side"),
    (lambda: atrous.conv(X1.astype(np.int64), W1, groups=2), TypeError,
     r"x must be a float16/float32/float64 array, got dtype int64"),
    (lambda: atrous.conv(X1, W1.astype(np.complex128), groups=2), TypeError,
     r"weight must be .*got dtype complex128"),
    (lambda: atrous.conv(X1, W1, np.ones(5), groups=2), ValueError,
     r"bias must have shape \(6,\).*got bias.shape=\(5,\)"),
    (lambda: atrous.conv(X1, W1, groups=2, memory_budget=0), ValueError,
     r"memory_budget must be >= 1 byte, got 0"),
    (lambda: atrous.conv(X1, np.ones((6, 2, 0)), groups=2), ValueError, r"kernel sizes must be >= 1"),
    (lambda: atrous.conv(X1, W1, groups=2, padding="causal", causal_axes=1), ValueError,
     r"causal_axes must name spatial axes in \[0, 1\), got 1"),
    (lambda: atrous.conv_grad(np.ones((1, 6, 9)), X1, W1, groups=2), ValueError,
     r"grad_output must have conv's output shape \(1, 6, 8\), got grad_output.shape=\(1, 6, 9\)"),
    (lambda: atrous.conv_grad(np.ones((1, 6, 8), np.int32), X1, W1, groups=2), TypeError,
     r"grad_output must be a float16/float32/float64 array, got dtype int32"),
    (lambda: atrous.conv_transpose(np.ones((1, 6, 5)), W1, stride=2, output_padding=2, groups=2),
     ValueError, r"output_padding must be smaller than either stride or dilation per axis, got "
                 r"output_padding=\(2,\) with stride=\(2,\) and dilation=\(1,\)"),
    (lambda: atrous.conv_transpose(np.ones((1, 6, 5)), W1, output_padding=-1, groups=2),
     ValueError, r"output_padding must be >= 0"),
    (lambda: atrous.conv_transpose(np.ones((1, 5, 5)), W1), ValueError,
     r"weight.shape\[0\]=6 must equal C_in=5"),
    (lambda: atrous.conv_transpose(np.ones((1, 6, 5)), W1, padding="same", groups=2), ValueError,
     r"conv_transpose padding must be an int or a tuple of ints, got 'same'"),
    (lambda: atrous.conv_transpose(np.ones((1, 6, 1)), W1, padding=3, groups=2), ValueError,
     r"conv_transpose output size \(-3,\) is < 1"),
    (lambda: atrous.conv_transpose(np.ones((1, 6, 5)), W1, np.ones(6), groups=2), ValueError,
     r"bias must have shape \(4,\)"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_naming_parameter_and_value(i):
    call, exc, msg = BAD[i]
    with pytest.raises(exc, match=msg):
        call()


def test_bad_input_is_rejected_before_any_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before validation")
    for name in ("_forward", "_grad_input", "_grad_weight", "_phase_source", "_plan"):
        monkeypatch.setattr(engine, name, boom)
    for call, exc, _ in BAD:
        with pytest.raises(exc):
            call()


# --------------------------------------------------------------------------------- slow sweeps
@pytest.mark.slow
@given(conv_case())
@settings(max_examples=1500)
def test_slow_forward_and_grads_vs_reference(c):
    test_grads_match_tap_loop_reference_and_adjoint_identity.hypothesis.inner_test(c)
    test_forward_matches_tap_loop_reference.hypothesis.inner_test(c)


@pytest.mark.slow
@needs_torch
@given(conv_case())
@settings(max_examples=1500)
def test_slow_forward_vs_torch(c):
    test_forward_matches_torch_float64.hypothesis.inner_test(c)


@pytest.mark.slow
@needs_torch
@given(conv_case())
@settings(max_examples=1500)
def test_slow_grads_vs_torch(c):
    test_grads_match_torch_autograd_float64.hypothesis.inner_test(c)


@pytest.mark.slow
@needs_torch
@given(transpose_case())
@settings(max_examples=1500)
def test_slow_transpose_vs_torch(c):
    test_conv_transpose_matches_torch_float64.hypothesis.inner_test(c)


def test_parallel_chunks_restore_blas_threads_and_are_thread_safe():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 4, 11, 9)) for _ in range(4)]
    w = rng.standard_normal((6, 4, 3, 3))
    expect = [ref_conv(x, w, None, (1, 1), ((2, 2), (2, 2)), (2, 2), 1) for x in xs]
    from concurrent.futures import ThreadPoolExecutor
    with strategy(None, parallel=True), ThreadPoolExecutor(4) as ex:   # 4 user threads at once
        got = list(ex.map(lambda x: atrous.conv(x, w, padding="same", dilation=2), xs))
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    after = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert after == before


def _conv_in_forked_child(x, w):
    """atrous.conv(x, w, padding=1) in a child forked now (skips where there is no fork)."""
    pytest.importorskip("threadpoolctl")
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    with mp.get_context("fork").Pool(1) as pool:
        return pool.apply_async(atrous.conv, (x, w), {"padding": 1}).get(timeout=60)


def test_parallel_chunks_work_in_a_forked_child():
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 10))
    w = np.ones((4, 3, 3, 3))
    with strategy(None, parallel=True):
        parent = atrous.conv(x, w, padding=1)            # the pool now exists in the parent
        child = _conv_in_forked_child(x, w)
    np.testing.assert_allclose(child, parent, rtol=1e-12)
    np.testing.assert_allclose(parent, ref_conv(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
                               rtol=1e-12)


@pytest.mark.parametrize("stride", [1, (1, 2, 3)])
def test_3d_long_lines_use_the_direct_im2col_path(stride):
    # 3-D outputs with lines of >= 64 samples go straight into the output (no plane segments)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3, 4, 200))
    w = rng.standard_normal((6, 2, 2, 3, 3))
    kwargs = dict(stride=stride, padding="same", dilation=(1, 2, 3), groups=2)
    y = atrous.conv(x, w, **kwargs)
    assert y.shape[-1] >= 64
    s = geometry.normalize_tuple(stride, 3, "stride")
    pads = geometry.resolve_padding("same", x.shape[2:], w.shape[2:], s, (1, 2, 3))
    np.testing.assert_allclose(y, ref_conv(x, w, None, s, pads, (1, 2, 3), 2), rtol=1e-10,
                               atol=1e-12)


def test_a_child_forked_during_a_call_does_not_wait_for_it():
    # a child forked while another thread's engine call holds single-threaded BLAS inherits that
    # state; its own calls must start afresh instead of waiting for a section that is not there
    x = np.random.default_rng(6).standard_normal((1, 2, 9, 8))
    w = np.ones((3, 2, 3, 3))
    state = engine._Blas
    saved = (state.count, state.single, state.user)
    state.count, state.single, state.user = 1, True, 2           # as if a big call were running
    try:
        child = _conv_in_forked_child(x, w)
    finally:
        state.count, state.single, state.user = saved
    np.testing.assert_allclose(child, ref_conv(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
                               rtol=1e-12)


def test_pool_size_is_the_users_blas_threads_while_small_calls_run():
    # while only small calls (which keep the user's BLAS threads) run, a big call sizes its pool
    # from the live BLAS setting, not from a count a single-threaded section recorded earlier
    threadpoolctl = pytest.importorskip("threadpoolctl")
    live = min(lc.num_threads for lc in threadpoolctl.ThreadpoolController().lib_controllers
               if lc.user_api == "blas")
    state = engine._Blas
    saved = (state.count, state.single, state.user)
    state.count, state.single, state.user = 1, False, live + 3   # a stale record
    try:
        assert engine._max_workers(1e15) == live
    finally:
        state.count, state.single, state.user = saved
