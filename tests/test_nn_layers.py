"""TCN, WaveNet, ContextModule, ASPP: smoke, shapes, errors, values vs hand-written oracles,
receptive field vs brute force (which inputs reach an output), gradcheck, state_dict, TorchScript."""

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import atrous.nn as ann


def positive_weights(model, seed=0):
    """All weights > 0, biases 0: every ReLU stays active, so a gradient is non-zero exactly on the
    inputs an output depends on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.zero_()
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.5 + 0.1)
    return model


def field_by_gradient(model, c_in, length, out_pos):
    """Input positions that influence output ``out_pos`` (brute force via autograd of a one-hot)."""
    x = torch.rand(1, c_in, length, dtype=torch.float64, requires_grad=True)
    model(x)[0, :, out_pos].sum().backward()
    hit = torch.nonzero(x.grad[0].abs().sum(0) > 0).flatten()
    return int(hit.min()), int(hit.max())


# ---------------------------------------------------------------- TCN
def causal_conv_oracle(x, conv):
    d, k = conv.dilation[0], conv.kernel_size[0]
    return F.conv1d(F.pad(x, ((k - 1) * d, 0)), conv.weight, conv.bias, dilation=d)


def test_temporal_block_values_vs_hand_written():
    torch.manual_seed(0)
    blk = ann.TemporalBlock(3, 5, kernel_size=3, dilation=2).double().eval()
    x = torch.randn(2, 3, 17, dtype=torch.float64)
    h = torch.relu(causal_conv_oracle(x, blk.conv1))
    h = torch.relu(causal_conv_oracle(h, blk.conv2))
    want = torch.relu(h + F.conv1d(x, blk.downsample.weight, blk.downsample.bias))
    torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)
    got = ann.temporal_block(x, blk.conv1.weight, blk.conv1.bias, blk.conv2.weight, blk.conv2.bias, 2,
                             blk.downsample.weight, blk.downsample.bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=12)
@given(st.integers(2, 4), st.lists(st.integers(1, 5), min_size=1, max_size=3), st.booleans())
def test_tcn_receptive_field_vs_brute_force(k, dilations, weight_norm):
    tcn = positive_weights(ann.TCN(2, [3] * len(dilations), k, dilations, weight_norm=False).double())
    if weight_norm:
        tcn = ann.TCN(2, [3] * len(dilations), k, dilations, weight_norm=True).double()
        with torch.no_grad():
            for m in tcn.modules():
                if hasattr(m, "parametrizations"):
                    m.parametrizations.weight.original1.abs_()
                    m.parametrizations.weight.original1.add_(0.1)
                    m.parametrizations.weight.original0.fill_(1.0)
                elif isinstance(m, ann.Conv1d):
                    m.weight.data.abs_().add_(0.1)
                if isinstance(m, ann.Conv1d) and m.bias is not None:
                    m.bias.data.zero_()
    rf = tcn.receptive_field
    length = rf + 5
    lo, hi = field_by_gradient(tcn, 2, length, length - 1)
    assert hi == length - 1                               # causal: nothing after the output
    assert length - lo == rf == 1 + 2 * sum((k - 1) * d for d in dilations)


def test_tcn_non_causal_is_centered_same_length():
    tcn = positive_weights(ann.TCN(1, [2, 2], 3, causal=False).double())
    lo, hi = field_by_gradient(tcn, 1, 40, 20)
    assert (lo, hi) == (20 - 6, 20 + 6) and tcn(torch.randn(1, 1, 40, dtype=torch.float64)).shape[-1] == 40


# ---------------------------------------------------------------- WaveNet
def test_wavenet_receptive_field_and_values():
    net = positive_weights(ann.WaveNet(2, 3, residual_channels=4, kernel_size=2, layers_per_stack=3,
                                       stacks=2).double())
    rf = net.receptive_field
    assert rf == 2 + 2 * (1 + 2 + 4)
    lo, hi = field_by_gradient(net, 2, rf + 4, rf + 3)
    assert hi == rf + 3 and rf + 4 - lo == rf
    # values: hand-written gated stack with the same weights
    torch.manual_seed(1)
    net = ann.WaveNet(2, 3, residual_channels=4, gate_channels=5, skip_channels=6, kernel_size=3,
                      dilations=[1, 3]).double()
    x = torch.randn(2, 2, 15, dtype=torch.float64)
    h = causal_conv_oracle(x, net.input)
    skip = 0
    for layer in net.layers:
        f, g = causal_conv_oracle(h, layer.conv).chunk(2, 1)
        z = torch.tanh(f) * torch.sigmoid(g)
        skip = skip + F.conv1d(z, layer.skip.weight, layer.skip.bias)
        h = h + F.conv1d(z, layer.res.weight, layer.res.bias)
        out, s = ann.gated_residual(h - F.conv1d(z, layer.res.weight, layer.res.bias), layer.conv.weight,
                                    layer.conv.bias, layer.skip.weight, layer.skip.bias, layer.res.weight,
                                    layer.res.bias, layer.conv.dilation[0])
        torch.testing.assert_close(out, h)
    want = net.head(skip)
    torch.testing.assert_close(net(x), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- Context module
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_context_module_identity_init(dtype):
    x = torch.rand(2, 5, 24, 20, dtype=dtype)
    basic = ann.ContextModule(5).to(dtype)
    assert torch.equal(basic(x), x)
    large = ann.ContextModule(5, variant="large").to(dtype)
    torch.testing.assert_close(large(x), x, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
    assert [m.out_channels for m in large.convs] == [10, 10, 20, 40, 80, 160, 160, 5]
    noisy = ann.ContextModule(5, noise_std=1e-2)
    assert not torch.equal(noisy(x.float()), x.float())
    w = [m.weight for m in basic.convs]
    b = [m.bias for m in basic.convs]
    assert torch.equal(ann.context_module(x, w, b), x)


def test_context_module_receptive_field_67_brute_force():
    m = positive_weights(ann.ContextModule(1, identity_init=False).double())
    x = torch.rand(1, 1, 81, 81, dtype=torch.float64, requires_grad=True)
    m(x)[0, 0, 40, 40].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1) > 0).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0) > 0).flatten()
    assert int(rows.max() - rows.min()) + 1 == int(cols.max() - cols.min()) + 1 == m.receptive_field == 67


# ---------------------------------------------------------------- ASPP
def test_aspp_rates_and_shapes():
    assert ann.rates_for(16) == (6, 12, 18) and ann.rates_for(8) == (12, 24, 36)
    aspp = ann.ASPP(8, 6, output_stride=8).eval()
    assert [b[0].dilation for b in aspp.branches[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert aspp(torch.randn(2, 8, 13, 11)).shape == (2, 6, 13, 11)
    assert len(ann.ASPP(8, 6, rates=(2, 4), image_pooling=False).branches) == 3


@pytest.mark.parametrize("size", [(65, 65), (17, 33), (9, 9)])
def test_valid_tap_fraction_vs_counting_conv(size):
    """Oracle: convolve an all-ones map with an all-ones 3x3 dilated kernel, zero padded: each output
    counts the taps inside the map."""
    rates = (1, 6, 12, 18, 24, 36)
    got = ann.valid_tap_fraction(size, rates)
    ones = torch.ones(1, 1, *size, dtype=torch.float64)
    for r in rates:
        count = F.conv2d(ones, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=r, dilation=r)
        assert got[r] == pytest.approx(float(count.mean()) / 9, abs=1e-12)
    assert got[1] >= got[6] >= got[12] >= got[18] >= got[24] >= got[36] >= 1 / 9 - 1e-12


def test_aspp_functional_twin_equals_module_eval():
    torch.manual_seed(7)
    m = ann.ASPP(3, 4, rates=(2, 5)).double()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
    m.eval()
    bns = [b[1] for b in m.branches[:-1]] + [m.branches[-1].conv[1], m.project[1]]
    norms = [(b.running_mean, b.running_var, b.weight, b.bias) for b in bns]
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    got = ann.aspp(x, [b[0].weight for b in m.branches[:-1]], (2, 5), m.project[0].weight,
                   m.branches[-1].conv[0].weight, norms)
    torch.testing.assert_close(got, m(x), rtol=1e-12, atol=1e-12)


def test_aspp_image_pooling_branch_is_constant_map():
    aspp = ann.ASPP(4, 3, rates=(2,)).eval()
    y = aspp.branches[-1](torch.randn(1, 4, 7, 9))
    assert torch.allclose(y, y[:, :, :1, :1].expand_as(y))


# ---------------------------------------------------------------- shared: gradcheck, state_dict, script
def test_gradcheck_float64():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    wr = torch.randn(3, 2, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w1, w2, wr: ann.temporal_block(x, w1, None, w2, None, 2, wr, None), (x, w1, w2, wr))
    wg = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(3, 2, 1, dtype=torch.float64, requires_grad=True)
    wr2 = torch.randn(2, 2, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, wg, ws, wr2: ann.gated_residual(x, wg, None, ws, None, wr2, None, 3), (x, wg, ws, wr2))


MODULES = [
    lambda: ann.TCN(2, [4, 4], 3, dropout=0.1),
    lambda: ann.TCN(2, [4, 4], 3, weight_norm=True),
    lambda: ann.WaveNet(2, 3, residual_channels=4, layers_per_stack=3),
    lambda: ann.ContextModule(3, variant="large"),
    lambda: ann.ASPP(4, 3, rates=(2, 3)),
]


@pytest.mark.parametrize("make", MODULES)
def test_state_dict_round_trip_and_script(make):
    torch.manual_seed(3)
    m = make().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 2, 30) if not isinstance(m, (ann.ContextModule, ann.ASPP)) else \
        torch.rand(2, m.channels if isinstance(m, ann.ContextModule) else 4, 12, 10)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(4)
    m2 = make().eval()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any("parametrizations" in k for k in m.state_dict()):
            s = torch.jit.trace(m, x)              # parametrizations do not script (PyTorch limitation)
        else:
            s = torch.jit.script(m)
    torch.testing.assert_close(s(x), m(x))
    assert m.double()(x.double()).dtype == torch.float64


@pytest.mark.slow
@pytest.mark.parametrize("make,shape", [(lambda: ann.TCN(2, [4], 3), (1, 2, 20)),
                                        (lambda: ann.Conv2d(2, 2, 3, stride=2, padding="same"), (1, 2, 9, 8)),
                                        (lambda: ann.ContextModule(2), (1, 2, 12, 12))])
def test_torch_compile(make, shape):
    m = make().eval()
    x = torch.rand(*shape)
    torch.testing.assert_close(torch.compile(m)(x), m(x))


BAD = [
    (lambda: ann.TCN(2, [], 3), ValueError, "channels must be a non-empty list"),
    (lambda: ann.TCN(2, [4, 4], 3, dilations=[1]), ValueError, "one entry per block"),
    (lambda: ann.TCN(2, [4], 3, dilations=[0]), ValueError, "dilations entries must be >= 1"),
    (lambda: ann.TCN(2, [4], 3, dropout=1.5), ValueError, "dropout must be a float in"),
    (lambda: ann.TemporalBlock(0, 4), ValueError, "in_channels must be >= 1"),
    (lambda: ann.WaveNet(1, 1, layers_per_stack=0), ValueError, "layers_per_stack must be >= 1"),
    (lambda: ann.WaveNet(1, 1, dilations=[1, -2]), ValueError, "dilations entries must be >= 1"),
    (lambda: ann.ContextModule(3, variant="larg"), ValueError,
     "variant must be 'basic' or 'large', got 'larg' \\(did you mean 'large'\\?\\)"),
    (lambda: ann.ContextModule(3, widths=(1, 2)), ValueError, "one multiplier per dilation"),
    (lambda: ann.ContextModule(3, noise_std=-1), ValueError, "noise_std"),
    (lambda: ann.rates_for(32), ValueError, "output_stride must be 8 or 16"),
    (lambda: ann.ASPP(4, 3, rates=(0,)), ValueError, "rates entries must be >= 1"),
    (lambda: ann.ASPP(4, 3, dropout=2), ValueError, "dropout"),
    (lambda: ann.valid_tap_fraction((5, 0), (1,)), ValueError, "feature_size must be >= 1"),
    (lambda: ann.context_module(torch.rand(1, 1, 5, 5), [torch.ones(1, 1, 3, 3)], [None]), ValueError,
     "need 8 entries"),
    (lambda: ann.aspp(torch.rand(1, 1, 5, 5), [torch.ones(1, 1, 1, 1)], (2, 4), torch.ones(1, 1, 1, 1)),
     ValueError, "one 3x3 weight per rate"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("make,shape", [
    (lambda: ann.Conv2d(2, 3, 3, stride=2, padding="same", dilation=2), (1, 2, 9, 10)),
    (lambda: ann.TCN(2, [4, 4], 3), (2, 2, 20)),
    (lambda: ann.ContextModule(2), (1, 2, 16, 16)),
])
def test_onnx_export_matches(make, shape):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(6)
    m = make().eval()
    x = torch.rand(*shape)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"])
    got = ort.InferenceSession(f.getvalue()).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), m(x).detach(), rtol=1e-5, atol=1e-5)
