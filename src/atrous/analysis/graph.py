"""The per-call graph: a layer list or a torch model lowered to one node per call.

A torch model is run once on *meta* tensors (shapes only: no memory, no arithmetic; an input of
100000x100000 costs nothing) under a ``torch.overrides.TorchFunctionMode`` that records every call
of a torch function, a ``Tensor`` method or an operator with its arguments, and forward hooks that
record which module each call happens in. So every module call is seen (a shared ``self.relu``
called three times gives three nodes, ``relu``, ``relu_1``, ``relu_2``, named like torch.fx does),
functional calls and methods are seen, and Python control flow on shapes simply runs. Code that
needs tensor *values* (``.item()``, data-dependent branches) cannot run on meta tensors and is
refused by name.

:func:`lower` then walks the nodes a target depends on (and only those: ``at=`` resolves before
unrelated parts fail) and asks :mod:`atrous.analysis.rules` for the rule of each op; the rule maps
the input :class:`~atrous.analysis.values.Value` (labels and fields) to the output ones. An op
without a rule is an error naming the node, the op and the input shapes.
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import values as V
from .values import Unsupported, Value

__all__ = ["Graph", "Node", "Ref", "record", "from_layers", "lower", "AnalysisError", "FACTORIES"]


class AnalysisError(ValueError):
    """The analysis cannot follow the model (unknown op, refused op, bad input); names the node."""


@dataclass(frozen=True)
class Ref:
    """A tensor argument of a recorded call (index into ``Graph.tensors``)."""

    index: int


@dataclass
class TensorInfo:
    shape: tuple
    dtype: Any
    node: int          # producing node (-1: a constant that no recorded call produced)
    slot: int = 0


@dataclass
class Node:
    index: int
    kind: str                  # 'input' | 'call' | 'module' (a module that returned its input) | 'layer'
                               # | 'item' (one element of a tuple result, torch.fx's getitem)
    target: Any                # function object, method name, module or Layer
    op: str                    # display name: 'conv2d', 'Tensor.view', 'Conv2d'
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    outs: tuple = ()           # tensor indices produced, in output order
    out_tree: Any = None       # the output with Ref placeholders
    scope: tuple = ()          # call names of the enclosing modules, outermost first
    module: Any = None         # the leaf module whose call this is (or contains it)
    module_name: str = ""      # its call name
    base: str = ""
    name: str = ""
    view_inplace: bool = False # an in-place op on a view of another tensor

    @property
    def in_refs(self) -> list[Ref]:
        cache = self.__dict__.get("_refs")
        if cache is None:
            cache = []
            _collect(self.args, cache)
            _collect(self.kwargs, cache)
            self.__dict__["_refs"] = cache
        return cache


def _collect(obj, out):
    if isinstance(obj, Ref):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _collect(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _collect(o, out)


@dataclass
class Graph:
    nodes: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    inputs: list = field(default_factory=list)       # tensor indices of the model inputs
    outputs: list = field(default_factory=list)      # tensor indices of the model output (flattened)
    calls: dict = field(default_factory=dict)        # module call name -> tensor index of its output
    call_scope: dict = field(default_factory=dict)   # module call name -> module qualname
    sizes: tuple = ()                                # spatial sizes of the analysed input
    ndim: int = 0
    error: str | None = None                         # the run stopped early (partial graph)
    notes: list = field(default_factory=list)
    values: dict | None = None                       # tensor index -> tensor (real runs, keep_tensors)

    def node(self, name: str) -> Node:
        return self._by_name()[name]

    def _by_name(self) -> dict:
        return {n.name: n for n in self.nodes}

    def add_tensor(self, shape, dtype, node, slot=0) -> int:
        self.tensors.append(TensorInfo(tuple(shape), dtype, node, slot))
        return len(self.tensors) - 1

    def finish_names(self) -> None:
        count: dict = {}
        for n in self.nodes:
            c = count.get(n.base, 0)
            n.name = n.base if c == 0 else f"{n.base}_{c}"
            count[n.base] = c + 1

    # ----------------------------------------------------------------------- targets
    def target(self, at: str | None) -> int:
        """Tensor index of ``at`` (a node name or a module call name; default: the model output)."""
        if at is None:
            if self.outputs:
                return self.outputs[0]
            if self.error:
                raise AnalysisError(f"the model did not run to its output: {self.error}")
            raise AnalysisError("the model returned no tensor")
        if not isinstance(at, str):
            raise TypeError(f"at must be a node or module name (str), got {type(at).__name__}")
        byname = self._by_name()
        if at in byname and byname[at].outs:
            return byname[at].outs[0]
        if at in self.calls:
            return self.calls[at]
        names = [n.name for n in self.nodes if n.outs] + list(self.calls)
        close = difflib.get_close_matches(at, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        tail = f"; the run stopped early: {self.error}" if self.error else ""
        raise AnalysisError(f"at={at!r} is not a node or submodule of the model{hint}{tail}")

    def ancestors(self, tensor: int) -> set:
        """Node indices that ``tensor`` depends on."""
        seen: set = set()
        todo = [self.tensors[tensor].node]
        while todo:
            i = todo.pop()
            if i < 0 or i in seen:
                continue
            seen.add(i)
            todo += [self.tensors[r.index].node for r in self.nodes[i].in_refs]
        return seen


# ----------------------------------------------------------------------------------- layers

def from_layers(layers: Sequence, input_shape) -> Graph:
    """A chain of :class:`atrous.Layer` as a graph (input ``(1, 1, *spatial)``; sizes may be unknown)."""
    from .receptive_field import Layer

    layers = list(layers)
    if not layers:
        raise ValueError("layers must be a non-empty list of atrous.Layer")
    for i, L in enumerate(layers):
        if not isinstance(L, Layer):
            raise TypeError(f"layers[{i}] must be an atrous.Layer, got {L!r}")
    dims = {L.ndim for L in layers} - {None}
    if input_shape is not None:
        input_shape = check_shape(input_shape)
        dims.add(len(input_shape) - 2)
    if len(dims) > 1:
        raise ValueError(f"layers (and input_shape) disagree on the number of spatial axes: {sorted(dims)}")
    ndim = dims.pop() if dims else 1
    sizes = tuple(input_shape[2:]) if input_shape is not None else (None,) * ndim
    g = Graph(sizes=sizes, ndim=ndim)
    shape = (1, 1) + sizes
    g.nodes.append(Node(0, "input", None, "input", base="input"))
    t = g.add_tensor(shape, None, 0)
    g.nodes[0].outs = (t,)
    g.inputs = [t]
    for i, L in enumerate(layers):
        k, s, d, pads = L.resolve(ndim, sizes if input_shape is not None else None)
        if input_shape is not None:
            from .. import geometry as geo
            sizes = geo.conv_output_shape(sizes, k, s, d, pads)
        node = Node(len(g.nodes), "layer", L, "Layer", args=(Ref(t),), base=str(i))
        node.kwargs = {"kernel": k, "stride": s, "dilation": d, "pads": pads}
        g.nodes.append(node)
        t = g.add_tensor((1, 1) + tuple(sizes), None, node.index)
        node.outs = (t,)
    g.outputs = [t]
    g.finish_names()
    return g


def check_shape(input_shape) -> tuple:
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints (N, C, *spatial), got {input_shape!r}")
    if len(input_shape) < 3:
        raise ValueError(f"input_shape must be (N, C, *spatial) with at least one spatial axis, "
                         f"got {tuple(input_shape)!r}")
    return tuple(int(v) for v in input_shape)


# ----------------------------------------------------------------------------------- torch

FACTORIES = {"zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "rand", "randn",
              "randint", "randperm", "eye", "tensor", "as_tensor", "scalar_tensor", "empty_strided",
              "tril_indices", "triu_indices", "zeros_like", "ones_like", "empty_like", "full_like",
              "rand_like", "randn_like", "randint_like", "normal", "bartlett_window", "hann_window",
              "hamming_window", "blackman_window", "kaiser_window"}
# shape- and dtype-preserving ops: on meta tensors their output is allocated directly (some, like
# batch_norm, otherwise run a Python decomposition that costs more than the whole analysis)
_SAME_SHAPE = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "relu", "relu6", "gelu",
               "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "selu",
               "celu", "mish", "softplus", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
               "feature_alpha_dropout", "softmax", "log_softmax"}


def op_name(func) -> str:
    """A call's short name: ``conv2d`` for ``F.conv2d``, ``view`` for ``Tensor.view``, ``T`` for ``x.T``."""
    import types
    self_ = getattr(func, "__self__", None)
    if isinstance(self_, types.GetSetDescriptorType):
        return self_.__name__
    name = getattr(func, "__name__", None) or str(func)
    if name == "fn" and hasattr(func, "__wrapped__"):
        name = getattr(func.__wrapped__, "__name__", name)
    return name


_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift", "neg", "pos", "abs", "invert", "eq", "ne", "lt", "le", "gt", "ge", "getitem", "setitem",
              "div"}
_INPLACE_ARITH = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "truediv", "__iadd__": "add"}


def fx_name(op: str) -> str:
    """The name torch.fx gives a call of ``op``: ``x[i]`` is ``getitem``, ``a + b`` and ``a += b``
    are ``add``, ``a @ b`` is ``matmul``; other ops keep their name.

    >>> fx_name("__getitem__"), fx_name("__radd__"), fx_name("add_"), fx_name("relu_")
    ('getitem', 'add', 'add', 'relu_')
    """
    if op in _INPLACE_ARITH:
        return _INPLACE_ARITH[op]
    if op.startswith("__") and op.endswith("__"):
        core = op[2:-2]
        if core in _OPERATORS:
            return "truediv" if core == "div" else core
        if core[:1] in ("r", "i") and core[1:] in _OPERATORS:
            return "truediv" if core[1:] == "div" else core[1:]
    return op


def is_method(func) -> bool:
    qn = getattr(func, "__qualname__", "") or ""
    return qn.startswith(("TensorBase.", "Tensor.")) or type(getattr(func, "__self__", None)).__name__ == \
        "getset_descriptor"


def is_leaf(m) -> bool:
    """A module whose call is one named node, like torch.fx's leaves: torch.nn built-ins (not the
    containers), atrous.nn layers and parametrized (e.g. weight-normed) layers."""
    import torch.nn as nn
    mod = type(m).__module__
    kids = [name for name, _ in m.named_children()]
    if mod.startswith("atrous.nn") and not kids:
        return True
    if kids and all(name == "parametrizations" for name in kids):           # e.g. a weight-normed conv
        return True
    return mod.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(m, (nn.Sequential, nn.ModuleList,
                                                                              nn.ModuleDict))


def record(model, inputs: Sequence, *, meta: bool = True, train: bool = False, keep_tensors: bool = False
           ) -> Graph:
    """Run ``model(*inputs)`` once and record one node per call.

    ``inputs``: tensors (meta tensors when ``meta``). With ``meta`` the model's parameters and
    buffers are swapped for meta tensors during the run (shapes only). ``train``: run in training
    mode (BatchNorm statistics over the batch); default eval. ``keep_tensors``: keep each node's
    output tensors in ``Graph.values`` (used by the effective receptive field on a real run).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    g = Graph()
    ids: dict = {}
    alive: list = []
    frames: list = []
    call_count: dict = {}
    quals: dict = {}
    leafs: dict = {}
    for q, m in model.named_modules():
        if id(m) not in quals:
            quals[id(m)] = q
            leafs[id(m)] = bool(q) and is_leaf(m)
    g.values = {} if keep_tensors else None

    def track(t, node, slot) -> int:
        idx = g.add_tensor(tuple(t.shape), t.dtype, node, slot)
        ids[id(t)] = idx
        alive.append(t)
        if keep_tensors:
            g.values[idx] = t
        return idx

    def ref(obj):
        if isinstance(obj, torch.Tensor):
            idx = ids.get(id(obj))
            if idx is None:                         # a parameter, buffer or outside constant
                idx = track(obj, -1, 0)
            return Ref(idx)
        if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
            vals = [ref(o) for o in obj]
            return type(obj)(vals) if isinstance(obj, list) else tuple(vals)
        if isinstance(obj, dict):
            return {k: ref(v) for k, v in obj.items()}
        return obj

    def new_node(kind, target, opname, args, kwargs, base) -> Node:
        scope = tuple(f[0] for f in frames if f[0] and f[2] is not None)
        leaf = next((f for f in reversed(frames) if f[3]), None)
        n = Node(len(g.nodes), kind, target, opname, args, kwargs, scope=scope,
                 module=leaf[2] if leaf else None, module_name=leaf[0] if leaf else "", base=base)
        g.nodes.append(n)
        return n

    def outputs_of(out, node) -> tuple:
        slots: list = []

        def walk(o):
            if isinstance(o, torch.Tensor):
                slots.append(track(o, node.index, len(slots)))
                return Ref(slots[-1])
            if isinstance(o, (list, tuple)) and not isinstance(o, torch.Size):
                return type(o)(walk(x) for x in o) if isinstance(o, list) else tuple(walk(x) for x in o)
            return o
        node.out_tree = walk(out)
        return tuple(slots)

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            name = op_name(func)
            if meta:
                if name in FACTORIES and not is_method(func):
                    dev = kwargs.get("device")
                    if dev is None or torch.device(dev).type == "cpu":
                        kwargs["device"] = "meta"
                elif name in ("to", "cpu", "cuda") and is_method(func) and args and \
                        isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
                    func, name = torch.Tensor.to, "to"       # stay on meta: keep dtype (or a tensor's dtype)
                    rest = [a.dtype if isinstance(a, torch.Tensor) else a for a in args[1:]
                            if not isinstance(a, (str, torch.device))]
                    kwargs.pop("device", None)
                    kwargs.pop("non_blocking", None)
                    kwargs.pop("copy", None)
                    args = (args[0],) + tuple(a for a in rest if isinstance(a, torch.dtype))
            x0 = args[0] if args else kwargs.get("input")
            if meta and name in _SAME_SHAPE and isinstance(x0, torch.Tensor) and x0.device.type == "meta":
                inplace = kwargs.get("inplace") or (name in ("relu", "relu6", "elu", "selu", "celu", "hardtanh",
                                                              "leaky_relu", "hardswish", "hardsigmoid", "silu",
                                                              "mish")
                                                     and any(a is True for a in args[1:]))
                out = x0 if inplace else (torch.empty(x0.shape, dtype=x0.dtype, device="meta")
                                          if x0.is_contiguous() else torch.empty_like(x0))
            elif meta and name in _ARITH and len(args) == 2 and not kwargs and \
                    (out := _arith(name, args, torch)) is not None:
                pass                                          # elementwise on meta: shape and dtype only
            elif meta and name in ("conv1d", "conv2d", "conv3d") and not kwargs and \
                    (shape := _conv_shape(args)) is not None:
                out = torch.empty(shape, dtype=x0.dtype, device="meta")   # the meta kernel, ~10x cheaper
            else:
                out = func(*args, **kwargs)
            has_tensor = _has_tensor(out, torch)
            inplace_none = name in ("__setitem__",) and out is None
            if not has_tensor and not inplace_none:
                return out
            base = fx_name(name)
            leaf = next((f for f in reversed(frames) if f[3]), None)
            node = new_node("call", func, name, ref(args), ref(kwargs),
                            base=base if leaf is None else f"{leaf[0]}:{base}")
            if inplace_none:
                node.outs = (track(args[0], node.index, 0),)
                node.out_tree = None
            else:
                node.outs = outputs_of(out, node)
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first._base is not None and any(
                    g.tensors[o].node == node.index and alive[-1] is first for o in node.outs[:1]):
                node.view_inplace = True
            if len(node.outs) > 1 and leaf is None:
                items(out)
            return out

    def items(out):
        """One ``getitem`` node per element of a tuple result, as torch.fx unpacks it."""
        tens: list = []
        _flat_tensors(out, tens, torch)
        for t in tens:
            idx = ids.get(id(t))
            if idx is None:
                continue
            n = new_node("item", None, "getitem", (Ref(idx),), {}, base="getitem")
            n.outs = (track(t, n.index, 0),)

    def pre(mod, args):
        q = quals.get(id(mod), type(mod).__name__)
        c = call_count.get(q, 0)
        call_count[q] = c + 1
        cname = q if c == 0 else f"{q}_{c}"
        frames.append((cname, q, mod, leafs.get(id(mod), False), len(g.nodes)))
        if any(f[3] for f in frames[:-1]):                # inside a leaf: its inner modules are part of it
            frames[-1] = (cname, q, mod, False, len(g.nodes))

    def post(mod, args, out):
        if not frames:
            return
        cname, q, _, leaf, start = frames.pop()
        label = type(mod).__name__ if mod is not None else q
        tens = []
        _flat_tensors(out, tens, torch)
        if not tens:
            return
        idx = ids.get(id(tens[0]))
        if idx is None:
            return
        if leaf and len(tens) > 1:
            items(out)
        if leaf:
            prod = g.tensors[idx].node
            if prod >= start and g.nodes[prod].kind == "call":
                g.nodes[prod].base = q
            else:                                      # returned an input unchanged (Identity, Dropout)
                frames.append((cname, q, mod, True, start))
                n = new_node("module", mod, label, (Ref(idx),), {}, base=q)
                frames.pop()
                n.outs = (track(tens[0], n.index, 0),)
                idx = n.outs[0]
        if cname and mod is not None:
            g.calls[cname] = idx
            g.call_scope[cname] = q

    def wrap_fn(fn, fname):
        """A torch.fx.wrap'ed function (e.g. torchvision's stochastic_depth): one named call, like fx."""
        def wrapper(*a, **k):
            c = call_count.get(fname, 0)
            call_count[fname] = c + 1
            frames.append((fname if c == 0 else f"{fname}_{c}", fname, None, True, len(g.nodes)))
            out = fn(*a, **k)
            post(None, a, out)
            return out
        wrapper.__wrapped__ = fn
        return wrapper

    patched = []
    try:
        from torch.fx import _symbolic_trace as fxst        # the registry behind torch.fx.wrap
        for (_, fname), glb in list(getattr(fxst, "_wrapped_fns_to_patch", {}).items()):
            fn = glb.get(fname)
            if callable(fn) and not fname.startswith("_assert") and "tracing" not in fname:
                patched.append((glb, fname, fn))
                glb[fname] = wrap_fn(fn, fname)
    except Exception:  # noqa: BLE001 -- naming parity only; never needed for correctness
        pass

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    for x in inputs:
        n = Node(len(g.nodes), "input", None, "input", base="input")
        g.nodes.append(n)
        n.outs = (track(x, n.index, 0),)
        g.inputs.append(n.outs[0])
    try:
        with _mode(model, train), _params_on_meta(model, meta), torch.set_grad_enabled(keep_tensors):
            with Recorder():
                out = model(*inputs)
        flat: list = []
        _flat_tensors(out, flat, torch)
        g.outputs = [ids[id(t)] for t in flat if id(t) in ids]
    except Exception as e:  # noqa: BLE001 -- a partial graph still answers at= for nodes before the failure
        g.finish_names()
        g.error = _describe_failure(e, frames, g)
    finally:
        for h in handles:
            h.remove()
        for glb, fname, fn in patched:
            glb[fname] = fn
    g.finish_names()
    return g


_ARITH = {"add", "sub", "mul", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
          "add_", "sub_", "mul_", "__iadd__", "__isub__", "__imul__"}


def _arith(name, args, torch):
    """``a + b`` (and -, *) on meta tensors without the Python reference kernel: the broadcast shape
    and the promoted dtype; ``None`` where anything is unusual (then the real kernel runs)."""
    a, b = args
    ts = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if not ts or any(t.device.type != "meta" for t in ts) or any(
            not isinstance(t, (torch.Tensor, int, float)) or isinstance(t, bool) for t in (a, b)):
        return None
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in ts))
        dtype = torch.result_type(a, b)
    except RuntimeError:
        return None
    if name.endswith("_") and not name.startswith("__") or name.startswith("__i"):
        return a if isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(shape) and a.dtype == dtype else None
    return torch.empty(shape, dtype=dtype, device="meta")


def _conv_shape(args) -> tuple | None:
    """Output shape of ``F.conv*d`` with positional arguments on meta tensors, or ``None`` where
    anything is unusual (then the real meta kernel runs and validates)."""
    x, w = args[0], args[1] if len(args) > 1 else None
    if w is None or getattr(x, "device", None) is None or x.device.type != "meta" or w.device.type != "meta":
        return None
    nsp = w.dim() - 2
    if x.dim() != nsp + 2 or len(args) > 7:
        return None
    stride, padding, dilation, groups = (list(args[3:]) + [1, 0, 1, 1][len(args) - 3:])[:4] if len(args) > 3 \
        else (1, 0, 1, 1)
    if not isinstance(groups, int) or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        return None
    norm = []
    for v in (stride, padding, dilation):
        if isinstance(v, str):
            norm.append(v)
        elif isinstance(v, int):
            norm.append((v,) * nsp)
        elif isinstance(v, (tuple, list)) and len(v) == nsp and all(isinstance(u, int) for u in v):
            norm.append(tuple(v))
        else:
            return None
    s, p, d = norm
    if isinstance(s, str) or isinstance(d, str):
        return None
    out = []
    for i in range(nsp):
        n, k = x.shape[2 + i], w.shape[2 + i]
        if p == "same" and s[i] == 1:
            o = n
        elif isinstance(p, str) and p != "valid":
            return None
        else:
            pp = 0 if p == "valid" else p[i]
            o = (n + 2 * pp - d[i] * (k - 1) - 1) // s[i] + 1
        if o < 1:
            return None
        out.append(o)
    return (x.shape[0], w.shape[0], *out)


def _describe_failure(e, frames, g) -> str:
    where = f" in module {frames[-1][0]!r} ({type(frames[-1][2]).__name__})" if frames and frames[-1][0] else ""
    last = next((n.name for n in reversed(g.nodes) if n.kind != "input"), None)
    if last:
        where += f" after node {last!r}"
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    hint = ""
    low = msg.lower()
    if "meta" in low and ("item" in low or "data" in low or "copy out" in low or "boolean value" in low):
        hint = " (the model reads tensor values, e.g. .item() or a data-dependent branch, which a shape-only " \
               "run cannot do)"
    return f"{type(e).__name__}{where}: {msg}{hint}"


def _has_tensor(obj, torch) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return any(_has_tensor(o, torch) for o in obj)
    return False


def _flat_tensors(obj, out, torch):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flat_tensors(o, out, torch)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_tensors(o, out, torch)
    elif hasattr(obj, "__dataclass_fields__") or hasattr(obj, "_fields"):
        for o in (obj if hasattr(obj, "_fields") else vars(obj).values()):
            _flat_tensors(o, out, torch)


class _mode:
    """Temporarily put every submodule in eval (or train) mode; each keeps its own flag afterwards."""

    def __init__(self, model, train: bool):
        self.model, self.train = model, train

    def __enter__(self):
        self.flags = {m: m.training for m in self.model.modules()}
        self.model.train(self.train)

    def __exit__(self, *exc):
        for m, t in self.flags.items():
            m.training = t


class _params_on_meta:
    """Swap a model's parameters and buffers for meta tensors during a run (nothing if already meta).

    Each ``(module, name)`` slot is swapped and restored on its own, so a module reached under two
    names (one ``conv`` called from two places) or a tensor tied between modules gets back exactly
    the object it held; one meta tensor stands for each original tensor, so ties are kept."""

    def __init__(self, model, meta: bool):
        self.model, self.meta = model, meta
        self.saved: list = []

    def __enter__(self):
        import torch
        if not self.meta:
            return
        mods = list(self.model.modules())          # each module once, however many names reach it
        slots = [(d, n, t) for m in mods for d in (m._parameters, m._buffers)
                 for n, t in d.items() if isinstance(t, torch.Tensor)]
        if all(t.device.type == "meta" for *_, t in slots):
            return
        fake: dict = {}
        for d, n, t in slots:
            if id(t) not in fake:
                fake[id(t)] = torch.empty_like(t, device="meta")
            self.saved.append((d, n, t))
            d[n] = fake[id(t)]

    def __exit__(self, *exc):
        for d, n, t in reversed(self.saved):
            d[n] = t
        self.saved = []


def torch_inputs(model, input_shape, meta: bool = True) -> tuple[list, tuple]:
    """Meta (or zero) input tensors for ``input_shape`` (a shape, a list of shapes, or tensors) and
    the spatial sizes of the analysed (first) input."""
    import torch
    if isinstance(input_shape, torch.Tensor):
        specs = [input_shape]
    elif isinstance(input_shape, (list, tuple)) and input_shape and all(
            isinstance(s, (list, tuple, torch.Tensor)) for s in input_shape):
        specs = list(input_shape)
    else:
        specs = [input_shape]
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = p.dtype if p is not None else torch.float32
    dev = "meta" if meta else (p.device if p is not None else "cpu")
    xs = []
    for i, s in enumerate(specs):
        if isinstance(s, torch.Tensor):
            xs.append(torch.empty(s.shape, dtype=s.dtype, device="meta") if meta else s)
            continue
        try:
            shp = check_shape(s)
        except ValueError as e:
            raise ValueError(str(e).replace("input_shape", "input_shape" if len(specs) == 1
                                            else f"input_shape[{i}]")) from None
        xs.append(torch.empty(shp, dtype=dtype, device=dev) if meta else torch.zeros(shp, dtype=dtype, device=dev))
    first = tuple(xs[0].shape)
    if len(first) < 3:
        raise ValueError(f"the first input must be (N, C, *spatial) with at least one spatial axis, got {first}")
    return xs, first[2:]


# ----------------------------------------------------------------------------------- lowering

def lower(g: Graph, targets: Sequence[int], approx: Sequence[str] = ()) -> dict:
    """Values of every tensor the ``targets`` depend on: ``{tensor index: Value}``."""
    from . import rules

    need: set = set()
    for t in targets:
        need |= g.ancestors(t)
    vals: dict = {}
    ndim = g.ndim
    whole = tuple((0, n - 1) if n else None for n in g.sizes)
    for n in g.nodes:
        if n.index not in need:
            continue
        if n.kind == "input":
            t = n.outs[0]
            shape = g.tensors[t].shape
            if len(shape) == ndim + 2 and tuple(shape[2:]) == tuple(g.sizes):
                vals[t] = Value.input(shape, g.sizes, g.inputs.index(t))
            elif len(shape) == ndim + 2 and g.inputs.index(t) > 0:
                raise AnalysisError(f"input {g.inputs.index(t)} has spatial size {tuple(shape[2:])}, the first "
                                    f"{tuple(g.sizes)}: fields are measured in the first input's positions, so "
                                    "inputs with positions must have the same spatial size")
            else:
                vals[t] = Value.constant(shape, whole)
            continue
        ins = {}
        for r in n.in_refs:
            if r.index not in vals:
                info = g.tensors[r.index]
                if info.node >= 0 and info.node not in need:
                    continue
                vals[r.index] = Value.constant(info.shape, whole)
            ins[r.index] = vals[r.index]
        unreplayed: list = []
        token = V.UNREPLAYED.set(unreplayed)
        try:
            outs = rules.apply(n, g, ins, approx)
        except Unsupported as e:
            raise AnalysisError(f"cannot follow node {n.name!r} ({describe(n, g)}): {e}") from None
        finally:
            V.UNREPLAYED.reset(token)
        for k in unreplayed:
            outs = [v.add_note(f"{n.name}: on spatial axis {k} its input was not replayed one by one "
                               f"(an opaque step, unknown extents or more than {V.REACH_LIMIT} positions), so "
                               "the interval it mixes is the hull of unbounded spans and may include border "
                               "positions that only padding reaches") for v in outs]
        for t, v in zip(n.outs, outs):
            vals[t] = v
    return vals


def describe(n: Node, g: Graph) -> str:
    """``op`` and input shapes of a node, for error messages."""
    shapes = [tuple(g.tensors[r.index].shape) for r in n.in_refs][:4]
    where = f" in {n.module_name!r}" if n.module_name and n.module_name != n.name else ""
    mod = f" of {type(n.module).__name__}" if n.module is not None and n.kind == "call" else ""
    shown = ", ".join(str(s) for s in shapes)
    return f"{n.op}{mod}{where} on {shown or 'no tensors'}"
