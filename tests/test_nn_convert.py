"""convert_to_dilated: the converted net's feature map subsampled by the removed stride equals the
original's (float64, exact up to summation order), on ResNet-18/50-shaped and VGG-style nets."""

import copy

import pytest
import torch
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


BAD = [
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=4), "output_stride must be one of"),
    (lambda: ann.convert_to_dilated(resnet18(), output_stride=12), "output_stride must be one of"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=4, padding=1)), 8),
     "not reachable"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.Conv2d(3, 3, 3, stride=4),
                                                  nn.Conv2d(3, 3, 3, stride=4)), 16),
     "takes the stride from 8 to 32"),
    (lambda: ann.convert_to_dilated(nn.Sequential(*vgg()[:8], nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)), 16),
     "pooling layer"),
    (lambda: ann.convert_to_dilated(nn.Sequential(nn.ReLU()), 8), "no Conv2d"),
    (lambda: ann.convert_to_dilated(
        nn.Sequential(*[ann.Conv2d(3, 3, 3, stride=2, padding="same") for _ in range(5)]), 16),
     "size-dependent padding"),
    (lambda: ann.convert_to_dilated(nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2, padding=1)] * 5), 16),
     "called more than once"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
