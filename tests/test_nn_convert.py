"""convert_to_dilated: the converted net's feature map subsampled by the removed stride equals the
original's (float64, exact up to summation order), on ResNet-18/50-shaped nets, VGG-style nets and
VGG-16's features in torchvision's layout (DeepLab-v1: pool4/pool5 to stride 1); functional strides
are counted or refused by name; output_stride_of from the layers' strides; atrous.nn.AvgPool2d
against nn.AvgPool2d and a brute-force loop."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import atrous.nn as ann


class Basic(nn.Module):               # ResNet-18/34 block
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):          # ResNet-50 block (stride on the 3x3, torchvision v1.5)
    def __init__(self, cin, mid, stride):
        super().__init__()
        cout = 4 * mid
        self.conv1, self.conv2 = nn.Conv2d(cin, mid, 1, bias=False), nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn = nn.ModuleList([nn.BatchNorm2d(c) for c in (mid, mid, cout)])
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = torch.relu(self.bn[0](self.conv1(x)))
        h = torch.relu(self.bn[1](self.conv2(h)))
        h = self.bn[2](self.conv3(h))
        return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


def resnet(block, layers, widths, expansion):
    stem = [nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1)]
    blocks, cin = [], widths[0]
    for i, (n, w) in enumerate(zip(layers, widths)):
        for j in range(n):
            blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w * expansion
    return nn.Sequential(*stem, *blocks)


def resnet18():
    return resnet(Basic, [2, 2, 2, 2], [4, 6, 8, 8], 1)


def resnet50():
    return resnet(Bottleneck, [3, 4, 6, 3], [2, 3, 4, 4], 4)


def vgg():
    layers, cin = [], 3
    for w in (4, 6, 8, 8, 8):                               # five stages, stride-2 conv at each end
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU()]
        cin = w
    return nn.Sequential(*layers)


def randomize_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("make,os_,size", [(resnet18, 16, 64), (resnet18, 8, 61), (resnet50, 8, 64),
                                           (resnet50, 16, 45), (vgg, 16, 61), (vgg, 8, 64)])
def test_subsampled_feature_map_equals_original(make, os_, size):
    torch.manual_seed(1)
    model = randomize_bn(make()).double()
    before = copy.deepcopy(model.state_dict())
    geom = [(m.stride, m.dilation, m.padding) for m in model.modules() if isinstance(m, nn.Conv2d)]
    conv = ann.convert_to_dilated(model, output_stride=os_, input_size=64).eval()
    assert ann.output_stride_of(model, 64) == (32, 32)
    assert ann.output_stride_of(conv, 64) == (os_, os_)
    f = 32 // os_
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    want, got = model(x), conv(x)
    torch.testing.assert_close(got[:, :, ::f, ::f], want, rtol=1e-10, atol=1e-10)
    # the original is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert geom == [(m.stride, m.dilation, m.padding) for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_dilation_and_padding_multiplied_resnet18_os8():
    conv = ann.convert_to_dilated(resnet18(), output_stride=8)
    stage3, stage4 = conv[8], conv[10]         # first block of layer3 and of layer4 (after the stem)
    assert stage3.conv1.stride == (1, 1) and stage3.downsample[0].stride == (1, 1)
    assert stage3.conv1.dilation == (1, 1) and stage3.conv2.dilation == (2, 2) and stage3.conv2.padding == (2, 2)
    assert stage4.conv1.dilation == (2, 2) and stage4.conv2.dilation == (4, 4) and stage4.conv2.padding == (4, 4)


def test_atrous_conv_layers_with_pair_padding():
    torch.manual_seed(2)
    net = nn.Sequential(ann.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                        ann.Conv2d(4, 4, 3, stride=2, padding=((0, 2), (1, 1))),
                        ann.Conv2d(4, 4, 2, padding="same"), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 2, padding="same"),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1)).double()
    conv = ann.convert_to_dilated(net, output_stride=8)
    x = torch.randn(1, 3, 70, 66, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[:, :, ::4, ::4], net(x), rtol=1e-10, atol=1e-10)




def vgg16_features():
    """torchvision.models.vgg16().features, layer for layer (cfg "D": 3x3 convs with padding 1 + ReLU,
    2x2 max pools of stride 2; indices 0..30, pool4 = [23], pool5 = [30])."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


@pytest.mark.parametrize("os_", [8, 16])
def test_deeplab_v1_vgg16_features(os_):
    """DeepLab-v1 on VGG-16: pool4 (and pool5) to stride 1, the convs after them dilated; the
    subsampled output equals the original in float64."""
    torch.manual_seed(3)
    model = vgg16_features().double().eval()
    assert ann.output_stride_of(model, 64) == (32, 32)
    conv = ann.convert_to_dilated(model, output_stride=os_, input_size=64)
    assert conv[30].stride == (1, 1) and model[30].stride == 2                  # pool5
    assert conv[23].stride == ((1, 1) if os_ == 8 else 2)                       # pool4
    assert conv[24].dilation == ((2, 2) if os_ == 8 else (1, 1)) and conv[24].padding == conv[24].dilation
    assert conv[30].dilation == ((2, 2) if os_ == 8 else (1, 1))                 # pool5 dilated at OS 8
    assert ann.output_stride_of(conv, 64) == (os_, os_)
    f = 32 // os_
    for size in [(64, 64), (53, 77)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        want, got = model(x), conv(x)
        torch.testing.assert_close(got[..., ::f, ::f], want, rtol=1e-12, atol=1e-12)


def test_every_submodule_keeps_its_train_eval_flag():
    """A train-mode wrapper around an eval'd backbone: the copy has the same flag on every module,
    and the subsampling identity holds in that state (batch norm uses its running statistics)."""
    torch.manual_seed(4)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = randomize_bn(resnet18()).double()
            self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)).double()

        def forward(self, x):
            return self.backbone(x)

    model = Wrapper().train()
    model.backbone.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    conv = ann.convert_to_dilated(model, output_stride=8, input_size=64)
    assert {n: m.training for n, m in conv.named_modules()} == flags
    assert {n: m.training for n, m in model.named_modules()} == flags
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-10, atol=1e-10)


def test_max_pool_stride_removed_and_dilated_resnet_stem():
    """ResNet's 3x3/2 max pool (padding 1, -inf border) at output stride 2, then everything dilated."""
    torch.manual_seed(5)
    model = randomize_bn(resnet18()).double()
    conv = ann.convert_to_dilated(model, output_stride=2, input_size=64)
    assert conv[3].stride == (1, 1) and conv[3].dilation == (1, 1) and conv[4].conv1.dilation == (2, 2)
    x = torch.randn(1, 3, 37, 40, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::16, ::16], model(x), rtol=1e-10, atol=1e-10)


def test_max_pool_padding_beyond_pytorchs_limit_gets_explicit_minus_inf_padding():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Conv2d(3, 3, 3, stride=2, padding=1),
                          nn.MaxPool2d(2, 2, padding=1), nn.Conv2d(3, 3, 3, padding=1)).double()
    conv = ann.convert_to_dilated(model, output_stride=2, input_size=32)
    assert isinstance(conv[2], nn.Sequential)                     # pad 2 > half of the dilated 2x2 window
    for size in [(16, 16), (19, 22)]:
        x = torch.randn(1, 2, *size, dtype=torch.float64) - 3     # negative: a zero border would show
        torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count_include_pad,divisor,pad", [(True, None, 0), (True, None, 1), (False, None, 1),
                                                           (True, 3, 1)])
def test_average_pool_becomes_dilated_average_pool(count_include_pad, divisor, pad):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(3, 2, pad, False, count_include_pad, divisor),
                          nn.Conv2d(3, 3, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(3, 3, 3, padding=1),
                          nn.AvgPool2d(3, 2, pad, False, count_include_pad, divisor), nn.Conv2d(3, 4, 3, padding=1)
                          ).double()
    conv = ann.convert_to_dilated(model, output_stride=2, input_size=40)
    assert isinstance(conv[5], ann.AvgPool2d) and conv[5].dilation == (2, 2) and conv[5].stride == (1, 1)
    assert type(conv[1]) is nn.AvgPool2d                         # before the converted stage: untouched
    for size in [(40, 40), (45, 38)]:
        x = torch.randn(2, 2, *size, dtype=torch.float64)
        torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-12, atol=1e-12)


def brute_avg_pool(x, k, s, p, d, count_include_pad, divisor):
    """Loops over output positions and taps (float64)."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    out = torch.zeros(n, c, ho, wo, dtype=x.dtype)
    for i, j in itertools.product(range(ho), range(wo)):
        total, inside = 0, 0
        for a, b in itertools.product(range(k), range(k)):
            u, v = i * s + a * d - p, j * s + b * d - p
            if 0 <= u < h and 0 <= v < w:
                total = total + x[:, :, u, v]
                inside += 1
        out[:, :, i, j] = total / (divisor or (k * k if count_include_pad else inside))
    return out


@pytest.mark.parametrize("k,s,p,d,cip,div", [(3, 1, 1, 2, True, None), (3, 2, 1, 3, False, None),
                                             (2, 1, 0, 2, True, None), (3, 1, 2, 2, True, 4),
                                             (3, 2, 1, 1, False, None)])
def test_avg_pool2d_values(k, s, p, d, cip, div):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    m = ann.AvgPool2d(k, s, p, count_include_pad=cip, divisor_override=div, dilation=d)
    assert isinstance(m, nn.AvgPool2d)
    torch.testing.assert_close(m(x), brute_avg_pool(x, k, s, p, d, cip, div), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x[0]), m(x)[0])                                      # (C, H, W) input
    if d == 1:
        torch.testing.assert_close(m(x), nn.AvgPool2d(k, s, p, count_include_pad=cip, divisor_override=div)(x))


class FunctionalPool(nn.Module):
    """A stem that pools with F.max_pool2d in forward, then strided convs."""

    def __init__(self, fn=lambda x: F.max_pool2d(x, 2)):
        super().__init__()
        self.fn = fn
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Sequential(*[nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(3)],
                                  nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        return self.body(self.fn(self.stem(x)))


def test_functional_pool_before_the_converted_stage_is_counted():
    """F.max_pool2d(x, 2) at stride 2 counts: output stride 32, and converting to 8 dilates exactly."""
    torch.manual_seed(9)
    model = FunctionalPool().double()
    assert ann.output_stride_of(model, 64) == (32, 32)
    conv = ann.convert_to_dilated(model, output_stride=8, input_size=64)
    assert conv.body[1].stride == (1, 1) and conv.body[3].dilation == (4, 4)
    x = torch.randn(1, 3, 64, 60, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn,name", [
    (lambda x: F.max_pool2d(x, 2), "F.max_pool2d"),
    (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), "F.avg_pool2d"),
    (lambda x: F.conv2d(x, torch.ones(4, 1, 1, 1, dtype=x.dtype), stride=2, groups=4), "torch.conv2d"),
    (lambda x: F.interpolate(x, scale_factor=0.5), "F.interpolate"),
    (lambda x: x * x.mean((2, 3), keepdim=True), "Tensor.mean"),          # squeeze-excitation style
    (lambda x: F.conv2d(x, torch.ones(4, 1, 3, 3, dtype=x.dtype), padding=1, groups=4), "torch.conv2d"),
    (lambda x: x[:, :, 1:, 1:], "Tensor.__getitem__"),                     # a shift by one position
    (lambda x: F.pad(x, (1, 1, 1, 1))[..., 1:-1, 1:-1], "F.pad"),
    (lambda x: x.roll(1, 2), "Tensor.roll"),
    (lambda x: x * F.adaptive_avg_pool2d(x, 1), "F.adaptive_avg_pool2d"),
    (lambda x: F.max_pool2d(x, 3, 1, 1), "F.max_pool2d"),                   # stride 1: same grid, mixed
])
def test_functional_calls_in_the_converted_stage_are_refused_by_name(fn, name):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(*[nn.Conv2d(4 if i else 3, 4, 3, stride=2, padding=1) for i in range(4)])
            self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return self.b(fn(self.a(x)))

    with pytest.raises(ValueError, match=f"functional call {name} in the model's forward .Net. at input stride 16"):
        ann.convert_to_dilated(Net(), output_stride=8, input_size=64)


class Mid(nn.Module):
    """Four stride-2 convs, ``mid`` (a module or a function of the features), one stride-2 conv: at
    output stride 8, ``mid`` runs on a grid 2x finer than before."""

    def __init__(self, mid):
        super().__init__()
        self.a = nn.Sequential(*[nn.Conv2d(4 if i else 3, 4, 3, stride=2, padding=1) for i in range(4)])
        self.mid = mid if isinstance(mid, nn.Module) else None
        self.fn = None if isinstance(mid, nn.Module) else mid
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        h = self.a(x)
        return self.b(self.mid(h) if self.mid is not None else self.fn(h))


@pytest.mark.parametrize("mid,match", [
    (nn.Upsample(scale_factor=2), r"layer 'mid' \(Upsample\) at input stride 16 sees a finer grid after conversion "
     r"\(it takes the grid to stride 8\); only nn.Conv2d, nn.MaxPool2d and nn.AvgPool2d layers are converted"),
    (nn.GroupNorm(2, 4), r"layer 'mid' \(GroupNorm\) at input stride 16 mixes positions of the grid the conversion "
     "makes 2x finer"),
    (nn.BatchNorm2d(4, track_running_stats=False), r"layer 'mid' \(BatchNorm2d\) at input stride 16 mixes"),
    (nn.PixelUnshuffle(2), r"layer 'mid' \(PixelUnshuffle\) at input stride 16 sees a finer grid"),
])
def test_layers_that_move_positions_in_the_converted_stage_are_refused_by_name(mid, match):
    """Modules the conversion does not rewrite are refused by name where their grid becomes finer
    (a statistic over positions, a resampling); the same modules before that stage are fine."""
    model = Mid(mid)
    if isinstance(mid, nn.PixelUnshuffle):
        model.b = nn.Conv2d(16, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=match) as e:
        ann.convert_to_dilated(model, output_stride=8, input_size=64)
    assert "\n" not in str(e.value)
    same = ann.output_stride_of(model, 64)[0]
    ann.convert_to_dilated(model, output_stride=same, input_size=64)     # nothing to change: accepted


@pytest.mark.parametrize("fn", [
    lambda x: F.conv2d(x, torch.linspace(-1, 1, 16, dtype=x.dtype).view(4, 4, 1, 1)),        # 1x1, stride 1
    lambda x: F.layer_norm(x.permute(0, 2, 3, 1), (4,)).permute(0, 3, 1, 2),                  # channels-last
    lambda x: x * torch.sigmoid(x.mean(1, keepdim=True)),                                      # over channels
    lambda x: torch.cat([x[:, :2], x[:, 2:].flatten(2).view_as(x[:, 2:])], 1) + 0.5,          # relabels
    lambda x: x + torch.linspace(0, 1, 4, dtype=x.dtype).view(1, 4, 1, 1),                    # per-channel bias
    lambda x: torch.zeros_like(x) + x * torch.ones(x.shape, dtype=x.dtype) * torch.full_like(x, 2.0),  # uniform
    lambda x: x.new_zeros(x.shape).add_(1) * x,
    lambda x, m=torch.linspace(0, 1, 4, dtype=torch.float64).view(1, 4, 1, 1): x - m,   # a plain CPU tensor:
])                                                                       # fails on meta, recorded on zeros
def test_calls_that_keep_positions_convert_exactly(fn):
    """Calls whose output field equals their input's (pointwise, relabels, mixing channels only)
    commute with the finer grid: converted, and the subsampled output equals the original."""
    torch.manual_seed(12)
    model = Mid(fn).double()
    conv = ann.convert_to_dilated(model, output_stride=8, input_size=64)
    x = torch.randn(2, 3, 64, 57, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn,shape", [
    (lambda x: x + torch.linspace(0, 1, x.shape[-1], dtype=x.dtype), r"\(4,\)"),        # built from the size
    (lambda x, pe=torch.randn(1, 4, 4, 4): x + pe, r"\(1, 4, 4, 4\)"),                  # a positional embedding
    (lambda x: torch.cat([x[:, :3], torch.linspace(0, 1, x.shape[-1], dtype=x.dtype).expand(
        x.shape[0], 1, x.shape[2], -1)], 1), r"\(1, 1, 4, 4\)"),                          # CoordConv
    (lambda x: torch.stack([x, torch.linspace(0, 1, 4, dtype=x.dtype).expand_as(x)], 2).sum(2), r"\(1, 4, 4, 4\)"),
])
def test_constants_laid_out_on_positions_are_refused(fn, shape):
    with pytest.raises(ValueError, match=f"at input stride 16 joins a tensor of shape {shape} that does not depend "
                                         "on the input but is laid out on its positions"):
        ann.convert_to_dilated(Mid(fn), output_stride=8, input_size=64)


def test_functional_stride_past_the_output_stride_is_refused_by_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.s, self.c = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 1)
            self.d = nn.Conv2d(4, 4, 3, 2, 1)

        def forward(self, x):
            return self.d(F.max_pool2d(self.c(self.s(x)), 2))

    assert ann.output_stride_of(Net(), 64) == (8, 8)
    with pytest.raises(ValueError, match=r"functional call F.max_pool2d in the model's forward \(Net\) at input "
                                         r"stride 2 would need its stride removed \(it takes the grid to stride 4\)"):
        ann.convert_to_dilated(Net(), output_stride=2, input_size=64)


def test_shift_before_the_converted_stage_converts_exactly():
    """``x[:, :, 1:, 1:]`` at stride 2 shifts the grid, it does not change it: output stride 16, and
    converting to 8 is exact (the shift stays before the stage the conversion changes)."""
    torch.manual_seed(13)
    model = FunctionalPool(lambda x: x[:, :, 1:, 1:]).double()
    assert ann.output_stride_of(model, 64) == (16, 16)
    conv = ann.convert_to_dilated(model, output_stride=8, input_size=64)
    x = torch.randn(1, 3, 64, 61, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::2, ::2], model(x), rtol=1e-10, atol=1e-10)


def test_pixel_unshuffle_counts_as_a_stride():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.PixelUnshuffle(2), nn.Conv2d(16, 4, 3, 2, 1),
                          nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 1)).double()
    assert ann.output_stride_of(model, 64) == (16, 16)
    conv = ann.convert_to_dilated(model, output_stride=4, input_size=64)
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::4, ::4], model(x), rtol=1e-10, atol=1e-10)


def test_output_stride_of_reads_the_layers_not_the_sizes():
    """A valid-padded net: 256 -> 13 samples, but the strides multiply to 16 (not round(256 / 13))."""
    net = nn.Sequential(*[nn.Conv2d(3, 3, 5, stride=2) for _ in range(4)])
    assert net(torch.zeros(1, 3, 256, 256)).shape[-1] == 13
    assert ann.output_stride_of(net) == (16, 16)
    assert ann.output_stride_of(nn.Sequential(nn.Conv2d(3, 3, 3, stride=(2, 1)), nn.MaxPool2d((1, 3)))) == (2, 3)


def test_valid_padded_net_converts_exactly():
    torch.manual_seed(10)
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2) for _ in range(4)], nn.Conv2d(3, 3, 3)).double()
    conv = ann.convert_to_dilated(net, output_stride=4, input_size=128)
    x = torch.randn(1, 3, 100, 90, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::4, ::4], net(x), rtol=1e-12, atol=1e-12)


def test_atrous_causal_conv_keeps_its_spec_and_converts():
    torch.manual_seed(11)
    net = nn.Sequential(*[ann.Conv2d(3, 3, 3, stride=2, padding=1) for _ in range(3)],
                        ann.Conv2d(3, 3, 3, padding="causal"), ann.Conv2d(3, 3, 2, padding="same")).double()
    conv = ann.convert_to_dilated(net, output_stride=4, input_size=64)
    assert conv[3].padding == "causal" and conv[3].dilation == (2, 2)
    assert conv[4].padding == ((0, 2), (0, 2))                       # even-kernel "same" at d=2: explicit pairs
    x = torch.randn(1, 3, 33, 30, dtype=torch.float64)
    torch.testing.assert_close(conv(x)[..., ::2, ::2], net(x), rtol=1e-12, atol=1e-12)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c(self.c(self.c(self.c(x))))


BAD = [
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=0), ValueError, "output_stride must be >= 1, got 0"),
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=3), ValueError,
     "output_stride 3 is not reachable: the strides along the model are 1, 2, 4, 8, 16, 32"),
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=16.0), TypeError,
     "output_stride must be an int, got 16.0"),
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=64), ValueError,
     r"output_stride 64 is not reachable: the model's output stride is 32"),
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=True), TypeError, "output_stride must be an int"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.Conv2d(3, 3, 3, stride=4),
                                                  nn.Conv2d(3, 3, 3, stride=4)), 16),
     ValueError, "not reachable: the strides along the model are 1, 2, 8, 32"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1),
                                                  nn.Conv2d(3, 3, 3, stride=2, padding=1),
                                                  nn.Conv2d(3, 3, 3, stride=4)), 4, input_size=64),
     ValueError, None),    # reachable: 4 is the input stride of the last conv
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.ReLU()), 8), ValueError, "no Conv2d"),
    (lambda: ann.convert_to_dilated(
        nn.Sequential(*[ann.Conv2d(3, 3, 3, stride=2, padding="same") for _ in range(5)]), 16),
     ValueError, "size-dependent padding"),
    (lambda: ann.convert_to_dilated(Twice(), 8), ValueError, "called more than once"),
    (lambda: ann.convert_to_dilated(nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2, padding=1) for _ in range(3)],
                                                  nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")), 4),
     ValueError, "pads with 'reflect'"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1),
                                                  nn.MaxPool2d(2, ceil_mode=True)), 2), ValueError, "ceil_mode=True"),
    (lambda: ann.convert_to_dilated(FunctionalPool(lambda x: F.interpolate(x, size=(5, 7))), 8),
     ValueError, "output stride is not defined: F.interpolate in the model's forward .FunctionalPool. changes "
     "the grid to stride 256/5x256/7"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.AdaptiveAvgPool2d(1)), 1),
     ValueError, r"output stride is not defined: layer '1' \(AdaptiveAvgPool2d\) removes the grid"),
    (lambda: ann.convert_to_dilated(FunctionalPool(lambda x: torch.diff(x, dim=1, prepend=x[:, :1])), 8),
     ValueError, "convert_to_dilated: cannot follow node 'diff' .*no rule for function 'diff'"),
    (lambda: ann.convert_to_dilated(resnet18(), 8, input_size=0), ValueError, "input_size must be"),
    (lambda: ann.convert_to_dilated(nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2) for _ in range(4)]), 8,
                                    input_size=8), ValueError,
     r"the model failed on a zero input of shape \(1, 3, 8, 8\) \(RuntimeError: .*pass a larger input_size"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_input(make, exc, match):
    if match is None:
        make()
        return
    with pytest.raises(exc, match=match) as e:
        make()
    assert "\n" not in str(e.value)                      # one-line errors
