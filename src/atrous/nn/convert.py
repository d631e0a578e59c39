"""Turn the last strided stages of a backbone into dilated ones (Chen et al. 2015/2017, DeepLab v1
"hole algorithm" and DeepLabV3 Sec. 3.2 "Going deeper with atrous convolution"; Yu, Koltun &
Funkhouser 2017, "Dilated Residual Networks").

A layer whose input has cumulative stride ``r`` (per axis) and stride ``s`` reaches output stride
``r * s``. To cap the output stride at ``OS``: a layer with ``r * s > OS`` gets stride 1, and its
dilation and padding are multiplied by ``m = r / min(r, OS)`` -- its input grid is ``m`` times
finer than before. Then the converted network's feature map, subsampled by ``old_OS / OS``, is
exactly the original's: each output reads the same input samples with the same weights, and the
padding (zeros, or ``-inf`` for max pooling) falls on the same positions.

Converted: ``nn.Conv2d`` and its subclasses (:class:`atrous.nn.Conv2d` included) by setting
``stride``/``dilation``/``padding`` (a plain ``nn.Conv2d`` that needs asymmetric padding becomes an
:class:`atrous.nn.Conv2d` with the same weights); ``nn.MaxPool2d`` through its ``dilation``;
``nn.AvgPool2d`` becomes :class:`atrous.nn.AvgPool2d` (average pooling with dilation).

The strides are read from the analysis (:mod:`atrous.analysis`): the model is recorded once on
meta tensors, one node per call, and the op-rule registry gives each tensor's receptive field, whose
``jump`` per axis is the stride so far. A call the conversion does not rewrite -- a functional
``F.max_pool2d(x, 2)``, ``F.conv2d(..., stride=2)``, ``F.interpolate``, a pad, a spatial mean, a
reshape across positions, an ``nn.Upsample`` -- moves positions when its output's field differs
from its inputs'; where the conversion would have to change such a call (its input grid becomes
finer, or it takes the stride past ``output_stride``), it is refused by name. An op the registry
has no rule for is refused too: whether it moves positions is unknown.
"""

from __future__ import annotations

import copy
import fractions
import math
import numbers
import re
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .. import geometry
from ..analysis import fields as fl
from ..analysis import graph as G
from ..analysis import rules
from ..analysis import values as V
from ..analysis.fields import Periodic
from ..analysis.receptive_field import record_graph
from .conv import Conv2d, _ConvNd
from .pool import AvgPool2d

__all__ = ["convert_to_dilated", "output_stride_of"]

Frac = fractions.Fraction
_Grid = Tuple[Optional[Frac], ...]       # per-axis jump (input samples between neighbours; None: no grid)


def _handled(m: nn.Module) -> bool:
    """Layers the conversion rewrites (their inner calls are theirs, not the model's)."""
    return isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))


def _layer_stride(m: nn.Module) -> Tuple[int, int]:
    s = m.stride if m.stride not in (None, ()) else m.kernel_size
    return geometry.normalize_tuple(tuple(s) if isinstance(s, (list, tuple)) else s, 2, "stride")


def _show(r) -> str:
    r = ["unknown" if v is None else str(v) for v in r] if r is not None else ["unknown"]
    return r[0] if len(set(r)) == 1 else "x".join(r)


def _integral(r) -> bool:
    return r is not None and all(v is not None and v.denominator == 1 for v in r)


class _Trace:
    """The model recorded once on meta tensors (:mod:`atrous.analysis.graph`) and the values of
    what its output and its conv/pool layers depend on: the jump of every tensor (its cumulative
    stride) comes from the analysis's fields, so the op-rule registry is the only op table."""

    def __init__(self, model: nn.Module, who: str, input_size):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError(f"{who}: the model has no Conv2d layer")
        h, w = _check_input_size(input_size)
        shape = (1, first.in_channels, h, w)
        self.model = model
        g = record_graph(model, shape)                # every submodule keeps its own train/eval flag
        if g.error:   # the shape-only run failed (a plain tensor attribute on the CPU, a value read): on zeros
            xs, sizes = G.torch_inputs(model, shape, meta=False)
            g = G.record(model, xs, meta=False)
            g.sizes, g.ndim = tuple(sizes), len(sizes)
        self.g = g
        if g.error:
            kind, _, msg = g.error.partition(": ")
            etype, _, where = kind.partition(" ")
            raise ValueError(f"{who}: the model failed on a zero input of shape {shape} ({etype}: {msg[:200]})"
                             f"{' ' + where if where else ''}; pass a larger input_size")
        self.mods = mods = dict(model.named_modules())
        self.names = {id(m): n for n, m in mods.items()}
        members: Dict[str, List[int]] = {}                 # module call -> the nodes inside it
        for n in g.nodes:
            for c in n.scope:
                members.setdefault(c, []).append(n.index)
        handled = {}
        for c, q in g.call_scope.items():
            m = mods.get(q) or next((g.nodes[i].module for i in members.get(c, ()) if g.nodes[i].module_name == c),
                                    None)                  # a bare layer is recorded as a one-layer model
            if m is not None and _handled(m) and members.get(c):
                handled[c] = m
        self.layers: List[Tuple[str, nn.Module, int]] = []   # (name, module, input tensor) in call order
        self.inside: set = set()                           # nodes inside the converted layers' calls
        seen: set = set()
        for c in sorted(handled, key=lambda c: members[c][0]):
            nodes = members[c]
            if any(o in handled for o in g.nodes[nodes[0]].scope[:g.nodes[nodes[0]].scope.index(c)]):
                continue                                   # inside another converted layer
            m = handled[c]
            name = self.names.get(id(m), g.call_scope[c])
            if id(m) in seen:
                raise ValueError(f"{who}: layer {name!r} is called more than once in forward; "
                                 "each conv/pool must be used once to be converted")
            seen.add(id(m))
            inner = set(nodes)
            x = next((r.index for i in nodes for r in g.nodes[i].in_refs
                      if g.tensors[r.index].node >= 0 and g.tensors[r.index].node not in inner), None)
            if x is not None:
                self.layers.append((name, m, x))
            self.inside |= inner
        if len(g.outputs) != 1 or len(g.tensors[g.outputs[0]].shape) != 4:
            raise ValueError(f"{who}: the model must map (N, C, H, W) to a feature map (N, C', H', W')")
        self.out = g.outputs[0]
        try:
            self.values = G.lower(g, [self.out] + [x for _, _, x in self.layers])
        except G.AnalysisError as e:   # an op without a rule: whether it moves positions is unknown
            msg = re.sub(r"; pass treat_as_pointwise=.*\)$", ")", str(e))
            raise ValueError(f"{who}: {msg}, so the strides cannot be read") from None
        self._pf: Dict[int, tuple] = {}

    # ------------------------------------------------------------------ fields and grids
    def fields(self, t: int) -> tuple:
        """``(full, local)`` per axis of tensor ``t``, seen from its positions."""
        if t not in self._pf:
            self._pf[t] = V.position_fields(self.values[t])[:2]
        return self._pf[t]

    def grid(self, t: int) -> _Grid:
        """Per-axis jump of tensor ``t``: of its local field (normalisation statistics and global
        gates do not move positions), else of its full field; ``None`` where it has no grid."""
        v = self.values[t]
        out = []
        for f, lf in zip(*self.fields(t)):
            f = lf if isinstance(lf, Periodic) else f
            out.append(f.jump if isinstance(f, Periodic) and not v.lossy else None)
        return tuple(out)

    def checked(self):
        """``(node, dependent input tensors, output tensors)`` of every recorded call that is not
        inside a converted layer and depends on the input, in call order."""
        for n in self.g.nodes:
            if n.kind == "input" or n.index in self.inside:
                continue
            outs = [t for t in n.outs if t in self.values]
            ins = list(dict.fromkeys(r.index for r in n.in_refs
                                     if r.index in self.values and self.values[r.index].dependent))
            if outs and ins:
                yield n, ins, outs

    def moved(self, ins: List[int], outs: List[int], axis: int) -> bool:
        """Whether a call moves positions on ``axis``: an output's field differs from the union of
        its inputs' fields (a pointwise op, a relabel or a channel reduction keeps them)."""
        whole = self.values[ins[0]].whole[axis]
        try:
            want = [fl.union([self.fields(t)[j][axis] for t in ins], "", whole) for j in (0, 1)]
        except fl.FieldError:
            return True
        lossy = any(self.values[t].lossy for t in ins)
        return any((self.values[t].lossy and not lossy) or not all(
            fl.equal(self.fields(t)[j][axis], want[j]) for j in (0, 1))
            for t in outs if self.values[t].dependent)       # zeros_like(x) carries no position of x

    def uniform(self, t: int) -> bool:
        """Tensor ``t`` (which does not depend on the input) holds one value at every position: made
        by ``zeros``/``ones``/``full`` and the like, or pointwise ops of such tensors."""
        p = self.g.tensors[t].node
        if p < 0:                                          # a parameter or buffer
            return False
        n = self.g.nodes[p]
        return n.op in _UNIFORM or (rules.pointwise_op(n.op, G.is_method(n.target)) and
                                    all(self.uniform(r.index) for r in n.in_refs))

    def jump(self, ts: List[int]) -> List[Optional[Frac]]:
        """Per axis, the largest known jump of tensors ``ts``."""
        grids = [self.grid(t) for t in ts]
        return [max((r[k] for r in grids if r[k] is not None), default=None) for k in range(len(grids[0]))]

    # ------------------------------------------------------------------ names
    def who(self, n, prefix: bool = True) -> str:
        """``functional call F.max_pool2d in the forward of 'layer3' (Sequential)`` or ``layer 'up'
        (Upsample)`` for a call inside a layer the conversion does not rewrite."""
        g = self.g
        if n.module is not None and n.module_name:
            return f"layer {self.names.get(id(n.module), g.call_scope.get(n.module_name))!r} " \
                   f"({type(n.module).__name__})"
        if G.is_method(n.target):
            name = f"Tensor.{n.op}"
        else:
            mod = getattr(n.target, "__module__", None) or ""
            name = ("F." if mod.startswith(("torch.nn.functional", "torch._C._nn")) else "torch.") + n.op
        where = f"the model's forward ({type(self.model).__name__})"
        for c in reversed(n.scope):
            q = g.call_scope.get(c)
            if q in self.mods:
                where = f"the forward of {q!r} ({type(self.mods[q]).__name__})"
                break
        return f"{'functional call ' if prefix else ''}{name} in {where}"

    def lost(self) -> str:
        """Why strides are unknown: the first call that left the integer grid."""
        for n, ins, outs in self.checked():
            if all(_integral(self.grid(t)) for t in ins) and not _integral(self.grid(outs[0])):
                r = self.grid(outs[0])
                how = (f"changes the grid to stride {_show(r)}" if all(v is not None for v in r) else
                       "changes the grid by an unknown factor" if self.values[outs[0]].lossy else
                       "removes the grid (every position sees the same input samples)")
                return f"{self.who(n, prefix=False)} {how}"
        return "a call changes the grid by an unknown factor"

    def output_stride(self) -> Tuple[int, int]:
        r = self.grid(self.out)
        if not _integral(r):
            raise ValueError(f"output stride is not defined: {self.lost()}")
        return int(r[0]), int(r[1])


def _check_input_size(input_size) -> Tuple[int, int]:
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        return geometry.normalize_tuple(tuple(input_size) if isinstance(input_size, (list, tuple)) else input_size,
                                        2, "input_size")
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be an int >= 1 or an (H, W) pair, got {input_size!r}") from None


def output_stride_of(model: nn.Module, input_size: Union[int, Tuple[int, int]] = 256) -> Tuple[int, int]:
    """Output stride (per axis) of a backbone: the product of the strides along the way, read from
    the layers (and strided functional calls, resamplings, pixel unshuffles ...) met by one
    shape-only run (meta tensors) on an input of ``input_size`` (any size the model accepts; it
    does not enter the result): the ``jump`` of the receptive field at the output.

    >>> import torch.nn as nn
    >>> output_stride_of(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2)))
    (4, 4)
    >>> output_stride_of(nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.Conv2d(8, 8, 5, stride=2)), 64)
    (4, 4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return _Trace(model, "output_stride_of", input_size).output_stride()


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _refuse_moves(tr: _Trace, os_: int) -> None:
    """Refuse, by name, every call the conversion does not rewrite that moves positions (a
    functional pool/conv/interpolate, a pad, a global mean, a reshape across positions ...) where
    the conversion changes its grid: its input is made finer (jump > ``os_``), or it takes the
    jump above ``os_`` itself (its stride would have to go). Refuse a tensor that does not depend
    on the input but is laid out on positions that become finer (it would have to change too)."""
    for n, ins, outs in tr.checked():
        r_in, r_out = tr.jump(ins), tr.jump(outs)
        moved = [k for k in range(len(r_in)) if tr.moved(ins, outs, k)]
        over = [k for k in moved if any(r is not None and r > os_ for r in (r_in[k], r_out[k]))]
        what = f"convert_to_dilated: {tr.who(n)} at input stride {_show(r_in)}"
        if over:
            need = max(math.ceil(r) for k in over for r in (r_in[k], r_out[k]) if r is not None)
            cure = (f"functional calls cannot be converted -- use the nn module (nn.Conv2d, nn.MaxPool2d, "
                    f"nn.AvgPool2d) or output_stride >= {need}" if n.module is None else
                    f"only nn.Conv2d, nn.MaxPool2d and nn.AvgPool2d layers are converted -- use output_stride >= "
                    f"{need}")
            if any(r_out[k] is not None and r_out[k] != r_in[k] for k in over):    # a stride, a resampling
                dense = any(r_in[k] is not None and r_in[k] > os_ for k in over)
                how = "sees a finer grid after conversion" if dense else "would need its stride removed"
                raise ValueError(f"{what} {how} (it takes the grid to stride {_show(r_out)}); {cure}")
            finer = max(r_in[k] for k in over) / os_
            raise ValueError(f"{what} mixes positions of the grid the conversion makes {_show([finer])}x finer, "
                             f"so it would compute a different function; output_stride {os_} is not reachable for "
                             f"this model by conversion (try output_stride >= {need})")
        dense = [k for k, r in enumerate(r_out) if r is not None and r > os_]
        if not dense or not (rules.pointwise_op(n.op, G.is_method(n.target)) or n.op in _JOINS):
            continue
        # the dims holding the finer positions: of an input for a join (same layout), else of the output
        # (broadcasting aligns the last dims)
        v = tr.values[ins[0] if n.op in _JOINS else outs[0]]
        pos = {d for k in dense for d, _, f in v.factors(k) if f.size != 1}
        for r in n.in_refs:
            shape = tr.g.tensors[r.index].shape
            lead = len(v.shape) - len(shape)
            if r.index not in ins and any(shape[d - lead] != 1 for d in pos if d >= lead) and \
                    not tr.uniform(r.index):
                raise ValueError(f"{what} joins a tensor of shape {tuple(shape)} that does not depend on the input "
                                 "but is laid out on its positions (a positional embedding, or a tensor built from "
                                 "the input's size), which the conversion would have to change; output_stride "
                                 f"{os_} is not reachable (try output_stride >= "
                                 f"{math.ceil(max(r_out[k] for k in dense))})")


_JOINS = ("cat", "concat", "concatenate", "stack")
_UNIFORM = ("zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros",
            "new_ones", "new_full", "new_empty", "zero_", "fill_")


def _plan(tr: _Trace, os_: int) -> List[Tuple[str, nn.Module, Tuple[int, int], Tuple[int, int], Tuple[int, int]]]:
    """Per conv/pool layer to change: ``(name, module, input (H, W), multiplier, new stride)``;
    raises for anything that cannot be converted exactly."""
    total = tr.output_stride()
    if any(t < os_ for t in total):
        raise ValueError(f"output_stride {os_} is not reachable: the model's output stride is "
                         f"{_show(total)} (conversion only removes strides)")
    grids = [(name, m, tr.grid(x), tuple(tr.g.tensors[x].shape[-2:])) for name, m, x in tr.layers]
    reach = sorted({int(v) for _, _, r, _ in grids if _integral(r) for v in r} | set(total))
    if os_ not in reach:
        raise ValueError(f"output_stride {os_} is not reachable: the strides along the model are "
                         f"{', '.join(map(str, reach))}")
    _refuse_moves(tr, os_)
    plan = []
    for name, m, r, hw in grids:
        if not _integral(r):
            raise ValueError(f"convert_to_dilated: the input stride of layer {name!r} is unknown: {tr.lost()}")
        s = _layer_stride(m)
        mult, new_stride = [], []
        for ra, sa in zip((int(r[0]), int(r[1])), s):
            if ra < os_ < ra * sa:
                raise ValueError(f"output_stride {os_} is not reachable: layer {name!r} takes the stride "
                                 f"from {ra} to {ra * sa} in one step")
            if ra > os_ and ra % os_:
                raise ValueError(f"output_stride {os_} is not reachable: layer {name!r} sees "
                                 f"input stride {ra}, not a multiple of {os_}")
            mult.append(ra // min(ra, os_))
            new_stride.append(1 if ra * sa > os_ else sa)
        if mult != [1, 1] or list(s) != new_stride:
            plan.append((name, m, hw, tuple(mult), tuple(new_stride)))
    return plan


def _convert_conv(root: nn.Module, name: str, m: nn.Conv2d, in_hw, mult, new_stride) -> None:
    if m.padding_mode != "zeros" and mult != (1, 1):
        raise ValueError(f"convert_to_dilated: layer {name!r} pads with {m.padding_mode!r}, which does not "
                         "commute with dilation (only zero padding does); output_stride not reachable")
    if isinstance(m, _ConvNd):
        if not m.static_padding:
            raise ValueError(f"convert_to_dilated: layer {name!r} has size-dependent padding {m.padding!r} at "
                             "stride > 1; give it explicit padding to convert it")
        pairs = m.pads(in_hw)
    elif isinstance(m.padding, str):
        pairs = geometry.resolve_padding(m.padding, in_hw, m.kernel_size, m.stride, m.dilation)
    else:
        pairs = tuple((p, p) for p in m.padding)
    pairs = tuple((lo * k, hi * k) for (lo, hi), k in zip(pairs, mult))
    dil = tuple(d * k for d, k in zip(m.dilation, mult))
    if isinstance(m, _ConvNd):               # setting its attributes re-resolves its padding
        m.stride, m.dilation = new_stride, dil
        if m.pads(in_hw) != pairs:          # the spec (e.g. "same" with an even kernel) no longer fits
            m.padding = pairs
        return
    if all(lo == hi for lo, hi in pairs):
        m.stride, m.dilation, m.padding = new_stride, dil, tuple(lo for lo, _ in pairs)
        m._reversed_padding_repeated_twice = [p for lo, _ in reversed(pairs) for p in (lo, lo)]
        return
    if type(m) is not nn.Conv2d:
        raise ValueError(f"convert_to_dilated: layer {name!r} ({type(m).__name__}) needs asymmetric padding "
                         f"{pairs} after conversion, which it cannot express; build it as atrous.nn.Conv2d")
    conv = Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=new_stride, padding=pairs,
                  dilation=dil, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                  device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(m.weight)
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    conv.train(m.training)
    _set_module(root, name, conv)


def _convert_pool(root: nn.Module, name: str, m: nn.Module, mult, new_stride) -> None:
    kind = type(m).__name__
    if getattr(m, "ceil_mode", False):
        raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) uses ceil_mode=True, whose "
                         "extra border window has no exact counterpart after conversion; output_stride not "
                         "reachable (use ceil_mode=False)")
    k = geometry.normalize_tuple(m.kernel_size, 2, "kernel_size")
    pad = tuple(p * f for p, f in zip(geometry.normalize_tuple(m.padding, 2, "padding", minimum=0), mult))
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) returns indices, which "
                             "change meaning on the finer grid; output_stride not reachable")
        dil = tuple(d * f for d, f in zip(geometry.normalize_tuple(m.dilation, 2, "dilation"), mult))
        if all(2 * p <= d * (kk - 1) + 1 for p, d, kk in zip(pad, dil, k)):   # nn.MaxPool2d's limit
            m.stride, m.padding, m.dilation = new_stride, pad, dil
            return
        new = nn.Sequential(nn.ConstantPad2d((pad[1], pad[1], pad[0], pad[0]), float("-inf")),
                            nn.MaxPool2d(k, new_stride, 0, dil))   # -inf: max pooling's own padding value
    elif isinstance(m, nn.AvgPool2d):
        if type(m) not in (nn.AvgPool2d, AvgPool2d):
            raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) is a custom average pool; "
                             "output_stride not reachable")
        dil = tuple(d * f for d, f in zip(getattr(m, "dilation", (1, 1)), mult))
        new = AvgPool2d(k, new_stride, pad, False, m.count_include_pad, m.divisor_override, dilation=dil)
    else:   # pragma: no cover -- _handled() lists the layer types
        raise ValueError(f"convert_to_dilated: cannot convert layer {name!r} ({kind})")
    new.train(m.training)
    _set_module(root, name, new)


def convert_to_dilated(model: nn.Module, output_stride: int = 16, *,
                       input_size: Union[int, Tuple[int, int]] = 256) -> nn.Module:
    """Return a copy of ``model`` whose output stride is ``output_stride``: the strides of the last
    convs and pooling layers become 1 and what follows is dilated. The original is untouched; the
    copy has the same weights and every submodule keeps its own train/eval flag.

    ``model`` maps ``(N, C, H, W)`` to a feature map ``(N, C', H', W')`` (ResNet-style with
    downsampling shortcuts, VGG-style stacks with pooling: DeepLab-v1 on VGG-16 turns pool4/pool5 to
    stride 1). Then ``converted(x)[..., ::f, ::f] == model(x)`` with
    ``f = output_stride_of(model) / output_stride`` (exact up to float summation order; in training
    mode a batch norm normalises over the finer grid, so the identity is an eval-mode one).
    ``input_size`` is the input size of the one shape-only run (meta tensors) that reads the strides.

    Raises ``ValueError`` (one line, naming the layer or call) when ``output_stride`` is not an
    output stride the model passes through (0, 3 in a net of stride-2 layers, larger than the
    model's), or when the converted model could not compute the same function: a call that moves
    positions (``F.max_pool2d(x, 2)``, ``F.conv2d(..., stride=2)``, ``F.interpolate``, ``F.pad``,
    a spatial mean, ``nn.Upsample``, ``nn.GroupNorm`` ...) where the grid becomes finer or where
    the stride would have to be removed, a constant laid out on positions that become finer, an op
    the analysis has no rule for, ``ceil_mode`` pooling, non-zero padding modes, layers called twice.
    Calls that keep positions (pointwise ops, reshapes, 1x1 convolutions, norms and softmax over
    channels) are fine anywhere.

    >>> import torch, torch.nn as nn, atrous.nn as ann
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    >>> net4 = ann.convert_to_dilated(net, output_stride=4)
    >>> net4[3].stride, net4[4].dilation, net4[4].padding
    ((1, 1), (2, 2), (2, 2))
    >>> x = torch.randn(1, 3, 32, 32)
    >>> torch.allclose(net4(x)[..., ::2, ::2], net(x), atol=1e-6)
    True
    >>> ann.convert_to_dilated(net, output_stride=3)
    Traceback (most recent call last):
    ...
    ValueError: output_stride 3 is not reachable: the strides along the model are 1, 2, 4, 8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(output_stride, numbers.Integral) or isinstance(output_stride, bool):
        raise TypeError(f"output_stride must be an int, got {output_stride!r}")
    if output_stride < 1:
        raise ValueError(f"output_stride must be >= 1, got {output_stride!r}")
    os_ = int(output_stride)
    new = copy.deepcopy(model)
    for name, m, hw, mult, new_stride in _plan(_Trace(new, "convert_to_dilated", input_size), os_):
        if isinstance(m, nn.Conv2d):
            _convert_conv(new, name, m, hw, mult, new_stride)
        else:
            _convert_pool(new, name, m, mult, new_stride)
    return new
