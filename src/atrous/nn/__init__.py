"""PyTorch layers for dilated convolution (extra: ``torch``).

``import atrous.nn`` imports torch; ``import atrous`` does not import this package.

* :class:`Conv1d`, :class:`Conv2d`, :class:`Conv3d` -- ``nn.Conv*d`` subclasses with every padding
  mode ("same" at any stride, "causal", "full", per-side pairs), and their functional twin :func:`conv`;
* :class:`ContextModule` (Yu & Koltun 2016), :class:`ASPP` (DeepLabV3), :class:`TCN`
  (Bai et al. 2018), :class:`WaveNet` (van den Oord et al. 2016), with functional twins;
* :func:`convert_to_dilated` -- strides of a backbone's last stages (convs and pooling) to dilation
  (DeepLab), exactly; :class:`AvgPool2d` -- ``nn.AvgPool2d`` with dilation;
* :func:`stream` -- exact streaming inference for causal stacks with explicit ring-buffer state.
"""

from .._optional import require

require("torch")

from .conv import Conv1d, Conv2d, Conv3d, conv  # noqa: E402
from .tcn import TCN, TemporalBlock, temporal_block  # noqa: E402
from .wavenet import GatedResidualLayer, WaveNet, gated_residual  # noqa: E402
from .context import ContextModule, context_module  # noqa: E402
from .aspp import ASPP, aspp, rates_for, valid_tap_fraction  # noqa: E402
from .stream import Stepper, StreamConv1d, stream  # noqa: E402
from .pool import AvgPool2d  # noqa: E402
from .convert import convert_to_dilated, output_stride_of  # noqa: E402

__all__ = ["Conv1d", "Conv2d", "Conv3d", "conv", "TemporalBlock", "TCN", "temporal_block",
           "GatedResidualLayer", "WaveNet", "gated_residual", "ContextModule", "context_module",
           "ASPP", "aspp", "rates_for", "valid_tap_fraction", "stream", "Stepper", "StreamConv1d",
           "convert_to_dilated", "output_stride_of", "AvgPool2d"]
