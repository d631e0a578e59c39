"""The op-rule registry: one small rule per op saying how it maps positions, and what it costs.

A rule takes a :class:`Call` (the recorded node, its input :class:`~atrous.analysis.values.Value`
objects and its output shapes) and returns the output values. Rules are keyed by the name of the
torch function or ``Tensor`` method (``conv2d``, ``view``, ``__getitem__``), separately for functions
and methods where the two differ (``F.unfold`` vs ``Tensor.unfold``). What an op does to positions
is one of:

* **local**: a tap map on some axes (convolution, pooling, resampling, padding, slicing, ``roll``);
* **pointwise**: positions unchanged, inputs joined (activations, ``add``, ``mul``, dropout,
  eval-mode BatchNorm, LayerNorm over channels);
* **relabel**: positions unchanged, dimensions moved (``view``, ``permute``, ``flatten``, ``cat`` and
  ``chunk`` on channels, pixel/channel shuffles);
* **global on some dims**: attention and contractions (``mix``), normalisation statistics and
  softmax (``stat``: the local path is the identity), reductions (``pool``: a reduction over a whole
  axis has no local path) -- the field becomes the whole input on the axes those dims hold, or the
  window's field when they hold only the positions inside windows;
* **unknown**: no rule, an error naming the node, the op and the input shapes.

``macs`` rules (multiply-accumulates of one call) live beside the field rules: convolution,
transposed convolution, linear, matmul/bmm/einsum, attention, recurrent layers.

Adding an op is one :func:`rule` here; the receptive field, coverage, cost and the CLI all read
this registry.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any, Callable, NamedTuple

from .. import geometry as geo
from . import fields as fl
from . import values as V
from .graph import FACTORIES, Node, Ref
from .values import C, Factor, O, Unsupported, Value

__all__ = ["Call", "rule", "lookup", "apply", "macs_of", "POINTWISE", "known_ops", "pointwise_op", "pointwise_module"]


class Rule(NamedTuple):
    field: Callable
    macs: Callable | None = None


_FUNC: dict[str, Rule] = {}
_METH: dict[str, Rule] = {}


def rule(*names: str, methods: bool = True, functions: bool = True, macs: Callable | None = None):
    """Register ``fn(call) -> Value | list[Value]`` for the torch functions and/or ``Tensor``
    methods called ``names``."""
    def deco(fn):
        for n in names:
            if functions:
                _FUNC[n] = Rule(fn, macs)
            if methods:
                _METH[n] = Rule(fn, macs)
        return fn
    return deco


def lookup(node: Node) -> Rule | None:
    if node.kind == "layer":
        return _LAYER
    if node.kind in ("module", "item"):
        return _IDENTITY
    from .graph import is_method
    table = _METH if is_method(node.target) else _FUNC
    return table.get(node.op) or (table.get(node.op.rstrip("_")) if node.op.endswith("_") and
                                  not node.op.startswith("__") else None)


def pointwise_op(name: str, method: bool = False) -> bool:
    """The function (or ``Tensor`` method) called ``name`` keeps every position's own field: an
    elementwise op, an activation, dropout, a copy or cast (``operator.iadd`` is ``add``).

    >>> pointwise_op("gelu"), pointwise_op("add"), pointwise_op("iadd"), pointwise_op("conv1d")
    (True, True, True, False)
    """
    table = _METH if method else _FUNC
    for n in (name, f"__{name}__", name[1:] if name[:1] == "i" else name):
        r = table.get(n)
        if r is not None:
            return r.field is _pointwise
    return False


def pointwise_module(m, in_channels: int | None = None) -> bool:
    """Module ``m`` keeps every position's own field on a ``(1, C, 8)`` input, checked by recording
    it on meta tensors and applying the rules of what it calls (activations, eval-mode BatchNorm,
    dropout ...); ``C`` from ``in_channels`` or the module's ``num_features``/``in_channels``."""
    import torch
    from . import graph as G
    c = in_channels or getattr(m, "num_features", None) or getattr(m, "in_channels", None) or \
        getattr(m, "num_parameters", None) or 1
    try:
        g = G.record(m, [torch.empty(1, int(c), 8, device="meta")])
        g.sizes, g.ndim = (8,), 1
        if g.error or not g.outputs:
            return False
        v = G.lower(g, [g.outputs[0]])[g.outputs[0]]
    except (ValueError, TypeError, RuntimeError):
        return False
    return v.rank == 3 and fl.equal(v.full[0], fl.IDENTITY) and tuple(v.shape) == (1, v.shape[1], 8)


def known_ops() -> dict:
    """``{'functions': [...], 'methods': [...]}``: every op with a rule (for docs and errors)."""
    return {"functions": sorted(_FUNC), "methods": sorted(_METH)}


# ------------------------------------------------------------------------------------------ call

class Call:
    """What a rule sees: the node, its argument values and output shapes."""

    def __init__(self, node: Node, g, ins: dict, approx=()):
        self.node, self.g, self.ins, self.approx = node, g, ins, approx

    @property
    def name(self) -> str:
        """The node's name, or the call name of the leaf module it belongs to (``attn`` rather than
        ``attn:multi_head_attention_forward``)."""
        return self.node.module_name or self.node.name

    def arg(self, i: int, key: str | None = None, default: Any = None):
        a = self.node.args
        if i is not None and len(a) > i:
            return a[i]
        if key is not None and key in self.node.kwargs:
            return self.node.kwargs[key]
        return default

    def value(self, obj) -> Value | None:
        return self.ins.get(obj.index) if isinstance(obj, Ref) else None

    def val(self, i: int = 0, key: str | None = None) -> Value:
        v = self.value(self.arg(i, key))
        if v is None:
            raise Unsupported(f"argument {key or i} is not a tensor")
        return v

    def tensor_values(self) -> list[Value]:
        return [self.ins[r.index] for r in self.node.in_refs if r.index in self.ins]

    def shape(self, obj) -> tuple | None:
        if isinstance(obj, Ref):
            return tuple(self.g.tensors[obj.index].shape)
        return None

    def out_shape(self, k: int = 0) -> tuple:
        return tuple(self.g.tensors[self.node.outs[k]].shape)

    @property
    def nouts(self) -> int:
        return len(self.node.outs)

    @property
    def whole(self) -> tuple:
        return tuple((0, n - 1) if n else None for n in self.g.sizes)


def apply(node: Node, g, ins: dict, approx=()) -> list[Value]:
    """Output values of ``node`` (raises :class:`Unsupported` with the reason)."""
    r = lookup(node)
    call = Call(node, g, ins, approx)
    if not any(v.dependent for v in ins.values()) and node.kind == "call":
        return _constant(call)          # nothing here depends on the input: no rule needed
    if r is None:
        if node.op in approx or (node.module is not None and type(node.module).__name__ in approx):
            outs = _pointwise(call)
            outs = outs if isinstance(outs, list) else [outs]
            note = f"{node.name}: {node.op} treated as pointwise (approximation asked for)"
            return [o.add_note(note) for o in outs]
        raise Unsupported(f"no rule for {'method' if _is_meth(node) else 'function'} {node.op!r} "
                          "(its dependence on positions is unknown; pass treat_as_pointwise="
                          f"[{node.op!r}] to assume it is pointwise, an approximation listed in notes)")
    if node.view_inplace and r.field not in _VIEW_SAFE:
        raise Unsupported("in-place update of a view of another tensor (the base tensor changes too)")
    out = r.field(call)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) < len(node.outs):
        outs += [outs[-1]] * (len(node.outs) - len(outs))
    return outs[:len(node.outs)] if node.outs else outs


def _is_meth(node) -> bool:
    from .graph import is_method
    return is_method(node.target)


def macs_of(node: Node, g) -> int:
    """Multiply-accumulates of one recorded call (0 for ops without a cost rule)."""
    r = lookup(node)
    if r is None or r.macs is None:
        return 0
    return int(r.macs(Call(node, g, {})))


# --------------------------------------------------------------------------------- small helpers

def _ints(v, n: int, name: str, minimum: int = 0) -> tuple:
    if isinstance(v, (list, tuple)):
        v = tuple(int(u) for u in v)
        if len(v) == 1:
            v = v * n
    else:
        v = (int(v),) * n
    if len(v) != n:
        raise Unsupported(f"{name} {v} does not have one entry per spatial axis ({n})")
    return v


def _dim_list(dim, rank: int) -> list:
    if dim is None:
        return list(range(rank))
    if isinstance(dim, (list, tuple)):
        return [d % rank for d in dim] if dim else list(range(rank))
    return [dim % rank]


def _pointwise(c: Call):
    vals = c.tensor_values()
    shape = c.out_shape()
    if not vals:
        return Value.constant(shape, c.whole)
    out = V.union(vals, shape, c.name)
    note = V.misaligned_note(vals, c.name)
    return out.add_note(note) if note else out


def _identity(c: Call):
    v = c.val(0)
    return v if tuple(v.shape) == c.out_shape() else V.union([v], c.out_shape(), c.name)


def _constant(c: Call):
    return [Value.constant(tuple(c.g.tensors[t].shape), c.whole) for t in c.node.outs]


_IDENTITY = Rule(_identity)
_VIEW_SAFE: set = set()


# ------------------------------------------------------------------------------ pointwise & co

POINTWISE = (
    # arithmetic and comparisons (functions, methods, operators; in-place forms end in '_')
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "floor_divide", "remainder",
    "fmod", "pow", "float_power", "atan2", "arctan2", "maximum", "minimum", "fmax", "fmin", "where", "lerp",
    "addcmul", "addcdiv", "clamp", "clip", "clamp_min", "clamp_max", "hypot", "copysign", "logaddexp",
    "logaddexp2", "eq", "ne", "lt", "le", "gt", "ge", "greater", "less", "equal", "not_equal",
    "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or",
    "bitwise_xor", "bitwise_not", "masked_fill", "rsub", "xlogy", "heaviside", "nextafter",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
    "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__div__", "__rdiv__", "__idiv__",
    "__floordiv__", "__rfloordiv__", "__ifloordiv__", "__mod__", "__rmod__", "__imod__", "__pow__",
    "__rpow__", "__ipow__", "__neg__", "__pos__", "__abs__", "__invert__", "__and__", "__rand__",
    "__iand__", "__or__", "__ror__", "__ior__", "__xor__", "__rxor__", "__ixor__", "__eq__", "__ne__",
    "__lt__", "__le__", "__gt__", "__ge__", "__lshift__", "__rshift__",
    # activations and elementwise math
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "leaky_relu", "hardtanh",
    "hardswish", "hardsigmoid", "softplus", "softsign", "mish", "prelu", "logsigmoid", "tanhshrink",
    "softshrink", "hardshrink", "threshold", "_threshold", "log_sigmoid", "rrelu", "exp", "exp2", "expm1",
    "log", "log1p", "log2",
    "log10", "abs", "absolute", "neg", "negative", "sqrt", "rsqrt", "square", "sin", "cos", "tan", "asin",
    "acos", "atan", "arcsin", "arccos", "arctan", "sinh", "cosh", "asinh", "acosh", "atanh", "sign", "sgn",
    "signbit", "reciprocal", "erf", "erfc", "erfinv", "floor", "ceil", "round", "trunc", "fix", "frac",
    "nan_to_num", "isnan", "isinf", "isfinite", "isposinf", "isneginf", "logit", "sinc", "i0", "digamma",
    "lgamma", "polygamma", "positive", "conj", "real", "imag", "angle", "deg2rad", "rad2deg",
    # dropout (the mask is a constant; eval-mode calls return their input)
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    # copies, casts, devices
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "int", "long", "bool", "to",
    "type", "type_as", "cpu", "cuda", "requires_grad_", "detach_", "data", "pin_memory", "clamp_",
    "masked_scatter", "lift_fresh",
)
rule(*POINTWISE)(_pointwise)
_VIEW_SAFE.add(_pointwise)
rule(*(sorted({n + "_" for n in POINTWISE if not n.startswith("__")})))(_pointwise)


@rule(*sorted(FACTORIES |
              {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zero_", "fill_", "bernoulli",
               "bernoulli_", "uniform_", "normal_", "random_", "exponential_", "geometric_", "log_normal_",
               "cauchy_", "multinomial", "poisson", "randint_like", "empty_like", "zeros_like", "ones_like",
               "full_like", "rand_like", "randn_like", "meshgrid", "cartesian_prod", "tril", "triu",
               "eye", "diag_embed", "polar", "complex"}))
def _factory(c: Call):
    if c.node.op in ("tril", "triu") and any(v.dependent for v in c.tensor_values()):
        v = c.val(0)
        if any(f.kind in ("s", "x") for d in v.dims[-2:] for f in d):
            raise Unsupported("tril/triu over positions keeps a position-dependent part")
        return v
    if c.node.op in ("meshgrid", "cartesian_prod", "polar", "complex") and any(
            v.dependent for v in c.tensor_values()):
        raise Unsupported(f"{c.node.op} of input-dependent tensors")
    return _constant(c)


@rule("copy_")
def _copy(c: Call):
    src = c.val(1, "src")
    return V.union([src], c.out_shape(), c.name)


@rule("batch_norm")
def _batch_norm(c: Call):
    x = c.val(0)
    training = bool(c.arg(5, "training", False))
    if not training and c.arg(1, "running_mean") is not None:
        return x
    return V.mix(x, [d for d in range(x.rank) if d != 1], "stat", c.name)


@rule("group_norm")
def _group_norm(c: Call):
    x = c.val(0)
    return V.mix(x, list(range(1, x.rank)), "stat", c.name)


@rule("instance_norm")
def _instance_norm(c: Call):
    x = c.val(0)
    use_input_stats = c.arg(5, "use_input_stats", True)
    if not use_input_stats:
        return x
    return V.mix(x, list(range(2, x.rank)), "stat", c.name)


@rule("layer_norm", "rms_norm")
def _layer_norm(c: Call):
    x = c.val(0)
    ns = c.arg(1, "normalized_shape")
    n = len(ns) if isinstance(ns, (list, tuple)) else 1
    return V.mix(x, list(range(x.rank - n, x.rank)), "stat", c.name)


@rule("local_response_norm")
def _lrn(c: Call):
    x = c.val(0)
    return V.mix(x, [1], "stat", c.name)


@rule("normalize")
def _normalize(c: Call):
    x = c.val(0)
    return V.mix(x, [c.arg(2, "dim", 1)], "stat", c.name)


@rule("softmax", "log_softmax", "softmin", "_softmax")
def _softmax(c: Call):
    x = c.val(0)
    dim = c.arg(1, "dim")
    if dim is None:
        dim = 0 if x.rank in (0, 1, 3) else 1         # PyTorch's implicit-dim rule
    return V.mix(x, [dim], "stat", c.name)


@rule("glu")
def _glu(c: Call):
    x = c.val(0)
    dim = c.arg(1, "dim", -1) % x.rank
    if any(f.kind in ("s", "x") for f in x.dims[dim]):
        raise Unsupported("glu splits a dimension that holds positions")
    return V.relabel(x, x.dims[:dim] + ((C(c.out_shape()[dim]),),) + x.dims[dim + 1:], c.out_shape())


# ---------------------------------------------------------------------------------- reductions

_REDUCE = ("sum", "mean", "nansum", "nanmean", "prod", "amax", "amin", "std", "var", "logsumexp", "all", "any",
           "argmax", "argmin", "count_nonzero", "norm", "median", "nanmedian", "mode", "max", "min",
           "std_mean", "var_mean", "aminmax", "kthvalue")


@rule(*_REDUCE)
def _reduce(c: Call):
    x = c.val(0)
    op = c.node.op
    second = c.arg(1, "dim" if op not in ("norm",) else "p")
    if op in ("max", "min") and isinstance(second, Ref):            # torch.max(a, b): elementwise
        return _pointwise(c)
    dim = c.arg(2, "dim", -1 if op == "kthvalue" else None) if op in ("norm", "kthvalue") else c.arg(1, "dim")
    if isinstance(dim, bool):                             # std(x, unbiased)
        dim = None
    dims = _dim_list(dim, x.rank)
    keep = len(c.out_shape()) == x.rank and x.rank > 0   # keepdim, read off the output
    v = V.mix(x, dims, "pool", c.name, remove=True, keepdim=keep)
    return [v] * max(1, c.nouts)


@rule("topk", "sort", "argsort", "msort", "cummax", "cummin", "cumsum", "cumprod", "logcumsumexp")
def _order(c: Call):
    x = c.val(0)
    op = c.node.op
    if op == "topk":
        dim = c.arg(2, "dim", -1)
    elif op == "msort":
        dim = 0
    else:
        dim = c.arg(1, "dim", -1)
    dim %= x.rank
    if op.startswith("cum") or op == "logcumsumexp":
        if any(f.kind in ("s", "x") for f in x.dims[dim]):
            raise Unsupported(f"{op} along positions: each output depends on every earlier position, a field "
                              "that grows with the position (not a periodic field)")
        return [x] * max(1, c.nouts)
    v = V.mix(x, [dim], "pool", c.name)
    size = c.out_shape()[dim]
    dims = list(v.dims)
    dims[dim] = (O(size),)
    shape = list(v.shape)
    shape[dim] = size
    return [V.relabel(v, dims, shape)] * max(1, c.nouts)


# -------------------------------------------------------------------------------------- shapes

def _shape_arg(c: Call, start: int = 1) -> tuple:
    a = c.node.args[start:] if len(c.node.args) > start else ()
    if len(a) == 1 and isinstance(a[0], (list, tuple)):
        a = a[0]
    if not a:
        a = c.node.kwargs.get("shape", c.node.kwargs.get("size", ()))
    return tuple(a)


@rule("view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "ravel",
      "_unsafe_view", "atleast_1d", "atleast_2d", "atleast_3d")
def _view(c: Call):
    x = c.val(0)
    if c.node.op == "view" and isinstance(c.arg(1), (str,)) or (
            c.node.op == "view" and not isinstance(c.arg(1), (int, list, tuple))):
        if not isinstance(c.arg(1), (int, list, tuple)) and c.arg(1) is not None:
            return x                                  # view(dtype)
    return V.reshape(x, c.out_shape(), c.name)


_VIEW_SAFE.add(_view)


@rule("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "adjoint", "H", "mH")
def _permute(c: Call):
    x = c.val(0)
    op = c.node.op
    r = x.rank
    if op == "permute":
        perm = _shape_arg(c)
    elif op in ("transpose", "swapaxes", "swapdims"):
        a, b = c.arg(1, "dim0"), c.arg(2, "dim1")
        perm = list(range(r))
        perm[a % r], perm[b % r] = perm[b % r], perm[a % r]
    elif op in ("movedim", "moveaxis"):
        src, dst = c.arg(1, "source"), c.arg(2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src, dst = [s % r for s in src], [d % r for d in dst]
        rest = [d for d in range(r) if d not in src]
        perm = [None] * r
        for s, d in zip(src, dst):
            perm[d] = s
        it = iter(rest)
        perm = [p if p is not None else next(it) for p in perm]
    elif op in ("t", "T", "H") and r <= 2 or op == "T":
        perm = list(reversed(range(r)))
    else:                                             # mT, adjoint, mH: swap the last two
        perm = list(range(r))
        if r >= 2:
            perm[-1], perm[-2] = perm[-2], perm[-1]
    return V.permute(x, perm)


_VIEW_SAFE.add(_permute)


@rule("expand", "expand_as", "broadcast_to")
def _expand(c: Call):
    return V.expand(c.val(0), c.out_shape())


@rule("repeat", "tile", "repeat_interleave")
def _repeat(c: Call):
    x = c.val(0)
    out = c.out_shape()
    lead = len(out) - x.rank
    for d in range(x.rank):
        if out[lead + d] != x.shape[d] and any(f.kind in ("s", "x") and f.size != 1 for f in x.dims[d]):
            raise Unsupported(f"{c.node.op} tiles positions (dimension {d})")
    dims = [(O(n),) for n in out[:lead]] + [
        x.dims[d] if out[lead + d] == x.shape[d] else ((Factor("c", out[lead + d]),) if any(
            f.kind == "c" for f in x.dims[d]) else (O(out[lead + d]),)) for d in range(x.rank)]
    return V.relabel(x, dims, out)


@rule("cat", "concat", "concatenate")
def _cat(c: Call):
    tensors = c.arg(0, "tensors")
    dim = c.arg(1, "dim", 0)
    vals = [c.value(t) for t in tensors if c.shape(t) is not None and (len(c.shape(t)) > 1 or c.shape(t)[0] > 0)]
    return V.cat(vals, dim, c.out_shape(), c.name)


@rule("stack", "hstack", "vstack", "dstack")
def _stack(c: Call):
    tensors = c.arg(0, "tensors")
    op = c.node.op
    out = c.out_shape()
    if op != "stack":
        raise Unsupported(f"{op} of tensors")
    dim = c.arg(1, "dim", 0) % len(out)
    vals = []
    for t in tensors:
        v = c.value(t)
        shp = list(v.shape)
        shp.insert(dim, 1)
        vals.append(V.reshape(v, shp))
    return V.cat(vals, dim, out, c.name)


def _split_outputs(c: Call, x: Value, dim: int, sizes: list, keep: bool = True) -> list:
    outs, start = [], 0
    for s in sizes:
        outs.append(V.select_range(x, dim, start, start + s, 1, c.name, keep=keep, op=c.node.op))
        start += s
    return outs


@rule("chunk", "split", "split_with_sizes", "tensor_split", "unbind", "hsplit", "vsplit")
def _split(c: Call):
    x = c.val(0)
    op = c.node.op
    dim = c.arg(1 if op == "unbind" else 2, "dim", 0) % x.rank
    if op in ("hsplit", "vsplit"):
        raise Unsupported(f"{op}")
    sizes = [c.g.tensors[t].shape[dim] if op != "unbind" else 1 for t in c.node.outs]
    return _split_outputs(c, x, dim, sizes, keep=op != "unbind")


@rule("narrow")
def _narrow(c: Call):
    x = c.val(0)
    dim, start, length = c.arg(1, "dim"), c.arg(2, "start"), c.arg(3, "length")
    if isinstance(start, Ref):
        raise Unsupported("narrow with a tensor start")
    dim %= x.rank
    start %= max(x.shape[dim], 1)
    return V.select_range(x, dim, start, start + length, 1, c.name, op="narrow")


@rule("select")
def _select(c: Call):
    x = c.val(0)
    dim, index = c.arg(1, "dim") % x.rank, c.arg(2, "index")
    index %= x.shape[dim]
    return V.select_range(x, dim, index, index + 1, 1, c.name, keep=False, op="select")


@rule("index_select")
def _index_select(c: Call):
    x = c.val(0)
    dim = c.arg(1, "dim") % x.rank
    idx = c.value(c.arg(2, "index"))
    if idx is not None and idx.dependent:
        raise Unsupported("index_select with input-dependent indices")
    if any(f.kind in ("s", "x") and f.size != 1 for f in x.dims[dim]):
        raise Unsupported("index_select along positions (which positions are taken is not tracked)")
    dims = list(x.dims)
    dims[dim] = (O(c.out_shape()[dim]),) if not any(f.kind == "c" for f in x.dims[dim]) else (C(c.out_shape()[dim]),)
    return V.relabel(x, dims, c.out_shape())


@rule("gather", "take_along_dim", "scatter", "scatter_add", "index_add", "index_copy", "index_fill", "put",
      "index_put", "take", "masked_select", "nonzero", "masked_scatter_")
def _gather(c: Call):
    x = c.val(0)
    dims = [d for d in range(x.rank)]
    if any(f.kind in ("s", "x") and f.size != 1 for d in dims for f in x.dims[d]) or any(
            v.dependent for v in c.tensor_values()[1:]):
        raise Unsupported(f"{c.node.op} moves elements by an index tensor (positions are not tracked)")
    return V.relabel(x, [(O(n),) for n in c.out_shape()], c.out_shape())


@rule("__getitem__")
def _getitem(c: Call):
    x = c.val(0)
    idx = c.arg(1)
    idx = idx if isinstance(idx, tuple) else (idx,)
    adv = [i for i in idx if isinstance(i, (Ref, list)) or (isinstance(i, tuple))]
    if adv:
        for i in adv:
            v = c.value(i) if isinstance(i, Ref) else None
            if v is not None and v.dependent:
                raise Unsupported("indexing with an input-dependent index tensor")
        n_before = 0
        for i in idx:
            if i is Ellipsis or isinstance(i, (Ref, list, tuple)):
                break
            n_before += 0 if i is None else 1
        # one advanced index on a dimension without positions: the dim becomes 'other'
        if len(adv) == 1 and Ellipsis not in idx and all(isinstance(i, slice) and i == slice(None)
                                                         for i in idx if i is not adv[0]):
            d = idx.index(adv[0])
            if not any(f.kind in ("s", "x") and f.size != 1 for f in x.dims[d]):
                out = c.out_shape()
                extra = len(out) - x.rank + 1
                dims = list(x.dims[:d]) + [(O(n),) for n in out[d:d + extra]] + list(x.dims[d + 1:])
                return V.relabel(x, dims, out)
        raise Unsupported("advanced (tensor/list) indexing of positions")
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        idx = idx[:e] + (slice(None),) * (x.rank - n_real) + idx[e + 1:]
    v = x
    d = 0                      # position in v's dims
    for i in idx:
        if i is None:
            shp = list(v.shape)
            shp.insert(d, 1)
            dims = list(v.dims)
            dims.insert(d, ())
            v = V.relabel(v, dims, shp)
            d += 1
        elif isinstance(i, bool):
            raise Unsupported("boolean indexing")
        elif isinstance(i, numbers.Integral):
            n = v.shape[d]
            v = V.select_range(v, d, int(i) % n, int(i) % n + 1, 1, c.name, keep=False, op="indexing")
        elif isinstance(i, slice):
            n = v.shape[d]
            if isinstance(i.start, Ref) or isinstance(i.stop, Ref) or isinstance(i.step, Ref):
                raise Unsupported("slicing with tensor bounds")
            start, stop, step = i.indices(n)
            if step < 1:
                raise Unsupported("negative slice steps")
            v = V.select_range(v, d, start, stop, step, c.name, op="slicing")
            d += 1
        else:
            raise Unsupported(f"index {i!r}")
    if tuple(v.shape) != c.out_shape():
        raise Unsupported(f"indexing gave shape {tuple(v.shape)}, torch {c.out_shape()}")
    return v


@rule("__setitem__")
def _setitem(c: Call):
    x = c.val(0)
    val = c.value(c.arg(2))
    if val is None or not val.dependent:
        if x.dependent:
            return x.add_note(f"{c.name}: writes constants into part of a tensor; the field keeps the whole "
                              "tensor's (an upper bound where the written part is read)")
        return x
    idx = c.arg(1)
    idx = idx if isinstance(idx, tuple) else (idx,)
    full = all(isinstance(i, slice) and i == slice(None) or i is Ellipsis for i in idx)
    if full:
        return V.union([val], x.shape, c.name)
    for d, i in enumerate(i for i in idx if i is not Ellipsis):
        if not (isinstance(i, slice) and i == slice(None)) and d < x.rank and any(
                f.kind in ("s", "x") and f.size != 1 for f in x.dims[d]):
            raise Unsupported("assignment into part of the positions of a tensor")
    if not x.dependent:
        raise Unsupported("assignment of input-dependent values into part of a constant tensor (which "
                          "channels get them is not tracked)")
    return V.union([x], x.shape, c.name)


@rule("pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle")
def _shuffle(c: Call):
    x = c.val(0)
    op = c.node.op
    if op in ("channel_shuffle", "native_channel_shuffle"):
        g = c.arg(1, "groups")
        n, ch = x.shape[0], x.shape[1]
        sp = list(x.shape[2:])
        v = V.reshape(x, [n, g, ch // g] + sp)
        v = V.permute(v, [0, 2, 1] + list(range(3, v.rank)))
        return V.reshape(v, [n, ch] + sp)
    r = c.arg(1, "upscale_factor" if op == "pixel_shuffle" else "downscale_factor")
    lead = list(x.shape[:-3])
    ch, h, w = x.shape[-3:]
    L = len(lead)
    if op == "pixel_shuffle":                        # (.., C r r, H, W) -> (.., C, H r, W r)
        v = V.reshape(x, lead + [ch // (r * r), r, r, h, w])
        v = V.permute(v, list(range(L)) + [L, L + 3, L + 1, L + 4, L + 2])
        return V.reshape(v, lead + [ch // (r * r), h * r, w * r])
    v = V.reshape(x, lead + [ch, h // r, r, w // r, r])  # (.., C, H, W) -> (.., C r r, H/r, W/r)
    v = V.permute(v, list(range(L)) + [L, L + 2, L + 4, L + 1, L + 3])
    return V.reshape(v, lead + [ch * r * r, h // r, w // r])


@rule("flip", "fliplr", "flipud")
def _flip(c: Call):
    x = c.val(0)
    dims = _dim_list(c.arg(1, "dims"), x.rank) if c.node.op == "flip" else (
        [x.rank - 1] if c.node.op == "fliplr" else [0])
    v = x
    for d in dims:
        v = V.reverse(v, d, c.name)
    return v


@rule("diff")
def _diff(c: Call):
    x = c.val(0)
    n, dim = c.arg(1, "n", 1), c.arg(2, "dim", -1) % x.rank
    if any(c.arg(i, k) is not None for i, k in ((3, "prepend"), (4, "append"))) and any(
            f.kind in ("s", "x") and f.size != 1 for f in x.dims[dim]):
        raise Unsupported("diff with prepend/append along positions")
    v = x
    for _ in range(n):                          # output i = x[i + 1] - x[i]
        v = V.taps(v, dim, fl.TapMap(1, 1, ((0, 1),)), v.shape[dim] - 1 if v.shape[dim] else 0, "diff",
                   node=c.name) if any(f.kind == "s" for f in v.dims[dim]) else v
    return V.union([v] + [u for u in c.tensor_values()[1:] if u.dependent], c.out_shape(), c.name) \
        if tuple(v.shape) != c.out_shape() or len(c.tensor_values()) > 1 else v


@rule("roll")
def _roll(c: Call):
    x = c.val(0)
    shifts, dims = c.arg(1, "shifts"), c.arg(2, "dims")
    if dims is None:
        if any(f.kind in ("s", "x") for d in x.dims for f in d):
            raise Unsupported("roll of the flattened tensor over positions")
        return x
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    v = x
    for s, d in zip(shifts, dims):
        v = V.cyclic_shift(v, d % x.rank, s, c.name)
    return v


@rule("unfold", methods=True, functions=False)
def _tensor_unfold(c: Call):
    x = c.val(0)
    dim, size, step = c.arg(1, "dimension"), c.arg(2, "size"), c.arg(3, "step")
    dim %= x.rank
    out = c.out_shape()
    v = V.taps(x, dim, fl.conv_map(size, step, 1, 0), out[dim], "unfold", node=c.name)
    dims = list(v.dims) + [(Factor("x", size),)]
    v = V.relabel(v, dims, out)
    has_pos = any(f.kind == "s" for f in x.dims[dim])
    return v.with_(lossy=v.lossy or c.name, llossy=v.llossy or c.name) if has_pos else v


@rule("unfold", "fold", methods=False, functions=True)
def _im2col(c: Call):
    x = c.val(0)
    op = c.node.op
    k = c.arg(1 if op == "unfold" else 2, "kernel_size")
    off = 0 if op == "unfold" else 1
    d, p, s = (c.arg(2 + off, "dilation", 1), c.arg(3 + off, "padding", 0), c.arg(4 + off, "stride", 1))
    k, d, p, s = (_ints(v, 2, n) for v, n in ((k, "kernel_size"), (d, "dilation"), (p, "padding"), (s, "stride")))
    out = c.out_shape()
    batched = len(out) == 3 if op == "unfold" else len(out) == 4
    lead = [x.shape[0]] if batched else []
    L = len(lead)
    if op == "unfold":                                # (N, C, H, W) -> (N, C k0 k1, L)
        ch, h, w = x.shape[L:]
        oh, ow = (geo.output_size(n, kk, ss, dd, (pp, pp)) for n, kk, ss, dd, pp in zip((h, w), k, s, d, p))
        if k == s and p == (0, 0) and d == (1, 1) and h % k[0] == 0 and w % k[1] == 0:
            v = V.reshape(x, lead + [ch, oh, k[0], ow, k[1]])
            v = V.permute(v, list(range(L)) + [L, L + 2, L + 4, L + 1, L + 3])
            return V.reshape(v, lead + [ch * k[0] * k[1], oh * ow])
        v = x
        for ax, dim in enumerate((L + 1, L + 2)):
            v = V.taps(v, dim, fl.conv_map(k[ax], s[ax], d[ax], p[ax]), (oh, ow)[ax], "unfold", node=c.name)
        v = V.reshape(v, lead + [ch, oh * ow])
        dims = list(v.dims)
        # the kernel offsets are positions: merged (each element reads one of them), exact once mixed
        dims[L] = (Factor("c", ch), Factor("x", k[0]), Factor("x", k[1]))
        return V.relabel(v, dims, out).with_(lossy=v.lossy or c.name, llossy=v.llossy or c.name)
    # fold: (N, C k0 k1, L) -> (N, C, H, W), only the non-overlapping case (a reshape)
    oh_, ow_ = out[-2:]
    if k == s and p == (0, 0) and d == (1, 1) and oh_ % k[0] == 0 and ow_ % k[1] == 0:
        ch = out[L]
        nh, nw = oh_ // k[0], ow_ // k[1]
        v = V.reshape(x, lead + [ch, k[0], k[1], nh, nw])
        v = V.permute(v, list(range(L)) + [L, L + 3, L + 1, L + 4, L + 2])
        return V.reshape(v, lead + [ch, oh_, ow_])
    # overlapping patches: output y sums the patches l with y = l*stride - padding + tap*dilation,
    # the geometry of a transposed convolution
    ch = out[L]
    lh, lw = (geo.output_size(n, kk, ss, dd, (pp, pp)) for n, kk, ss, dd, pp in zip((oh_, ow_), k, s, d, p))
    v = V.reshape(x, lead + [x.shape[L], lh, lw], c.name)
    if any(f.kind == "x" for f in v.dims[L]):        # offsets not mixed: the scatter stays an upper bound
        v = V.relabel(v, v.dims[:L] + ((C(ch),),) + v.dims[L + 1:], v.shape[:L] + (ch,) + v.shape[L + 1:])
    else:
        v = V.drop_dim(v, L, c.name, (C(ch),), ch)
    for ax in range(2):
        v = V.taps(v, L + 1 + ax, fl.transpose_map(k[ax], s[ax], d[ax], p[ax]), (oh_, ow_)[ax], "fold",
                   node=c.name)
    return v


# ----------------------------------------------------------------------------------- conv & pool

def _conv_macs(c: Call) -> int:
    w = c.shape(c.arg(1, "weight"))
    out = c.out_shape()
    transposed = c.node.op.startswith("conv_transpose")
    x = c.shape(c.arg(0, "input"))
    nsp = len(w) - 2
    batched = len(x) == nsp + 2
    n = x[0] if batched else 1
    if transposed:   # every input sample scatters through every tap: N * C_in * prod(in) * C_out/g * prod(k)
        return n * w[0] * math.prod(x[-nsp:]) * w[1] * math.prod(w[2:])
    return n * out[-nsp - 1] * math.prod(out[-nsp:]) * w[1] * math.prod(w[2:])


def _channel_mix(c: Call, x: Value, cdim: int, groups: int, c_out: int) -> Value:
    c_in = x.shape[cdim]
    if groups == 1:
        return V.drop_dim(x, cdim, c.name, (C(c_out),), c_out)
    sp = [f for f in x.dims[cdim] if f.kind in ("s", "x") and f.size != 1]
    if not sp:
        dims = list(x.dims)
        dims[cdim] = (C(c_out),)
        shape = list(x.shape)
        shape[cdim] = c_out
        return V.relabel(x, dims, shape)
    if groups == c_in and c_out % c_in == 0:            # depthwise: channel o reads channel o // mult
        dims = list(x.dims)
        extra = c_out // c_in
        dims[cdim] = x.dims[cdim] + ((C(extra),) if extra > 1 else ())
        shape = list(x.shape)
        shape[cdim] = c_out
        return V.relabel(x, dims, shape)
    raise Unsupported(f"grouped convolution (groups={groups}) over channels that hold positions")


@rule("conv1d", "conv2d", "conv3d", "convolution", "_convolution", macs=_conv_macs)
def _conv(c: Call):
    x = c.val(0)
    w = c.shape(c.arg(1, "weight"))
    nsp = len(w) - 2
    stride = _ints(c.arg(3, "stride", 1), nsp, "stride")
    padding = c.arg(4, "padding", 0)
    dilation = _ints(c.arg(5, "dilation", 1), nsp, "dilation")
    groups = int(c.arg(6, "groups", 1))
    return _conv_like(c, x, w[2:], stride, padding, dilation, groups=groups, channels=w[0])


def _conv_like(c: Call, x: Value, kernel, stride, padding, dilation, groups=None, channels=None,
               what=None) -> Value:
    nsp = len(kernel)
    out = c.out_shape()
    batched = x.rank == nsp + 2
    cdim = 1 if batched else 0
    in_sizes = x.shape[cdim + 1:]
    if isinstance(padding, str):
        pads = geo.resolve_padding(padding, in_sizes, kernel, stride, dilation)
    else:
        p = _ints(padding, nsp, "padding")
        pads = tuple((q, q) for q in p)
    v = x
    if groups is not None:
        v = _channel_mix(c, v, cdim, groups, channels)
    for i in range(nsp):
        t = fl.conv_map(kernel[i], stride[i], dilation[i], pads[i][0])
        v = V.taps(v, cdim + 1 + i, t, out[cdim + 1 + i], what or c.node.op, node=c.name)
    return v


def _transpose_macs(c: Call) -> int:
    return _conv_macs(c)


@rule("conv_transpose1d", "conv_transpose2d", "conv_transpose3d", macs=_transpose_macs)
def _conv_transpose(c: Call):
    x = c.val(0)
    w = c.shape(c.arg(1, "weight"))
    nsp = len(w) - 2
    stride = _ints(c.arg(3, "stride", 1), nsp, "stride")
    padding = _ints(c.arg(4, "padding", 0), nsp, "padding")
    groups = int(c.arg(6, "groups", 1))
    dilation = _ints(c.arg(7, "dilation", 1), nsp, "dilation")
    out = c.out_shape()
    batched = x.rank == nsp + 2
    cdim = 1 if batched else 0
    v = _channel_mix(c, x, cdim, groups, w[1] * groups)
    for i in range(nsp):
        t = fl.transpose_map(w[2 + i], stride[i], dilation[i], padding[i])
        v = V.taps(v, cdim + 1 + i, t, out[cdim + 1 + i], c.node.op, node=c.name)
    return v


_POOL_ND = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2,
            "avg_pool3d": 3, "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2,
            "max_pool3d_with_indices": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3}


@rule(*_POOL_ND)
def _pool(c: Call):
    op = c.node.op
    nsp = _POOL_ND[op]
    x = c.val(0)
    off = 1 if op.startswith("lp_") else 0
    k = _ints(c.arg(1 + off, "kernel_size"), nsp, "kernel_size")
    s = c.arg(2 + off, "stride", None)
    s = k if s is None or s == [] or s == () else _ints(s, nsp, "stride")
    p = (0,) * nsp if op.startswith("lp_") else _ints(c.arg(3, "padding", 0), nsp, "padding")
    d = _ints(c.arg(4, "dilation", 1), nsp, "dilation") if op.startswith("max") else (1,) * nsp
    v = _conv_like(c, x, k, s, p, d)
    return [v] * max(1, c.nouts)


def _adaptive_map(n: int, m: int) -> fl.TapMap:
    g = math.gcd(n, m)
    a, b = m // g, n // g    # a outputs per b inputs; output o reads [floor(o n/m), ceil((o+1) n/m))
    return fl.TapMap(a, b, tuple(tuple(range((o * n) // m, -((-(o + 1) * n) // m))) for o in range(a)))


@rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
      "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
      "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices")
def _adaptive(c: Call):
    x = c.val(0)
    out = c.out_shape()
    nsp = int(c.node.op.split("pool")[1][0])
    v = x
    for dim in range(x.rank - nsp, x.rank):
        n, m = x.shape[dim], out[dim]
        if m == 1:
            v = V.mix(v, [dim], "pool", c.name, remove=True, keepdim=True)
        else:
            v = V.taps(v, dim, _adaptive_map(n, m), m, c.node.op, node=c.name)
    return [v] * max(1, c.nouts)


def _resample_map(n: int, m: int, mode: str, scale: Fraction | None, align_corners: bool = False) -> fl.TapMap:
    """Output ``o`` of an ``n -> m`` resampling reads source ``(o + 0.5) * scale - 0.5`` (linear
    modes; ``o * (n - 1) / (m - 1)`` with ``align_corners``) or ``floor(o * scale)`` (nearest), with
    ``scale = n / m`` unless a scale factor is used; the taps with nonzero weight are read (one at an
    integer source, two for linear and four for cubic between samples). Periodic either way: ``a``
    outputs per ``b`` inputs."""
    if align_corners:
        scale = Fraction(n - 1, m - 1)
    else:
        scale = scale if scale is not None else Fraction(n, m)
    a, b = scale.denominator, scale.numerator      # a outputs per b inputs
    taps = []
    for o in range(a):
        if mode == "nearest":
            taps.append((math.floor(o * scale),))
        elif mode == "nearest-exact":
            taps.append((math.floor((o + Fraction(1, 2)) * scale),))
        else:
            src = o * scale if align_corners else (o + Fraction(1, 2)) * scale - Fraction(1, 2)
            fl_ = math.floor(src)
            # a source exactly on a sample reads it alone (weight 0 for the neighbour; PyTorch's
            # floating-point source can leave it ~1e-16, e.g. 2 -> 10 samples, output 2)
            if src == fl_:
                taps.append((fl_,))
            elif mode == "bicubic":
                taps.append(tuple(range(fl_ - 1, fl_ + 3)))
            else:
                taps.append((fl_, fl_ + 1))
    return fl.TapMap(a, b, tuple(taps))


@rule("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")
def _interpolate(c: Call):
    x = c.val(0)
    op = c.node.op
    mode = {"upsample_nearest": "nearest", "upsample_bilinear": "bilinear"}.get(op) or c.arg(3, "mode", "nearest")
    align = bool(c.arg(4, "align_corners", None)) if op not in ("upsample_bilinear",) else True
    if c.arg(6, "antialias", False):
        raise Unsupported("antialiased resampling")
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", "area"):
        raise Unsupported(f"resampling mode {mode!r}")
    out = c.out_shape()
    sf = c.arg(2, "scale_factor", None)
    recompute = c.arg(5, "recompute_scale_factor", None)
    v = x
    for i, dim in enumerate(range(2, x.rank)):
        n, m = x.shape[dim], out[dim]
        if n == 1 and m > 1:                      # one source position: every output reads it
            v = V.expand(v, tuple(m if d == dim else s for d, s in enumerate(v.shape)))
            continue
        if m == 1 and mode != "area":
            v = V.select_range(v, dim, 0, 1, 1, c.name, op=op) if align or mode == "nearest" else \
                V.taps(v, dim, _resample_map(n, m, mode, None), m, op, node=c.name)
            continue
        if mode == "area":
            v = (V.taps(v, dim, _adaptive_map(n, m), m, op, node=c.name) if m > 1
                 else V.mix(v, [dim], "pool", c.name, True, True))
            continue
        scale = None
        if sf is not None and not recompute:
            f = sf[i] if isinstance(sf, (list, tuple)) else sf
            scale = 1 / Fraction(f).limit_denominator(10 ** 6)
        v = V.taps(v, dim, _resample_map(n, m, mode, scale, align and mode != "nearest"), m, op, node=c.name)
    if mode in ("linear", "bilinear", "trilinear", "bicubic"):
        v = v.add_note(f"{c.name}: {mode} resampling clamps at the border (fields of border outputs are "
                       "clipped there)")
    return v


@rule("pad")
def _pad(c: Call):
    x = c.val(0)
    pad = list(c.arg(1, "pad"))
    mode = c.arg(2, "mode", "constant")
    out = c.out_shape()
    v = x
    for i in range(len(pad) // 2):      # pad lists (lo, hi) for the last dim first
        dim = x.rank - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        if lo == 0 and hi == 0:
            continue
        v = V.taps(v, dim, fl.TapMap(1, 1, ((-lo,),)), out[dim], "pad", node=c.name)
    if mode != "constant":
        v = v.add_note(f"{c.name}: {mode} padding is a shift here; fields near the border reflect or wrap")
    return v


# ------------------------------------------------------------------------------- linear & attention

def _linear_macs(c: Call) -> int:
    x = c.shape(c.arg(0, "input"))
    w = c.shape(c.arg(1, "weight"))
    return math.prod(x[:-1]) * math.prod(w)


@rule("linear", macs=_linear_macs)
def _linear(c: Call):
    x = c.val(0)
    w = c.value(c.arg(1, "weight"))
    out = c.out_shape()
    v = V.drop_dim(x, -1, c.name, (C(out[-1]),), out[-1])
    deps = [v] + [u for u in (w, c.value(c.arg(2, "bias"))) if u is not None and u.dependent]
    return V.union(deps, out, c.name) if len(deps) > 1 else v


def _bilinear_macs(c: Call) -> int:
    x1 = c.shape(c.arg(0, "input1"))
    w = c.shape(c.arg(2, "weight"))
    return math.prod(x1[:-1]) * math.prod(w)


@rule("bilinear", macs=_bilinear_macs)
def _bilinear(c: Call):
    out = c.out_shape()
    a = V.drop_dim(c.val(0), -1, c.name, (C(out[-1]),), out[-1])
    b = V.drop_dim(c.val(1), -1, c.name, (C(out[-1]),), out[-1])
    return V.union([a, b], out, c.name)


def _letters(n: int, start: int = 0) -> str:
    return "".join(chr(ord("a") + start + i) for i in range(n))


def _matmul_spec(ra: int, rb: int) -> str:
    """einsum spec of ``a @ b`` for operand ranks ``ra``, ``rb`` (numpy/torch broadcasting rules)."""
    if ra == 1 and rb == 1:
        return "k,k->"
    if ra == 1:
        return "k,...km->...m"
    if rb == 1:
        return "...nk,k->...n"
    return "...nk,...km->...nm"


def _einsum_macs(spec: str, shapes: list, out: tuple) -> int:
    ins, outl = V._parse_einsum(spec, [len(s) for s in shapes])
    size: dict = {}
    for letters, s in zip(ins, shapes):
        for ch, n in zip(letters, s):
            size[ch] = max(size.get(ch, 1), n)
    return math.prod(size.values())


def _matmul_macs(c: Call) -> int:
    a, b = c.shape(c.arg(0)), c.shape(c.arg(1))
    if c.node.op == "__rmatmul__":
        a, b = b, a
    return _einsum_macs(_matmul_spec(len(a), len(b)), [a, b], c.out_shape())


@rule("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "vdot", "inner", macs=_matmul_macs)
def _matmul(c: Call):
    a, b = c.arg(0), c.arg(1)
    if c.node.op == "__rmatmul__":
        a, b = b, a
    va = c.value(a) or Value.constant(c.shape(a), c.whole)
    vb = c.value(b) or Value.constant(c.shape(b), c.whole)
    return V.einsum(_matmul_spec(va.rank, vb.rank), [va, vb], c.out_shape(), c.name)


def _addmm_macs(c: Call) -> int:
    a, b = c.shape(c.arg(1)), c.shape(c.arg(2))
    return _einsum_macs(_matmul_spec(len(a), len(b)), [a, b], c.out_shape())


@rule("addmm", "baddbmm", "addbmm", "addmv", "addr", macs=_addmm_macs)
def _addmm(c: Call):
    if c.node.op in ("addbmm", "addr"):
        raise Unsupported(c.node.op)
    m = _matmul(_Shifted(c, 1))
    bias = c.value(c.arg(0))
    return V.union([m] + ([bias] if bias is not None and bias.dependent else []), c.out_shape(), c.name)


class _Shifted(Call):
    def __init__(self, c: Call, by: int):
        super().__init__(c.node, c.g, c.ins, c.approx)
        self._by = by

    def arg(self, i, key=None, default=None):
        return super().arg(i + self._by, key, default)


def _einsum_args(c: Call):
    spec = c.arg(0, "equation")
    ops = list(c.node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    return spec, ops


def _einsum_rule_macs(c: Call) -> int:
    spec, ops = _einsum_args(c)
    return _einsum_macs(spec, [c.shape(o) for o in ops], c.out_shape())


@rule("einsum", macs=_einsum_rule_macs)
def _einsum(c: Call):
    spec, ops = _einsum_args(c)
    vals = [c.value(o) or Value.constant(c.shape(o), c.whole) for o in ops]
    return V.einsum(spec, vals, c.out_shape(), c.name)


def _attention(c: Call, q: Value, k: Value, v: Value, out_shape: tuple, mask: Value | None,
               has_mask: bool, causal: bool) -> Value:
    """``softmax(q k^T) v`` over the last two dims: ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)``."""
    if causal:
        raise Unsupported("causal attention: each output depends on every earlier position, a field that grows "
                          "with the position (not a periodic field)")
    lead = q.rank - 2
    L = _letters(lead)
    logits = V.einsum(f"{L}le,{L}se->{L}ls", [q, k], tuple(q.shape[:-1]) + (k.shape[-2],), c.name)
    if mask is not None and mask.dependent:
        logits = V.union([logits, mask], logits.shape, c.name)
    out = V.einsum(f"{L}ls,{L}sv->{L}lv", [logits, v], out_shape, c.name)
    if has_mask:
        out = out.add_note(f"{c.name}: an attention mask is given; the field assumes every key can be attended "
                           "(a mask that blocks keys entirely makes the true field smaller)")
    return out


def _sdpa_macs(c: Call) -> int:
    q, k, v = (c.shape(c.arg(i)) for i in range(3))
    lead = math.prod(q[:-2])
    return lead * q[-2] * k[-2] * (q[-1] + v[-1])


@rule("scaled_dot_product_attention", macs=_sdpa_macs)
def _sdpa(c: Call):
    q, k, v = c.val(0, "query"), c.val(1, "key"), c.val(2, "value")
    mask_arg = c.arg(3, "attn_mask")
    if k.rank >= 3 and q.rank == k.rank and k.shape[-3] != q.shape[-3]:      # grouped-query attention
        for name_, t in (("key", k), ("value", v)):
            if any(f.kind in ("s", "x") for f in t.dims[-3]):
                raise Unsupported(f"grouped-query attention with positions in the {name_} heads")
        k = V.relabel(k, k.dims[:-3] + ((),) + k.dims[-2:], k.shape[:-3] + (1,) + k.shape[-2:])
        v = V.relabel(v, v.dims[:-3] + ((),) + v.dims[-2:], v.shape[:-3] + (1,) + v.shape[-2:])
    return _attention(c, q, k, v, c.out_shape(), c.value(mask_arg), mask_arg is not None,
                      bool(c.arg(5, "is_causal", False)))


def _mha_macs(c: Call) -> int:
    q, k, v = (c.shape(c.arg(i)) for i in range(3))
    E = c.arg(3, "embed_dim_to_check")
    batched = len(q) == 3
    N = q[1] if batched else 1
    Lq, S = q[0], k[0]
    proj = N * (Lq * q[-1] * E + S * k[-1] * E + S * v[-1] * E)
    att = N * Lq * S * E * 2
    out = N * Lq * E * E
    return proj + att + out


@rule("multi_head_attention_forward", macs=_mha_macs)
def _mha(c: Call):
    q, k, v = c.val(0, "query"), c.val(1, "key"), c.val(2, "value")
    E = c.arg(3, "embed_dim_to_check")
    batched = q.rank == 3
    out0 = c.out_shape(0)

    def proj(t: Value) -> Value:
        return V.drop_dim(t, -1, c.name, (C(E),), E)

    q, k, v = proj(q), proj(k), proj(v)
    if batched:                                       # (L, N, E) -> (N, L, E)
        q, k, v = (V.permute(t, [1, 0, 2]) for t in (q, k, v))
    mask = c.arg(16, "attn_mask")
    kpm = c.arg(14, "key_padding_mask")
    att = _attention(c, q, k, v, tuple(q.shape), c.value(mask), mask is not None or kpm is not None,
                     bool(c.arg(24, "is_causal", False)) and mask is None)
    if batched:
        att = V.permute(att, [1, 0, 2])
    att = V.drop_dim(att, -1, c.name, (C(out0[-1]),), out0[-1])
    outs = [att]
    if c.nouts > 1:
        outs.append(V.relabel(att, [(O(n),) for n in c.out_shape(1)], c.out_shape(1)).with_(
            full=att.full, local=att.local))
    return outs


def _rnn_macs(c: Call) -> int:
    x = c.shape(c.arg(0, "input"))
    params = c.arg(2)
    if not isinstance(params, (list, tuple)):
        return 0
    total = 0
    steps = math.prod(x[:-1]) if x else 0
    for p in params:
        s = c.shape(p)
        if s is not None and len(s) == 2:        # weight_ih (gates*H, I) or weight_hh (gates*H, H)
            total += steps * s[0] * s[1]
    return total


@rule("gru", "lstm", "rnn_tanh", "rnn_relu", "gru_cell", "lstm_cell", "rnn_tanh_cell", "rnn_relu_cell",
      macs=_rnn_macs)
def _rnn(c: Call):
    x = c.val(0, "input")
    if any(f.kind in ("s", "x") and f.size != 1 for d in x.dims[:2] for f in d) or not c.node.op.endswith("cell"):
        if any(f.kind in ("s", "x") and f.size != 1 for d in x.dims for f in d):
            raise Unsupported(f"recurrent layer ({c.node.op}): each output depends on every earlier step of "
                              "the sequence, a field that grows with the position (not a periodic field)")
    outs = []
    for t in c.node.outs:
        shp = c.g.tensors[t].shape
        outs.append(V.relabel(x, [(O(n),) for n in shp], shp) if x.rank else Value.constant(shp, c.whole))
    return outs


@rule("embedding", "embedding_bag", "one_hot")
def _embedding(c: Call):
    idx = c.val(0)
    if idx.dependent:
        raise Unsupported(f"{c.node.op} indexed by input-dependent values")
    return _constant(c)


@rule("grid_sample", "affine_grid", "fractional_max_pool2d", "fractional_max_pool3d", "ctc_loss", "stft",
      "istft", "fft", "rfft", "ifft", "irfft", "fft2", "rfft2", "ifft2", "irfft2", "fftn", "rfftn", "ifftn",
      "irfftn", "histc", "bincount", "unique", "unique_consecutive", "searchsorted", "bucketize", "nonzero",
      "where_", "item", "tolist")
def _refused(c: Call):
    raise Unsupported(f"{c.node.op} moves or mixes positions in a way the analysis does not model")


# ----------------------------------------------------------------------------------------- layers

def _layer(c: Call):
    x = c.val(0)
    kw = c.node.kwargs
    v = x
    out = c.out_shape()
    for i, (k, s, d, p) in enumerate(zip(kw["kernel"], kw["stride"], kw["dilation"], kw["pads"])):
        v = V.taps(v, 2 + i, fl.conv_map(k, s, d, p[0]), out[2 + i], "Layer", node=c.name)
    return v


_LAYER = Rule(_layer)
