"""atrous.nn.stream: chunked streaming equals the offline model (float64 1e-10, float32 1e-5) for any
chunking and batch size; errors name the offending layer; state save/restore; TorchScript; ONNX
(run step by step with onnxruntime)."""

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import atrous.nn as ann


def run_stream(stepper, x, chunks):
    state = stepper.init_state(x.shape[0])
    ys, i = [], 0
    for c in chunks:
        y, state = stepper.step(x[:, :, i:i + c], state)
        ys.append(y)
        i += c
    return torch.cat(ys, 2), state


def chunking(draw, total):
    out = []
    while sum(out) < total:
        out.append(min(draw(st.integers(1, 9)), total - sum(out)))
    return out


class GatedCausal(nn.Module):
    """A hand-made causal net: gating, channel cat, residual adds, 1x1 convs, eval batch norm, GELU."""

    def __init__(self, groups=3):
        super().__init__()
        self.a = ann.Conv1d(3, 8, 2, padding="causal", dilation=3)
        self.b = nn.Conv1d(4, 4, 1)
        self.c = ann.Conv1d(8, 3, 3, padding=((4, 0),), dilation=2, groups=1)
        self.g = ann.Conv1d(3, 6, 3, padding="causal", dilation=1, groups=groups)
        self.bn = nn.BatchNorm1d(3)
        self.act = nn.GELU()

    def forward(self, x):
        f, g = torch.chunk(self.a(x), 2, 1)
        h = torch.tanh(f) * torch.sigmoid(g)
        h = torch.cat([self.b(h), h], -2)                 # positional dim, channels of (N, C, T)
        y = self.act(self.bn(self.c(h))) + x
        return self.g(y) * 0.5


@st.composite
def models(draw):
    kind = draw(st.sampled_from(["tcn", "wavenet", "gated"]))
    torch.manual_seed(draw(st.integers(0, 100)))
    if kind == "tcn":
        depth = draw(st.integers(1, 3))
        return ann.TCN(3, [draw(st.integers(2, 5)) for _ in range(depth)], draw(st.integers(2, 4)),
                       [draw(st.integers(1, 6)) for _ in range(depth)], dropout=0.2,
                       weight_norm=draw(st.booleans()))
    if kind == "wavenet":
        return ann.WaveNet(3, 2, residual_channels=4, gate_channels=3, skip_channels=5,
                           kernel_size=draw(st.integers(2, 3)), layers_per_stack=draw(st.integers(1, 4)),
                           stacks=draw(st.integers(1, 2)))
    m = GatedCausal(groups=draw(st.sampled_from([1, 3])))    # groups=3: no 2-D fast program
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    return m


@settings(max_examples=25)
@given(models(), st.integers(1, 3), st.booleans(), st.data())
def test_stream_equals_offline_float64(model, batch, inplace, data):
    model = model.double().eval()
    length = data.draw(st.integers(1, 40))
    x = torch.randn(batch, 3, length, dtype=torch.float64)
    want = model(x)
    got, state = run_stream(ann.stream(model, inplace=inplace), x, chunking(data.draw, length))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert int(state[0]) == length


@pytest.mark.parametrize("chunk", [1, 2, 5, 64, 200])
def test_stream_equals_offline_float32_every_chunk_size(chunk):
    torch.manual_seed(0)
    model = ann.TCN(3, [8, 8, 8], 3, [1, 4, 16]).eval()
    x = torch.randn(2, 3, 200)
    got, _ = run_stream(ann.stream(model), x, [chunk] * (200 // chunk) + [200 % chunk] * (200 % chunk > 0))
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-5)


def test_ring_buffers_hold_exactly_the_history():
    model = ann.TCN(3, [4, 5], kernel_size=3, dilations=[2, 7])
    s = ann.stream(model)
    state = s.init_state(4)
    assert s.history == [4, 4, 14, 14]
    assert [r.shape for r in state[1:]] == [(4, 2, 2, 3), (4, 2, 2, 4), (4, 7, 2, 4), (4, 7, 2, 5)]
    assert [r[0].numel() // r.shape[-1] for r in state[1:]] == s.history     # (k - 1) * d samples each


def test_state_save_restore_and_move():
    torch.manual_seed(1)
    model = ann.WaveNet(3, 2, residual_channels=4, layers_per_stack=4).double().eval()
    s = ann.stream(model)
    x = torch.randn(2, 3, 30, dtype=torch.float64)
    _, state = run_stream(s, x[:, :, :12], [5, 7])
    buf = io.BytesIO()
    torch.save(s.clone_state(state), buf)
    y1, _ = s.step(x[:, :, 12:], state)                     # continues (and overwrites) the state
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    y2, _ = s.step(x[:, :, 12:], restored)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(y1, model(x)[:, :, 12:], rtol=0, atol=1e-10)
    s32 = ann.stream(model.float()).to("cpu")
    assert all(t.dtype == torch.float32 for t in s32.init_state(1)[1:])


def test_functional_step_leaves_state_untouched():
    model = ann.TCN(3, [4], 3, [2]).eval()
    s = ann.stream(model, inplace=False)
    state = s.init_state(1)
    snapshot = s.clone_state(state)
    s.step(torch.randn(1, 3, 3), state)
    assert all(torch.equal(a, b) for a, b in zip(state, snapshot))


def test_torchscript_stepper():
    torch.manual_seed(2)
    model = ann.TCN(3, [4, 4], 3).eval()
    x = torch.randn(2, 3, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = ann.stream(model, script=True)
        scripted = torch.jit.script(ann.stream(model))             # the whole Stepper module
    got, _ = run_stream(s, x, [1, 1, 3, 20])
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-5)
    state = list(ann.stream(model).init_state(2))
    ys = []
    for i in range(25):
        y, state = scripted(x[:, :, i:i + 1], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 2), model(x), rtol=0, atol=1e-5)


def test_onnx_export_step_by_step():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = ann.WaveNet(2, 2, residual_channels=4, layers_per_stack=3).eval()
    s = ann.stream(model, inplace=False)
    state = s.init_state(2)
    names = ["x"] + [f"state{i}" for i in range(len(state))]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(s, (torch.randn(2, 2, 1), list(state)), f, dynamo=False, input_names=names,
                          output_names=["y"] + [f"new_state{i}" for i in range(len(state))])
    sess = ort.InferenceSession(f.getvalue())
    x = torch.randn(2, 2, 20)
    feed = [v.numpy() for v in state]
    ys = []
    for i in range(20):
        out = sess.run(None, dict(zip(names, [x[:, :, i:i + 1].numpy()] + feed)))
        ys.append(out[0])
        feed = out[1:]
    np.testing.assert_allclose(np.concatenate(ys, 2), model(x).detach().numpy(), rtol=0, atol=1e-5)


class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(ann.Conv1d(2, 2, 3, padding="causal"),
                                   ann.Conv1d(2, 2, 3, stride=2, padding="causal"))

    def forward(self, x):
        return self.inner(x)


class Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=2)

    def forward(self, x):
        return self.conv(x)[:, :, :-2]                     # Bai's Chomp1d: causal, but not streamable here


BAD = [
    (lambda: nn.Sequential(ann.Conv1d(2, 2, 3, padding="same")), "layer '0' \\(Conv1d\\) is not causal"),
    (lambda: Strided(), "layer 'inner.1' \\(Conv1d\\) has stride 2"),
    (lambda: nn.Sequential(ann.Conv1d(2, 2, 3, padding="causal"), nn.MaxPool1d(2)),
     "layer '1' \\(MaxPool1d\\) is not known"),
    (lambda: nn.Sequential(nn.Conv1d(2, 2, 3, padding=1)), "layer '0' \\(Conv1d\\) is not causal"),
    (lambda: Sliced(), "layer 'conv' \\(Conv1d\\) is not causal"),
    (lambda: nn.Sequential(ann.Conv1d(2, 2, 3, padding="causal", padding_mode="replicate")), "padding_mode"),
    (lambda: nn.Sequential(ann.Conv2d(2, 2, 3, padding="causal")), "not a 1-D convolution"),
    (lambda: nn.Sequential(nn.ReLU()), "no causal convolution"),
    # statistics over time mix every step: the op-rule registry says so, stream refuses by name
    (lambda: nn.Sequential(ann.Conv1d(2, 2, 3, padding="causal"), nn.GroupNorm(1, 2)),
     "layer '1' \\(GroupNorm\\) is not known"),
    (lambda: nn.Sequential(ann.Conv1d(2, 2, 3, padding="causal"), nn.Softmax(dim=2)),
     "layer '1' \\(Softmax\\) is not known"),
]


def test_pointwise_modules_come_from_the_op_registry():
    """Any activation the analysis knows to be pointwise streams, not only a fixed list (the registry
    is the one op table): Softshrink, Hardshrink, Threshold and eval-mode BatchNorm1d."""
    torch.manual_seed(0)
    net = nn.Sequential(ann.Conv1d(2, 3, 3, padding="causal", dilation=2), nn.Softshrink(0.1),
                        nn.BatchNorm1d(3), nn.Hardshrink(0.2), ann.Conv1d(3, 2, 2, padding="causal"),
                        nn.Threshold(0.1, -1.0)).double().eval()
    x = torch.randn(2, 2, 30, dtype=torch.float64)
    s = ann.stream(net)
    state = s.init_state(2)
    ys = []
    for t in range(0, 30, 7):
        y, state = s.step(x[:, :, t:t + 7], state)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 2), net(x), atol=1e-12)


@pytest.mark.parametrize("make,match", BAD)
def test_non_streamable_layers_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        ann.stream(make())


def _replace(state, i, value):
    out = list(state)
    out[i] = value
    return tuple(out)


BAD_STATES = [   # (change the state or x, exception, message); TCN(3, [4], 3, [2]): rings (N, 2, 2, 3), (N, 2, 2, 4)
    (lambda s, x: (x, None), TypeError, "state must be the tuple of tensors from init_state"),
    (lambda s, x: (x, s[:2]), ValueError, r"state must have 3 tensors \(the cursor t and 2 ring buffers"),
    (lambda s, x: (x, _replace(s, 1, torch.zeros(2, 2, 3, 3))), ValueError,
     r"state\[1\] \(ring buffer of layer 'blocks.0.conv1'\) must have shape \(2, 2, 2, 3\) = \(N, dilation, "
     r"kernel_size - 1, C_in\), got \(2, 2, 3, 3\)"),
    (lambda s, x: (x, _replace(s, 2, torch.zeros(2, 2, 2, 3))), ValueError,
     r"state\[2\] \(ring buffer of layer 'blocks.0.conv2'\) must have shape \(2, 2, 2, 4\)"),
    (lambda s, x: (x, _replace(s, 2, torch.zeros(1, 2, 2, 4))), ValueError,
     r"state\[2\] \(ring buffer of layer 'blocks.0.conv2'\) is for batch size 1, x has batch size 2"),
    (lambda s, x: (x[:1], s), ValueError, "is for batch size 2, x has batch size 1"),
    (lambda s, x: (x, _replace(s, 1, s[1].double())), ValueError,
     r"state\[1\] \(ring buffer of layer 'blocks.0.conv1'\) has dtype torch.float64, the stepper computes in "
     "torch.float32"),
    (lambda s, x: (x, _replace(s, 1, s[1].transpose(1, 2).contiguous().transpose(1, 2))), ValueError,
     "must be contiguous"),
    (lambda s, x: (x, _replace(s, 1, s[1].to("meta"))), ValueError, r"state\[1\] .* is on meta, the stepper on cpu"),
    (lambda s, x: (x, _replace(s, 0, torch.tensor(-3))), ValueError,
     r"state\[0\] \(the cursor t, samples consumed\) must be >= 0, got -3"),
    (lambda s, x: (x, _replace(s, 0, torch.tensor(0.0))), ValueError,
     r"state\[0\] \(the cursor t, samples consumed\) must be an int64 tensor of shape \(\), got torch.float32"),
    (lambda s, x: (x, _replace(s, 0, torch.zeros(1, dtype=torch.long))), ValueError, r"of shape \(\), got torch.int64 "
     r"of shape \(1,\)"),
    (lambda s, x: (x, _replace(s, 0, 0)), ValueError, "must be an int64 tensor of shape \\(\\), got int"),
    (lambda s, x: (x.half(), s), ValueError, "x has dtype torch.float16, the stepper computes in torch.float32"),
    (lambda s, x: (x.double(), s), ValueError, "x has dtype torch.float64"),
    (lambda s, x: (x.to("meta"), s), ValueError, "x is on meta, the stepper on cpu"),
    (lambda s, x: (x[:, :2], s), ValueError, r"x must be \(N, 3, T\) with T >= 1, got \(2, 2, "),
    (lambda s, x: (x[:, :, :0], s), ValueError, r"x must be \(N, 3, T\) with T >= 1, got \(2, 3, 0\)"),
    (lambda s, x: (x[0], s), ValueError, r"x must be \(N, 3, T\)"),
    (lambda s, x: (x.numpy(), s), TypeError, "x must be a tensor"),
]


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("change,exc,match", BAD_STATES)
def test_bad_state_is_named_on_every_path(change, exc, match, T, inplace):
    """Every check runs before any work on the T = 1 fast path and the general path, in place or not,
    through step() and the eager forward()."""
    s = ann.stream(ann.TCN(3, [4], 3, [2]).eval(), inplace=inplace)
    good = s.init_state(2)
    s.step(torch.randn(2, 3, T), good)                    # a checked state is cached by identity ...
    x, state = change(good, torch.randn(2, 3, T))
    snapshot = [t.clone() for t in good]
    with pytest.raises(exc, match=match) as e:
        s.step(x, state)
    assert "\n" not in str(e.value)
    with pytest.raises(exc, match=match):
        s(x, list(state) if isinstance(state, tuple) else state)
    assert all(torch.equal(a, b) for a, b in zip(good, snapshot))       # nothing was written
    y, _ = s.step(torch.randn(2, 3, T), good)                            # ... and the good one still works
    assert y.shape == (2, 4, T)


def test_init_state_and_constructor_errors():
    s = ann.stream(ann.TCN(3, [4], 3))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        s.init_state(0)
    with pytest.raises(ValueError, match="the stepper computes in torch.float32"):
        s.init_state(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="device 'meta': the stepper is on cpu"):
        s.init_state(1, device="meta")
    assert [t.dtype for t in s.init_state(1, device="cpu", dtype=torch.float32)[1:]] == [torch.float32] * 2
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ann.stream(lambda x: x)


def test_scripted_stepper_saved_and_loaded_the_torchscript_way(tmp_path):
    torch.manual_seed(10)
    model = ann.WaveNet(2, 3, residual_channels=4, layers_per_stack=3).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ann.stream(model)), str(tmp_path / "stepper.pt"))
        loaded = torch.jit.load(str(tmp_path / "stepper.pt"))
    x = torch.randn(2, 2, 17, dtype=torch.float64)
    state = loaded.zero_state(2)
    ys = []
    for a, b in [(0, 1), (1, 2), (2, 9), (9, 10), (10, 17)]:             # T = 1 and T > 1 programs
        y, state = loaded(x[:, :, a:b], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 2), model(x), rtol=0, atol=1e-12)
    assert int(state[0]) == 17


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_stream_on_the_models_device(device):
    """The stepper, its state and its outputs live on the model's device (CUDA when available)."""
    torch.manual_seed(11)
    model = ann.TCN(3, [4, 4], 3, [1, 3]).eval().to(device)
    s = ann.stream(model)
    state = s.init_state(2)
    assert all(t.device.type == device for t in state)
    x = torch.randn(2, 3, 12, device=device)
    got, state = run_stream(s, x, [1, 1, 5, 1, 4])
    assert got.device.type == device and state[0].device.type == device
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-5)


def test_stream_on_meta_device_builds_state_there():
    """Nothing in the stepper hard-codes the CPU: a meta model gives a meta stepper and meta state,
    and a CPU input is refused by name."""
    model = ann.TCN(3, [4, 4], 3, [1, 3]).to("meta")
    s = ann.stream(model)
    state = s.init_state(2)
    assert all(t.device.type == "meta" for t in state) and s._ref.device.type == "meta"
    with pytest.raises(ValueError, match="x is on cpu, the stepper on meta"):
        s.step(torch.randn(2, 3, 1), state)
    s2 = s.to_empty(device="cpu")                              # moving the stepper moves its state too
    assert all(t.device.type == "cpu" for t in s2.init_state(1))


class Aliasing(nn.Module):
    """Activations whose input is shared (an identity alias, chunk views of a reused tensor): the
    T = 1 fast program must not run them in place."""

    def __init__(self):
        super().__init__()
        self.conv = ann.Conv1d(2, 4, 2, padding="causal", dilation=2)
        self.id, self.act, self.act2 = nn.Identity(), nn.ReLU(), nn.Tanh()

    def forward(self, x):
        h = self.conv(x)                                   # (N, 4, T)
        f, g = h.chunk(2, dim=1)
        r = self.act(self.id(h)) + h                       # ReLU's input aliases h
        s = self.act2(f) + g                               # Tanh on a view of h
        return torch.cat([s, self.act(g)], dim=1) + r


def test_fast_program_does_not_clobber_shared_tensors():
    torch.manual_seed(5)
    m = Aliasing().double().eval()
    x = torch.randn(2, 2, 12, dtype=torch.float64)
    got, _ = run_stream(ann.stream(m), x, [1] * 12)
    torch.testing.assert_close(got, m(x), rtol=0, atol=1e-12)


def test_dtype_change_after_use_rebuilds_fast_path():
    torch.manual_seed(6)
    model = ann.TCN(3, [4, 5], 3, [1, 3]).eval()
    s = ann.stream(model)
    s.step(torch.randn(1, 3, 1), s.init_state(1))          # builds the float32 eager closures
    s.double()
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    got, _ = run_stream(s, x, [1] * 9)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, model.double()(x), rtol=0, atol=1e-10)


class Scaled(nn.Module):
    """A parameter used directly in forward (an fx get_attr): the 2-D T = 1 program is not built and
    single samples take StreamConv1d's own in-place path."""

    def __init__(self):
        super().__init__()
        self.conv = ann.Conv1d(2, 3, 3, padding="causal", dilation=2)
        self.mix = ann.Conv1d(3, 3, 1, groups=3)
        self.scale = nn.Parameter(torch.rand(1, 3, 1) + 0.5)

    def forward(self, x):
        return self.mix(torch.relu(self.conv(x))) * self.scale


def test_get_attr_model_uses_three_d_fast_path():
    torch.manual_seed(7)
    m = Scaled().double().eval()
    s = ann.stream(m)
    assert not s.has_single
    x = torch.randn(2, 2, 15, dtype=torch.float64)
    got, _ = run_stream(s, x, [1, 1, 4, 1, 8])
    torch.testing.assert_close(got, m(x), rtol=0, atol=1e-12)


def test_two_d_program_with_batch_norm_gating_and_positional_cat():
    torch.manual_seed(8)
    m = GatedCausal(groups=1).double().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
    s = ann.stream(m)
    assert s.has_single
    x = torch.randn(2, 3, 20, dtype=torch.float64)
    got, _ = run_stream(s, x, [1] * 20)
    torch.testing.assert_close(got, m(x), rtol=0, atol=1e-12)


def test_interleaved_states_single_steps():
    """Two independent streams through one stepper, alternating sample by sample (the eager fast path
    caches views per ring tensor: switching rings must not mix them up)."""
    torch.manual_seed(9)
    model = ann.TCN(3, [4, 4], 3, [1, 3]).double().eval()
    s = ann.stream(model)
    xa, xb = torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(1, 3, 16, dtype=torch.float64)
    sa, sb = s.init_state(2), s.init_state(1)
    ya, yb = [], []
    for i in range(16):
        y, sa = s.step(xa[:, :, i:i + 1], sa)
        ya.append(y)
        y, sb = s.step(xb[:, :, i:i + 1], sb)
        yb.append(y)
        if i == 7:                                     # a restored snapshot is a new ring object
            sa = s.clone_state(sa)
    torch.testing.assert_close(torch.cat(ya, 2), model(xa), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(yb, 2), model(xb), rtol=0, atol=1e-12)


def test_stepper_deepcopy_and_pickle_after_use():
    model = ann.TCN(3, [4], 3, [2]).double().eval()
    s = ann.stream(model)
    s.step(torch.randn(1, 3, 1, dtype=torch.float64), s.init_state(1))      # builds the eager closures
    buf = io.BytesIO()
    torch.save(s, buf)
    buf.seek(0)
    for other in (copy.deepcopy(s), torch.load(buf, weights_only=False)):
        x = torch.randn(2, 3, 6, dtype=torch.float64)
        got, _ = run_stream(other, x, [1] * 6)
        torch.testing.assert_close(got, model(x), rtol=0, atol=1e-12)
