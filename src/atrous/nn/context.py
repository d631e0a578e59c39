"""Context module (Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated Convolutions",
Sec. 3 and Table 1).

Seven 3x3 convolutions with dilations ``1, 1, 2, 4, 8, 16, 1`` (receptive field 67x67), each followed
by ReLU, and a final 1x1 convolution back to ``C`` channels, also followed by ReLU. The *basic*
variant keeps ``C`` channels throughout; the *large* one widens to ``2C, 2C, 4C, 8C, 16C, 32C, 32C``.

Identity initialisation (the paper's Eqs. 4-5): the basic module's kernels are ``1[t = 0] 1[a = b]``;
the large module's layer from ``c_i`` to ``c_{i+1}`` channels gets ``C / c_{i+1}`` at the centre tap
where input group ``floor(a C / c_i)`` equals output group ``floor(b C / c_{i+1})``. Biases are 0 and
``noise_std`` (default 0) adds the paper's small Gaussian perturbation. A fresh basic module returns
its input exactly (bit for bit) for ``x >= 0`` (its inputs are ReLU/softmax maps; the ReLUs clip
negative values); the large one up to float rounding (its last layer sums 32 copies of ``x / 32``).
"""

from __future__ import annotations

import difflib
import numbers
from typing import Optional, Sequence

import torch
from torch import nn

from .. import geometry
from .conv import Conv2d, _check_positive_int, conv

__all__ = ["ContextModule", "context_module", "DEFAULT_DILATIONS", "LARGE_WIDTHS"]

DEFAULT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)


def context_module(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                   dilations: Sequence[int] = DEFAULT_DILATIONS) -> torch.Tensor:
    """Functional twin of :class:`ContextModule`: ``relu(conv(x, w_i, b_i, "same", d_i))`` for each
    3x3 layer, then the final 1x1 layer ``weights[-1]`` with ReLU. ``(N, C, H, W) -> (N, C, H, W)``.

    ``weights`` has ``len(dilations) + 1`` tensors; ``biases`` the same count (entries may be None).

    >>> import torch, atrous.nn as ann
    >>> m = ann.ContextModule(3)
    >>> x = torch.rand(1, 3, 20, 20)
    >>> w = [c.weight for c in m.convs]; b = [c.bias for c in m.convs]
    >>> torch.equal(ann.context_module(x, w, b), x)       # identity initialisation
    True
    """
    dilations = tuple(dilations) + (1,)
    if len(weights) != len(dilations) or len(biases) != len(dilations):
        raise ValueError(f"weights and biases need {len(dilations)} entries (one per dilation plus the "
                         f"final 1x1), got {len(weights)} and {len(biases)}")
    for w, b, d in zip(weights, biases, dilations):
        x = torch.relu(conv(x, w, b, padding="same", dilation=d))
    return x


def _identity_kernel(c_in: int, c_out: int, c: int, k: int) -> torch.Tensor:
    """Yu & Koltun Eq. 5: ``C / c_out`` at the centre where ``floor(a C / c_in) == floor(b C / c_out)``."""
    a = torch.arange(c_in) * c // c_in                  # input channel groups  (c_in,)
    b = torch.arange(c_out) * c // c_out                # output channel groups (c_out,)
    w = torch.zeros(c_out, c_in, k, k, dtype=torch.float64)
    w[:, :, k // 2, k // 2] = (b[:, None] == a[None, :]).double() * (c / c_out)
    return w


class ContextModule(nn.Module):
    """Yu & Koltun's context module: ``(N, C, H, W) -> (N, C, H, W)``, receptive field 67.

    ``variant="basic"`` (all layers ``C`` wide) or ``"large"`` (widths ``C * LARGE_WIDTHS``, or
    ``widths`` multipliers you pass). ``dilations`` are the 3x3 layers' dilations (default
    ``1, 1, 2, 4, 8, 16, 1``); a final 1x1 layer maps back to ``C``. Padding is ``"same"``.
    ``identity_init=True`` (default) applies the paper's identity initialisation.

    >>> import torch, atrous.nn as ann
    >>> x = torch.rand(2, 4, 32, 32)
    >>> torch.equal(ann.ContextModule(4)(x), x), ann.ContextModule(4).receptive_field
    (True, 67)
    >>> torch.allclose(ann.ContextModule(4, variant="large")(x), x, rtol=1e-6, atol=0)
    True
    """

    __jit_unused_properties__ = ["receptive_field"]

    def __init__(self, channels: int, variant: str = "basic", dilations: Sequence[int] = DEFAULT_DILATIONS,
                 widths: Optional[Sequence[int]] = None, identity_init: bool = True, noise_std: float = 0.0) -> None:
        super().__init__()
        c = _check_positive_int(channels, "channels")
        if variant not in ("basic", "large"):
            close = difflib.get_close_matches(str(variant), ("basic", "large"), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"variant must be 'basic' or 'large', got {variant!r}{hint}")
        dilations = tuple(dilations)
        if not dilations:
            raise ValueError("dilations must not be empty")
        for d in dilations:
            _check_positive_int(d, "dilations entries")
        if widths is None:
            widths = LARGE_WIDTHS if variant == "large" else (1,) * len(dilations)
        widths = tuple(widths)
        if len(widths) != len(dilations):
            raise ValueError(f"widths must have one multiplier per dilation ({len(dilations)}), got {widths!r}")
        for w in widths:
            _check_positive_int(w, "widths entries")
        if not isinstance(noise_std, numbers.Real) or noise_std < 0:
            raise ValueError(f"noise_std must be a float >= 0, got {noise_std!r}")
        self.channels, self.variant, self.dilations = c, variant, dilations
        chans = [c] + [c * w for w in widths] + [c]
        self.convs = nn.ModuleList(
            [Conv2d(chans[i], chans[i + 1], 3, padding="same", dilation=d) for i, d in enumerate(dilations)]
            + [Conv2d(chans[-2], c, 1)])
        if identity_init:
            with torch.no_grad():
                for m in self.convs:
                    w = _identity_kernel(m.in_channels, m.out_channels, c, m.kernel_size[0])
                    if noise_std:
                        w = w + noise_std * torch.randn_like(w)
                    m.weight.copy_(w)
                    m.bias.zero_()

    @property
    def receptive_field(self) -> int:
        """Field size per spatial axis: 67 for the default dilations (paper's Table 1)."""
        r = (1, 1, 0.0)
        for m in self.convs:
            r = geometry.rf_step(*r, kernel=m.kernel_size[0], dilation=m.dilation[0])
        return int(r[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.convs:
            x = torch.relu(m(x))                         # (N, c_i, H, W)
        return x
