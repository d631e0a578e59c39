"""Receptive field of the 1-D stacks (TCN, WaveNet): ``atrous.receptive_field`` when the analysis
module can do it, else the chain of :func:`atrous.geometry.rf_step` over the longest path."""

from __future__ import annotations

from .. import geometry


def chain_field(convs) -> int:
    """Field size (input samples) of a chain of 1-D convs, each ``(kernel, stride, dilation)``.

    >>> chain_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)])
    15
    """
    r = (1, 1, 0.0)
    for k, s, d in convs:
        r = geometry.rf_step(*r, kernel=k, stride=s, dilation=d)
    return int(r[0])


def field_1d(model, in_channels: int, convs) -> int:
    """``atrous.receptive_field(model, (1, in_channels, length)).size[0]`` if available, else
    :func:`chain_field` of the longest path ``convs``."""
    import atrous

    fallback = chain_field(convs)
    try:
        rf = atrous.receptive_field(model, (1, in_channels, 2 * fallback))
        size = rf.size[0]
    except (NotImplementedError, ValueError, TypeError):  # analysis declines this model: use geometry
        return fallback
    return int(size)
