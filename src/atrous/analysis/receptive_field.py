"""Receptive field per spatial axis of a layer list or of any PyTorch model.

The receptive field of an output position is the set of input positions it can depend on; per axis
we report its extent: ``size`` (input samples), ``jump`` (input distance between neighbouring
outputs), ``start`` (input coordinate of output 0's centre; may be negative or fractional) and
``padding`` (input samples before position 0 that output 0 reaches: ``-(start - (size - 1) / 2)``).
The classic recursion (Araujo et al. 2019, "Computing Receptive Fields of Convolutional Neural
Networks", Distill) is ``atrous.geometry.rf_step``.

How it is computed, exactly and for any graph: the model is recorded once on meta tensors, one node
per call (:mod:`atrous.analysis.graph`); each op's rule (:mod:`atrous.analysis.rules`) maps the
positions of its output to those of its inputs, per axis, as a periodic tap map
(:mod:`atrous.analysis.fields`). Dimensions are tracked through permutes and reshapes, so
channels-last blocks, channel shuffles, patch tokens and window partitions are followed.

What depends on what, stated: pointwise ops, eval-mode BatchNorm, LayerNorm over channels and dropout
are local. Ops that mix positions -- attention, normalisation statistics over positions (GroupNorm,
InstanceNorm, LayerNorm over spatial dims, BatchNorm in training mode), global pooling and the gates
built from it (squeeze-excitation) -- make the field the whole input on the axes they mix
(``whole_input``), and ``global_at`` names the node; attention inside windows gives the window's
field. ``local`` is the field of the local paths alone (statistics and gates ignored), which keeps
the convolutional structure visible; ``last_spatial`` is the field at the last node whose local
field still depended on the position (e.g. ``layer4`` of a ResNet before its global pooling). The input
is taken as unbounded: fields are not clipped at the borders. An op the analysis cannot follow
exactly is an error naming the node and the op, never a guess.

>>> import atrous
>>> rf = atrous.receptive_field([atrous.Layer(kernel=3, dilation=d, padding=d) for d in (1, 2, 4, 8)])
>>> rf.size, rf.jump, rf.start, rf.padding
((31,), (1,), (0,), (15,))
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from .. import geometry as geo
from . import graph as G
from . import values as V
from .fields import Const, Periodic

__all__ = ["Layer", "ReceptiveField", "receptive_field", "receptive_fields", "analyse"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------
# Layer: the torch-free description of one conv/pool layer
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One convolution or pooling layer, described by its geometry only (no weights, no torch).

    ``kernel``, ``stride``, ``dilation``: an int (every axis) or a per-axis tuple. ``padding``:
    anything :func:`atrous.geometry.resolve_padding` accepts -- int, per-axis tuple, per-axis
    ``(lo, hi)`` pairs, ``'valid'``, ``'causal'``, ``'full'``, and ``'same'`` (with ``stride > 1``
    ``'same'`` depends on the input length, so pass ``input_shape`` to :func:`receptive_field`).
    Only the low-side padding moves the field (it sets ``start``); the high side changes the output
    length. A pooling layer is the same geometry (``Layer(kernel=2, stride=2)``).

    >>> Layer(kernel=(3, 5), dilation=(1, 2)).ndim
    2
    >>> Layer(kernel=3, dilation=0)
    Traceback (most recent call last):
    ...
    ValueError: dilation must be >= 1 per axis, got 0
    """

    kernel: Any = 3
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1

    def __post_init__(self):
        n = self.ndim or 1
        for name, minimum in (("kernel", 1), ("stride", 1), ("dilation", 1)):
            geo.normalize_tuple(getattr(self, name), n, name, minimum)
        # padding: validated by geometry with dummy sizes (stride 1 so 'same' resolves)
        geo.resolve_padding(self.padding, (1,) * n, (1,) * n, (1,) * n, (1,) * n)

    @property
    def ndim(self) -> int | None:
        """Number of spatial axes fixed by a tuple argument, or ``None`` if all are ints."""
        lens = {len(v) for v in (self.kernel, self.stride, self.dilation) if isinstance(v, (tuple, list))}
        p = self.padding
        if isinstance(p, (tuple, list)):
            lens.add(len(p))
        if len(lens) > 1:
            raise ValueError(f"Layer arguments disagree on the number of spatial axes: {self!r}")
        return lens.pop() if lens else None

    def resolve(self, ndim: int, in_sizes: Sequence[int] | None = None):
        """Per-axis ``(kernel, stride, dilation, pads)`` for ``ndim`` axes (pads are ``(lo, hi)``)."""
        k = geo.normalize_tuple(self.kernel, ndim, "kernel")
        s = geo.normalize_tuple(self.stride, ndim, "stride")
        d = geo.normalize_tuple(self.dilation, ndim, "dilation")
        if in_sizes is None:
            if self.padding == "same" and any(v > 1 for v in s):
                raise ValueError(
                    f"padding='same' with stride {self.stride!r} depends on the input length: "
                    "pass input_shape=(N, C, *spatial)")
            in_sizes = (1,) * ndim
        pads = geo.resolve_padding(self.padding, in_sizes, k, s, d)
        return k, s, d, pads


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------

def _num(x: Fraction):
    return int(x) if x.denominator == 1 else float(x)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one node, one entry per spatial axis.

    ``size``: extent in input samples (the largest over output phases when ``period > 1``);
    ``jump``: input distance between neighbouring outputs (int, or a Fraction after upsampling; 0
    where every output sees the same inputs); ``start``: input coordinate of output 0's centre
    (``None`` if output 0 sees nothing); ``padding``: input samples before position 0 that output 0
    reaches; ``period``/``period_shift``/``phases``: output ``phi + m*period`` sees inputs
    ``phases[phi]`` shifted by ``m*period_shift`` (``None`` = sees nothing); ``empty_phases``: those
    ``phi`` that see nothing; ``whole_input``: every output depends on the whole input along the
    axis (global pooling, attention, statistics over positions); ``global_at``: the node that made
    the axis global (or ``None``); ``notes``: misalignments, border effects, approximations asked for;
    ``local``: the field of the local paths alone (normalisation statistics and global gates
    ignored; ``None`` when no local path reaches this node, e.g. after global pooling);
    ``last_spatial``: the field at the last node before it whose local field depended on the
    position on every axis, e.g. the last block before a global pooling (or ``None``).

    >>> rf = receptive_field([Layer(kernel=(3, 5), dilation=(1, 2), stride=(2, 1))])
    >>> rf.size, rf.jump
    ((3, 9), (2, 1))
    """

    size: tuple
    jump: tuple
    start: tuple
    padding: tuple
    period: tuple = ()
    period_shift: tuple = ()
    phases: tuple = ()
    empty_phases: tuple = ()
    whole_input: tuple = ()
    name: str = field(default="", compare=False)
    notes: tuple = ()
    last_spatial: ReceptiveField | None = field(default=None, repr=False, compare=False)
    global_at: tuple = ()
    local: ReceptiveField | None = field(default=None, repr=False, compare=False)

    @property
    def ndim(self) -> int:
        return len(self.size)

    def span(self, index: Sequence[int] | int) -> tuple:
        """Input interval ``(lo, hi)`` (inclusive) per axis seen by output ``index`` (None: nothing).

        >>> rf = receptive_field([Layer(kernel=3, stride=2)])
        >>> rf.span(4)
        ((8, 10),)
        """
        index = (index,) * self.ndim if _is_int(index) else tuple(index)
        if len(index) != self.ndim:
            raise ValueError(f"index must have one entry per spatial axis ({self.ndim}), got {index!r}")
        out = []
        for ax, o in enumerate(index):
            m, phi = divmod(o, self.period[ax])
            ph = self.phases[ax][phi]
            if ph is None:
                out.append(None)
                continue
            shift = self.period_shift[ax] * m
            out.append((ph[0] + shift, ph[1] + shift))
        return tuple(out)

    def to_dict(self) -> dict:
        """JSON-ready dict (Fractions become floats)."""
        def conv(v):
            return float(v) if isinstance(v, Fraction) else v
        return {"name": self.name, "size": list(self.size), "jump": [conv(j) for j in self.jump],
                "start": list(self.start), "padding": list(self.padding),
                "period": list(self.period), "period_shift": list(self.period_shift),
                "phases": [[list(p) if p else None for p in ax] for ax in self.phases],
                "empty_phases": [list(e) for e in self.empty_phases],
                "whole_input": list(self.whole_input), "global_at": list(self.global_at),
                "notes": list(self.notes),
                "local": self.local.to_dict() if self.local is not None else None,
                "last_spatial": self.last_spatial.to_dict() if self.last_spatial is not None else None}

    def __str__(self) -> str:
        def fmt(v):
            return "x".join("-" if u is None else (f"{u:g}" if isinstance(u, float) else str(u)) for u in v)
        lines = [f"receptive field at {self.name!r}: size {fmt(self.size)}, jump {fmt(self.jump)}, "
                 f"start {fmt(self.start)}, padding {fmt(self.padding)}"]
        for ax, (w, g) in enumerate(zip(self.whole_input, self.global_at)):
            if w:
                lines.append(f"  axis {ax}: every output sees the whole input (global from {g!r})")
            elif g:
                lines.append(f"  axis {ax}: {g!r} mixes positions across the axis")
        for ax, P in enumerate(self.period):
            if P > 1 and P <= 16:
                txt = ", ".join(f"{i}: " + ("no input" if p is None else f"[{p[0]}, {p[1]}]")
                                for i, p in enumerate(self.phases[ax]))
                lines.append(f"  axis {ax}: output phase + m*{P} sees (shifted by m*{self.period_shift[ax]}) {txt}")
            elif P > 16:
                lines.append(f"  axis {ax}: the field repeats every {P} outputs (see .phases)")
        if any(self.global_at):
            if self.local is None:
                lines.append("  local paths alone: none reach here (only through the global ops)")
            elif self.local.size != self.size:
                lo = self.local
                lines.append(f"  local paths alone (statistics, gates and global mixing ignored): size {fmt(lo.size)}, "
                             f"jump {fmt(lo.jump)}, start {fmt(lo.start)}")
        ls = self.last_spatial
        if ls is not None and ls.name != self.name:
            lo = ls.local or ls
            lines.append(f"  last node with a position-dependent local field: {ls.name!r}, local size {fmt(lo.size)}, "
                         f"jump {fmt(lo.jump)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _covers(f: Periodic, whole, count) -> bool:
    """Every one of ``count`` positions sees the whole input (clipped to it)."""
    if whole is None or not count or count > 100_000:
        return False
    return all(s is not None and s[0] <= whole[0] and s[1] >= whole[1] for s in (f.at(q) for q in range(count)))


def _axis_result(f, whole, n, count=None, glob=False, reach=None):
    """(size, jump, start, padding, period, shift, phases, empty, whole_input) of one axis; ``reach``:
    the input interval the tensor really reads (:func:`atrous.analysis.values.reach`), if known."""
    if isinstance(f, Periodic):
        spans = [None if lo is None else (lo, hi) for lo, hi in zip(f.lo, f.hi)]
        sizes = [s[1] - s[0] + 1 for s in spans if s is not None]
        s0 = spans[0]
        return (max(sizes) if sizes else 0, _num(f.jump),
                None if s0 is None else _num(Fraction(s0[0] + s0[1], 2)), None if s0 is None else -s0[0],
                f.P, f.J, tuple(spans), tuple(i for i, s in enumerate(spans) if s is None and (not count or i < count)),
                bool(glob) and _covers(f, whole, count) and (
                    reach is None or (reach.lo <= whole[0] and reach.hi >= whole[1])))
    if isinstance(f, Const):
        is_whole = whole is not None and f.lo <= whole[0] and f.hi >= whole[1]
        lo, hi = (whole if is_whole else (f.lo, f.hi))
        return (hi - lo + 1, 0, _num(Fraction(lo + hi, 2)), -lo, 1, 0, ((lo, hi),), (), is_whole)
    return (0, 0, None, None, 1, 0, (None,), (0,), False)


def _make_rf(fields_, whole, sizes, name, notes, where, local=None, last=None, counts=None, v=None
             ) -> ReceptiveField:
    counts = counts or (None,) * len(fields_)
    reach = [V.reach(v, k) if v is not None and g else None for k, g in enumerate(where)]
    cols = list(zip(*[_axis_result(f, w, n, c, g, r)
                      for f, w, n, c, g, r in zip(fields_, whole, sizes, counts, where, reach)]))
    if not cols:
        cols = [()] * 9
    return ReceptiveField(*[tuple(c) for c in cols], name=name, notes=tuple(notes), last_spatial=last,
                          global_at=tuple(where), local=local)


# ----------------------------------------------------------------------------------------------
# Analysis entry point
# ----------------------------------------------------------------------------------------------

@dataclass
class Analysis:
    """A recorded graph and the values of what was asked (shared by rf, coverage, cost, the CLI)."""

    graph: Any
    values: dict
    model: Any = None


def is_torch_module(obj) -> bool:
    """isinstance(obj, torch.nn.Module) without importing torch (if torch is not loaded, it is not one)."""
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def record_graph(model, input_shape, train: bool = False):
    """The per-call graph of ``model`` (a layer list or a torch module) on ``input_shape``."""
    if isinstance(model, Layer):
        model = [model]
    if isinstance(model, (list, tuple)):
        return G.from_layers(model, input_shape)
    if is_torch_module(model):
        if input_shape is None:
            raise ValueError("input_shape=(N, C, *spatial) is required for a torch model")
        import torch
        if G.is_leaf(model) and type(model).__module__.startswith(("torch.nn", "atrous.nn")):
            model = torch.nn.Sequential(model)            # a bare layer: analysed as a one-module model "0"
        xs, sizes = G.torch_inputs(model, input_shape)
        g = G.record(model, xs, train=train)
        g.sizes, g.ndim = tuple(sizes), len(sizes)
        return g
    raise TypeError(f"model must be a list of atrous.Layer or a torch.nn.Module, got {type(model).__name__}")


def analyse(model, input_shape=None, at: str | None = None, *, every: bool = False, train: bool = False,
            treat_as_pointwise: Sequence[str] = ()):
    """Record ``model`` and lower what ``at`` (or every node, ``every=True``) depends on.

    Returns ``(graph, values, target)``; used by :func:`receptive_field`, coverage and the CLI.
    """
    _check_approx(treat_as_pointwise)
    g = record_graph(model, input_shape, train)
    target = g.target(at)
    targets = [target]
    if every:
        targets = [t for n in g.nodes if n.kind != "input" for t in n.outs[:1]] + [target]
    vals = G.lower(g, targets, tuple(treat_as_pointwise))
    if g.error and at is not None:
        g.notes.append(f"the model's run stopped after {at!r}: {g.error}")
    return g, vals, target


def _check_approx(names):
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"treat_as_pointwise must be a list of op or module type names, got {names!r}")


def field_of(g, vals: dict, t: int, name: str | None = None) -> ReceptiveField:
    """The :class:`ReceptiveField` of tensor ``t`` in an analysis."""
    v = vals[t]
    nm = name or g.nodes[g.tensors[t].node].name
    if v.lossy:
        raise G.AnalysisError(f"the field at {nm!r} cannot be given exactly: {v.lossy!r} merged positions (a "
                              "concatenation along positions such as a class token joined to patch tokens, an "
                              "overlapping unfold, a reshape across a flattened position) and no later op mixes "
                              "them all, so which positions each element holds is not tracked")
    notes = list(v.notes) + [n for n in g.notes if n not in v.notes]
    full, loc, counts = V.position_fields(v)
    local = None
    if v.llossy and any(f is not None for f in loc):
        notes.append(f"local field not given: {v.llossy!r} merged positions and the local paths do not mix them")
    elif any(f is not None for f in loc):
        local = _make_rf(loc, v.whole, g.sizes, nm, (), (None,) * v.ndim)
    last = None
    if not all(isinstance(f, Periodic) for f in full) or any(v.where):
        last = _last_spatial(g, vals, t)
    return _make_rf(full, v.whole, g.sizes, nm, notes, v.where, local, last, counts, v)


def _last_spatial(g, vals, t) -> ReceptiveField | None:
    anc = sorted(g.ancestors(t), reverse=True)
    for i in anc:
        n = g.nodes[i]
        if not n.outs or n.kind == "input":
            continue
        v = vals.get(n.outs[0])
        if v is not None and v.local and not v.llossy and all(isinstance(f, Periodic) for f in v.local):
            full, loc, counts = V.position_fields(v)
            local = _make_rf(loc, v.whole, g.sizes, n.name, (), (None,) * v.ndim)
            return _make_rf(full, v.whole, g.sizes, n.name, v.notes, v.where, local, counts=counts, v=v)
    return None


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def receptive_fields(model, input_shape=None, *, train: bool = False,
                     treat_as_pointwise: Sequence[str] = ()) -> dict[str, ReceptiveField]:
    """Receptive field at every call, in execution order: ``{name: ReceptiveField}``.

    ``model``: a list of :class:`Layer` (names ``"0"``, ``"1"``, ...) or a ``torch.nn.Module`` with
    ``input_shape=(N, C, *spatial)`` (a list of shapes, or example tensors, for several inputs).
    One entry per *call*, named like torch.fx: a module by its qualified name, a second call of the
    same module with ``_1`` (``relu``, ``relu_1``), functions and methods by their name (``add_1``,
    ``view``). Tensors that do not depend on the input (parameters, constants) are left out.

    >>> ctx = [Layer(3, dilation=d) for d in (1, 1, 2, 4, 8, 16, 1)] + [Layer(1)]
    >>> [r.size[0] for r in receptive_fields(ctx).values()]    # Yu & Koltun 2016, context module
    [3, 5, 9, 17, 33, 65, 67, 67]
    """
    g, vals, _ = analyse(model, input_shape, every=True, train=train, treat_as_pointwise=treat_as_pointwise)
    out: dict = {}
    for n in g.nodes:
        if n.kind == "input" or not n.outs:
            continue
        v = vals.get(n.outs[0])
        if v is None or not v.dependent:
            continue
        out[n.name] = field_of(g, vals, n.outs[0])
    return out


def receptive_field(model, input_shape=None, at: str | None = None, *, train: bool = False,
                    treat_as_pointwise: Sequence[str] = ()) -> ReceptiveField:
    """Receptive field at the model's output (or at node/submodule ``at``), per spatial axis.

    ``model``: a list of :class:`Layer` (torch not needed) or a ``torch.nn.Module``;
    ``input_shape=(N, C, *spatial)`` is required for a model (the spatial sizes resolve ``'same'``
    padding, adaptive pooling and reshapes); a list of shapes (or example tensors) for a model with
    several inputs -- fields are in the positions of the inputs with the first one's spatial size.
    ``at``: a node name from :func:`receptive_fields` or a submodule path (the field at that
    submodule's output; ``name_1`` for its second call). The model is run once on meta tensors
    (shapes only), in eval mode unless ``train=True`` (then BatchNorm statistics mix positions).
    ``treat_as_pointwise``: names of ops or module types without a rule to assume pointwise (an
    approximation, listed in ``notes``).

    >>> rf = receptive_field([Layer(kernel=(3, 5), dilation=(1, 2), stride=(1, 2))])
    >>> rf.size, rf.jump, rf.start
    ((3, 9), (1, 2), (1, 4))
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3, dilation=2),
    ...                     nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> rf = receptive_field(net, input_shape=(1, 1, 32))
    >>> rf.size, rf.whole_input, rf.global_at, rf.last_spatial.size, rf.last_spatial.jump
    ((32,), (True,), ('3',), (12,), (2,))
    """
    g, vals, t = analyse(model, input_shape, at, train=train, treat_as_pointwise=treat_as_pointwise)
    return field_of(g, vals, t, name=at if at is not None and at in g.calls else None)
