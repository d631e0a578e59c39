"""Speed of the analysis: receptive field of a ResNet-50-sized model, coverage of a 2-D stack, and the
field of zoo-like models (tests/rf_models.py at full size: ResNet-50 layout, ConvNeXt-T-ish, Swin-T-ish,
ViT-Ti-ish at 224x224) side by side with one forward pass of the same model.

Run: python benchmarks/analysis.py
Prints seconds per call (median of a few runs) and, as the anchor measured in the same run, the
time of one forward pass of the same model on the same input (what any shape-propagating tool pays),
with the load average and the torch thread count.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn as nn

import atrous


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def resnet50(num_classes=1000):
    """ResNet-50 (He et al. 2016) laid out like torchvision's (stride on the 3x3 conv)."""
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    names = ["conv1", "bn1", "relu", "maxpool"]
    cin = 64
    stages = []
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        bl = []
        for b in range(blocks):
            bl.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
        stages.append(nn.Sequential(*bl))
    m = nn.Sequential()
    for n, layer in zip(names, layers):
        m.add_module(n, layer)
    for i, s in enumerate(stages, 1):
        m.add_module(f"layer{i}", s)
    m.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flatten", nn.Flatten())
    m.add_module("fc", nn.Linear(2048, num_classes))
    return m


def timeit(fn, repeat=5):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def zoo_like():
    """Field time / forward time for full-size versions of the test models (tests/rf_models.py)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import rf_models as R

    models = [
        ("ResNet-50 layout (torchvision)", lambda: R.ResNet(R.Bottleneck, [3, 4, 6, 3], widths=(64, 128, 256, 512),
                                                            num_classes=1000)),
        ("ConvNeXt-ish (dims 96/192)", lambda: R.ConvNeXt(dims=(96, 192), num_classes=1000)),
        ("Swin-ish (dim 96, window 7, W+SW)", lambda: R.Swin(img=224, dim=96, window_size=7, shifted=True)),
        ("ViT-Ti-ish (patch 16, dim 192, 12 blocks)", lambda: R.ViT("qkv", img=224, patch=16, dim=192, depth=12,
                                                                   num_classes=1000)),
    ]
    shape = (1, 3, 224, 224)
    print(f"\nzoo-like models at {shape}: load average {os.getloadavg()[0]:.2f}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':44} {'forward':>10} {'field':>10} {'field/forward':>14}")
    for name, make in models:
        torch.manual_seed(0)
        net = make().eval()
        with torch.no_grad():
            x = torch.randn(shape)
            net(x)
            t_fwd = timeit(lambda: net(x), repeat=3)
        try:
            atrous.receptive_field(net, shape)
        except Exception as e:  # noqa: BLE001 -- report refusals of the current analysis, keep timing the rest
            print(f"{name:44} {t_fwd * 1e3:8.1f}ms {'-':>10} {'-':>14}  ({type(e).__name__}: {str(e)[:90]})")
            continue
        t_rf = timeit(lambda: atrous.receptive_field(net, shape), repeat=3)
        print(f"{name:44} {t_fwd * 1e3:8.1f}ms {t_rf * 1e3:8.1f}ms {t_rf / t_fwd:13.2f}x")


def main():
    torch.manual_seed(0)
    net = resnet50().eval()
    shape = (1, 3, 224, 224)
    t0 = time.perf_counter()
    rf = atrous.receptive_field(net, shape, at="layer4")
    t_first = time.perf_counter() - t0
    print(f"first call in this process (includes torch's one-off meta-kernel set-up): {t_first * 1e3:.0f} ms")
    print(f"ResNet-50 layer4: size {rf.size}, jump {rf.jump}, start {rf.start}")
    with torch.no_grad():
        t_fwd = timeit(lambda: net(torch.zeros(shape)))
    t_rf = timeit(lambda: atrous.receptive_field(net, shape))
    t_rfs = timeit(lambda: atrous.receptive_fields(net, shape))
    t_cost = timeit(lambda: atrous.cost(net, shape))
    print(f"forward pass (anchor)            {t_fwd * 1e3:8.1f} ms")
    print(f"receptive_field(resnet50)        {t_rf * 1e3:8.1f} ms  ({t_rf / t_fwd:.2f}x forward)")
    print(f"receptive_fields(resnet50)       {t_rfs * 1e3:8.1f} ms  ({t_rfs / t_fwd:.2f}x forward)")
    print(f"cost(resnet50)                   {t_cost * 1e3:8.1f} ms  ({t_cost / t_fwd:.2f}x forward)")

    dil = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1, 2]         # extent 1 + 2*sum = 1029 per axis
    t_cov = timeit(lambda: atrous.coverage([(d, d) for d in dil], kernel=3))
    cov = atrous.coverage([(d, d) for d in dil], kernel=3)
    t_nd = timeit(lambda: cov.path_counts_nd)
    print(f"coverage 2-D stack, extent {cov.extent}: {t_cov * 1e3:8.1f} ms per-axis, "
          f"{t_nd * 1e3:8.1f} ms for the full {cov.extent[0]}x{cov.extent[1]} map")
    t_design = timeit(lambda: atrous.design_dilations(65, kernel=3), repeat=3)
    print(f"design_dilations(65, kernel=3)   {t_design * 1e3:8.1f} ms")
    zoo_like()


if __name__ == "__main__":
    main()
