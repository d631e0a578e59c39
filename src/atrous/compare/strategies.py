"""The ONE factory of the compared networks: six ways to grow a receptive field, same depth, same
head, differing only where the strategy says.

The claim under test comes from Yu & Koltun, "Multi-Scale Context Aggregation by Dilated
Convolutions" (ICLR 2016) and the gridding analysis of Wang et al., "Understanding Convolution for
Semantic Segmentation" (WACV 2018, hybrid dilated convolution): to grow the field one can pool,
stride, enlarge the kernel or dilate; dilation keeps resolution and parameters.

Every network is ``depth`` blocks ``conv -> BatchNorm -> ReLU`` of ``width`` channels, each conv an
:class:`atrous.nn.Conv1d`/``Conv2d`` with ``padding="same"``, then a head:

* classification: global average pool + linear (``(N, C, *S) -> (N, classes)``);
* dense (segmentation): a 1x1 conv to class logits, upsampled (bilinear/linear) back to the input
  size when the body reduced it (``(N, C, *S) -> (N, classes, *S)``).

Strategies (``k`` = 3 taps unless said):

========  ===========================================================================
plain     d = 1 everywhere: the small-field baseline (field ``1 + 2*depth``)
pool      2x max-pooling after the first ``p`` blocks, ``p`` the fewest reaching the target
stride    stride 2 in the first ``s`` convs, ``s`` the fewest reaching the target
large     every kernel grown to the smallest odd ``k`` reaching the target
dilated   the best hole-free schedule of :func:`atrous.design_dilations`
gridded   twice a hole-free schedule for half the target: common factor 2, every odd
          offset is a hole (the gridding artefact)
========  ===========================================================================

Field sizes are planned with :func:`atrous.geometry.rf_step` and verified on the built model with
:func:`atrous.receptive_field`.

>>> p = plan("dilated", target_rf=40, depth=5)
>>> p.field >= 40, len(p.dilations)
(True, 5)
>>> plan("large", 40, depth=5).kernels
(9, 9, 9, 9, 9)
>>> plan("pool", 40, depth=5).pools
(True, True, True, False, False)
"""

from __future__ import annotations

import difflib
import functools
import numbers
from dataclasses import asdict, dataclass

from .. import geometry

__all__ = ["STRATEGIES", "Plan", "plan", "build", "check_strategies", "verify_field"]

STRATEGIES = ("plain", "pool", "stride", "large", "dilated", "gridded")


@dataclass(frozen=True)
class Plan:
    """A strategy's layers: per conv its ``kernels``, ``strides``, ``dilations``, whether a 2x
    max-pool follows (``pools``); ``field`` is the receptive field per axis it reaches."""

    strategy: str
    kernels: tuple
    strides: tuple
    dilations: tuple
    pools: tuple
    field: int

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check_int(value, name: str, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_strategies(names) -> tuple[str, ...]:
    """Validate strategy names (a comma-separated string or a sequence), suggesting close matches.

    >>> check_strategies("plain,dilated")
    ('plain', 'dilated')
    >>> check_strategies("plain,dilatd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: strategies must be among 'plain', ..., 'gridded'; got 'dilatd' (did you mean 'dilated'?)
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    if not names:
        raise ValueError("strategies must name at least one of " + ", ".join(map(repr, STRATEGIES)))
    for n in names:
        if n not in STRATEGIES:
            close = difflib.get_close_matches(str(n), STRATEGIES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"strategies must be among {', '.join(map(repr, STRATEGIES))}; "
                             f"got {n!r}{hint}")
    if len(set(names)) != len(names):
        raise ValueError(f"strategies must not repeat a name, got {','.join(names)}")
    return names


def _field(kernels, strides, dilations, pools) -> int:
    """Receptive field (one axis) of the conv/pool stack, by geometry.rf_step."""
    r = (1, 1, 0.0)
    for k, s, d, p in zip(kernels, strides, dilations, pools):
        r = geometry.rf_step(*r, kernel=k, stride=s, dilation=d)
        if p:
            r = geometry.rf_step(*r, kernel=2, stride=2)
    return int(r[0])


def _hole_free(target: int, depth: int, kernel: int = 3) -> tuple[int, ...]:
    """A hole-free schedule of exactly ``depth`` layers whose field is the smallest design found
    ``>= target``.

    :func:`atrous.design_dilations` returns schedules of the *smallest* depth ``L`` for a target;
    ``depth - L`` extra d=1 layers in front keep the coverage hole-free and add ``(k-1)`` each, so we
    ask for ``target - (k-1)*extra`` with the fewest ``extra`` whose smallest depth is
    ``depth - extra``, bounding the field (``max_field``) to stay close to the target.
    """
    from .. import design
    for extra in range(depth):
        t = max(target - (kernel - 1) * extra, 1)
        try:
            ranked = (design.design_dilations(t, kernel=kernel, max_layers=depth - extra,
                                              max_field=t + 2 * (kernel - 1))
                      or design.design_dilations(t, kernel=kernel, max_layers=depth - extra))
        except ValueError:
            continue
        if ranked and len(ranked[0].dilations) == depth - extra:
            return (1,) * extra + tuple(int(d) for d in ranked[0].dilations)
    # a target so small that fewer layers always suffice: the best schedule, d=1 layers in front
    try:
        best = design.design_dilations(target, kernel=kernel, max_layers=depth)[0].dilations
        return (1,) * (depth - len(best)) + tuple(int(d) for d in best)
    except (ValueError, IndexError):
        pass
    raise ValueError(f"target_rf {target} cannot be reached without holes in exactly {depth} "
                     f"layers of kernel {kernel}; raise depth or lower target_rf")


def plan(strategy: str, target_rf: int, depth: int = 5, in_size: int | None = None,
         kernel: int = 3) -> Plan:
    """The layers of ``strategy`` at ``depth`` convs reaching ``target_rf`` input samples per axis.

    ``in_size`` (the input length per axis, optional) checks that pooling/striding leaves at least
    one sample. ``plain`` ignores the target (it is the baseline). Raises ``ValueError`` if the
    strategy cannot reach the target at this depth.

    >>> plan("stride", 40, depth=5).strides
    (2, 2, 2, 1, 1)
    >>> plan("gridded", 40, depth=5).dilations[0] % 2
    0
    """
    check_strategies([strategy])
    target_rf = _check_int(target_rf, "target_rf")
    depth = _check_int(depth, "depth")
    kernel = _check_int(kernel, "kernel", 2)
    ones = (1,) * depth
    no = (False,) * depth

    def make(kernels=(kernel,) * depth, strides=ones, dilations=ones, pools=no):
        return Plan(strategy, tuple(kernels), tuple(strides), tuple(dilations), tuple(pools),
                    _field(kernels, strides, dilations, pools))

    if strategy == "plain":
        p = make()
    elif strategy in ("pool", "stride"):
        for n in range(depth + 1):
            first = tuple(i < n for i in range(depth))
            p = (make(pools=first) if strategy == "pool"
                 else make(strides=tuple(2 if f else 1 for f in first)))
            if p.field >= target_rf:
                break
        else:
            raise ValueError(f"target_rf {target_rf} is out of reach of {strategy!r} at depth {depth} "
                             f"(at most {p.field}); raise depth or lower target_rf")
    elif strategy == "large":
        k = kernel
        while make(kernels=(k,) * depth).field < target_rf:
            k += 2 if k % 2 else 1
        p = make(kernels=(k,) * depth)
    elif strategy == "dilated":
        p = make(dilations=_hole_free(target_rf, depth, kernel))
    else:  # gridded: factor 2 times a hole-free schedule for half the extent
        half = -(-(target_rf - 1) // 2) + 1
        base = _hole_free(half, depth, kernel)
        p = make(dilations=tuple(2 * d for d in base))
    if in_size is not None:
        _final_size(p, _check_int(in_size, "in_size"))
    return p


def _final_size(p: Plan, n: int) -> int:
    """Length of one axis after the body (geometry's 'same' padding and output size)."""
    for k, s, d, pool in zip(p.kernels, p.strides, p.dilations, p.pools):
        pads = geometry.resolve_padding("same", (n,), (k,), (s,), (d,))
        n = geometry.output_size(n, k, s, d, pads[0])
        if pool:
            if n < 2:
                raise ValueError(f"{p.strategy!r} pools an axis of {n} sample(s): the input is too "
                                 "small for this target_rf/depth")
            n = geometry.output_size(n, 2, 2)
    return n


def build(strategy: str, in_channels: int, num_classes: int, target_rf: int, *, dims: int = 1,
          depth: int = 5, width: int = 32, dense: bool = False, in_size: int | None = None):
    """Build the network of ``strategy`` (a ``torch.nn.Module`` with ``.body``, ``.head``, ``.plan``).

    Input ``(N, in_channels, *spatial)`` with ``dims`` spatial axes; output ``(N, num_classes)``,
    or ``(N, num_classes, *spatial)`` when ``dense``. ``in_size`` (the input length per axis), when
    given, checks that the body leaves at least one sample. Every conv pads "same" (resolved by
    :mod:`atrous.geometry` at any stride and length).

    >>> import torch
    >>> m = build("dilated", 1, 10, target_rf=40)
    >>> m(torch.randn(2, 1, 40)).shape
    torch.Size([2, 10])
    >>> build("pool", 1, 11, target_rf=28, dims=2, dense=True)(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 11, 28, 28])
    """
    torch = _torch()
    from .. import nn as ann
    nn = torch.nn
    in_channels = _check_int(in_channels, "in_channels")
    num_classes = _check_int(num_classes, "num_classes")
    width = _check_int(width, "width")
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    p = plan(strategy, target_rf, depth, in_size)
    Conv = {1: ann.Conv1d, 2: ann.Conv2d, 3: ann.Conv3d}[dims]
    Norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    Pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    layers, c = [], in_channels
    for k, s, d, pool in zip(p.kernels, p.strides, p.dilations, p.pools):
        layers += [Conv(c, width, k, stride=s, padding="same", dilation=d, bias=False),
                   Norm(width), nn.ReLU()]
        if pool:
            layers.append(Pool(2))
        c = width
    return _Net(nn.Sequential(*layers), width, num_classes, dims, dense, p)


def _torch():
    from .._optional import require
    return require("torch")


@functools.cache
def _net_class():
    torch = _torch()

    class StrategyNet(torch.nn.Module):
        """``body`` (the strategy's conv stack) + head (global pool + linear, or 1x1 conv +
        upsampling back to the input size for dense outputs)."""

        def __init__(self, body, width, num_classes, dims, dense, plan):
            super().__init__()
            nn = torch.nn
            self.body, self.dense, self.plan, self.dims = body, dense, plan, dims
            if dense:
                self.head = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](width, num_classes, 1)
            else:
                pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
                self.head = nn.Sequential(pool(1), nn.Flatten(), nn.Linear(width, num_classes))
            self._mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]

        def forward(self, x):
            f = self.body(x)                                    # (N, width, *S')
            y = self.head(f)                                    # (N, classes) or (N, classes, *S')
            if self.dense and y.shape[2:] != x.shape[2:]:
                y = torch.nn.functional.interpolate(y, size=x.shape[2:], mode=self._mode,
                                                    align_corners=False)  # (N, classes, *S)
            return y

    return StrategyNet


def _Net(*args):
    return _net_class()(*args)


def verify_field(model, input_shape) -> tuple:
    """Check the built ``model.body`` reaches its planned field on every axis with
    :func:`atrous.receptive_field`; return the measured ``ReceptiveField``. Raises ``RuntimeError``
    on a mismatch (a factory bug, never a user error).

    >>> m = build("large", 1, 10, target_rf=40)
    >>> verify_field(m, (1, 1, 40)).size
    (41,)
    """
    from ..analysis.receptive_field import receptive_field
    rf = receptive_field(model.body, tuple(input_shape))
    want = (model.plan.field,) * (len(input_shape) - 2)
    if tuple(int(s) for s in rf.size) != want:
        raise RuntimeError(f"{model.plan.strategy!r} was planned with field {want} but "
                           f"atrous.receptive_field measures {tuple(rf.size)}")
    return rf
