"""atrous.nn.Conv1d/2d/3d and atrous.nn.conv: smoke, shapes, errors, values vs oracles, gradcheck,
state_dict, TorchScript.

Oracles: nn.Conv*d / F.conv*d on an input padded by a padding computed here from the closed-form
definitions (written independently of geometry), PyTorch's own padding="same" at stride 1, a
perturbation test for causality, and atrous.conv (NumPy) once it is implemented.
"""

import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import atrous
import atrous.nn as ann
from atrous import geometry


CONVS = {1: ann.Conv1d, 2: ann.Conv2d, 3: ann.Conv3d}
TORCH_CONVS = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def oracle_pair(mode, n, k, s, d, causal):
    """(lo, hi) from the definitions: 'same' keeps ceil(n/s) outputs, TF splits the total with the
    extra sample after; 'causal' puts the whole span before; 'full' every overlap; 'valid' none."""
    span = d * (k - 1)
    if mode == "valid":
        return 0, 0
    if mode == "full":
        return span, span
    if mode == "causal" and causal:
        return span, 0
    n_out = math.ceil(n / s)
    total = max(0, (n_out - 1) * s + span + 1 - n)
    return total // 2, total - total // 2


def reference(x, w, b, mode, stride, dilation, groups, causal_axes=(0,)):
    nd = w.dim() - 2
    pairs = [oracle_pair(mode, x.shape[2 + a], w.shape[2 + a], stride[a], dilation[a], a in causal_axes)
             for a in range(nd)]
    flat = [v for lo, hi in reversed(pairs) for v in (lo, hi)]
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return fn(F.pad(x, flat), w, b, stride, 0, dilation, groups)


@st.composite
def conv_cases(draw):
    nd = draw(st.sampled_from([1, 1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    mode = draw(st.sampled_from(["same", "causal", "valid", "full"]))
    sizes = []
    for a in range(nd):
        lo = d[a] * (k[a] - 1) + 1 if mode == "valid" else 1
        sizes.append(draw(st.integers(lo, lo + (9 if nd < 3 else 4))))
    axes = (draw(st.integers(0, nd - 1)),) if mode == "causal" else (0,)
    return nd, groups, c_in, c_out, k, s, d, mode, tuple(sizes), axes


@settings(max_examples=60)
@given(conv_cases(), st.booleans())
def test_values_match_hand_padded_torch_conv(case, bias):
    nd, groups, c_in, c_out, k, s, d, mode, sizes, axes = case
    torch.manual_seed(0)
    m = CONVS[nd](c_in, c_out, k, stride=s, padding=mode, dilation=d, groups=groups, bias=bias,
                  causal_axes=axes).double()
    x = torch.randn(2, c_in, *sizes, dtype=torch.float64)
    want = reference(x, m.weight, m.bias, mode, s, d, groups, axes)
    got = m(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the functional twin agrees
    torch.testing.assert_close(ann.conv(x, m.weight, m.bias, s, mode, d, groups, causal_axes=axes), want,
                               rtol=1e-12, atol=1e-12)
    engine = atrous.conv(x.numpy(), m.weight.detach().numpy(), None if m.bias is None else m.bias.detach().numpy(),
                         stride=s, padding=mode, dilation=d, groups=groups, causal_axes=axes)
    np.testing.assert_allclose(got.detach().numpy(), engine, rtol=1e-10, atol=1e-10)   # NumPy engine
    if mode in ("same", "causal"):                   # length kept up to the stride: ceil(n / s)
        assert tuple(got.shape[2:]) == tuple(math.ceil(n / st_) for n, st_ in zip(sizes, s))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@settings(max_examples=40)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(4, 12))
def test_same_at_stride_1_equals_torch_same(nd, k, d, n):
    torch.manual_seed(1)
    ref = TORCH_CONVS[nd](2, 3, k, padding="same", dilation=d).double()
    m = CONVS[nd](2, 3, k, padding="same", dilation=d).double()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, *([n] * nd), dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [0, 2, (1, 3), ((0, 2), (3, 1))])
def test_int_and_pair_padding_equal_hand_written_conv(padding):
    torch.manual_seed(2)
    m = ann.Conv2d(3, 4, (3, 2), padding=padding, dilation=(2, 1)).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        (t, b), (lf, rt) = padding
        want = F.conv2d(F.pad(x, (lf, rt, t, b)), m.weight, m.bias, dilation=(2, 1))
    else:
        ref = torch.nn.Conv2d(3, 4, (3, 2), padding=padding, dilation=(2, 1)).double()
        ref.load_state_dict(m.state_dict())
        want = ref(x)
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.sampled_from(["same", "causal"]))
def test_pad_table_equals_geometry_for_every_length(k, s, d, mode):
    m = ann.Conv1d(1, 1, k, stride=s, padding=mode, dilation=d)
    for n in range(1, 4 * s + d * k + 3):
        assert [tuple(m._tables[0][(n - 1) % len(m._tables[0])])] == list(
            geometry.resolve_padding(mode, (n,), (k,), (s,), (d,)))


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_causal_output_does_not_see_the_future(axes):
    """Perturb input (i, j): only outputs at positions >= it along the causal axes may change."""
    torch.manual_seed(3)
    m = ann.Conv2d(1, 1, 3, padding="causal", dilation=2, causal_axes=axes).double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    y = m(x)
    for i, j in [(3, 4), (0, 7), (6, 1)]:
        x2 = x.clone()
        x2[0, 0, i, j] += 1.0
        changed = (m(x2) - y).abs()[0, 0] > 0
        ii, jj = torch.nonzero(changed, as_tuple=True)
        if 0 in axes:
            assert (ii >= i).all()
        if 1 in axes:
            assert (jj >= j).all()
        assert changed.any()


def test_values_match_numpy_engine():
    torch.manual_seed(4)
    m = ann.Conv2d(2, 3, 3, stride=2, padding="same", dilation=(1, 2)).double()
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    try:
        want = atrous.conv(x.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(), stride=2,
                           padding="same", dilation=(1, 2))
    except NotImplementedError:
        pytest.skip("atrous.conv (NumPy engine) is not implemented yet")
    np.testing.assert_allclose(m(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_fill_modes_and_dtype(dtype, mode):
    m = ann.Conv1d(2, 2, 3, padding="causal", dilation=2, padding_mode=mode, dtype=dtype)
    x = torch.randn(1, 2, 9, dtype=dtype)
    want = F.conv1d(F.pad(x, (4, 0), mode=mode), m.weight, m.bias, dilation=2)
    assert m(x).dtype == dtype
    torch.testing.assert_close(m(x), want)


def test_gradcheck_float64():
    torch.manual_seed(5)
    m = ann.Conv2d(2, 2, 2, stride=2, padding="same", dilation=(2, 1)).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ann.conv(x, w, b, 2, "same", (2, 1)),
                                    (x, m.weight, m.bias))


def test_state_dict_round_trip_weights_only():
    m = ann.Conv1d(3, 4, 3, padding="causal", dilation=3)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = ann.Conv1d(3, 4, 3, padding="causal", dilation=3)
    m2.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 11)
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    assert set(m.state_dict()) == set(torch.nn.Conv1d(3, 4, 3).state_dict())


@pytest.mark.parametrize("jit", ["script", "trace"])
def test_torchscript(jit):
    m = ann.Conv2d(2, 3, 3, stride=2, padding="same", dilation=2)
    x = torch.randn(1, 2, 9, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = torch.jit.script(m) if jit == "script" else torch.jit.trace(m, x)
    torch.testing.assert_close(s(x), m(x))
    if jit == "script":   # the size-dependent 'same' padding is resolved at run time
        x = torch.randn(1, 2, 8, 7)
        torch.testing.assert_close(s(x), m(x))


BAD = [
    (lambda: ann.Conv1d(3, 4, 3, padding="sme"), ValueError, "did you mean 'same'"),
    (lambda: ann.Conv1d(3, 4, 3, padding="casual"), ValueError, "did you mean 'causal'"),
    (lambda: ann.Conv1d(3, 4, 3, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: ann.Conv2d(3, 4, 3, dilation=(2, 0)), ValueError, r"dilation must be >= 1 per axis, got \(2, 0\)"),
    (lambda: ann.Conv1d(6, 4, 3, groups=4), ValueError, r"in_channels \(6\).*groups \(4\)"),
    (lambda: ann.Conv1d(0, 4, 3), ValueError, "in_channels must be >= 1"),
    (lambda: ann.Conv1d(3, 4, 0), ValueError, "kernel_size must be >= 1"),
    (lambda: ann.Conv1d(3, 4, 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: ann.Conv1d(3, 4, 3, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: ann.Conv2d(3, 4, 3, padding=(1, 2, 3)), ValueError, "one entry per spatial axis"),
    (lambda: ann.Conv1d(3, 4, 3, padding_mode="reflekt"), ValueError, "did you mean 'reflect'"),
    (lambda: ann.Conv1d(3, 4, 3, padding="causal", causal_axes=(1,)), ValueError, "causal_axes"),
    (lambda: ann.Conv1d(3.0, 4, 3), TypeError, "in_channels must be an int"),
    (lambda: ann.conv(torch.randn(1, 3, 5), torch.randn(2, 2, 3)), ValueError, "3 channels"),
    (lambda: ann.conv(torch.randn(1, 1, 3), torch.randn(1, 1, 3), padding="valid", dilation=2),
     ValueError, "effective kernel 5"),
    (lambda: ann.conv(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3)), ValueError, "spatial axes"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ------------------------------------------------------------------ drop-in nn.Conv*d citizens

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_is_an_nn_conv_with_pytorch_defaults(nd):
    """isinstance, padding=0 by default, same output as the plain class with the same weights."""
    torch.manual_seed(6)
    ours, ref = CONVS[nd](3, 4, 3, dilation=2), TORCH_CONVS[nd](3, 4, 3, dilation=2)
    assert isinstance(ours, TORCH_CONVS[nd]) and isinstance(ours, torch.nn.modules.conv._ConvNd)
    assert ours.padding == ref.padding == (0,) * nd
    assert (ours.kernel_size, ours.stride, ours.dilation, ours.groups, ours.padding_mode) == \
        (ref.kernel_size, ref.stride, ref.dilation, ref.groups, ref.padding_mode)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, *([9] * nd))
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    assert ours(x).shape[2:] == (5,) * nd          # 9 - 2 * (3 - 1): 'valid', as nn.Conv*d


@pytest.mark.parametrize("padding", [0, 2, "same", "valid"])
def test_state_dict_interchangeable_both_ways(padding):
    """A plain nn.Conv2d checkpoint loads into ann.Conv2d and back; outputs agree."""
    torch.manual_seed(7)
    plain = torch.nn.Conv2d(3, 5, 3, padding=padding, dilation=2, bias=True)
    ours = ann.Conv2d(3, 5, 3, padding=padding, dilation=2)
    buf = io.BytesIO()
    torch.save(plain.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 11, 10)
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    with torch.no_grad():
        ours.weight.mul_(2)
    back = torch.nn.Conv2d(3, 5, 3, padding=padding, dilation=2)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back(x), ours(x), rtol=0, atol=0)
    assert list(ours.state_dict()) == list(plain.state_dict())


def test_repr_shows_the_padding_mode():
    assert repr(ann.Conv1d(2, 3, 3, padding="causal", dilation=4)) == \
        "Conv1d(2, 3, kernel_size=(3,), stride=(1,), padding=causal, dilation=(4,), causal_axes=(0,))"
    r = repr(ann.Conv2d(2, 3, 3, stride=2, padding="same", padding_mode="reflect", bias=False))
    assert "padding=same" in r and "padding_mode=reflect" in r and "bias=False" in r
    assert "padding=((0, 2), (1, 1))" in repr(ann.Conv2d(2, 3, 3, padding=((0, 2), (1, 1))))
    for kw in ({}, {"padding": 1, "dilation": 2, "groups": 2, "bias": False}, {"padding_mode": "circular"}):
        assert repr(ann.Conv2d(2, 4, 3, **kw)) == repr(torch.nn.Conv2d(2, 4, 3, **kw))   # PyTorch's where it has one


def test_setting_geometry_attributes_re_resolves_the_padding():
    """Stride-to-dilation passes set m.stride/m.dilation/m.padding on nn.Conv2d instances: the
    forward must follow (never a stale padding table), and bad values are refused."""
    torch.manual_seed(8)
    m = ann.Conv2d(2, 3, 3, stride=2, padding="same").double()
    x = torch.randn(1, 2, 12, 13, dtype=torch.float64)
    m.stride, m.dilation = 1, 2
    assert m.stride == (1, 1) and m.dilation == (2, 2)
    want = F.conv2d(x, m.weight, m.bias, padding=2, dilation=2)
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    m.padding = (0, 3)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, padding=(0, 3), dilation=2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"dilation must be >= 1 per axis, got \(1, 0\)"):
        m.dilation = (1, 0)
    with pytest.raises(ValueError, match="did you mean 'causal'"):
        m.padding = "casual"
    assert m.dilation == (2, 2) and m.padding == (0, 3)          # a refused value leaves the layer intact


def test_conv_forward_follows_the_padding_spec():
    """Wrappers (LoRA, weight standardisation) call m._conv_forward(x, w, b) with their own weight."""
    torch.manual_seed(9)
    m = ann.Conv1d(2, 3, 3, padding="causal", dilation=3).double()
    x = torch.randn(2, 2, 10, dtype=torch.float64)
    w = torch.randn_like(m.weight)
    torch.testing.assert_close(m._conv_forward(x, w, None), F.conv1d(F.pad(x, (6, 0)), w, dilation=3),
                               rtol=0, atol=0)


def test_fx_traces_static_padding_layers():
    m = torch.nn.Sequential(ann.Conv2d(2, 3, 3, padding="causal", dilation=2), ann.Conv2d(3, 3, 3, padding=1))
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(gm(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("padding", ["causal", ((0, 2), (1, 1)), "full", 1])
def test_torchscript_every_padding_spec(padding):
    m = ann.Conv2d(2, 3, 3, padding=padding, dilation=2)
    s = torch.jit.script(m)
    x = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(s(x), m(x))
    buf = io.BytesIO()
    torch.jit.save(s, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), m(x))
