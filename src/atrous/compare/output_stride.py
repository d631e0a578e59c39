"""The output-stride study: one residual backbone, converted by :func:`atrous.nn.convert_to_dilated`
to several output strides, trained from scratch for dense labelling (``fashion-seg``).

This is the experiment of Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation" (DeepLabv3, 2017), Sec. 4.1 / Table 1 "going deeper with atrous convolution": a
ResNet-50 with the same weights' shapes, its last blocks' strides replaced by dilation, scores
75.18 / 73.88 / 70.06 / 59.99 / 42.34 / 20.29 % mIoU on PASCAL VOC val at output stride
8 / 16 / 32 / 64 / 128 / 256, i.e. mIoU falls steadily as the output stride grows; and of Yu, Koltun &
Funkhouser, "Dilated Residual Networks" (CVPR 2017), which keeps the last stages of a ResNet at
higher resolution with dilation. Here at CPU scale:

* the backbone (:func:`backbone`): a stem conv (3x3, stride 2) and four stages of one basic residual
  block each (3x3-3x3 with a 1x1 projection shortcut), every stage stride 2, widths
  ``w, 2w, 4w, 8w``: output stride 32 (a 64x64 canvas becomes a 2x2 map);
* each variant is that backbone, built from the same seed (so the same initial weights), passed
  through ``convert_to_dilated(backbone, output_stride)``: same parameters, same receptive field
  (checked with :func:`atrous.receptive_field` before training; conversion must keep it), finer map;
* the same head on every variant: a 1x1 conv to class logits, bilinearly upsampled to the input;
* scored by test mIoU and by pixel accuracy inside thin bands around label boundaries
  (:func:`atrous.compare.train.boundary_band`), with MACs (:func:`atrous.cost`), parameters, time per
  epoch; trained to a plateau (:mod:`atrous.compare.train`).

>>> build_variant(8, width=2).output_stride
8
"""

from __future__ import annotations

import copy
import functools

from .._optional import require

__all__ = ["OUTPUT_STRIDES", "NATIVE_STRIDE", "PAPER_MIOU", "backbone", "convert", "build_variant",
           "check_output_strides", "variant_name", "verify_variants"]

OUTPUT_STRIDES = (32, 16, 8, 4)       # the default study
ALLOWED = (32, 16, 8, 4, 2, 1)
NATIVE_STRIDE = 32
# DeepLabv3 Table 1 (ResNet-50, atrous convolution, PASCAL VOC 2012 val): output stride -> mIoU %
PAPER_MIOU = {8: 75.18, 16: 73.88, 32: 70.06, 64: 59.99, 128: 42.34, 256: 20.29}


def variant_name(output_stride: int) -> str:
    """``'os8'`` for output stride 8 (the name in records, tables and figures)."""
    return f"os{int(output_stride)}"


def check_output_strides(value) -> tuple[int, ...]:
    """Validate output strides (a comma-separated string or a sequence of ints), largest first.

    >>> check_output_strides("8,32,16")
    (32, 16, 8)
    >>> check_output_strides("32,12")
    Traceback (most recent call last):
    ...
    ValueError: output strides must be among 32, 16, 8, 4, 2, 1; got 12
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"output strides must be comma-separated ints like 32,16,8, got {value!r}") from None
    else:
        vals = list(value)
    if not vals:
        raise ValueError("output strides must name at least one of " + ", ".join(map(str, ALLOWED)))
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or v not in ALLOWED:
            raise ValueError(f"output strides must be among {', '.join(map(str, ALLOWED))}; got {v!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"output strides must not repeat, got {','.join(map(str, vals))}")
    return tuple(sorted(vals, reverse=True))


@functools.cache
def _classes():
    torch = require("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        """ResNet basic block (He et al. 2016): 3x3 (stride s) - BN - ReLU - 3x3 - BN, plus the input
        (a 1x1 stride-s conv + BN when the shape changes), ReLU. ``(N, c_in, H, W) -> (N, c_out,
        H/s, W/s)``."""

        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                             if stride != 1 or c_in != c_out else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    class SegNet(nn.Module):
        """``backbone`` then the head: 1x1 conv to class logits, bilinear upsampling to the input.
        ``(N, C, H, W) -> (N, num_classes, H, W)``."""

        def __init__(self, backbone, width, num_classes, output_stride):
            super().__init__()
            self.backbone, self.output_stride = backbone, output_stride
            self.head = nn.Conv2d(width, num_classes, 1)

        def forward(self, x):
            y = self.head(self.backbone(x))                       # (N, classes, H/os, W/os)
            if y.shape[2:] != x.shape[2:]:
                y = torch.nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear",
                                                    align_corners=False)   # (N, classes, H, W)
            return y

    return BasicBlock, SegNet


def backbone(in_channels: int = 1, width: int = 16):
    """The 4-stage residual backbone at its native output stride 32: stem ``conv3x3/2 - BN - ReLU``
    (``width``), then stages of one :class:`BasicBlock` each with widths ``w, 2w, 4w, 8w``, each
    stride 2. ``(N, in_channels, H, W) -> (N, 8*width, H/32, W/32)``.

    >>> import torch
    >>> backbone(1, 2)(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 16, 2, 2])
    """
    nn = require("torch").nn
    Block, _ = _classes()
    w = width
    return nn.Sequential(nn.Conv2d(in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         Block(w, w, 2), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2),
                         Block(4 * w, 8 * w, 2))


def convert(net, output_stride: int, input_size: int = 64):
    """``net`` (a backbone of native output stride 32) at ``output_stride``, by
    :func:`atrous.nn.convert_to_dilated` (a copy; ``net`` is untouched; 32 is a plain copy).
    :func:`verify_variants` checks the result numerically before any training."""
    from ..nn import convert_to_dilated
    if output_stride == NATIVE_STRIDE:
        return copy.deepcopy(net)
    return convert_to_dilated(net, output_stride, input_size=input_size)


def build_variant(output_stride: int, in_channels: int = 1, num_classes: int = 11, width: int = 16,
                  input_size: int = 64):
    """The network of one variant: :func:`backbone` (built from the current torch RNG state, so the
    same seed gives every variant the same initial weights) converted to ``output_stride``, plus
    the head. ``(N, in_channels, H, W) -> (N, num_classes, H, W)``."""
    _, SegNet = _classes()
    base = backbone(in_channels, width)
    head_seed = require("torch").randint(0, 2 ** 31 - 1, ()).item()
    net = convert(base, output_stride, input_size)
    require("torch").manual_seed(head_seed)      # the head's init too does not depend on the stride
    return SegNet(net, 8 * width, num_classes, output_stride)


def verify_variants(output_strides, in_channels: int = 1, width: int = 2, input_size: int = 64,
                    seed: int = 0) -> dict:
    """Check, before any training, that every variant computes what conversion promises: in float64
    and eval mode, ``variant(x)[..., ::f, ::f] == backbone(x)`` with ``f = 32 / output_stride``, its
    output stride (:func:`atrous.nn.output_stride_of`) is the requested one, and its receptive field
    (:func:`atrous.receptive_field`) equals the backbone's. Returns ``{output_stride: field}``;
    raises ``RuntimeError`` naming the variant otherwise (a conversion bug, never a user error)."""
    torch = require("torch")
    import atrous
    from ..nn import output_stride_of
    torch.manual_seed(seed)
    base = backbone(in_channels, width).double().eval()
    x = torch.randn(2, in_channels, input_size, input_size, dtype=torch.float64)
    shape = (1, in_channels, input_size, input_size)
    field0 = tuple(int(v) for v in atrous.receptive_field(base, shape).size)
    with torch.no_grad():
        ref = base(x)
        out = {}
        for s in output_strides:
            net = convert(base, s, input_size).eval()
            f = NATIVE_STRIDE // s
            got = net(x)[..., ::f, ::f]
            if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-9, atol=1e-12):
                raise RuntimeError(f"output stride {s}: the converted backbone subsampled by {f} differs "
                                   "from the original (convert_to_dilated)")
            got_os = tuple(output_stride_of(net, input_size))
            if got_os != (s, s):
                raise RuntimeError(f"output stride {s}: the converted backbone has output stride {got_os}")
            field = tuple(int(v) for v in atrous.receptive_field(net, shape).size)
            if field != field0:
                raise RuntimeError(f"output stride {s}: receptive field {field} differs from the "
                                   f"backbone's {field0} (conversion must keep it)")
            out[s] = field
    return out
