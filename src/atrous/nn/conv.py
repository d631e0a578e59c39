"""Dilated convolution with every padding mode: ``Conv1d/2d/3d`` and the functional :func:`conv`.

The layers are subclasses of ``nn.Conv1d/2d/3d`` (PyTorch's arguments, defaults, parameters and
state-dict keys) whose ``padding`` also takes ``"same"`` (any stride and dilation, TensorFlow's
rule: ``out = ceil(n / stride)``, an odd total puts the extra sample on the high side), ``"causal"``
(all padding before the causal axes, the first spatial axis by default; ``"same"`` elsewhere),
``"valid"``, ``"full"``, an int, a per-axis tuple or per-axis ``(lo, hi)`` pairs. The padding is
resolved by :func:`atrous.geometry.resolve_padding`; symmetric zero padding is handed to the
convolution itself, anything else is done once with ``F.pad``.

"same" at stride > 1 depends on the input size, but only through ``(n - 1) % stride``: the layer
keeps one resolved pair per residue (computed by geometry at construction) and picks it at forward
time, so the module stays TorchScript/ONNX friendly. An even kernel with ``"same"`` is allowed:
the odd total padding puts the extra sample after the signal.
"""

from __future__ import annotations

import difflib
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..geometry import IntOrTuple, PaddingArg

__all__ = ["Conv1d", "Conv2d", "Conv3d", "conv", "PADDING_FILL_MODES"]

PADDING_FILL_MODES = ("zeros", "reflect", "replicate", "circular")

PaddingSpec = Union[str, Tuple[Union[int, Tuple[int, int]], ...]]
DeviceArg = Union[torch.device, str, int, None]


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
        tables.append(rows if any(r != rows[0] for r in rows) else rows[:1])   # one row: static
    return tables


def _normalize_padding(padding, nd: int) -> PaddingSpec:
    """The ``padding`` attribute, in ``nn.Conv*d``'s form where PyTorch has one: an int becomes one
    int per axis, a string stays a string, ``(lo, hi)`` pairs stay pairs (validated by geometry)."""
    geometry.resolve_padding(padding, (1,) * nd, (1,) * nd, (1,) * nd, (1,) * nd)   # raises on bad specs
    if isinstance(padding, str):
        return padding
    if isinstance(padding, numbers.Integral):
        return (int(padding),) * nd
    return tuple(int(p) if isinstance(p, numbers.Integral) else (int(p[0]), int(p[1])) for p in padding)


# Attributes that define the layer's geometry: setting one after construction (as stride-to-dilation
# passes do: ``m.stride, m.dilation, m.padding = 1, 2, 2``) re-validates and re-resolves the padding.
_GEOMETRY = frozenset({"kernel_size", "stride", "padding", "dilation", "padding_mode", "causal_axes"})


def _same_fpad(x: torch.Tensor, tables: List[List[List[int]]]) -> List[int]:
    """``F.pad`` list for the size-dependent padding: per axis the pair of residue ``(n - 1) % stride``.

    Not yet ``torch.fx.wrap``-ed: while atrous.analysis traces into nn.Conv subclasses, a wrapped
    leaf would stop its tracer (today it falls back to hooks). Wrapping it lets ``torch.fx`` trace
    models with size-dependent padding symbolically."""
    out: List[int] = []
    nd = len(tables)
    for i in range(nd):
        a = nd - 1 - i                                  # F.pad lists the last axis first
        table = tables[a]
        lohi = table[(x.size(2 + a) - 1) % len(table)]
        out.append(lohi[0])
        out.append(lohi[1])
    return out


class _ConvNd:
    """Shared body of :class:`Conv1d`/:class:`Conv2d`/:class:`Conv3d` (see :class:`Conv1d`): a mixin
    placed before ``nn.Conv*d``, so the layers are ``nn.Conv*d`` instances with their attributes,
    parameters, initialisation and state-dict keys, and only the padding is extended."""

    _ndim = 0      # padding: PaddingSpec, causal_axes: tuple of ints (not annotated: TorchScript reads
    #                class annotations and has no variadic tuples)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
                 padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: DeviceArg = None, dtype: Optional[torch.dtype] = None,
                 *, causal_axes: Union[int, Sequence[int]] = (0,)) -> None:
        nd = self._ndim
        in_channels = _check_positive_int(in_channels, "in_channels")
        out_channels = _check_positive_int(out_channels, "out_channels")
        groups = _check_positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                             f"both be divisible by groups ({groups})")
        kernel_size = geometry.normalize_tuple(kernel_size, nd, "kernel_size")
        stride = geometry.normalize_tuple(stride, nd, "stride")
        dilation = geometry.normalize_tuple(dilation, nd, "dilation")
        padding_mode = _check_fill_mode(padding_mode)
        spec = _normalize_padding(padding, nd)
        torch_padding = spec if isinstance(spec, tuple) and all(isinstance(p, int) for p in spec) else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, torch_padding,  # type: ignore[call-arg]
                         dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self.__dict__["causal_axes"] = _causal_axes(causal_axes, nd)
        self.__dict__["padding"] = spec
        self._resolve({})

    def _resolve(self, change: dict) -> None:
        """Validate the geometry with ``change`` applied, then commit it and the padding tables."""
        nd = self._ndim
        cfg = {k: change.get(k, self.__dict__.get(k)) for k in _GEOMETRY}
        cfg["kernel_size"] = geometry.normalize_tuple(cfg["kernel_size"], nd, "kernel_size")
        cfg["stride"] = geometry.normalize_tuple(cfg["stride"], nd, "stride")
        cfg["dilation"] = geometry.normalize_tuple(cfg["dilation"], nd, "dilation")
        cfg["padding_mode"] = _check_fill_mode(cfg["padding_mode"])
        cfg["causal_axes"] = _causal_axes(cfg["causal_axes"], nd)
        cfg["padding"] = _normalize_padding(cfg["padding"], nd)
        tables = _pad_tables(cfg["padding"], cfg["kernel_size"], cfg["stride"], cfg["dilation"],
                             cfg["causal_axes"])
        d = self.__dict__
        d.update(cfg)
        static = all(len(t) == 1 for t in tables)
        pairs = [t[0] for t in tables]
        sym = static and cfg["padding_mode"] == "zeros" and all(lo == hi for lo, hi in pairs)
        d["_tables"] = tables
        d["_static"] = static
        d["_sym"] = sym
        d["_conv_pad"] = [lo for lo, _ in pairs] if sym else [0] * nd
        d["_fpad"] = [v for lo, hi in reversed(pairs) for v in (lo, hi)]            # F.pad order
        # nn.Conv*d's own F.pad list (read by code that pads by hand for non-zero padding modes)
        d["_reversed_padding_repeated_twice"] = list(d["_fpad"]) if static else [0, 0] * nd
        d["_fill"] = "constant" if cfg["padding_mode"] == "zeros" else cfg["padding_mode"]
        d["_stride_l"] = list(cfg["stride"])
        d["_dilation_l"] = list(cfg["dilation"])

    def __setattr__(self, name: str, value) -> None:
        if name in _GEOMETRY and "_tables" in self.__dict__:
            self._resolve({name: value})
            return
        super().__setattr__(name, value)

    @property
    def static_padding(self) -> bool:
        """True when the padding does not depend on the input size (everything but "same"/"causal"
        at stride > 1)."""
        return self._static

    def pads(self, in_sizes: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
        """The ``(lo, hi)`` padding per spatial axis for an input of spatial shape ``in_sizes``."""
        return geometry.resolve_padding(self.padding, tuple(in_sizes), self.kernel_size, self.stride,
                                        self.dilation, self.causal_axes)

    def extra_repr(self) -> str:
        """``nn.Conv*d``'s repr (same format), the padding spec shown as given (``padding=causal``)."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._ndim:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        if self.padding == "causal":
            s += f", causal_axes={self.causal_axes}"
        return s

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self._sym:
            x = input
        else:
            fpad = self._fpad if self._static else _same_fpad(input, self._tables)
            x = F.pad(input, fpad, mode=self._fill)
        if self._ndim == 1:
            return F.conv1d(x, weight, bias, self._stride_l, self._conv_pad, self._dilation_l, self.groups)
        if self._ndim == 2:
            return F.conv2d(x, weight, bias, self._stride_l, self._conv_pad, self._dilation_l, self.groups)
        return F.conv3d(x, weight, bias, self._stride_l, self._conv_pad, self._dilation_l, self.groups)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, *spatial)`` -> ``(N, C_out, *out_spatial)``."""
        return self._conv_forward(input, self.weight, self.bias)


class Conv1d(_ConvNd, nn.Conv1d):
    """1-D dilated convolution with every padding mode: ``(N, C_in, L) -> (N, C_out, L_out)``,
    weight ``(C_out, C_in // groups, k)``.

    A subclass of ``nn.Conv1d``: arguments, defaults (``padding=0``), attributes, parameters,
    initialisation and state-dict keys are PyTorch's, so ``isinstance(m, nn.Conv1d)`` holds and
    checkpoints load both ways. ``padding`` also accepts ``"same"`` at any stride
    (``out = ceil(n / stride)``, an odd total puts the extra sample after the signal), ``"causal"``
    (all padding before the ``causal_axes``, the first spatial axis by default, ``"same"`` on the
    others), ``"full"`` and per-axis ``(lo, hi)`` pairs; ``padding_mode`` fills it with zeros,
    ``"reflect"``, ``"replicate"`` or ``"circular"``. Setting ``stride``, ``dilation``, ``padding``,
    ... after construction re-validates the geometry (the forward always follows the attributes).

    >>> import torch, atrous.nn as ann
    >>> conv = ann.Conv1d(4, 8, 3, padding="causal", dilation=4)
    >>> conv
    Conv1d(4, 8, kernel_size=(3,), stride=(1,), padding=causal, dilation=(4,), causal_axes=(0,))
    >>> conv(torch.randn(2, 4, 20)).shape        # (N, C_out, L): length kept, output t sees <= t
    torch.Size([2, 8, 20])
    >>> ann.Conv1d(4, 8, 3, stride=2, padding="same")(torch.randn(2, 4, 21)).shape   # ceil(21 / 2)
    torch.Size([2, 8, 11])
    >>> ann.Conv1d(4, 8, 3)(torch.randn(2, 4, 21)).shape                # padding=0, as nn.Conv1d
    torch.Size([2, 8, 19])
    """

    _ndim = 1
    __constants__ = nn.Conv1d.__constants__ + ["_ndim"]


class Conv2d(_ConvNd, nn.Conv2d):
    """2-D dilated convolution (see :class:`Conv1d`): ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``,
    weight ``(C_out, C_in // groups, kh, kw)``. ``"causal"`` is causal along H (``causal_axes=(0,)``)
    and ``"same"`` along W unless ``causal_axes`` says otherwise.

    >>> import torch, torch.nn as nn, atrous.nn as ann
    >>> m = ann.Conv2d(3, 5, 3, stride=2, padding="same", dilation=(2, 3))
    >>> isinstance(m, nn.Conv2d), m(torch.randn(1, 3, 9, 10)).shape
    (True, torch.Size([1, 5, 5, 5]))
    """

    _ndim = 2
    __constants__ = nn.Conv2d.__constants__ + ["_ndim"]


class Conv3d(_ConvNd, nn.Conv3d):
    """3-D dilated convolution (see :class:`Conv1d`):
    ``(N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out)``, weight ``(C_out, C_in // groups, kd, kh, kw)``.

    >>> import torch, atrous.nn as ann
    >>> ann.Conv3d(2, 2, 3, padding="full", dilation=2)(torch.randn(1, 2, 4, 4, 4)).shape
    torch.Size([1, 2, 8, 8, 8])
    """

    _ndim = 3
    __constants__ = nn.Conv3d.__constants__ + ["_ndim"]


def conv(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
         stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
         padding_mode: str = "zeros", causal_axes: Union[int, Sequence[int]] = (0,)) -> torch.Tensor:
    """Functional twin of :class:`Conv1d`/:class:`Conv2d`/:class:`Conv3d` (dimension from ``weight``);
    ``padding=0`` by default, as ``F.conv*d``.

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
