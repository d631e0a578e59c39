"""atrous: dilated (atrous) convolutions -- compute, measure, design, use, compare.

``import atrous`` loads NumPy only; the PyTorch layers live in :mod:`atrous.nn` (extra ``torch``)
and figures in :mod:`atrous.plot` (extra ``plot``), both imported on demand.

>>> import numpy as np, atrous
>>> x = np.ones((1, 1, 8), dtype=np.float32)          # (N, C_in, L)
>>> w = np.ones((1, 1, 3), dtype=np.float32)          # (C_out, C_in, k)
>>> atrous.conv(x, w, padding="same", dilation=2).shape
(1, 1, 8)
"""

__version__ = "0.1.0"

from . import geometry
from .conv import conv, conv_grad, conv_transpose, get_memory_budget, set_memory_budget
from .analysis.receptive_field import Layer, ReceptiveField, receptive_field, receptive_fields
from .analysis.coverage import Coverage, coverage, hdc_check
from .analysis.cost import cost
from .analysis.erf import effective_receptive_field
from .design import design_dilations

__all__ = [
    "__version__",
    "geometry",
    "conv",
    "conv_grad",
    "conv_transpose",
    "get_memory_budget",
    "set_memory_budget",
    "Layer",
    "ReceptiveField",
    "receptive_field",
    "receptive_fields",
    "Coverage",
    "coverage",
    "hdc_check",
    "cost",
    "effective_receptive_field",
    "design_dilations",
]
