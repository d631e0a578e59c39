"""The arithmetic of one convolution axis, and nothing else.

Every other module of atrous calls these functions; nobody re-derives the formulas.

A kernel of ``k`` taps with dilation ``d`` spans ``d*(k-1)+1`` input samples (its *effective
kernel*). With ``lo``/``hi`` samples of padding and stride ``s`` an axis of ``n`` samples gives
``floor((n + lo + hi - eff) / s) + 1`` outputs.

Padding specs understood by :func:`resolve_padding`:

* ``int`` -- the same on both sides of every axis;
* a tuple of ints -- one per axis, both sides;
* a tuple of ``(lo, hi)`` pairs -- one pair per axis;
* ``"valid"`` -- no padding;
* ``"same"`` -- ``out = ceil(n / stride)`` for any stride and dilation; an odd total puts the extra
  sample on the high side (TensorFlow's rule);
* ``"causal"`` -- on the causal axes (default: the first spatial axis, time) all padding goes before,
  ``eff - 1`` samples, so output ``t`` sees only inputs ``<= t*stride``; other axes get ``"same"``;
* ``"full"`` -- ``eff - 1`` on both sides: every partial overlap.

>>> effective_kernel(3, 4)
9
>>> resolve_padding("same", in_sizes=(10,), kernel=(3,), stride=(2,), dilation=(2,))
((1, 2),)
>>> output_size(10, 3, stride=2, dilation=2, pad=(1, 2))
5
"""

from __future__ import annotations

import difflib
import numbers
from typing import Sequence, Tuple, Union

__all__ = [
    "PADDING_MODES",
    "IntOrTuple",
    "PaddingArg",
    "normalize_tuple",
    "effective_kernel",
    "output_size",
    "resolve_padding",
    "conv_output_shape",
    "transpose_output_size",
    "rf_step",
    "tap_offsets",
    "transpose_tap_offsets",
]

PADDING_MODES = ("valid", "same", "causal", "full")

IntOrTuple = Union[int, Sequence[int]]
"""A per-axis argument: one int for every axis, or one int per axis."""
PaddingArg = Union[str, int, Sequence[Union[int, Tuple[int, int], Sequence[int]]]]
"""A padding spec: ``"valid" | "same" | "causal" | "full"``, an int, one int per axis, or one
``(lo, hi)`` pair per axis."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_tuple(value: IntOrTuple, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """Turn an int or a per-axis sequence into a tuple of ``n`` ints, each ``>= minimum``.

    >>> normalize_tuple(2, 3, "dilation")
    (2, 2, 2)
    >>> normalize_tuple((1, 4), 2, "dilation")
    (1, 4)
    >>> normalize_tuple((2, 0), 2, "dilation")
    Traceback (most recent call last):
    ...
    ValueError: dilation must be >= 1 per axis, got (2, 0)
    """
    if _is_int(value):
        out = (int(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial axis), "
                f"got {tuple(value)!r} of length {len(value)}"
            )
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must contain ints, got {tuple(value)!r}")
        out = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in out):
        shown = value if isinstance(value, (tuple, list)) else value
        shown = tuple(shown) if isinstance(shown, list) else shown
        raise ValueError(f"{name} must be >= {minimum} per axis, got {shown!r}")
    return out


def effective_kernel(kernel: int, dilation: int) -> int:
    """Input samples spanned by ``kernel`` taps spaced ``dilation`` apart: ``d*(k-1)+1``.

    >>> [effective_kernel(3, d) for d in (1, 2, 4)]
    [3, 5, 9]
    """
    return dilation * (kernel - 1) + 1


def output_size(n: int, kernel: int, stride: int = 1, dilation: int = 1, pad: Sequence[int] = (0, 0), *,
                axis: int | None = None) -> int:
    """Number of outputs on one axis of ``n`` samples padded by ``pad = (lo, hi)``.

    Raises ``ValueError`` when the effective kernel is larger than the padded input.

    >>> output_size(7, 3, dilation=4, pad=(0, 0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: effective kernel 9 (kernel 3, dilation 4) is larger than the padded input 7 ... on spatial axis 0
    """
    lo, hi = pad
    eff = effective_kernel(kernel, dilation)
    padded = n + lo + hi
    if padded < eff:
        where = f" on spatial axis {axis if axis is not None else 0}"
        raise ValueError(
            f"effective kernel {eff} (kernel {kernel}, dilation {dilation}) is larger than the "
            f"padded input {padded} (input {n}, padding ({lo}, {hi})){where}"
        )
    return (padded - eff) // stride + 1


def _same_pad(n: int, eff: int, stride: int) -> tuple[int, int]:
    out = -(-n // stride)  # ceil(n / stride)
    total = max((out - 1) * stride + eff - n, 0)
    return total // 2, total - total // 2


def resolve_padding(padding: PaddingArg, in_sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int], causal_axes: Sequence[int] | int = (0,)
                    ) -> tuple[tuple[int, int], ...]:
    """Resolve any padding spec to one ``(lo, hi)`` pair per spatial axis.

    ``in_sizes``, ``kernel``, ``stride`` and ``dilation`` are already per-axis tuples.
    ``causal_axes`` (only used by ``"causal"``) names the spatial axes that are causal.

    >>> resolve_padding("causal", (16,), (3,), (1,), (4,))
    ((8, 0),)
    >>> resolve_padding("full", (5, 5), (3, 3), (1, 1), (1, 2))
    ((2, 2), (4, 4))
    >>> resolve_padding(((0, 1), (2, 3)), (5, 5), (3, 3), (1, 1), (1, 1))
    ((0, 1), (2, 3))
    >>> resolve_padding("sme", (5,), (3,), (1,), (1,))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: padding must be an int, a tuple, or one of ...; got 'sme' (did you mean 'same'?)
    """
    n = len(kernel)
    if isinstance(padding, str):
        mode = padding
        if mode not in PADDING_MODES:
            close = difflib.get_close_matches(mode.lower(), PADDING_MODES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                "padding must be an int, a tuple, or one of 'valid', 'same', 'causal', 'full'; "
                f"got {padding!r}{hint}"
            )
        effs = [effective_kernel(k, d) for k, d in zip(kernel, dilation)]
        if mode == "valid":
            return ((0, 0),) * n
        if mode == "full":
            return tuple((e - 1, e - 1) for e in effs)
        if mode == "same":
            return tuple(_same_pad(m, e, s) for m, e, s in zip(in_sizes, effs, stride))
        # causal
        axes = (causal_axes,) if _is_int(causal_axes) else tuple(causal_axes)
        for a in axes:
            if not _is_int(a) or not -n <= a < n:
                raise ValueError(f"causal_axes must name spatial axes in [0, {n}), got {causal_axes!r}")
        axes = {a % n for a in axes}
        return tuple((e - 1, 0) if i in axes else _same_pad(m, e, s)
                     for i, (m, e, s) in enumerate(zip(in_sizes, effs, stride)))
    if _is_int(padding):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return ((int(padding), int(padding)),) * n
    if isinstance(padding, (tuple, list)):
        if len(padding) != n:
            raise ValueError(
                f"padding must have one entry per spatial axis ({n}), got {padding!r} of length "
                f"{len(padding)}"
            )
        pairs = []
        for p in padding:
            if _is_int(p):
                pairs.append((int(p), int(p)))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                raise TypeError(
                    f"padding entries must be ints or (lo, hi) pairs of ints, got {padding!r}")
        if any(v < 0 for pr in pairs for v in pr):
            raise ValueError(f"padding must be >= 0 per side, got {padding!r}")
        return tuple(pairs)
    raise TypeError(
        "padding must be an int, a tuple, or one of 'valid', 'same', 'causal', 'full'; "
        f"got {padding!r}")


def conv_output_shape(in_sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      dilation: Sequence[int], pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """Output spatial shape of a convolution, one :func:`output_size` per axis.

    >>> conv_output_shape((64, 64), (3, 3), (1, 1), (2, 4), ((2, 2), (4, 4)))
    (64, 64)
    """
    return tuple(output_size(n, k, s, d, p, axis=i)
                 for i, (n, k, s, d, p) in enumerate(zip(in_sizes, kernel, stride, dilation, pads)))


def transpose_output_size(n: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0,
                          output_padding: int = 0) -> int:
    """Output length of a transposed convolution (PyTorch's formula).

    ``(n - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1``

    >>> transpose_output_size(32, 3, stride=2, dilation=2, padding=1, output_padding=1)
    66
    """
    return (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def rf_step(size: float, jump: float, start: float, kernel: int, stride: int = 1,
            pad_lo: float = 0, dilation: int = 1) -> tuple[float, float, float]:
    """One layer's receptive-field update on one axis: ``(size, jump, start) -> (size', jump', start')``.

    ``size' = size + d(k-1)*jump``, ``jump' = jump*stride``,
    ``start' = start + (d(k-1)/2 - pad_lo)*jump``. Start from ``(1, 1, 0)`` at the input.

    >>> r = (1, 1, 0.0)
    >>> for d in (1, 1, 2, 4, 8, 16, 1):     # Yu & Koltun's context module, 3x3 layers
    ...     r = rf_step(*r, kernel=3, pad_lo=d, dilation=d)
    >>> r
    (67, 1, 0.0)
    """
    span = dilation * (kernel - 1)
    return size + span * jump, jump * stride, start + (span / 2 - pad_lo) * jump


def tap_offsets(kernel: int, dilation: int = 1, pad_lo: int = 0) -> tuple[int, ...]:
    """Input positions read by output 0 of a convolution (output ``o`` reads these ``+ o*stride``).

    Tap ``t`` of output ``o`` reads input ``o*stride - pad_lo + t*dilation``.

    >>> tap_offsets(3, dilation=2, pad_lo=2)
    (-2, 0, 2)
    """
    return tuple(t * dilation - pad_lo for t in range(kernel))


def transpose_tap_offsets(kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0
                          ) -> tuple[tuple[int, ...], ...]:
    """Input positions feeding each output phase of a transposed convolution.

    Input ``i`` scatters to outputs ``i*stride - padding + t*dilation``; so output ``o`` (phase
    ``o % stride``) receives input ``(o + padding - t*dilation) / stride`` for the taps ``t`` that
    divide evenly. Entry ``phi`` lists them for output ``phi``; output ``phi + m*stride`` gets the same
    inputs ``+ m``. An empty entry is a phase that receives no input at all.

    >>> transpose_tap_offsets(4, stride=2, dilation=2, padding=1)   # even outputs get nothing
    ((), (1, 0, -1, -2))
    >>> transpose_tap_offsets(3, stride=2, padding=1)
    ((0,), (1, 0))
    """
    phases = []
    for phi in range(stride):
        phases.append(tuple((phi + padding - t * dilation) // stride for t in range(kernel)
                            if (phi + padding - t * dilation) % stride == 0))
    return tuple(phases)
