"""WaveNet gated residual stack (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw
Audio", Sec. 2.3-2.4 and Fig. 4).

A causal input convolution lifts ``in_channels`` to ``residual_channels``; each layer applies a
dilated causal convolution to ``2 * gate_channels``, the gated activation
``z = tanh(filter) * sigmoid(gate)``, then a 1x1 skip projection (summed over layers) and a 1x1
residual projection added back to the layer input. The summed skips go through
``ReLU -> 1x1 -> ReLU -> 1x1`` to ``out_channels``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ._field import field_1d
from .conv import Conv1d, _check_positive_int, conv

__all__ = ["GatedResidualLayer", "WaveNet", "gated_residual"]


def gated_residual(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], weight_skip: torch.Tensor,
                   bias_skip: Optional[torch.Tensor], weight_res: torch.Tensor, bias_res: Optional[torch.Tensor],
                   dilation: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Functional twin of :class:`GatedResidualLayer`: returns ``(x + res, skip)``.

    ``x (N, R, L)``, ``weight (2G, R, k)``, ``weight_skip (S, G, 1)``, ``weight_res (R, G, 1)``
    -> ``((N, R, L), (N, S, L))``.

    >>> import torch, atrous.nn as ann
    >>> out, skip = ann.gated_residual(torch.randn(1, 4, 9), torch.randn(6, 4, 2), None,
    ...                                torch.randn(5, 3, 1), None, torch.randn(4, 3, 1), None, 2)
    >>> out.shape, skip.shape
    (torch.Size([1, 4, 9]), torch.Size([1, 5, 9]))
    """
    f, g = conv(x, weight, bias, padding="causal", dilation=dilation).chunk(2, dim=1)
    z = torch.tanh(f) * torch.sigmoid(g)                            # (N, G, L)
    return x + conv(z, weight_res, bias_res, padding=0), conv(z, weight_skip, bias_skip, padding=0)


class GatedResidualLayer(nn.Module):
    """One WaveNet layer: ``(N, R, L) -> ((N, R, L), skip (N, S, L))``.

    >>> import torch, atrous.nn as ann
    >>> out, skip = ann.GatedResidualLayer(8, 8, 16, kernel_size=2, dilation=4)(torch.randn(1, 8, 30))
    >>> out.shape, skip.shape
    (torch.Size([1, 8, 30]), torch.Size([1, 16, 30]))
    """

    def __init__(self, residual_channels: int, gate_channels: int, skip_channels: int, kernel_size: int = 2,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = Conv1d(residual_channels, 2 * gate_channels, kernel_size, padding="causal",
                           dilation=dilation)
        self.skip = Conv1d(gate_channels, skip_channels, 1)
        self.res = Conv1d(gate_channels, residual_channels, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f, g = self.conv(x).chunk(2, dim=1)                         # 2 x (N, G, L)
        z = torch.tanh(f) * torch.sigmoid(g)
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """WaveNet stack: ``(N, in_channels, L) -> (N, out_channels, L)``, causal.

    ``dilations`` defaults to ``(1, 2, ..., 2**(layers_per_stack - 1))`` repeated ``stacks`` times.
    ``receptive_field`` = ``input_kernel + sum((kernel_size - 1) * d)`` samples.

    >>> import torch, atrous.nn as ann
    >>> net = ann.WaveNet(1, 4, residual_channels=8, skip_channels=8, layers_per_stack=5, stacks=2)
    >>> net(torch.randn(2, 1, 100)).shape, net.receptive_field
    (torch.Size([2, 4, 100]), 64)
    """

    __jit_unused_properties__ = ["receptive_field"]

    def __init__(self, in_channels: int, out_channels: int, residual_channels: int = 32,
                 gate_channels: Optional[int] = None, skip_channels: Optional[int] = None, kernel_size: int = 2,
                 layers_per_stack: int = 10, stacks: int = 1, dilations: Optional[Sequence[int]] = None,
                 input_kernel_size: int = 2) -> None:
        super().__init__()
        for name, v in [("in_channels", in_channels), ("out_channels", out_channels),
                        ("residual_channels", residual_channels), ("kernel_size", kernel_size),
                        ("layers_per_stack", layers_per_stack), ("stacks", stacks),
                        ("input_kernel_size", input_kernel_size)]:
            _check_positive_int(v, name)
        gate_channels = residual_channels if gate_channels is None else gate_channels
        skip_channels = residual_channels if skip_channels is None else skip_channels
        if dilations is None:
            dilations = [2 ** i for i in range(layers_per_stack)] * stacks
        dilations = list(dilations)
        if not dilations:
            raise ValueError("dilations must not be empty")
        for d in dilations:
            _check_positive_int(d, "dilations entries")
        self.in_channels, self.kernel_size, self.input_kernel_size = in_channels, kernel_size, input_kernel_size
        self.dilations = tuple(dilations)
        self.input = Conv1d(in_channels, residual_channels, input_kernel_size, padding="causal")
        self.layers = nn.ModuleList([GatedResidualLayer(residual_channels, gate_channels, skip_channels,
                                                        kernel_size, d) for d in dilations])
        self.head = nn.Sequential(nn.ReLU(), Conv1d(skip_channels, skip_channels, 1), nn.ReLU(),
                                  Conv1d(skip_channels, out_channels, 1))

    @property
    def receptive_field(self) -> int:
        convs = [(self.input_kernel_size, 1, 1)] + [(self.kernel_size, 1, d) for d in self.dilations]
        return field_1d(self, self.in_channels, convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input(x)                                           # (N, R, L)
        skips: Optional[torch.Tensor] = None
        for layer in self.layers:
            x, s = layer(x)
            skips = s if skips is None else skips + s               # (N, S, L)
        assert skips is not None  # (internal: TorchScript Optional refinement; dilations non-empty)
        return self.head(skips)
