"""PyTorch layers for dilated convolution (extra: ``torch``).

``import atrous.nn`` imports torch; ``import atrous`` does not import this package.

* :class:`Conv1d`, :class:`Conv2d`, :class:`Conv3d`, :func:`conv` -- every padding mode.
"""

from .._optional import require

require("torch")

from .conv import Conv1d, Conv2d, Conv3d, conv  # noqa: E402

__all__ = ["Conv1d", "Conv2d", "Conv3d", "conv"]
