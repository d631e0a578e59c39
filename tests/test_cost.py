"""cost(): hand-counted MACs and parameters, and sum(p.numel()) as the oracle for totals."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import atrous


def test_conv_macs_hand_counted_and_dilation_free():
    # 2 x 8 outputs channels x 16*16 positions x 3 input channels x 9 taps
    for d in (1, 2, 3):
        c = atrous.cost(nn.Conv2d(3, 8, 3, padding=d, dilation=d), (2, 3, 16, 16))
        assert c.macs == 2 * 8 * 256 * 3 * 9
        assert c.params == 3 * 8 * 9 + 8
        assert c.rows[0].output_shape == (2, 8, 16, 16)
        assert c.activation_bytes == 2 * 8 * 256 * 4


def test_grouped_strided_3d_and_transposed():
    c = atrous.cost(nn.Conv3d(4, 6, (3, 1, 2), stride=2, groups=2, bias=False), (1, 4, 9, 9, 9))
    # out 4x5x4 positions, 6 out channels, 2 in channels per group, 6 taps
    assert c.rows[0].output_shape == (1, 6, 4, 5, 4)
    assert c.macs == 6 * (4 * 5 * 4) * 2 * 6 and c.params == 6 * 2 * 6
    t = atrous.cost(nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1), (3, 4, 10))
    assert t.macs == 3 * 4 * 10 * 2 * 4           # every input sample through every tap
    assert t.rows[0].output_shape == (3, 2, 20)


def test_sequential_rows_totals_and_shared_module():
    conv = nn.Conv1d(2, 2, 3, padding=1)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.bn = nn.BatchNorm1d(2)
            self.head = nn.Linear(2 * 12, 5)

        def forward(self, x):
            y = self.conv(self.bn(self.conv(x)))
            return self.head(y.flatten(1))

    m = Shared().double()
    c = atrous.cost(m, (4, 2, 12))
    assert [r.name for r in c.rows] == ["conv", "bn", "conv_1", "head"]     # one row per call
    assert c.params == sum(p.numel() for p in m.parameters())           # shared weights counted once
    assert c.macs == 2 * (4 * 2 * 12 * 2 * 3) + 4 * 24 * 5
    assert c.rows[0].activation_bytes == 4 * 2 * 12 * 8                  # float64
    assert c.activation_bytes == sum(r.activation_bytes for r in c.rows)
    assert m.training is True                                            # mode restored
    assert "total" in c.table() and c.to_dict()["macs"] == c.macs


def test_functional_calls_are_counted():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 1, 3))

        def forward(self, x):
            return F.conv1d(x, self.w)

    c = atrous.cost(Fn(), (1, 1, 8))
    assert c.params == 3 and c.macs == 6 * 3 and not c.notes          # 6 outputs x 3 taps
    assert [(r.name, r.type) for r in c.rows] == [("conv1d", "conv1d")]


def test_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        atrous.cost([atrous.Layer(3)], (1, 1, 8))
    with pytest.raises(ValueError, match="does not run"):
        atrous.cost(nn.Conv1d(2, 2, 3), (1, 3, 8))


def test_atrous_nn_and_weight_normed_convs_are_counted():
    an = pytest.importorskip("atrous.nn")
    from torch.nn.utils.parametrizations import weight_norm
    m = nn.Sequential(an.Conv1d(2, 4, 3, dilation=2, stride=2, padding="same"),
                      weight_norm(an.Conv1d(4, 4, 5, padding="causal")))
    c = atrous.cost(m, (3, 2, 20))
    # conv: N * C_out * out_positions * C_in/groups * kernel; 'same' at stride 2 keeps ceil(20/2) = 10
    assert c.rows[0].output_shape == (3, 4, 10) and c.rows[0].macs == 3 * 4 * 10 * 2 * 3
    assert c.rows[1].macs == 3 * 4 * 10 * 4 * 5
    assert c.params == sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- functional ops, attention, RNNs, modules

class _Attention(nn.Module):
    """nn.MultiheadAttention, a Linear, einsum, bmm and @: every one counted by torch's own FlopCounterMode."""

    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lin = nn.Linear(8, 8)

    def forward(self, x):                      # (N, C, L)
        t = x.transpose(1, 2)
        a, _ = self.mha(t, t, t)
        q = self.lin(a).view(2, 5, 2, 4).transpose(1, 2)
        e = torch.einsum("bhld,bhmd->bhlm", q, q)
        return e.sum() + torch.bmm(a, a.transpose(1, 2)).sum() + (a @ a.transpose(1, 2)).sum()


@pytest.mark.parametrize("make, shape", [
    (_Attention, (2, 8, 5)),
    (lambda: nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1), (2, 4, 6, 6)),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, dilation=2), nn.Conv2d(8, 8, 3, groups=4, stride=2)), (2, 3, 20, 20)),
])
def test_flops_equal_torch_flop_counter(make, shape):
    from torch.utils.flop_counter import FlopCounterMode
    m = make().eval()
    c = atrous.cost(m, shape)
    with FlopCounterMode(display=False) as fc:        # grad on: MultiheadAttention's fast path is not counted
        m(torch.randn(shape))
    assert c.flops == 2 * c.macs == fc.get_total_flops()


def test_sdpa_and_gru_hand_counted():
    class Sdpa(nn.Module):
        def forward(self, x):                  # (N, C, L) -> heads of 2 channels
            q = x.view(2, 2, 3, 7).transpose(2, 3)               # (N, heads, L=7, E=3)
            return F.scaled_dot_product_attention(q, q, q)
    c = atrous.cost(Sdpa(), (2, 6, 7))
    assert c.macs == 2 * 2 * 7 * 7 * (3 + 3)                     # QK^T and AV: L*S*(E + Ev) per head

    gru = nn.GRU(4, 6, num_layers=2, batch_first=True, bidirectional=True)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = gru

        def forward(self, x):
            return self.gru(x.transpose(1, 2))[0]

    c = atrous.cost(Head(), (3, 4, 7))
    # every weight matrix is applied once per time step and batch element
    assert c.macs == 3 * 7 * sum(p.numel() for n, p in gru.named_parameters() if n.startswith("weight"))
    assert [r.name for r in c.rows] == ["gru"]


def test_per_module_totals_depth_and_table():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x)) + F.conv2d(x, self.conv.weight, padding=1)   # functional: counted

    m = nn.Sequential(nn.Conv2d(3, 4, 1), Block(), Block())
    c = atrous.cost(m, (1, 3, 8, 8))
    conv = 1 * 4 * 64 * 4 * 9
    assert c.macs == 3 * 4 * 64 + 4 * conv
    mods = {x.name: x for x in c.by_module()}
    assert mods[""].macs == c.macs and mods[""].share == 1.0 and mods[""].depth == 0
    assert mods["1"].macs == mods["2"].macs == 2 * conv and mods["1"].depth == 1
    assert mods["1.conv"].macs == conv and mods["1.conv"].depth == 2
    assert abs(sum(mods[k].share for k in ("0", "1", "2")) - 1.0) < 1e-12
    assert [x.name for x in c.by_module(depth=1)] == ["", "0", "1", "2"]
    text = str(c)
    assert "conv2d" in text and "share" in text and "FLOPs = 2 x MACs" in text


def test_conv_subclass_counted_without_notes():
    an = pytest.importorskip("atrous.nn")
    c = atrous.cost(nn.Sequential(an.Conv2d(3, 4, 3, padding="same", dilation=2)), (1, 3, 10, 10))
    assert c.macs == 4 * 100 * 3 * 9 and not c.notes and c.rows[0].type == "Conv2d"


def test_resnet50_matches_published_figures():
    """torchvision's ResNet-50 at 224x224: 25,557,032 parameters and 4.09 GMACs (its model card; the
    same 4,089,184,256 MACs fvcore and ptflops count). Built on the meta device: no weights needed."""
    import rf_models as R
    with torch.device("meta"):
        m = R.ResNet(R.Bottleneck, [3, 4, 6, 3], widths=(64, 128, 256, 512), num_classes=1000)
    c = atrous.cost(m, (1, 3, 224, 224))
    assert c.params == 25_557_032 and c.macs == 4_089_184_256
    assert atrous.receptive_field(m, (1, 3, 224, 224), at="layer4").size == (427, 427)   # Araujo et al.
