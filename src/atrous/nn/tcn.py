"""Temporal convolutional network (Bai, Kolter & Koltun 2018, "An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling").

A :class:`TemporalBlock` is two dilated causal convolutions (each followed by ReLU and dropout,
optionally weight-normalised) plus a residual connection (a 1x1 convolution when the channel count
changes): ``y = relu(x_res + F(x))``. :class:`TCN` stacks blocks with dilations ``1, 2, 4, ...``.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._field import field_1d
from .conv import Conv1d, _check_positive_int, conv

__all__ = ["TemporalBlock", "TCN", "temporal_block"]


def _check_dropout(dropout) -> float:
    if not isinstance(dropout, numbers.Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return float(dropout)


def temporal_block(x: torch.Tensor, weight1: torch.Tensor, bias1: Optional[torch.Tensor], weight2: torch.Tensor,
                   bias2: Optional[torch.Tensor], dilation: int = 1, weight_res: Optional[torch.Tensor] = None,
                   bias_res: Optional[torch.Tensor] = None, causal: bool = True, dropout: float = 0.0,
                   training: bool = False) -> torch.Tensor:
    """Functional twin of :class:`TemporalBlock`.

    ``x (N, C_in, L)``, ``weight1 (C_out, C_in, k)``, ``weight2 (C_out, C_out, k)``, optional
    ``weight_res (C_out, C_in, 1)`` -> ``(N, C_out, L)``.

    >>> import torch, atrous.nn as ann
    >>> x = torch.randn(2, 3, 16)
    >>> ann.temporal_block(x, torch.randn(5, 3, 3), None, torch.randn(5, 5, 3), None, dilation=2,
    ...                    weight_res=torch.randn(5, 3, 1)).shape
    torch.Size([2, 5, 16])
    """
    padding = "causal" if causal else "same"
    h = F.dropout(F.relu(conv(x, weight1, bias1, padding=padding, dilation=dilation)), dropout, training)
    h = F.dropout(F.relu(conv(h, weight2, bias2, padding=padding, dilation=dilation)), dropout, training)
    res = x if weight_res is None else conv(x, weight_res, bias_res, padding=0)
    return F.relu(h + res)


class TemporalBlock(nn.Module):
    """One TCN residual block (Bai et al. 2018, Fig. 1b): ``(N, C_in, L) -> (N, C_out, L)``.

    ``conv1 -> ReLU -> Dropout -> conv2 -> ReLU -> Dropout``, plus ``x`` (or ``downsample(x)``, a
    1x1 conv, when ``in_channels != out_channels``), then ReLU. Convs are :class:`atrous.nn.Conv1d`
    with ``padding="causal"`` (``"same"`` when ``causal=False``); ``weight_norm=True`` applies
    ``torch.nn.utils.parametrizations.weight_norm`` to both.

    >>> import torch, atrous.nn as ann
    >>> ann.TemporalBlock(3, 8, kernel_size=3, dilation=4)(torch.randn(2, 3, 50)).shape
    torch.Size([2, 8, 50])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 dropout: float = 0.0, causal: bool = True, weight_norm: bool = False) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(out_channels, "out_channels")
        dropout = _check_dropout(dropout)
        padding = "causal" if causal else "same"
        self.conv1 = Conv1d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        self.conv2 = Conv1d(out_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        if weight_norm:
            wn = torch.nn.utils.parametrizations.weight_norm
            self.conv1, self.conv2 = wn(self.conv1), wn(self.conv2)
        self.relu1, self.relu2, self.relu = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.downsample = Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout1(self.relu1(self.conv1(x)))     # (N, C_out, L)
        h = self.dropout2(self.relu2(self.conv2(h)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(h + res)


class TCN(nn.Module):
    """Stack of :class:`TemporalBlock` (Bai et al. 2018): ``(N, C_in, L) -> (N, channels[-1], L)``.

    ``channels`` gives each block's width; ``dilations`` defaults to ``2**i`` for block ``i``.
    ``receptive_field`` is the field size in samples, ``1 + 2 * sum((k - 1) * d)`` for the causal
    stack (computed by ``atrous.receptive_field`` when available, else :mod:`atrous.geometry`).

    >>> import torch, atrous.nn as ann
    >>> tcn = ann.TCN(1, [16] * 4, kernel_size=3)       # dilations 1, 2, 4, 8
    >>> tcn(torch.randn(2, 1, 100)).shape, tcn.receptive_field
    (torch.Size([2, 16, 100]), 61)
    """

    __jit_unused_properties__ = ["receptive_field"]

    def __init__(self, in_channels: int, channels: Sequence[int], kernel_size: int = 3,
                 dilations: Optional[Sequence[int]] = None, dropout: float = 0.0, causal: bool = True,
                 weight_norm: bool = False) -> None:
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        channels = list(channels) if isinstance(channels, (list, tuple)) else channels
        if not isinstance(channels, list) or not channels:
            raise ValueError(f"channels must be a non-empty list of block widths, got {channels!r}")
        if dilations is None:
            dilations = [2 ** i for i in range(len(channels))]
        dilations = list(dilations)
        if len(dilations) != len(channels):
            raise ValueError(f"dilations must have one entry per block ({len(channels)}), got "
                             f"{dilations!r}")
        for d in dilations:
            _check_positive_int(d, "dilations entries")
        _check_positive_int(kernel_size, "kernel_size")
        self.in_channels, self.kernel_size, self.dilations = in_channels, kernel_size, tuple(dilations)
        widths = [in_channels] + channels
        self.blocks = nn.Sequential(*[
            TemporalBlock(widths[i], widths[i + 1], kernel_size, dilations[i], dropout, causal, weight_norm)
            for i in range(len(channels))])

    @property
    def receptive_field(self) -> int:
        convs = [(self.kernel_size, 1, d) for d in self.dilations for _ in range(2)]
        return field_1d(self, self.in_channels, convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
