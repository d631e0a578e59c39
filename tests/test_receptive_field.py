"""Receptive field: every model is checked against brute force (which inputs reach one output).

Oracles: (1) gradient of one output w.r.t. the input with all weights positive (nonzero exactly on
the connected inputs); (2) perturbation: add a huge value at one input and see which outputs move
(works through max pooling); (3) the closed-form recursion ``geometry.rf_step``; (4) published
figures (Yu & Koltun 2016 context module; VGG-16 conv5_3: field 196, jump 16).
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import atrous
from atrous import Layer, geometry as geo

D = torch.float64     # test precision (explicit: never change torch's global default dtype)


# ---------------------------------------------------------------- oracles

def _positive(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model.double().eval()


def grad_support(model, input_shape, index):
    """Boolean spatial map of inputs whose gradient into output ``index`` (all channels) is nonzero."""
    x = (1 + torch.rand(input_shape, dtype=D)).requires_grad_(True)
    y = model(x)
    y[(0, slice(None)) + tuple(index)].sum().backward()
    return (x.grad[0].abs().sum(0) > 0).numpy()


def perturb_support(model, input_shape, index):
    """Which inputs move output ``index`` when set to a huge value (one forward per input, batched)."""
    spatial = input_shape[2:]
    n = int(np.prod(spatial))
    base = 1 + torch.rand((1,) + tuple(input_shape[1:]), dtype=D)
    X = base.repeat(n, *([1] * (len(input_shape) - 1)))
    flat = X.view(n, input_shape[1], n)
    flat[torch.arange(n), :, torch.arange(n)] += 1e3
    with torch.no_grad():
        y0 = model(base)[(0, slice(None)) + tuple(index)]
        y = model(X)[(slice(None), slice(None)) + tuple(index)]
    moved = (y - y0).abs().amax(1) > 1e-6 * (1 + y0.abs().max())
    return moved.numpy().reshape(spatial)


def bbox(mask):
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.nonzero(mask.any(axis=other) if other else mask)[0]
        out.append((int(idx[0]), int(idx[-1])) if len(idx) else None)
    return tuple(out)


def avg_for_max(model):
    """A copy with every MaxPool replaced by an AvgPool of the same geometry (gradient reaches every
    window input instead of only the argmax)."""
    import copy
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for cname, c in list(m.named_children()):
            if isinstance(c, nn.MaxPool2d):
                setattr(m, cname, nn.AvgPool2d(c.kernel_size, c.stride, c.padding))
    return model


def check_interior(model, input_shape, rf, oracle=grad_support, max_outputs=4):
    """For outputs whose field lies inside the input, the brute-force extent equals rf.span()."""
    spatial = input_shape[2:]
    with torch.no_grad():
        out_sp = model(torch.zeros(input_shape, dtype=D)).shape[2:]
    cands = []
    for idx in itertools.product(*(range(m) for m in out_sp)):
        sp = rf.span(idx)
        if all(s is not None and s[0] >= 0 and s[1] < n for s, n in zip(sp, spatial)):
            cands.append(idx)
    assert cands, "test net too small: no output has its whole field inside the input"
    picks = [cands[0], cands[-1], cands[len(cands) // 2], cands[len(cands) // 3]][:max_outputs]
    for idx in dict.fromkeys(picks):
        assert bbox(oracle(model, input_shape, idx)) == rf.span(idx), idx
    return len(cands)


# ---------------------------------------------------------------- layer lists

def test_yu_koltun_context_module_published_fields():
    ctx = [Layer(3, dilation=d, padding=d) for d in (1, 1, 2, 4, 8, 16, 1)] + [Layer(1)]
    sizes = [r.size for r in atrous.receptive_fields(ctx).values()]
    assert sizes == [(s,) for s in (3, 5, 9, 17, 33, 65, 67, 67)]      # Yu & Koltun 2016, Table 1


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(0, 3), st.integers(1, 4)),
                min_size=1, max_size=6))
@settings(max_examples=60)
def test_layer_list_matches_rf_step_recursion(specs):
    layers = [Layer(kernel=k, stride=s, padding=p, dilation=d) for k, s, p, d in specs]
    r = (1, 1, 0.0)
    for k, s, p, d in specs:
        r = geo.rf_step(*r, kernel=k, stride=s, pad_lo=p, dilation=d)
    rf = atrous.receptive_field(layers)
    assert rf.size == (r[0],) and rf.jump == (r[1],) and rf.start == (r[2],)
    assert rf.padding == (-(r[2] - (r[0] - 1) / 2),)


def test_layer_list_matches_torch_brute_force_1d_2d():
    specs = [dict(kernel=(3, 5), dilation=(1, 2)), dict(kernel=2, stride=(2, 1)),
             dict(kernel=3, dilation=(2, 3), padding=((2, 0), 3))]
    layers = [Layer(**s) for s in specs]
    net = nn.Sequential(nn.Conv2d(1, 2, (3, 5), dilation=(1, 2)), nn.AvgPool2d(2, stride=(2, 1)),
                        nn.ZeroPad2d((3, 3, 2, 0)), nn.Conv2d(2, 1, 3, dilation=(2, 3)))
    _positive(net)
    rf = atrous.receptive_field(layers)
    assert rf == atrous.receptive_field(net, (1, 1, 30, 34))
    assert rf.size[0] != rf.size[1]
    check_interior(net, (1, 1, 30, 34), rf)


def test_layer_same_padding_with_stride_needs_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        atrous.receptive_field([Layer(3, stride=2, padding="same")])
    rf = atrous.receptive_field([Layer(3, stride=2, padding="same")], input_shape=(1, 1, 10))
    assert rf.padding == (geo.resolve_padding("same", (10,), (3,), (2,), (1,))[0][0],)


def test_layer_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"dilation must be >= 1 per axis, got \(2, 0\)"):
        Layer(3, dilation=(2, 0))
    with pytest.raises(ValueError, match="did you mean 'same'"):
        Layer(3, padding="smae")
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        atrous.receptive_field([Layer(3), 3])
    with pytest.raises(ValueError, match="spatial axes"):
        atrous.receptive_field([Layer((3, 3)), Layer((3, 3, 3))])
    with pytest.raises(ValueError, match="input_shape"):
        atrous.receptive_field(nn.Conv1d(1, 1, 3))
    with pytest.raises(ValueError, match="input_shape must"):
        atrous.receptive_field(nn.Conv1d(1, 1, 3), input_shape=(1, 8))


# ---------------------------------------------------------------- torch models

def vgg16(c=1):
    cfg = [2, "M", 2, "M", 3, "M", 3, "M", 3]
    layers, cin = [], 1
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            for _ in range(v):
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
                cin = c
    return nn.Sequential(*layers)


def test_vgg16_conv5_3_published_field_and_brute_force():
    net = _positive(vgg16())
    rf = atrous.receptive_field(net, (1, 1, 224, 224))
    assert rf.size == (196, 196) and rf.jump == (16, 16)     # Araujo et al. 2019 (Distill), Table
    # oracle: the same net with average pooling (same geometry, gradient reaches every window input)
    avg = avg_for_max(net)
    assert check_interior(avg, (1, 1, 224, 224), rf, max_outputs=2) > 0


def test_max_pool_dilated_by_perturbation_1d():
    net = _positive(nn.Sequential(nn.Conv1d(1, 2, 3), nn.MaxPool1d(3, stride=2, dilation=2, padding=1),
                                  nn.ReLU(), nn.Conv1d(2, 1, 2, dilation=3)))
    rf = atrous.receptive_field(net, (1, 1, 40))
    check_interior(net, (1, 1, 40), rf, oracle=perturb_support)


class Bottleneck(nn.Module):
    def __init__(self, c, stride=1, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.down = nn.AvgPool2d(1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        return F.relu(self.conv3(F.relu(self.conv2(F.relu(self.bn1(self.conv1(x))))))) + self.down(x)


def resnet_like(c=2):
    return nn.Sequential(nn.Conv2d(1, c, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, padding=1),
                         nn.Sequential(Bottleneck(c), Bottleneck(c, stride=2)),
                         nn.Sequential(Bottleneck(c), Bottleneck(c, dilation=2)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))


def test_residual_net_brute_force_and_at_submodule():
    net = _positive(resnet_like())
    shape = (1, 1, 96, 96)
    rf = atrous.receptive_field(net, shape)
    assert rf.whole_input == (True, True) and rf.size == (96, 96)
    body = rf.last_spatial
    assert body == atrous.receptive_field(net, shape, at="3")
    body_net = nn.Sequential(*list(net)[:4])
    assert body.size == (75, 75) and body.jump == (8, 8)
    check_interior(avg_for_max(body_net), shape, body, max_outputs=2)
    # a submodule path: the output of the first stage
    rf2 = atrous.receptive_field(net, shape, at="2")
    check_interior(avg_for_max(nn.Sequential(*list(net)[:3])), shape, rf2, max_outputs=2)
    with pytest.raises(ValueError, match="did you mean"):
        atrous.receptive_field(net, shape, at="2.0.conv4")


def test_receptive_fields_is_ordered_and_named_by_module():
    rfs = atrous.receptive_fields(resnet_like(), (1, 1, 64, 64))
    names = list(rfs)
    assert names[0] == "0" and "2.0.conv2" in names and names.index("2.0.conv1") < names.index("2.0.conv2")
    assert any(n.startswith("add") for n in names)


class ASPP(nn.Module):
    """Chen et al. 2017 (DeepLabv3): parallel 3x3 branches at several rates, concatenated."""

    def __init__(self, rates=(1, 2, 3)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=r, dilation=r) for r in rates)
        self.proj = nn.Conv2d(len(rates), 1, 1)

    def forward(self, x):
        return self.proj(torch.cat([b(x) for b in self.branches], dim=1))


def test_aspp_cat_union_brute_force_and_aligned():
    net = _positive(ASPP())
    rf = atrous.receptive_field(net, (1, 1, 15, 15))
    assert rf.size == (7, 7) and rf.start == (0, 0) and not rf.notes
    check_interior(net, (1, 1, 15, 15), rf)


class CausalRes(nn.Module):
    """TCN block (Bai et al. 2018): causal dilated conv via left pad, plus identity."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.conv = nn.Conv1d(1, 1, 3, dilation=d)

    def forward(self, x):
        return torch.relu(self.conv(F.pad(x, (2 * self.d, 0)))) + x


class ChompRes(nn.Module):
    """Original TCN code: symmetric padding, then chomp the end with a slice."""

    def __init__(self, d):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, dilation=d, padding=2 * d)
        self.chomp = 2 * d

    def forward(self, x):
        return self.conv(x)[:, :, :-self.chomp].contiguous() + x


@pytest.mark.parametrize("block", [CausalRes, ChompRes])
def test_tcn_residual_causal_misalignment_reported(block):
    net = _positive(nn.Sequential(*[block(d) for d in (1, 2, 4)]))
    rf = atrous.receptive_field(net, (1, 1, 40))
    assert rf.size == (15,) and rf.padding == (14,)          # output t sees inputs t-14 .. t
    assert any("misaligned" in n for n in rf.notes)
    check_interior(net, (1, 1, 40), rf)


def test_branches_on_different_grids_are_given_position_by_position():
    class TwoGrids(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 2, stride=2)

        def forward(self, x):
            return self.conv(x) + x[:, :, :8]        # output i reads 2i, 2i+1 and i: no single jump

    net = _positive(TwoGrids())
    rf = atrous.receptive_field(net, (1, 1, 16))
    assert rf.period == (8,) and any("different grids" in n for n in rf.notes)
    for i in range(8):
        assert rf.span((i,)) == ((i, 2 * i + 1),)
        assert bbox(grad_support(net, (1, 1, 16), (i,)))[0] == (i, 2 * i + 1)


def test_3d_anisotropic_brute_force():
    net = _positive(nn.Sequential(nn.Conv3d(1, 2, (3, 1, 5), dilation=(2, 1, 1), stride=(1, 2, 1)),
                                  nn.BatchNorm3d(2), nn.ReLU(), nn.Dropout3d(0.5),
                                  nn.Conv3d(2, 1, (2, 3, 3), dilation=(1, 2, 3), padding=(0, 1, 2))))
    shape = (1, 1, 12, 14, 20)
    rf = atrous.receptive_field(net, shape)
    assert rf.size == (6, 9, 11) and rf.jump == (1, 2, 1)
    check_interior(net, shape, rf)


def test_transposed_conv_empty_phases_reported_and_brute_force():
    net = _positive(nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, dilation=2))
    rf = atrous.receptive_field(net, (1, 1, 12))
    assert rf.period == (2,) and rf.empty_phases == ((0,),) and rf.jump == (0.5,)
    assert any("receive no input" in n for n in rf.notes)
    for o in range(4, 20):
        sup = grad_support(net, (1, 1, 12), (o,))
        if o % 2 == 0:
            assert not sup.any() and rf.span(o) == (None,)
        else:
            assert bbox(sup) == rf.span(o)


@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (4, 2, 1, 1), (5, 3, 2, 2), (3, 3, 0, 1)])
def test_transposed_then_conv_phases_brute_force(k, s, p, d):
    net = _positive(nn.Sequential(nn.Conv1d(1, 1, 3, padding=1), nn.ConvTranspose1d(1, 1, k, s, p, dilation=d),
                                  nn.Conv1d(1, 1, 3, dilation=2)))
    rf = atrous.receptive_field(net, (1, 1, 14))
    n_out = net(torch.zeros(1, 1, 14, dtype=D)).shape[-1]
    checked = 0
    for o in range(n_out):
        sp = rf.span(o)[0]
        if sp is not None and sp[0] >= 0 and sp[1] < 14:
            assert bbox(grad_support(net, (1, 1, 14), (o,)))[0] == sp
            checked += 1
    assert checked >= s


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_then_conv_brute_force(mode):
    net = _positive(nn.Sequential(nn.Conv1d(1, 1, 3), nn.Upsample(scale_factor=3, mode=mode),
                                  nn.Conv1d(1, 1, 2)))
    rf = atrous.receptive_field(net, (1, 1, 10))
    assert rf.jump == (pytest.approx(1 / 3),)
    check_interior(net, (1, 1, 10), rf, max_outputs=4)
    for o in range(6, 14):                 # every phase
        assert bbox(grad_support(net, (1, 1, 10), (o,)))[0] == rf.span(o)[0]


def test_unet_like_skip_with_upsampling_brute_force():
    class U(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(1, 1, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(1, 1, 2, stride=2)
            self.out = nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, x):
            return self.out(torch.cat([x, self.up(self.down(x))], 1))

    net = _positive(U())
    rf = atrous.receptive_field(net, (1, 1, 16, 16))
    check_interior(net, (1, 1, 16, 16), rf)
    assert rf.jump == (1, 1)


def test_functional_pad_wrapper_module_is_traced():
    class PadConv(nn.Module):            # like atrous.nn.Conv1d: F.pad then nn.Conv1d
        def __init__(self, d):
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 3, dilation=d)
            self.d = d

        def forward(self, x):
            return self.conv(F.pad(x, (2 * self.d, 0)))

    net = _positive(nn.Sequential(PadConv(1), nn.MaxPool1d(2), PadConv(2), nn.AdaptiveAvgPool1d(1),
                                  nn.Flatten(), nn.Linear(1, 2)))
    rf = atrous.receptive_field(net, (1, 1, 32))
    assert rf.last_spatial.size == (12,) and rf.last_spatial.jump == (2,)
    check_interior(nn.Sequential(*list(net)[:3]), (1, 1, 32), rf.last_spatial, oracle=perturb_support)


def test_functional_conv_and_global_mean():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 1, 3, 3))

        def forward(self, x):
            y = F.conv2d(x, self.w, stride=2, dilation=(1, 2), padding=1)
            return y, y.mean(dim=(2, 3))

    rf = atrous.receptive_fields(Fn(), (1, 1, 16, 16))
    conv = rf["conv2d"]
    assert conv.size == (3, 5) and conv.jump == (2, 2)
    # axis 1: outputs read 2o-1, 2o+1, 2o+3 -- odd columns 1..15 only: column 0 is padding's neighbour,
    # never read, so the mean depends on columns 1..15, not on the whole input (gradient support below)
    assert rf["mean"].whole_input == (True, False)
    assert rf["mean"].span(0) == ((0, 15), (1, 15))
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    m = Fn().double()
    m(x)[1].sum().backward()
    cols = (x.grad[0, 0] != 0).any(dim=0).nonzero().flatten()
    assert (int(cols.min()), int(cols.max())) == (1, 15)


def test_data_dependent_control_flow_is_refused_by_name():
    class Dyn(nn.Sequential):
        def forward(self, x):
            for m in self:
                if x.sum() > -1e9:       # reads a value: a shape-only run cannot decide the branch
                    x = m(x)
            return x

    net = Dyn(nn.Conv1d(1, 1, 3, dilation=2), nn.ReLU(), nn.Conv1d(1, 1, 3, stride=2))
    with pytest.raises(ValueError, match=r"did not run to its output: .* after node 'gt'.*reads tensor values"):
        atrous.receptive_field(net, (1, 1, 20))


def test_op_without_rule_is_a_clear_error():
    class Warp(nn.Module):
        def forward(self, x):
            grid = torch.zeros(x.shape[0], 4, 6, 2, device=x.device)
            return F.grid_sample(x, grid, align_corners=False)

    with pytest.raises(ValueError, match=r"cannot follow node 'grid_sample' \(grid_sample on \(1, 1, 4, 6\)"):
        atrous.receptive_field(Warp(), (1, 1, 4, 6))

    class Unknown(nn.Module):
        def forward(self, x):
            return torch.special.entr(x)

    with pytest.raises(ValueError, match=r"no rule for function 'special_entr'.*treat_as_pointwise"):
        atrous.receptive_field(Unknown(), (1, 1, 8))
    rf = atrous.receptive_field(Unknown(), (1, 1, 8), treat_as_pointwise=["special_entr"])
    assert rf.size == (1,) and any("special_entr treated as pointwise" in n for n in rf.notes)


def test_atrous_nn_convs_strided_same_and_causal_brute_force():
    an = pytest.importorskip("atrous.nn")
    net = _positive(nn.Sequential(an.Conv2d(1, 2, 3, padding="causal", stride=2),
                                  an.Conv2d(2, 1, (3, 2), padding="same", stride=(2, 1), dilation=(3, 2))))
    shape = (1, 1, 37, 23)
    rf = atrous.receptive_field(net, shape)
    assert not rf.notes            # traced (conv-like modules are leaves), no fallback
    check_interior(net, shape, rf)
    one = _positive(an.Conv1d(1, 1, 3, stride=2, dilation=2))
    rf1 = atrous.receptive_field(one, (1, 1, 16))
    check_interior(one, (1, 1, 16), rf1)


def test_weight_normed_conv_is_read_as_a_conv():
    from torch.nn.utils.parametrizations import weight_norm
    net = _positive(nn.Sequential(weight_norm(nn.Conv1d(1, 2, 3, dilation=2)), nn.ReLU(),
                                  weight_norm(nn.Conv1d(2, 1, 3, dilation=4, padding=4))))
    rf = atrous.receptive_field(net, (1, 1, 40))
    assert rf.size == (13,) and not rf.notes
    check_interior(net, (1, 1, 40), rf)


def resnet50_1d(w=1):
    """ResNet-50's layout (He et al. 2016; stride on the 3x3 conv, as torchvision) in 1-D, tiny widths."""
    class Block(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1 = nn.Conv1d(cin, width, 1)
            self.conv2 = nn.Conv1d(width, width, 3, stride=stride, padding=1)
            self.conv3 = nn.Conv1d(width, 4 * width, 1)
            self.down = nn.Conv1d(cin, 4 * width, 1, stride=stride) if (stride, cin) != (1, 4 * width) else None

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            return torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))) + idt)

    layers = [nn.Conv1d(1, w, 7, 2, 3), nn.ReLU(), nn.MaxPool1d(3, 2, 1)]
    cin = w
    for blocks, stride in ((3, 1), (4, 2), (6, 2), (3, 2)):
        for b in range(blocks):
            layers.append(Block(cin, w, stride if b == 0 else 1))
            cin = 4 * w
    return nn.Sequential(*layers)


def test_resnet50_layout_field_427_jump_32_brute_force():
    net = _positive(resnet50_1d())
    rf = atrous.receptive_field(net, (1, 1, 512))
    assert rf.size == (427,) and rf.jump == (32,)
    # brute force through the same net with average pooling in place of max pooling
    avg = copy_with_avg_1d(net)
    check_interior(avg, (1, 1, 512), rf, max_outputs=2)


def copy_with_avg_1d(model):
    import copy
    model = copy.deepcopy(model)
    for i, m in enumerate(model):
        if isinstance(m, nn.MaxPool1d):
            model[i] = nn.AvgPool1d(m.kernel_size, m.stride, m.padding)
    return model


def test_output_is_the_models_first_returned_tensor():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(1, 1, 3)
            self.b = nn.Conv1d(1, 1, 5)

        def forward(self, x):
            y = self.a(x)
            return y, self.b(x)

    assert atrous.receptive_field(Two(), (1, 1, 16)).size == (3,)


_layer = st.tuples(st.sampled_from(["conv", "max", "avg"]), st.integers(1, 3), st.integers(1, 2),
                   st.integers(0, 2), st.integers(1, 3))


@given(st.lists(_layer, min_size=1, max_size=3), st.booleans())
@settings(max_examples=25)
def test_random_sequential_nets_brute_force(specs, two_d):
    mods, layers = [], []
    for kind, k, s, p, d in specs:
        p = min(p, k // 2)                       # torch pools need padding <= kernel / 2
        if kind == "conv":
            mods.append((nn.Conv2d if two_d else nn.Conv1d)(1, 1, k, stride=s, padding=p, dilation=d))
        elif kind == "max":
            mods.append((nn.MaxPool2d if two_d else nn.MaxPool1d)(k, stride=s, padding=p, dilation=d))
        else:
            d = 1
            mods.append((nn.AvgPool2d if two_d else nn.AvgPool1d)(k, stride=s, padding=p))
        layers.append(Layer(k, stride=s, padding=p, dilation=d))
    net = _positive(nn.Sequential(*mods))
    ref = atrous.receptive_field(layers)
    n = ref.size[0] + 2 * ref.padding[0] + 2 * ref.jump[0] + 2      # room for interior outputs
    nd = 2 if two_d else 1
    assume(n ** nd <= 1600)
    shape = (1, 1) + (n,) * nd
    rf = atrous.receptive_field(net, shape)
    if two_d:
        assert rf.size == ref.size * 2 and rf.jump == ref.jump * 2 and rf.start == ref.start * 2
    else:
        assert rf == ref
    check_interior(net, shape, rf, oracle=perturb_support, max_outputs=2)


@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3), st.integers(0, 2))
@settings(max_examples=30)
def test_random_transposed_conv_every_phase_brute_force(k, s, p, d, op):
    op = min(op, max(s, d) - 1)                  # torch: output_padding < max(stride, dilation)
    net = _positive(nn.Sequential(nn.ConvTranspose1d(1, 1, k, s, p, output_padding=op, dilation=d),
                                  nn.Conv1d(1, 1, 2)))
    n = 12
    rf = atrous.receptive_field(net, (1, 1, n))
    n_out = net(torch.zeros(1, 1, n, dtype=D)).shape[-1]
    seen = set()
    for o in range(n_out):
        sp = rf.span(o)[0]
        sup = grad_support(net, (1, 1, n), (o,))
        if sp is None:
            assert not sup.any()
        elif sp[0] >= 0 and sp[1] < n:
            assert bbox(sup)[0] == sp
            seen.add(o % rf.period[0])
    assert len(seen) + len(rf.empty_phases[0]) >= min(rf.period[0], 1)


def test_full_reductions_make_the_field_whole():
    class Red(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.max(y) + y.sum()

    rf = atrous.receptive_field(Red(), (1, 1, 9, 11))
    assert rf.whole_input == (True, True) and rf.size == (9, 11)
    assert rf.last_spatial.size == (3, 3)


def test_functional_ops_gated_chunk_cat_interpolate_brute_force():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, padding=1, dilation=(1, 2))

        def forward(self, x):
            y = F.max_pool2d(self.c(x), 2)
            y = F.avg_pool2d(y, 3, stride=1, padding=1)
            a, b = y.chunk(2, dim=1)
            y = torch.cat([torch.tanh(a) * torch.sigmoid(b), a], dim=1)   # WaveNet-style gate
            return F.interpolate(y, scale_factor=2, mode="nearest")

    net = _positive(Fn())
    shape = (1, 1, 20, 24)
    rf = atrous.receptive_field(net, shape)
    assert rf.period == (2, 2) and rf.jump == (1, 1)
    check_interior(net, shape, rf, oracle=perturb_support)


# ---------------------------------------------------------------- inputs: size, devices, several inputs

def _resnet_like():
    return nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1))


def test_huge_input_costs_nothing():
    import time
    import tracemalloc
    net = _resnet_like()
    tracemalloc.start()
    t = time.perf_counter()
    rf = atrous.receptive_field(net, (1, 3, 100_000, 100_000), at="4")
    took = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rf.size == (19, 19) and rf.jump == (4, 4)     # 7, + 2*2 (max pool at jump 2), + 2*4
    assert peak < 50 * 2 ** 20 and took < 30          # shapes only: a real input would be 120 GB


def test_input_too_small_names_the_layer_in_one_line():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 5))
    with pytest.raises(ValueError) as e:
        atrous.receptive_field(net, (1, 3, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "'2'" in msg and "Conv2d" in msg


def test_meta_device_model_and_example_tensors():
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))
    rf = atrous.receptive_field(net, (1, 3, 32, 32))
    assert rf.size == (7, 7) and rf.jump == (2, 2)
    rf2 = atrous.receptive_field(net, torch.empty(2, 3, 32, 32))          # an example tensor
    assert (rf2.size, rf2.jump, rf2.start) == (rf.size, rf.jump, rf.start)


def test_two_inputs_share_positions_and_different_sizes_are_refused():
    class Fuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2)

        def forward(self, rgb, depth):
            return self.a(rgb) + F.interpolate(self.b(depth), size=rgb.shape[-2:])

    rf = atrous.receptive_field(Fuse(), [(1, 3, 16, 16), (1, 1, 16, 16)])
    assert rf.size == (5, 5) and rf.start == (0, 0)
    with pytest.raises(ValueError, match="input 1 has spatial size"):
        atrous.receptive_field(Fuse(), [(1, 3, 16, 16), (1, 1, 8, 8)])


def test_model_is_not_modified_and_modes_restored():
    net = _resnet_like()
    net.train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    atrous.receptive_field(net, (2, 3, 32, 32))
    atrous.cost(net, (2, 3, 32, 32))
    assert net.training and not net[1].training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_flip_and_diff_are_exact():
    """flip reverses positions (the field is then given position by position), diff reads two
    neighbours; both checked by brute force at border and interior outputs."""
    import bruteforce as bf

    class FlipDiff(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 2, 3, padding=1)
            self.d = nn.Conv2d(2, 2, (1, 3), stride=(1, 2))

        def forward(self, x):
            return self.d(torch.diff(self.c(x).flip(3), dim=2))

    bf.assert_field_matches(FlipDiff(), (1, 2, 10, 12), [(0, 0), (4, 2), (8, 4), (3, 1)])
    rf = atrous.receptive_field(FlipDiff(), (1, 2, 10, 12))
    assert rf.span((0, 0)) == ((-1, 2), (8, 12)) and rf.jump[1] < 0      # the flipped axis runs backwards
