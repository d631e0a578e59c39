"""Dilated convolution with every padding mode: ``Conv1d/2d/3d`` and the functional :func:`conv`.

``nn.Conv*d`` arguments, plus ``padding`` = ``"same"`` (any stride and dilation, TensorFlow's rule:
``out = ceil(n / stride)``, an odd total puts the extra sample on the high side), ``"causal"``
(all padding before the causal axes, the first spatial axis by default; ``"same"`` elsewhere),
``"valid"``, ``"full"``, an int, a per-axis tuple or per-axis ``(lo, hi)`` pairs. The padding is
resolved by :func:`atrous.geometry.resolve_padding`; symmetric padding is handed to the convolution
itself, asymmetric padding is done once with ``F.pad``.

"same" at stride > 1 depends on the input size, but only through ``(n - 1) % stride``: the layer
keeps one resolved pair per residue (computed by geometry at construction) and picks it at forward
time, so the module stays TorchScript/ONNX friendly. An even kernel with ``"same"`` is allowed: the
odd total padding puts the extra sample after the signal.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry

__all__ = ["Conv1d", "Conv2d", "Conv3d", "conv", "PADDING_FILL_MODES"]

PADDING_FILL_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _check_fill_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_FILL_MODES:
        close = difflib.get_close_matches(str(padding_mode), PADDING_FILL_MODES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"padding_mode must be one of {PADDING_FILL_MODES}, got {padding_mode!r}{hint}")
    return padding_mode


def _causal_axes(causal_axes, nd: int) -> tuple[int, ...]:
    axes = (causal_axes,) if isinstance(causal_axes, numbers.Integral) else causal_axes
    if not isinstance(axes, (tuple, list)) or not all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool) and -nd <= a < nd for a in axes):
        raise ValueError(f"causal_axes must name spatial axes in [0, {nd}), got {causal_axes!r}")
    return tuple(sorted({int(a) % nd for a in axes}))


def _pad_tables(padding, kernel, stride, dilation, causal_axes) -> list[list[list[int]]]:
    """Per axis, per residue ``r = (n - 1) % stride``: the ``[lo, hi]`` padding (from geometry).

    Fixed specs give one entry per axis. For "same"/"causal" the padding of an axis of ``n``
    samples depends on ``n`` only through ``r`` (tests check this against geometry for many ``n``),
    so the representative ``n = r + 1`` is resolved.
    """
    nd = len(kernel)
    periods = [s if isinstance(padding, str) else 1 for s in stride]
    tables = []
    for a in range(nd):
        rows = []
        for r in range(periods[a]):
            sizes = tuple(r + 1 if i == a else 1 for i in range(nd))
            lo, hi = geometry.resolve_padding(padding, sizes, kernel, stride, dilation, causal_axes)[a]
            rows.append([lo, hi])
        tables.append(rows)
    return tables


class _ConvNd(nn.Module):
    """Shared body of :class:`Conv1d`/:class:`Conv2d`/:class:`Conv3d` (see :class:`Conv1d`)."""

    _nd = 0
    __constants__ = ["_ndim"]

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="same", dilation=1,
                 groups=1, bias=True, padding_mode="zeros", causal_axes=(0,), device=None, dtype=None):
        super().__init__()
        nd = self._nd
        self._ndim = nd
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.groups = _check_positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                             f"both be divisible by groups ({groups})")
        self.kernel_size = geometry.normalize_tuple(kernel_size, nd, "kernel_size")
        self.stride = geometry.normalize_tuple(stride, nd, "stride")
        self.dilation = geometry.normalize_tuple(dilation, nd, "dilation")
        self.padding_mode = _check_fill_mode(padding_mode)
        self.causal_axes = _causal_axes(causal_axes, nd)
        self.padding = padding
        tables = _pad_tables(padding, self.kernel_size, self.stride, self.dilation, self.causal_axes)
        self._tables: List[List[List[int]]] = tables
        self._static = all(len(t) == 1 for t in tables)
        pairs = [t[0] for t in tables]
        self._sym = self._static and self.padding_mode == "zeros" and all(lo == hi for lo, hi in pairs)
        self._conv_pad: List[int] = [lo for lo, _ in pairs] if self._sym else [0] * nd
        self._fpad: List[int] = [v for lo, hi in reversed(pairs) for v in (lo, hi)]  # F.pad order
        self._fill = "constant" if self.padding_mode == "zeros" else self.padding_mode
        self._stride_l: List[int] = list(self.stride)
        self._dilation_l: List[int] = list(self.dilation)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv*d's initialisation: Kaiming-uniform weight, uniform(+-1/sqrt(fan_in)) bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def pads(self, in_sizes) -> tuple[tuple[int, int], ...]:
        """The ``(lo, hi)`` padding per spatial axis for an input of spatial shape ``in_sizes``."""
        return geometry.resolve_padding(self.padding, tuple(in_sizes), self.kernel_size, self.stride,
                                        self.dilation, self.causal_axes)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.padding == "causal":
            s += f", causal_axes={self.causal_axes}"
        return s

    def _dynamic_fpad(self, x: torch.Tensor) -> List[int]:
        out: List[int] = []
        nd = len(self._tables)
        for i in range(nd):
            a = nd - 1 - i                                  # F.pad lists the last axis first
            table = self._tables[a]
            lohi = table[(x.size(2 + a) - 1) % len(table)]
            out.append(lohi[0])
            out.append(lohi[1])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, *spatial)`` -> ``(N, C_out, *out_spatial)``."""
        if self._sym:
            pad = self._conv_pad
        else:
            fpad = self._fpad if self._static else self._dynamic_fpad(x)
            x = F.pad(x, fpad, mode=self._fill)
            pad = self._conv_pad
        if self._ndim == 1:
            return F.conv1d(x, self.weight, self.bias, self._stride_l, pad, self._dilation_l, self.groups)
        if self._ndim == 2:
            return F.conv2d(x, self.weight, self.bias, self._stride_l, pad, self._dilation_l, self.groups)
        return F.conv3d(x, self.weight, self.bias, self._stride_l, pad, self._dilation_l, self.groups)


class Conv1d(_ConvNd):
    """1-D dilated convolution with string padding modes.

    Arguments are ``nn.Conv1d``'s (``in_channels, out_channels, kernel_size, stride, padding,
    dilation, groups, bias, padding_mode``) with ``padding`` also accepting ``"same"`` (default),
    ``"causal"``, ``"valid"``, ``"full"`` and ``(lo, hi)`` pairs, and ``causal_axes`` naming the
    causal spatial axes for ``"causal"``. Shapes: ``(N, C_in, L) -> (N, C_out, L_out)``; weight
    ``(C_out, C_in // groups, k)``. State-dict keys match ``nn.Conv1d`` (``weight``, ``bias``).

    >>> import torch, atrous.nn as ann
    >>> conv = ann.Conv1d(4, 8, 3, padding="causal", dilation=4)
    >>> conv(torch.randn(2, 4, 20)).shape        # (N, C_out, L): length kept, output t sees <= t
    torch.Size([2, 8, 20])
    >>> ann.Conv1d(4, 8, 3, stride=2, padding="same")(torch.randn(2, 4, 21)).shape   # ceil(21 / 2)
    torch.Size([2, 8, 11])
    """

    _nd = 1


class Conv2d(_ConvNd):
    """2-D dilated convolution with string padding modes (see :class:`Conv1d`).

    Shapes: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``; ``"causal"`` is causal along H
    (``causal_axes=(0,)``) and "same" along W unless ``causal_axes`` says otherwise.

    >>> import torch, atrous.nn as ann
    >>> ann.Conv2d(3, 5, 3, stride=2, padding="same", dilation=(2, 3))(torch.randn(1, 3, 9, 10)).shape
    torch.Size([1, 5, 5, 5])
    """

    _nd = 2


class Conv3d(_ConvNd):
    """3-D dilated convolution with string padding modes (see :class:`Conv1d`).

    Shapes: ``(N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out)``.

    >>> import torch, atrous.nn as ann
    >>> ann.Conv3d(2, 2, 3, padding="full", dilation=2)(torch.randn(1, 2, 4, 4, 4)).shape
    torch.Size([1, 2, 8, 8, 8])
    """

    _nd = 3


def conv(input, weight, bias=None, stride=1, padding="same", dilation=1, groups=1, *,
         padding_mode="zeros", causal_axes=(0,)):
    """Functional twin of :class:`Conv1d`/:class:`Conv2d`/:class:`Conv3d` (dimension from ``weight``).

    ``input (N, C_in, *spatial)``, ``weight (C_out, C_in // groups, *kernel)``, ``bias (C_out,)``
    -> ``(N, C_out, *out_spatial)``; padding resolved by :func:`atrous.geometry.resolve_padding`.

    >>> import torch, atrous.nn as ann
    >>> x, w = torch.randn(1, 2, 10), torch.randn(3, 2, 3)
    >>> ann.conv(x, w, padding="causal", dilation=2).shape
    torch.Size([1, 3, 10])
    """
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"input and weight must be tensors, got {type(input).__name__} and "
                        f"{type(weight).__name__}")
    nd = weight.dim() - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight must be (C_out, C_in // groups, *kernel) with 1-3 spatial axes, "
                         f"got shape {tuple(weight.shape)}")
    if input.dim() != nd + 2:
        raise ValueError(f"input must be (N, C_in, *spatial) with {nd} spatial axes, got shape "
                         f"{tuple(input.shape)}")
    groups = _check_positive_int(groups, "groups")
    if input.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"input has {input.shape[1]} channels but weight expects "
                         f"{weight.shape[1]} x groups ({groups}) = {weight.shape[1] * groups}")
    if weight.shape[0] % groups:
        raise ValueError(f"out channels ({weight.shape[0]}) must be divisible by groups ({groups})")
    kernel = tuple(weight.shape[2:])
    stride = geometry.normalize_tuple(stride, nd, "stride")
    dilation = geometry.normalize_tuple(dilation, nd, "dilation")
    fill = _check_fill_mode(padding_mode)
    axes = _causal_axes(causal_axes, nd)
    pairs = geometry.resolve_padding(padding, tuple(input.shape[2:]), kernel, stride, dilation, axes)
    geometry.conv_output_shape(tuple(input.shape[2:]), kernel, stride, dilation, pairs)  # size check
    if fill == "zeros" and all(lo == hi for lo, hi in pairs):
        pad = [lo for lo, _ in pairs]
    else:
        input = F.pad(input, [v for lo, hi in reversed(pairs) for v in (lo, hi)],
                      mode="constant" if fill == "zeros" else fill)
        pad = [0] * nd
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return fn(input, weight, bias, list(stride), pad, list(dilation), groups)
