"""Atrous Spatial Pyramid Pooling (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic
Image Segmentation" -- DeepLabV3, Sec. 3.3 and Fig. 4).

Parallel branches on the backbone's feature map: a 1x1 conv, 3x3 convs at rates
``rates_for(output_stride)`` (``(6, 12, 18)`` at 16, ``(12, 24, 36)`` at 8), and image pooling
(global average -> 1x1 conv -> bilinear upsampling); each with batch norm and ReLU; concatenated and
projected by a 1x1 conv (+BN, ReLU). :func:`valid_tap_fraction` shows why large rates degrade on small
maps: as the rate approaches the map size, most taps of a 3x3 kernel fall in the zero padding and the
filter degenerates to its centre tap (DeepLabV3 Fig. 4).
"""

from __future__ import annotations

import numbers
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..geometry import IntOrTuple
from .conv import Conv2d, _check_positive_int, conv

__all__ = ["ASPP", "aspp", "rates_for", "valid_tap_fraction"]

_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def rates_for(output_stride: int) -> tuple[int, ...]:
    """DeepLabV3's ASPP rates for a backbone output stride (8 or 16).

    >>> rates_for(16), rates_for(8)
    ((6, 12, 18), (12, 24, 36))
    """
    if output_stride not in _RATES:
        raise ValueError(f"output_stride must be 8 or 16 (DeepLabV3's ASPP rates), got {output_stride!r}")
    return _RATES[output_stride]


def _axis_valid_fraction(n: int, k: int, d: int) -> float:
    (lo, hi), = geometry.resolve_padding("same", (n,), (k,), (1,), (d,))
    pos = np.arange(n)[:, None] - lo + d * np.arange(k)[None, :]   # (outputs, taps): input index read
    return float(((pos >= 0) & (pos < n)).mean())


def valid_tap_fraction(feature_size: IntOrTuple, rates: Sequence[int], kernel_size: int = 3) -> Dict[int, float]:
    """Fraction of a ``kernel_size``-squared kernel's taps that land inside an ``H x W`` feature map
    ("same" padding, averaged over all output positions), per rate.

    A 2-D tap is inside when it is inside on both axes, so the fraction is the product of the per-axis
    fractions. ``1.0`` means no tap ever reads padding; ``1 / k**2`` means only the centre is valid.

    >>> fr = valid_tap_fraction(65, (1, 6, 12, 18, 36, 65))    # DeepLabV3 Fig. 4: a 65x65 map
    >>> {r: round(f, 3) for r, f in fr.items()}                # 65: only the centre tap, 1/9
    {1: 0.98, 6: 0.881, 12: 0.769, 18: 0.665, 36: 0.398, 65: 0.111}
    """
    if isinstance(feature_size, numbers.Integral):
        feature_size = (feature_size, feature_size)
    h, w = geometry.normalize_tuple(tuple(feature_size), 2, "feature_size")
    k = _check_positive_int(kernel_size, "kernel_size")
    out = {}
    for r in rates:
        _check_positive_int(r, "rates entries")
        out[r] = _axis_valid_fraction(h, k, r) * _axis_valid_fraction(w, k, r)
    return out


def aspp(x: torch.Tensor, weights: Sequence[torch.Tensor], rates: Sequence[int], project_weight: torch.Tensor,
         pool_weight: Optional[torch.Tensor] = None,
         norms: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = None,
         eps: float = 1e-5) -> torch.Tensor:
    """Functional twin of :class:`ASPP` (inference): ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    ``weights``: the 1x1 branch ``(C_out, C_in, 1, 1)`` then one ``(C_out, C_in, 3, 3)`` per rate;
    ``pool_weight`` ``(C_out, C_in, 1, 1)`` adds the image-pooling branch; ``project_weight``
    ``(C_out, C_out * branches, 1, 1)``. ``norms`` (optional): one ``(mean, var, gamma, beta)`` per
    branch, then one for the projection, applied as eval-mode batch norm; each conv is followed by its
    norm and ReLU.

    >>> import torch, atrous.nn as ann
    >>> w = [torch.randn(4, 3, 1, 1)] + [torch.randn(4, 3, 3, 3) for _ in range(2)]
    >>> ann.aspp(torch.randn(1, 3, 9, 9), w, (2, 4), torch.randn(4, 16, 1, 1), torch.randn(4, 3, 1, 1)).shape
    torch.Size([1, 4, 9, 9])
    """
    rates = tuple(rates)
    if len(weights) != len(rates) + 1:
        raise ValueError(f"weights needs the 1x1 branch plus one 3x3 weight per rate ({len(rates) + 1}), "
                         f"got {len(weights)}")
    n_branches = len(weights) + (pool_weight is not None)
    if norms is not None and len(norms) != n_branches + 1:
        raise ValueError(f"norms needs one entry per branch plus the projection ({n_branches + 1}), "
                         f"got {len(norms)}")

    def cbr(h, w, i, dilation=1):
        h = conv(h, w, None, padding="same", dilation=dilation)
        if norms is not None:
            mean, var, gamma, beta = norms[i]
            h = F.batch_norm(h, mean, var, gamma, beta, training=False, eps=eps)
        return torch.relu(h)

    outs = [cbr(x, weights[0], 0)] + [cbr(x, w, i + 1, r) for i, (w, r) in enumerate(zip(weights[1:], rates))]
    if pool_weight is not None:
        p = cbr(F.adaptive_avg_pool2d(x, 1), pool_weight, len(weights))            # (N, C_out, 1, 1)
        outs.append(F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return cbr(torch.cat(outs, dim=1), project_weight, n_branches)


def _branch(conv: nn.Module, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


class _ImagePool(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = _branch(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.adaptive_avg_pool2d(x, 1))                       # (N, C_out, 1, 1)
        return F.interpolate(h, size=(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3 ASPP head: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.

    ``rates`` (default ``rates_for(output_stride)``) sets the 3x3 branches; ``image_pooling`` adds the
    global-pooling branch; ``dropout`` follows the projection (0.1 in common implementations).
    ``valid_tap_fraction(feature_size)`` reports, per rate, the share of taps inside the map.

    >>> import torch, atrous.nn as ann
    >>> aspp = ann.ASPP(32, 16, output_stride=16).eval()
    >>> aspp(torch.randn(2, 32, 17, 17)).shape
    torch.Size([2, 16, 17, 17])
    >>> {r: round(f, 2) for r, f in aspp.valid_tap_fraction(17).items()}
    {6: 0.58, 12: 0.28, 18: 0.11}
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Optional[Sequence[int]] = None,
                 output_stride: int = 16, image_pooling: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(out_channels, "out_channels")
        rates = rates_for(output_stride) if rates is None else tuple(rates)
        for r in rates:
            _check_positive_int(r, "rates entries")
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.rates = rates
        branches = [_branch(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)]
        branches += [_branch(Conv2d(in_channels, out_channels, 3, padding="same", dilation=r, bias=False),
                             out_channels) for r in rates]
        if image_pooling:
            branches.append(_ImagePool(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(dropout))

    def valid_tap_fraction(self, feature_size: IntOrTuple) -> Dict[int, float]:
        """Per rate, the fraction of 3x3 taps inside a ``feature_size`` map (see module function)."""
        return valid_tap_fraction(feature_size, self.rates, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]                            # each (N, C_out, H, W)
        return self.project(torch.cat(outs, dim=1))                     # (N, C_out, H, W)
