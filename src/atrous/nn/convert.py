"""Turn the last strided stages of a backbone into dilated ones (Chen et al. 2017, DeepLabV3 Sec. 3.2
"Going deeper with atrous convolution"; Yu, Koltun & Funkhouser 2017, "Dilated Residual Networks").

A layer whose input has cumulative stride ``r`` (per axis) and stride ``s`` reaches output stride
``r * s``. To cap the output stride at ``OS``: a layer with ``r * s > OS`` gets stride 1, and every
layer's dilation and padding are multiplied by ``m = r / min(r, OS)`` -- its input grid is ``m`` times
finer than before. Then the converted network's feature map, subsampled by ``old_OS / OS``, is
exactly the original's (each output reads the same input pixels with the same weights; zero padding
falls on the same positions). The cumulative strides are read from one forward pass on a zero input.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from .. import geometry
from .conv import Conv2d, _ConvNd

__all__ = ["convert_to_dilated", "output_stride_of"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)


def _trace_strides(model: nn.Module, input_size: int):
    """Run ``model`` on zeros ``(1, C, input_size, input_size)``; return the convs/pools in execution
    order with the cumulative stride of their input per axis, and the output's stride."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, _ConvNd))), None)
    if first is None:
        raise ValueError("convert_to_dilated: the model has no Conv2d layer")
    names = {m: n for n, m in model.named_modules()}
    seen, order, reused = set(), [], []

    def hook(m, args):
        if m in seen:
            reused.append(names[m])
            return
        seen.add(m)
        h, w = args[0].shape[-2:]
        order.append((names[m], m, (h, w)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, _POOLS)) or (isinstance(m, _ConvNd) and m._ndim == 2)]
    try:
        p = next(model.parameters())
        x = torch.zeros(1, first.in_channels, input_size, input_size, dtype=p.dtype, device=p.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            y = model(x)
        model.train(was_training)
    finally:
        for hd in handles:
            hd.remove()
    if reused:
        raise ValueError(f"convert_to_dilated: layer {reused[0]!r} is called more than once in forward; "
                         "each conv/pool must be used once to be converted")
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        raise ValueError("convert_to_dilated: the model must map (N, C, H, W) to a feature map (N, C', H', W')")

    def stride(h, w):
        return (round(input_size / h), round(input_size / w))
    return [(n, m, stride(h, w)) for n, m, (h, w) in order], stride(*y.shape[-2:])


def output_stride_of(model: nn.Module, input_size: int = 256) -> tuple[int, int]:
    """Output stride (per axis) of a backbone: input size / feature-map size, from one forward pass.

    >>> import torch.nn as nn
    >>> output_stride_of(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2)))
    (4, 4)
    """
    return _trace_strides(model, input_size)[1]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _pairs_of(m: nn.Module, in_hw) -> tuple[tuple[int, int], ...]:
    if isinstance(m, _ConvNd):
        if not m._static:
            raise ValueError(f"convert_to_dilated: layer {m!r} has size-dependent padding {m.padding!r} at "
                             "stride > 1; give it explicit padding to convert it")
        return m.pads(in_hw)
    if isinstance(m.padding, str):
        return geometry.resolve_padding(m.padding, in_hw, m.kernel_size, m.stride, m.dilation)
    return tuple((p, p) for p in m.padding)


def convert_to_dilated(model: nn.Module, output_stride: int = 16, *, input_size: int = 256) -> nn.Module:
    """Return a copy of ``model`` whose output stride is ``output_stride`` (8, 16 or 32), strides of
    the last stages replaced by dilation. The original is untouched; weights are shared by value.

    Works on models built from ``nn.Conv2d`` / :class:`atrous.nn.Conv2d` (ResNet-style with
    downsampling shortcuts, VGG-style plain stacks) mapping ``(N, C, H, W)`` to a feature map.
    ``converted(x)[..., ::f, ::f] == model(x)`` with ``f = old_output_stride / output_stride``.
    Raises ``ValueError`` when ``output_stride`` is not reachable (larger than the model's, or it
    would split one layer's stride, or needs a pooling layer's stride removed).

    >>> import torch, torch.nn as nn, atrous.nn as ann
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
    ...                     nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
    ...                     nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    >>> net8 = ann.convert_to_dilated(net, output_stride=4)
    Traceback (most recent call last):
    ...
    ValueError: output_stride must be one of (8, 16, 32), got 4
    >>> net4 = ann.convert_to_dilated(nn.Sequential(*net, nn.Conv2d(4, 4, 3, stride=2, padding=1),
    ...                                             nn.Conv2d(4, 4, 3, padding=1)), output_stride=8)
    >>> net4[-1].dilation, net4[-2].stride
    ((2, 2), (1, 1))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if output_stride not in (8, 16, 32) or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be one of (8, 16, 32), got {output_stride!r}")
    if not isinstance(input_size, numbers.Integral) or input_size < 2 * output_stride:
        raise ValueError(f"input_size must be an int >= 2 * output_stride, got {input_size!r}")
    new = copy.deepcopy(model)
    layers, total = _trace_strides(new, int(input_size))
    if any(t < output_stride for t in total):
        raise ValueError(f"output_stride {output_stride} is not reachable: the model's output stride is "
                         f"{total} (conversion only removes strides)")
    for name, m, r in layers:
        s = tuple(m.stride) if isinstance(m, (nn.Conv2d, _ConvNd)) else geometry.normalize_tuple(
            m.stride, 2, "stride")
        mult, new_stride = [], []
        for ra, sa in zip(r, s):
            if ra < output_stride < ra * sa:
                raise ValueError(
                    f"output_stride {output_stride} is not reachable: layer {name!r} takes the stride "
                    f"from {ra} to {ra * sa} in one step")
            if ra > output_stride and ra % output_stride:
                raise ValueError(f"output_stride {output_stride} is not reachable: layer {name!r} sees "
                                 f"input stride {ra}, not a multiple of {output_stride}")
            mult.append(ra // min(ra, output_stride))
            new_stride.append(1 if ra * sa > output_stride else sa)
        if mult == [1, 1] and list(s) == new_stride:
            continue
        if isinstance(m, _POOLS):
            raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({type(m).__name__}) would need "
                             f"its stride removed or dilated; output_stride {output_stride} is not reachable "
                             "for this model by conversion")
        in_hw = tuple(math.ceil(input_size / ra) for ra in r)
        pairs = _pairs_of(m, in_hw)
        pairs = tuple((lo * k, hi * k) for (lo, hi), k in zip(pairs, mult))
        dil = tuple(d * k for d, k in zip(m.dilation, mult))
        if isinstance(m, nn.Conv2d) and all(lo == hi for lo, hi in pairs):
            m.stride, m.dilation, m.padding = tuple(new_stride), dil, tuple(lo for lo, _ in pairs)
            m._reversed_padding_repeated_twice = [p for lo, _ in reversed(pairs) for p in (lo, lo)]
            continue
        conv = Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=tuple(new_stride), padding=pairs,
                      dilation=dil, groups=m.groups, bias=m.bias is not None,
                      padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(m.weight)
            if m.bias is not None:
                conv.bias.copy_(m.bias)
        _set_module(new, name, conv)
    return new
