"""Receptive field per spatial axis of a layer list or of any PyTorch model (traced with torch.fx).

The receptive field of an output position is the extent of input positions that can affect it.
Per axis we report ``size`` (extent in input samples), ``jump`` (input distance between neighbouring
outputs), ``start`` (input coordinate of output 0's centre; may be negative or fractional) and
``padding`` (input samples before position 0 that output 0 reaches: ``-(start - (size - 1) / 2)``).
The classic recursion (Araujo et al. 2019, "Computing Receptive Fields of Convolutional Neural
Networks", Distill) is ``atrous.geometry.rf_step``.

How it is computed, exactly and for any graph: every node maps its output positions to the
positions of its input that it reads, per axis, as a periodic tap map "output ``phi + m*a`` reads
input ``taps[phi] + m*b``" (``a = 1`` for a convolution or pooling; ``a = stride`` for a transposed
convolution, ``a = factor`` for upsampling). The field of a node is then kept per output *phase*:
output ``phi + m*P`` sees inputs ``[lo[phi] + m*J, hi[phi] + m*J]``; ``jump = J / P``. Branches that
meet (``add``, ``mul``, ``cat``) take the union of their fields; different jumps are an error,
different centres (e.g. a causal branch plus an identity) are reported in ``notes``. A transposed
convolution whose outputs of some phase receive no input (ConvTranspose k=4, s=2, p=1, d=2) reports
those phases in ``empty_phases`` -- they are not hidden. The input is taken as unbounded: fields are
not clipped at the borders.

Global pooling, ``flatten`` and ``linear`` over spatial axes make the field the whole input
(``size`` = input size, ``whole_input`` true on that axis); ``last_spatial`` then holds the field at
the last node before space was collapsed (e.g. ``layer4`` of a ResNet).

>>> import atrous
>>> rf = atrous.receptive_field([atrous.Layer(kernel=3, dilation=d, padding=d) for d in (1, 2, 4, 8)])
>>> rf.size, rf.jump, rf.start, rf.padding
((31,), (1,), (0,), (15,))
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from .. import geometry as geo

__all__ = ["Layer", "ReceptiveField", "receptive_field", "receptive_fields"]


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
# The exact per-axis field: periodic (lo, hi) per output phase
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Axis:
    """Output ``phi + m*P`` sees inputs ``[lo[phi] + m*J, hi[phi] + m*J]`` (None: no input).
    ``whole`` (the input size) means every output sees the whole input."""
    P: int = 1
    J: int = 1
    lo: tuple = (0,)
    hi: tuple = (0,)
    whole: int | None = None

    def at(self, q: int):
        m, phi = divmod(q, self.P)
        if self.lo[phi] is None:
            return None
        return self.lo[phi] + m * self.J, self.hi[phi] + m * self.J

    def expand(self, P: int) -> _Axis:
        """The same field written with period ``P`` (a multiple of ``self.P``)."""
        r = P // self.P
        spans = [self.at(o) for o in range(P)]
        return _Axis(P, self.J * r, tuple(s and s[0] for s in spans), tuple(s and s[1] for s in spans))


@dataclass(frozen=True)
class _TapMap:
    """Output ``phi + m*a`` reads input positions ``taps[phi] + m*b`` (``len(taps) == a``)."""
    a: int
    b: int
    taps: tuple


def _reduce(f: _Axis) -> _Axis:
    for p in range(1, f.P):
        if f.P % p or (f.J * p) % f.P:
            continue
        sh = f.J * p // f.P
        if all((f.lo[o + p] is None and f.lo[o] is None) or
               (f.lo[o] is not None and f.lo[o + p] is not None and
                f.lo[o + p] == f.lo[o] + sh and f.hi[o + p] == f.hi[o] + sh)
               for o in range(f.P - p)):
            return _Axis(p, sh, f.lo[:p], f.hi[:p])
    return f


def _apply(f: _Axis, t: _TapMap | None) -> _Axis:
    if t is None or f.whole is not None:
        return f
    n = f.P // math.gcd(f.P, t.b)          # outputs advance a*n -> inputs advance n*b, a multiple of P
    P2, J2 = t.a * n, f.J * (n * t.b // f.P)
    lo, hi = [], []
    for o in range(P2):
        m, phi = divmod(o, t.a)
        spans = [s for s in (f.at(q + m * t.b) for q in t.taps[phi]) if s is not None]
        lo.append(min(s[0] for s in spans) if spans else None)
        hi.append(max(s[1] for s in spans) if spans else None)
    return _reduce(_Axis(P2, J2, tuple(lo), tuple(hi)))


def _union(fs: list[_Axis], axis: int, where: str, notes: list[str]) -> _Axis:
    whole = [f for f in fs if f.whole is not None]
    if whole:
        return whole[0]
    if len(fs) == 1:
        return fs[0]
    jumps = {Fraction(f.J, f.P) for f in fs}
    if len(jumps) > 1:
        shown = ", ".join(str(j) for j in sorted(jumps))
        raise ValueError(
            f"branches meeting at {where!r} have different jumps on spatial axis {axis} ({shown}): "
            "their outputs are not on one grid, so no single receptive field exists")
    P = math.lcm(*(f.P for f in fs))
    ex = [f.expand(P) for f in fs]
    centres = {(f.lo[0] + f.hi[0]) / 2 for f in ex if f.lo[0] is not None}
    if len(centres) > 1:
        notes.append(f"{where}: branches are misaligned on spatial axis {axis} (centres of output 0 "
                     f"at {sorted(centres)}); the field is their union")
    lo = tuple(None if all(f.lo[o] is None for f in ex) else min(f.lo[o] for f in ex if f.lo[o] is not None)
               for o in range(P))
    hi = tuple(None if all(f.hi[o] is None for f in ex) else max(f.hi[o] for f in ex if f.hi[o] is not None)
               for o in range(P))
    return _reduce(_Axis(P, ex[0].J, lo, hi))


def _num(x: Fraction):
    return int(x) if x.denominator == 1 else float(x)


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one node, one entry per spatial axis.

    ``size``: extent in input samples (the largest over output phases when ``period > 1``);
    ``jump``: input distance between neighbouring outputs (int, or a Fraction after upsampling);
    ``start``: input coordinate of output 0's centre (int or float, ``None`` if output 0 sees
    nothing); ``padding``: input samples before position 0 that output 0 reaches;
    ``period``/``period_shift``/``phases``: output ``phi + m*period`` sees inputs ``phases[phi]``
    shifted by ``m*period_shift`` (``period_shift = period*jump``; ``None`` = sees nothing);
    ``empty_phases``: those ``phi`` that see nothing;
    ``whole_input``: the axis was collapsed (global pooling, flatten, linear) so the field is the
    whole input; ``notes``: misalignments, skipped layers, assumptions; ``last_spatial``: the field
    at the last node before space was collapsed (or ``None``).

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
        out = []
        for ax, o in enumerate(index):
            P = self.period[ax]
            m, phi = divmod(o, P)
            ph = self.phases[ax][phi]
            if ph is None:
                out.append(None)
                continue
            shift = self.period_shift[ax] * m
            out.append((ph[0] + shift, ph[1] + shift))
        return tuple(out)

    def to_dict(self) -> dict:
        """JSON-ready dict (Fractions become floats)."""
        conv = lambda v: float(v) if isinstance(v, Fraction) else v  # noqa: E731
        return {"name": self.name, "size": list(self.size), "jump": [conv(j) for j in self.jump],
                "start": list(self.start), "padding": list(self.padding),
                "period": list(self.period), "period_shift": list(self.period_shift),
                "phases": [[list(p) if p else None for p in ax]
                                                        for ax in self.phases],
                "empty_phases": [list(e) for e in self.empty_phases],
                "whole_input": list(self.whole_input), "notes": list(self.notes)}


def _make_rf(axes: Sequence[_Axis], name: str, notes: Sequence[str], last_spatial=None) -> ReceptiveField:
    size, jump, start, pad, period, shift, phases, empty, whole = [], [], [], [], [], [], [], [], []
    for f in axes:
        if f.whole is not None:
            n = f.whole
            size.append(n), jump.append(n), start.append(_num(Fraction(n - 1, 2))), pad.append(0)
            period.append(1), shift.append(n), phases.append(((0, n - 1),)), empty.append(()), whole.append(True)
            continue
        spans = [None if lo is None else (lo, hi) for lo, hi in zip(f.lo, f.hi)]
        sizes = [s[1] - s[0] + 1 for s in spans if s is not None]
        size.append(max(sizes) if sizes else 0)
        jump.append(_num(Fraction(f.J, f.P)))
        s0 = spans[0]
        start.append(None if s0 is None else _num(Fraction(s0[0] + s0[1], 2)))
        pad.append(None if s0 is None else -s0[0])
        period.append(f.P)
        shift.append(f.J)
        phases.append(tuple(spans))
        empty.append(tuple(i for i, s in enumerate(spans) if s is None))
        whole.append(False)
    return ReceptiveField(tuple(size), tuple(jump), tuple(start), tuple(pad), tuple(period),
                          tuple(shift), tuple(phases), tuple(empty), tuple(whole), name, tuple(notes), last_spatial)


# ----------------------------------------------------------------------------------------------
# Steps: a model or layer list lowered to per-axis tap maps
# ----------------------------------------------------------------------------------------------

@dataclass
class _Step:
    name: str
    kind: str                 # "input" | "map" | "union" | "whole"
    inputs: list
    maps: tuple = ()          # "map": one _TapMap (or None = unchanged) per spatial axis
    axes: tuple = ()          # "whole": the spatial axes collapsed
    info: dict = field(default_factory=dict)   # type, kernel, stride, dilation (for tables)
    scope: tuple = ()         # module paths this node belongs to
    note: str = ""


def _conv_maps(k, s, d, pads):
    return tuple(_TapMap(1, si, (geo.tap_offsets(ki, di, p[0]),)) for ki, si, di, p in zip(k, s, d, pads))


def _layer_steps(layers: Sequence[Layer], input_shape) -> tuple[list[_Step], int, tuple]:
    layers = list(layers)
    if not layers:
        raise ValueError("layers must be a non-empty list of atrous.Layer")
    for i, L in enumerate(layers):
        if not isinstance(L, Layer):
            raise TypeError(f"layers[{i}] must be an atrous.Layer, got {L!r}")
    dims = {L.ndim for L in layers} - {None}
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
        dims.add(len(input_shape) - 2)
    if len(dims) > 1:
        raise ValueError(f"layers (and input_shape) disagree on the number of spatial axes: {sorted(dims)}")
    ndim = dims.pop() if dims else 1
    sizes = tuple(input_shape[2:]) if input_shape is not None else None
    steps = [_Step("input", "input", [])]
    for i, L in enumerate(layers):
        k, s, d, pads = L.resolve(ndim, sizes)
        if sizes is not None:
            sizes = geo.conv_output_shape(sizes, k, s, d, pads)
        steps.append(_Step(str(i), "map", [len(steps) - 1], _conv_maps(k, s, d, pads),
                           info={"type": "Layer", "kernel": k, "stride": s, "dilation": d,
                                 "padding": tuple(p[0] for p in pads)}))
    return steps, ndim, sizes or ()


def _check_shape(input_shape) -> tuple:
    if not isinstance(input_shape, (tuple, list)) or not all(_is_int(v) and v >= 1 for v in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints (N, C, *spatial), got {input_shape!r}")
    if len(input_shape) < 3:
        raise ValueError(f"input_shape must be (N, C, *spatial) with at least one spatial axis, "
                         f"got {tuple(input_shape)!r}")
    return tuple(int(v) for v in input_shape)


def _run(steps: list[_Step], ndim: int, in_sizes) -> tuple[list, list[list[str]]]:
    """Fields (list of per-axis _Axis, or None for non-tensor nodes) and notes for every step."""
    fields, notes = [], []
    for st in steps:
        nt: list[str] = [st.note] if st.note else []
        ins = [fields[i] for i in st.inputs if fields[i] is not None]
        if st.kind == "input":
            f = [_Axis() for _ in range(ndim)]
        elif not ins:
            f = None            # a constant (parameter, buffer) or a non-tensor value
        elif st.kind == "map":
            f = [_apply(a, t) for a, t in zip(ins[0], st.maps)]
            for ax, a in enumerate(f):
                if a.whole is None and any(v is None for v in a.lo):
                    empty = [o for o, v in enumerate(a.lo) if v is None]
                    nt.append(f"{st.name}: on spatial axis {ax} outputs o with o % {a.P} in {empty} "
                              "receive no input (empty field)")
        elif st.kind == "union":
            f = [_union([g[ax] for g in ins], ax, st.name, nt) for ax in range(ndim)]
        elif st.kind == "whole":
            f = [(_Axis(whole=in_sizes[ax]) if ax in st.axes else a) for ax, a in enumerate(ins[0])]
        else:  # pragma: no cover
            raise AssertionError(st.kind)
        fields.append(f)
        notes.append(nt)
    return fields, notes


def _results(steps, fields, notes, names=None) -> dict[str, ReceptiveField]:
    """One ReceptiveField per tensor step (notes accumulate along ancestors)."""
    out: dict[str, ReceptiveField] = {}
    acc: list[list[str]] = []
    last_sp: list = []
    for i, st in enumerate(steps):
        anc = []
        for j in st.inputs:
            anc += [n for n in acc[j] if n not in anc]
        anc += [n for n in notes[i] if n not in anc]
        acc.append(anc)
        f = fields[i]
        if f is None:
            last_sp.append(None)
            continue
        collapsed = any(a.whole is not None for a in f)
        inherited = next((last_sp[j] for j in st.inputs if last_sp[j] is not None), None)
        rf = _make_rf(f, st.name, anc, inherited if collapsed else None)
        last_sp.append(inherited if collapsed else rf)
        if st.kind != "input":
            out[st.name] = rf
    return out


# ----------------------------------------------------------------------------------------------
# torch: lowering a model to steps
# ----------------------------------------------------------------------------------------------

_POINTWISE_FUNCS = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "leaky_relu",
    "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign", "mish", "prelu", "glu", "logsigmoid",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "exp", "log", "abs", "neg", "sqrt",
    "rsqrt", "square", "pow", "clamp", "clip", "sin", "cos", "contiguous", "clone", "detach", "float",
    "double", "half", "to", "type_as", "batch_norm", "sign", "tanh_", "sigmoid_", "reciprocal", "erf",
    "floor", "ceil", "round", "channel_shuffle",
}
_UNION_FUNCS = {"add", "sub", "mul", "truediv", "div", "floordiv", "mod", "maximum", "minimum", "where",
                "add_", "mul_", "sub_", "div_", "iadd", "imul", "isub", "itruediv",
                "lerp", "addcmul", "rsub", "max", "min"}


def _tensor_meta(node):
    return node.meta.get("tensor_meta")


def _shape(node):
    tm = _tensor_meta(node)
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _lower_torch(model, input_shape) -> tuple[list[_Step], int, tuple]:
    torch = _require_torch()
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    input_shape = _check_shape(input_shape)
    ndim = len(input_shape) - 2
    if not list(model.children()):     # a bare layer: trace it as a one-module model (named "0")
        model = torch.nn.Sequential(model)
    class _Tracer(fx.Tracer):
        # conv-like modules (atrous.nn.Conv*d, weight-normed/parametrized convs) stay leaves:
        # their geometry is read from their attributes, whatever their forward does
        def is_leaf_module(self, m, qualname):
            return _conv_like(m, ndim) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
    except Exception as e:  # noqa: BLE001 -- any tracing failure falls back to hooks
        return _lower_hooks(model, input_shape, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    modules = dict(gm.named_modules())
    _run_shapes(gm, model, input_shape, lambda x: ShapeProp(gm).propagate(x))
    steps: list[_Step] = []
    index: dict = {}
    for node in gm.graph.nodes:
        if node.op == "output":      # remember what the model returns (first tensor = "the output")
            steps[0].info["outputs"] = [steps[index[a]].name for a in node.all_input_nodes if a in index]
            continue
        ins = [index[a] for a in node.all_input_nodes if a in index]
        scope = tuple((node.meta.get("nn_module_stack") or {}).keys())
        if node.op == "placeholder":
            st = _Step("input", "input", []) if not steps else _Step(node.name, "union", [])
        elif node.op == "get_attr":
            st = _Step(node.name, "union", [])
        else:
            name = node.target if node.op == "call_module" else node.name
            st = _lower_node(node, modules, ndim, name, ins, torch)
            out = _shape(node)
            if out is not None and len(out) < ndim + 2 and st.kind != "whole" and st.inputs:
                # fewer dims than (N, C, *spatial): positions were reduced away (x.sum(), torch.max(x))
                st = _Step(name, "whole", st.inputs[:1], axes=tuple(range(ndim)), info=st.info)
        st.scope = scope
        index[node] = len(steps)
        steps.append(st)
    return steps, ndim, tuple(input_shape[2:])


def _run_shapes(module, model, input_shape, run):
    """Call ``run(x)`` on a zero input of ``input_shape`` in eval mode without gradients: first with
    every parameter and buffer of ``module`` swapped for a meta tensor (shapes only, no arithmetic),
    then, if some op has no meta kernel, for real."""
    torch = _require_torch()
    from torch.nn.utils.stateless import _reparametrize_module

    x = _probe(model, input_shape, torch)
    with _eval_mode(model), torch.no_grad():
        try:
            meta = {n: torch.empty_like(t, device="meta") for n, t in
                    list(module.named_parameters()) + list(module.named_buffers())}
            with _reparametrize_module(module, meta):
                return run(x.to("meta"))
        except Exception:  # noqa: BLE001 -- no meta kernel, tied weights...: run for real below
            pass
        try:
            return run(x)
        except Exception as e:
            raise ValueError(f"the model does not run on input_shape={input_shape!r}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def _probe(model, input_shape, torch):
    """A zero input with the dtype and device of the model's first floating parameter."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None:
        return torch.zeros(input_shape)
    return torch.zeros(input_shape, dtype=p.dtype, device=p.device)


class _eval_mode:
    """Temporarily put a module in eval mode (so BatchNorm statistics are not touched)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = {m: m.training for m in self.model.modules()}
        self.model.eval()

    def __exit__(self, *exc):
        for m, t in self.flags.items():
            m.training = t


def _require_torch():
    from .._optional import require
    return require("torch")


def _spatial_in(node, ndim):
    """Spatial sizes of the first tensor input of ``node``."""
    for a in node.all_input_nodes:
        s = _shape(a)
        if s is not None:
            return s[-ndim:] if len(s) >= ndim + 2 else None
    return None


def _arg(node, i, key, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _unknown(node, name, why=""):
    raise ValueError(f"cannot compute the receptive field through node {name!r} ({node.op} {node.target!r}){why}; "
                     "supported: conv/transposed conv/pooling/adaptive pooling/upsampling, pointwise "
                     "ops, add/mul/cat, pad, slicing, flatten/linear/global mean")


def _lower_node(node, modules, ndim, name, ins, torch) -> _Step:
    import torch.nn as nn

    if _tensor_meta(node) is None:
        return _Step(name, "union", [])       # not a tensor (x.shape, x.size(), ...)
    in_sp = _spatial_in(node, ndim)
    out_shape = _shape(node)
    single = ins[:1]

    def conv(k, s, d, padding, typ):
        k, s, d = (geo.normalize_tuple(tuple(v) if isinstance(v, (list, tuple)) else v, ndim, nm)
                   for v, nm in ((k, "kernel"), (s, "stride"), (d, "dilation")))
        if isinstance(padding, str) or not isinstance(padding, (list, tuple)):
            pads = geo.resolve_padding(padding, in_sp, k, s, d)
        else:
            pads = geo.resolve_padding(tuple(padding), in_sp, k, s, d)
        return _Step(name, "map", single, _conv_maps(k, s, d, pads),
                     info={"type": typ, "kernel": k, "stride": s, "dilation": d,
                           "padding": tuple(p[0] for p in pads)})

    def whole(axes, typ):
        return _Step(name, "whole", single, axes=tuple(axes), info={"type": typ})

    def point(typ, note=""):
        return _Step(name, "map", single, (None,) * ndim, info={"type": typ}, note=note)

    if node.op == "call_module":
        m = modules[node.target]
        typ = type(m).__name__
        if isinstance(m, (nn.modules.conv._ConvNd)) and not m.transposed:
            if m.padding_mode == "circular":
                note = f"{name}: circular padding treated as zeros (fields near the border wrap)"
            else:
                note = ""
            st = conv(m.kernel_size, m.stride, m.dilation, m.padding, typ)
            st.note = note
            return st
        if _conv_like(m, ndim):
            k, st_, d = (geo.normalize_tuple(tuple(v) if isinstance(v, (list, tuple)) else v, ndim, nm)
                         for v, nm in ((m.kernel_size, "kernel"), (m.stride, "stride"), (m.dilation, "dilation")))
            if callable(getattr(m, "pads", None)):
                pads = tuple(tuple(p) for p in m.pads(tuple(in_sp)))
            else:
                pad = m.padding if isinstance(m.padding, (str, int)) else tuple(m.padding)
                pads = geo.resolve_padding(pad, in_sp, k, st_, d, getattr(m, "causal_axes", (0,)))
            return _Step(name, "map", single, _conv_maps(k, st_, d, pads),
                         info={"type": typ, "kernel": k, "stride": st_, "dilation": d,
                               "padding": tuple(p[0] for p in pads)})
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            k, s, d = m.kernel_size, m.stride, m.dilation
            maps = tuple(_TapMap(si, 1, geo.transpose_tap_offsets(ki, si, di, pi))
                         for ki, si, di, pi in zip(k, s, d, m.padding))
            return _Step(name, "map", single, maps, info={"type": typ, "kernel": tuple(k), "stride": tuple(s),
                                                          "dilation": tuple(d), "padding": tuple(m.padding)})
        if isinstance(m, (nn.modules.pooling._MaxPoolNd,)):
            return conv(m.kernel_size, m.stride if m.stride is not None else m.kernel_size, m.dilation,
                        m.padding, typ)
        if isinstance(m, (nn.modules.pooling._AvgPoolNd,)):
            return conv(m.kernel_size, m.stride if m.stride is not None else m.kernel_size, 1, m.padding, typ)
        if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
            return _adaptive(name, single, in_sp, out_shape[-ndim:], typ)
        if isinstance(m, nn.Upsample):
            return _resample(name, single, in_sp, out_shape[-ndim:], m.mode, m.align_corners, typ)
        if isinstance(m, (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
                          nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)):
            st = _pad(name, single, m.padding, ndim, typ)
            if not isinstance(m, nn.modules.padding._ConstantPadNd):
                st.note = f"{name}: {typ} treated as a shift (fields near the border reflect/wrap)"
            return st
        if isinstance(m, nn.Flatten):
            return _flatten(name, single, node, m.start_dim, m.end_dim, ndim, typ)
        if isinstance(m, (nn.Linear, nn.Bilinear, nn.LazyLinear)):
            s_in = _shape(node.all_input_nodes[0])
            if s_in is not None and len(s_in) >= ndim + 2:
                return whole([ndim - 1], typ)
            return point(typ)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            dim = m.dim if m.dim is not None else 1
            return _reduce_dims(name, single, node, [dim], ndim, typ)
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
                          nn.LocalResponseNorm)):
            return point(typ, f"{name}: {typ} statistics over positions are ignored (treated as pointwise)")
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Identity, nn.modules.dropout._DropoutNd,
                          nn.ChannelShuffle)) or type(m).__module__ == "torch.nn.modules.activation":
            if isinstance(m, nn.MultiheadAttention):
                _unknown(node, name, " (attention mixes all positions)")
            return point(typ)
        _unknown(node, name, f" (module {typ})")

    fn = node.target
    fname = fn if isinstance(fn, str) else getattr(fn, "__name__", str(fn))
    typ = fname
    if node.op == "call_function" and fn is operator.getitem:
        src = node.args[0]
        if not isinstance(_tensor_meta(src), torch.fx.passes.shape_prop.TensorMetadata):
            return point("getitem")        # an element of a tuple (chunk/split on channels)
        return _slice(name, single, node, ndim, _shape(src))
    if fname in ("conv1d", "conv2d", "conv3d"):
        w = _shape(_arg(node, 1, "weight"))
        return conv(w[2:], _arg(node, 3, "stride", 1), _arg(node, 5, "dilation", 1),
                    _arg(node, 4, "padding", 0), fname)
    if fname in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        w = _shape(_arg(node, 1, "weight"))
        k = w[2:]
        s = geo.normalize_tuple(_tup(_arg(node, 3, "stride", 1)), ndim, "stride")
        p = geo.normalize_tuple(_tup(_arg(node, 4, "padding", 0)), ndim, "padding", 0)
        d = geo.normalize_tuple(_tup(_arg(node, 7, "dilation", 1)), ndim, "dilation")
        maps = tuple(_TapMap(si, 1, geo.transpose_tap_offsets(ki, si, di, pi)) for ki, si, di, pi in zip(k, s, d, p))
        return _Step(name, "map", single, maps, info={"type": fname, "kernel": tuple(k), "stride": s,
                                                      "dilation": d, "padding": p})
    if fname in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                 "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
                 "boolean_dispatch"):
        k = _arg(node, 1, "kernel_size")
        s = _arg(node, 2, "stride", None) or k
        p = _arg(node, 3, "padding", 0)
        d = _arg(node, 4, "dilation", 1) if "max" in fname else 1
        return conv(_tup(k), _tup(s), _tup(d), _tup(p), fname)
    if fname.startswith("adaptive_") :
        return _adaptive(name, single, in_sp, out_shape[-ndim:], fname)
    if fname in ("interpolate", "upsample"):
        return _resample(name, single, in_sp, out_shape[-ndim:], _arg(node, 3, "mode", "nearest"),
                         _arg(node, 4, "align_corners", None), fname)
    if fname == "pad":
        mode = _arg(node, 2, "mode", "constant")
        st = _pad(name, single, _arg(node, 1, "pad"), ndim, fname)
        if mode != "constant":
            st.note = f"{name}: {mode} padding treated as a shift (fields near the border reflect/wrap)"
        return st
    if fname in ("flatten",):
        return _flatten(name, single, node, _arg(node, 1, "start_dim", 0 if node.op == "call_function" else 0),
                        _arg(node, 2, "end_dim", -1), ndim, fname)
    if fname in ("linear",):
        s_in = _shape(node.all_input_nodes[0])
        return whole([ndim - 1], fname) if s_in is not None and len(s_in) >= ndim + 2 else point(fname)
    if fname in ("mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var", "softmax",
                 "log_softmax", "norm") and (_arg(node, 1, "dim") is not None or fname in ("mean", "sum")):
        dim = _arg(node, 1, "dim")
        if isinstance(dim, int) or isinstance(dim, (list, tuple)):
            return _reduce_dims(name, single, node, list(dim) if isinstance(dim, (list, tuple)) else [dim],
                                ndim, fname)
        if dim is None and fname in ("mean", "sum"):       # over everything
            return whole(range(ndim), fname)
    if fname in ("cat", "concat", "concatenate", "stack"):
        dim = _arg(node, 1, "dim", 0)
        rank = len(out_shape)
        if fname != "stack" and (dim % rank) < rank - ndim:
            return _Step(name, "union", ins, info={"type": fname})
        _unknown(node, name, f" (concatenation along dim {dim}, a spatial axis)")
    if fname in ("chunk", "split", "tensor_split", "unbind"):
        dim = _arg(node, 2, "dim", 0)
        src = _shape(node.all_input_nodes[0])
        if src is not None and (dim % len(src)) < len(src) - ndim:
            return point(fname)
        _unknown(node, name, f" (split along dim {dim}, a spatial axis)")
    if fname in ("view", "reshape", "squeeze", "unsqueeze", "expand", "expand_as", "repeat",
                 "permute", "transpose"):
        src = _shape(node.all_input_nodes[0])
        if src is not None and out_shape[-ndim:] == src[-ndim:] and len(out_shape) == len(src):
            return point(fname)
        if len(out_shape) <= 2 or fname in ("view", "reshape") and len(out_shape) < ndim + 2:
            return whole(range(ndim), fname)
        _unknown(node, name, f" (reshapes spatial axes {src} -> {out_shape})")
    if fname in _POINTWISE_FUNCS:
        if len(ins) > 1:
            return _Step(name, "union", ins, info={"type": fname})
        return point(fname)
    if fname in _UNION_FUNCS:
        return _Step(name, "union", ins, info={"type": fname})
    _unknown(node, name)


def _conv_like(m, ndim) -> bool:
    """A convolution we can read: kernel_size/stride/dilation/padding attributes, a weight of rank
    ndim + 2, not transposed, no submodules doing more work (e.g. atrous.nn.Conv1d, parametrized convs)."""
    import torch.nn as nn
    if isinstance(m, nn.modules.conv._ConvNd) and not getattr(m, "transposed", False):
        return False      # handled by the nn.Conv branch
    if isinstance(m, nn.modules.conv._ConvNd) or getattr(m, "transposed", False):
        return False
    if not all(hasattr(m, a) for a in ("kernel_size", "stride", "dilation", "padding")):
        return False
    # read the weight's rank without touching attributes (fx turns parameter access into proxies)
    w = m._parameters.get("weight")
    rank = w.dim() if w is not None else 0
    par = m._modules.get("parametrizations")
    if w is None and par is not None and "weight" in par:
        rank = max((p.dim() for p in par["weight"].parameters()), default=0)
    kids = [c for n, c in m.named_children() if n != "parametrizations"]
    return rank == ndim + 2 and not kids


def _tup(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _adaptive(name, single, in_sp, out_sp, typ) -> _Step:
    maps, whole = [], []
    for ax, (n, m) in enumerate(zip(in_sp, out_sp)):
        if m == 1:
            whole.append(ax)
            maps.append(None)
            continue
        g = math.gcd(n, m)
        a, b = m // g, n // g    # a outputs per b inputs; output o reads [floor(o n/m), ceil((o+1) n/m))
        maps.append(_TapMap(a, b, tuple(tuple(range((o * n) // m, -((-(o + 1) * n) // m))) for o in range(a))))
    if whole and len(whole) == len(in_sp):
        return _Step(name, "whole", single, axes=tuple(whole), info={"type": typ})
    if whole:
        raise ValueError(f"{name}: adaptive pooling to size 1 on only some axes is not supported")
    return _Step(name, "map", single, tuple(maps), info={"type": typ})


def _resample(name, single, in_sp, out_sp, mode, align_corners, typ) -> _Step:
    if align_corners:
        raise ValueError(f"cannot compute the receptive field through {name!r}: align_corners=True "
                         "resampling is not periodic; use align_corners=False")
    maps = []
    for n, m in zip(in_sp, out_sp):
        g = math.gcd(n, m)
        a, b = m // g, n // g        # a outputs per b inputs; scale = b / a inputs per output
        taps = []
        for o in range(a):
            if mode == "nearest":
                taps.append(((o * b) // a,))
            elif mode == "nearest-exact":
                taps.append((((2 * o + 1) * b) // (2 * a),))
            elif mode in ("linear", "bilinear", "trilinear", "bicubic"):
                src = Fraction((2 * o + 1) * b, 2 * a) - Fraction(1, 2)   # (o + 0.5) * scale - 0.5
                fl = math.floor(src)
                if mode == "bicubic":
                    taps.append(tuple(range(fl - 1, fl + 3)) if src != fl else tuple(range(fl - 1, fl + 2)))
                else:
                    taps.append((fl,) if src == fl else (fl, fl + 1))
            else:
                raise ValueError(f"cannot compute the receptive field through {name!r}: resampling mode "
                                 f"{mode!r} is not supported")
        maps.append(_TapMap(a, b, tuple(taps)))
    return _Step(name, "map", single, tuple(maps), info={"type": typ},
                 note=f"{name}: {mode} resampling near the border clamps (border fields are clipped)"
                 if mode in ("linear", "bilinear", "trilinear", "bicubic") else "")


def _pad(name, single, pad, ndim, typ) -> _Step:
    pad = (pad,) * (2 * ndim) if _is_int(pad) else tuple(pad)
    maps = [None] * ndim
    for i in range(len(pad) // 2):   # pad lists (lo, hi) for the last axis first
        ax = ndim - 1 - i
        if ax < 0:
            raise ValueError(f"{name}: padding of non-spatial dims is not supported, got pad={pad!r}")
        maps[ax] = _TapMap(1, 1, ((-pad[2 * i],),))
    return _Step(name, "map", single, tuple(maps), info={"type": typ})


def _flatten(name, single, node, start, end, ndim, typ) -> _Step:
    src = _shape(node.all_input_nodes[0])
    rank = len(src)
    start, end = start % rank, end % rank
    spatial = [ax for ax in range(ndim) if start <= rank - ndim + ax <= end and end > start]
    return _Step(name, "whole", single, axes=tuple(spatial), info={"type": typ}) if spatial else \
        _Step(name, "map", single, (None,) * ndim, info={"type": typ})


def _reduce_dims(name, single, node, dims, ndim, typ) -> _Step:
    src = _shape(node.all_input_nodes[0])
    rank = len(src)
    axes = [d % rank - (rank - ndim) for d in dims if d % rank >= rank - ndim]
    if axes:
        return _Step(name, "whole", single, axes=tuple(axes), info={"type": typ})
    return _Step(name, "map", single, (None,) * ndim, info={"type": typ})


def _slice(name, single, node, ndim, src_shape) -> _Step:
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in idx):
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (len(src_shape) - len(idx) + 1) + idx[e + 1:]
    idx = idx + (slice(None),) * (len(src_shape) - len(idx))
    maps = []
    for ax in range(ndim):
        d = len(src_shape) - ndim + ax
        sl = idx[d] if d < len(idx) else slice(None)
        if not isinstance(sl, slice):
            raise ValueError(f"cannot compute the receptive field through {name!r}: indexing spatial "
                             f"axis {ax} with {sl!r} (only slices are supported)")
        lo, _, step = sl.indices(src_shape[d])
        if step < 1:
            raise ValueError(f"{name}: negative slice steps are not supported")
        maps.append(None if (lo, step) == (0, 1) else _TapMap(1, step, ((lo,),)))
    # ints/slices on the batch and channel dims do not move positions
    return _Step(name, "map", single, tuple(maps), info={"type": "slice"})


def _lower_hooks(model, input_shape, reason) -> tuple[list[_Step], int, tuple]:
    """Fallback for models fx cannot trace: run once, record leaf modules in call order, chain them."""
    torch = _require_torch()
    import torch.fx as fx

    ndim = len(input_shape) - 2
    calls = []
    hooks = []
    conv_like = [q for q, m in model.named_modules() if _conv_like(m, ndim)]
    for qual, m in model.named_modules():
        if any(qual.startswith(c + ".") for c in conv_like):
            continue                                   # inside a conv (e.g. its weight parametrization)
        if len(list(m.children())) == 0 or qual in conv_like:
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, qual=qual: calls.append((qual, mod, i[0].shape if i and torch.is_tensor(i[0])
                                                           else None, o.shape if torch.is_tensor(o) else None))))
    try:
        _run_shapes(model, model, input_shape, lambda x: (calls.clear(), model(x)))
    finally:
        for h in hooks:
            h.remove()
    # Build a fake graph: a placeholder then each call, as fx-like nodes with shapes.
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["tensor_meta"] = _FakeMeta(tuple(input_shape))
    holder = torch.nn.Module()
    steps = [_Step("input", "input", [], note=f"torch.fx could not trace the model ({reason}); fell back to "
                   "forward hooks, treating leaf modules as one chain in call order (residual adds, "
                   "functional ops and branches are not seen)")]
    prev = x
    skipped = []
    for qual, mod, ishape, oshape in calls:
        if oshape is None:
            skipped.append(qual)
            continue
        qual = qual or type(mod).__name__
        name = qual if qual not in [s.name for s in steps] else f"{qual}#{len(steps)}"
        holder.add_module(name.replace(".", "_").replace("#", "_"), mod)
        n = g.call_module(name.replace(".", "_").replace("#", "_"), (prev,))
        n.meta["tensor_meta"] = _FakeMeta(tuple(oshape))
        prev.meta["tensor_meta"] = _FakeMeta(tuple(ishape)) if ishape is not None else prev.meta["tensor_meta"]
        try:
            st = _lower_node(n, dict(holder.named_modules()), ndim, name, [len(steps) - 1], torch)
        except ValueError:
            if tuple(oshape)[-ndim:] == tuple(ishape)[-ndim:]:
                skipped.append(qual)
                st = _Step(name, "map", [len(steps) - 1], (None,) * ndim, info={"type": type(mod).__name__})
            else:
                raise
        steps.append(st)
        prev = n
    if skipped:
        steps[0].note += f"; skipped as pointwise: {', '.join(skipped)}"
    return steps, ndim, tuple(input_shape[2:])


class _FakeMeta:
    def __init__(self, shape):
        self.shape = shape


def _is_torch_module(obj) -> bool:
    """isinstance(obj, torch.nn.Module) without importing torch (if torch is not loaded, it is not one)."""
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _lower(spec, input_shape):
    if isinstance(spec, Layer):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        return _layer_steps(spec, input_shape)
    if _is_torch_module(spec):
        if input_shape is None:
            raise ValueError("input_shape=(N, C, *spatial) is required for a torch model")
        return _lower_torch(spec, input_shape)
    raise TypeError(f"expected a list of atrous.Layer or a torch.nn.Module, got {type(spec).__name__}")


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def receptive_fields(model_or_layers, input_shape=None) -> dict[str, ReceptiveField]:
    """Receptive field at every node, in execution order: ``{name: ReceptiveField}``.

    ``model_or_layers``: a list of :class:`Layer` (names ``"0"``, ``"1"``, ...) or a
    ``torch.nn.Module`` with ``input_shape=(N, C, *spatial)`` (module nodes are named by their
    qualified name, e.g. ``"layer1.0.conv1"``; functions by their fx node name, e.g. ``"add_1"``).

    >>> ctx = [Layer(3, dilation=d) for d in (1, 1, 2, 4, 8, 16, 1)] + [Layer(1)]
    >>> [r.size[0] for r in receptive_fields(ctx).values()]    # Yu & Koltun 2016, context module
    [3, 5, 9, 17, 33, 65, 67, 67]
    """
    steps, ndim, sizes = _lower(model_or_layers, input_shape)
    fields, notes = _run(steps, ndim, sizes)
    return _results(steps, fields, notes)


def receptive_field(layers_or_model, input_shape=None, at: str | None = None) -> ReceptiveField:
    """Receptive field at the model's output (or at node/submodule ``at``), per spatial axis.

    ``layers_or_model``: a list of :class:`Layer` (torch not needed) or a ``torch.nn.Module``;
    ``input_shape=(N, C, *spatial)`` is required for a model (the spatial sizes resolve ``'same'``
    padding and adaptive pooling). ``at``: a name from :func:`receptive_fields` or a submodule path
    (the field at that submodule's output).

    >>> rf = receptive_field([Layer(kernel=(3, 5), dilation=(1, 2), stride=(1, 2))])
    >>> rf.size, rf.jump, rf.start
    ((3, 9), (1, 2), (1, 4))
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3, dilation=2),
    ...                     nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))
    >>> rf = receptive_field(net, input_shape=(1, 1, 32))
    >>> rf.size, rf.whole_input, rf.last_spatial.size, rf.last_spatial.jump
    ((32,), (True,), (12,), (2,))
    """
    steps, ndim, sizes = _lower(layers_or_model, input_shape)
    fields, notes = _run(steps, ndim, sizes)
    res = _results(steps, fields, notes)
    if not res:
        raise ValueError("the model has no layers")
    return _resolve_at(res, steps, at)


def _resolve_at(res: dict, steps, at) -> ReceptiveField:
    if at is None:
        outs = [n for n in steps[0].info.get("outputs", []) if n in res]
        return res[outs[0]] if outs else list(res.values())[-1]   # the model's (first) output
    if at in res:
        return res[at]
    inside = [st.name for st in steps if at in st.scope and st.name in res]
    if inside:
        return res[inside[-1]]
    close = difflib.get_close_matches(at, list(res) + sorted({s for st in steps for s in st.scope}), n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise ValueError(f"at={at!r} is not a node or submodule of the model{hint}")
