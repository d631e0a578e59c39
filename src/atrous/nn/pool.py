"""Average pooling with dilation: :class:`AvgPool2d`, the pooling twin of the dilated convolutions.

``nn.MaxPool2d`` has a ``dilation`` argument; ``nn.AvgPool2d`` does not. DeepLab-style conversion
(:func:`atrous.nn.convert_to_dilated`) needs one when it removes the stride of an average-pooling
layer and dilates what follows (Chen et al. 2015, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", Sec. 3.1: the "hole" algorithm applied to pooling).
A dilated average pool is a depthwise convolution with a kernel of ones, divided by the window size
(``count_include_pad=True``), by the number of taps that fall inside the input
(``count_include_pad=False``), or by ``divisor_override``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..geometry import IntOrTuple

__all__ = ["AvgPool2d"]


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with a ``dilation`` (keyword) argument: ``(N, C, H, W) -> (N, C, H_out, W_out)``.

    A subclass of ``nn.AvgPool2d`` (same arguments, defaults and results when ``dilation=1``); with
    ``dilation=d`` the window reads ``x[i * stride + t * d - padding]`` for ``t < kernel_size`` and
    ``H_out = floor((H + 2 p - d (k - 1) - 1) / stride) + 1``. ``ceil_mode=True`` is only supported
    without dilation.

    >>> import torch, atrous.nn as ann
    >>> x = torch.arange(16.).view(1, 1, 4, 4)
    >>> ann.AvgPool2d(2, stride=1, dilation=2)(x)          # mean of x[i, j], x[i, j+2], x[i+2, j], x[i+2, j+2]
    tensor([[[[ 5.,  6.],
              [ 9., 10.]]]])
    """

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Optional[int] = None,
                 *, dilation: IntOrTuple = 1) -> None:
        kernel = geometry.normalize_tuple(kernel_size, 2, "kernel_size")
        strides = kernel if stride is None or stride == () else geometry.normalize_tuple(stride, 2, "stride")
        pads = geometry.normalize_tuple(padding, 2, "padding", minimum=0)
        dil = geometry.normalize_tuple(dilation, 2, "dilation")
        if ceil_mode and dil != (1, 1):
            raise ValueError(f"ceil_mode=True is not supported with dilation {dil}; use ceil_mode=False")
        if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override < 1):
            raise ValueError(f"divisor_override must be None or an int >= 1, got {divisor_override!r}")
        super().__init__(kernel, strides, pads, ceil_mode, count_include_pad, divisor_override)
        self.dilation = dil

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.dilation == (1, 1) else f"{s}, dilation={self.dilation}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` (or ``(C, H, W)``) -> ``(N, C, H_out, W_out)``."""
        if self.dilation == (1, 1):
            return super().forward(input)
        x = input if input.dim() == 4 else input.unsqueeze(0)
        c = x.size(1)
        k = tuple(self.kernel_size)
        ones = torch.ones(c, 1, *k, dtype=x.dtype, device=x.device)
        total = F.conv2d(x, ones, None, self.stride, self.padding, self.dilation, c)   # window sums
        if self.divisor_override is not None:
            y = total / self.divisor_override
        elif self.count_include_pad or self.padding == (0, 0):
            y = total / math.prod(k)
        else:                                      # taps inside the input, per output position
            inside = F.conv2d(torch.ones(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device),
                              ones[:1], None, self.stride, self.padding, self.dilation)    # (1, 1, H_out, W_out)
            y = total / inside
        return y if input.dim() == 4 else y.squeeze(0)
