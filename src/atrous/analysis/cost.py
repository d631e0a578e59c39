"""Parameters, multiply-accumulates and activation memory of a PyTorch model, per call and per module.

Counted on the same per-call graph as the receptive field (:mod:`atrous.analysis.graph`), with the
cost rules of :mod:`atrous.analysis.rules`, so functional calls in a ``forward`` count like modules:

* convolution: ``N * C_out * prod(out_spatial) * (C_in / groups) * prod(kernel)`` -- dilation
  spaces the taps but does not add any, so it does not change the count for a given output size;
* transposed convolution: ``N * C_in * prod(in_spatial) * (C_out / groups) * prod(kernel)``
  (every input sample scatters through every tap; counters that use the output size count 4x too
  much for stride 2);
* linear: ``prod(leading dims) * in_features * out_features``; matmul/bmm/einsum: the product of
  all index sizes; scaled-dot-product attention ``L * S * (E + E_v)`` per batch and head;
  ``nn.MultiheadAttention`` adds its input and output projections; recurrent layers
  ``steps * sum(weight matrix sizes)``.

Bias additions, normalisation, activations and pooling count 0 MACs; ``flops = 2 * macs``.
Parameters are ``sum(p.numel())`` (each shared parameter once in the total). Activation bytes are
the size of each row's output (``numel * element_size``), what training keeps for the backward pass.
Nothing is computed: the model runs once on meta tensors.

>>> import torch.nn as nn, atrous
>>> c = atrous.cost(nn.Conv2d(3, 8, 3, padding=2, dilation=2), (1, 3, 16, 16))
>>> c.params, c.macs, c.flops, c.rows[0].output_shape
(224, 55296, 110592, (1, 8, 16, 16))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CostRow", "Cost", "ModuleCost", "cost"]


@dataclass(frozen=True)
class CostRow:
    """One call: a leaf module's call (``name`` is its call name: ``relu``, ``relu_1``), or a
    computing function called in a ``forward`` (``conv2d``, ``matmul_1``). ``scope``: the call names
    of the enclosing modules."""

    name: str
    type: str
    params: int
    macs: int
    output_shape: tuple
    activation_bytes: int
    scope: tuple = ()

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class ModuleCost:
    """Totals of one module over all its calls: ``name`` (qualified name, ``""`` = the model),
    ``depth`` (0 = the model), ``type``, ``params`` (its own parameters, each once), ``macs``,
    ``calls``, ``share`` (of the model's MACs)."""

    name: str
    depth: int
    type: str
    params: int
    macs: int
    calls: int
    share: float

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class Cost:
    """Per-call ``rows`` in call order and totals: ``params`` (unique parameters of the model),
    ``macs``/``flops`` and ``activation_bytes`` (sums over the rows); ``modules``: per-module totals
    (:meth:`by_module`); ``notes``: what was not counted."""

    rows: list
    params: int
    macs: int
    activation_bytes: int
    input_shape: tuple
    notes: list = field(default_factory=list)
    modules: list = field(default_factory=list)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def by_module(self, depth: int | None = None) -> list:
        """Per-module totals (like torchinfo / fvcore's by-module table), down to ``depth``."""
        return [m for m in self.modules if depth is None or m.depth <= depth]

    def table(self, depth: int | None = None) -> str:
        """Plain-text tables: one line per call, then the per-module totals down to ``depth``."""
        head = f"{'call':<32} {'type':<20} {'params':>10} {'MACs':>14} {'output':<20} {'act. bytes':>12}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name[:32]:<32} {r.type[:20]:<20} {r.params:>10,} {r.macs:>14,} "
                         f"{'x'.join(map(str, r.output_shape))[:20]:<20} {r.activation_bytes:>12,}")
        lines.append(f"{'total':<32} {'':<20} {self.params:>10,} {self.macs:>14,} {'':<20} "
                     f"{self.activation_bytes:>12,}")
        mods = self.by_module(depth if depth is not None else 2)
        if mods:
            head = f"{'module':<40} {'type':<20} {'params':>10} {'MACs':>14} {'share':>7}"
            lines += ["", head, "-" * len(head)]
            for m in mods:
                nm = ("  " * m.depth + (m.name or "(model)"))[:40]
                lines.append(f"{nm:<40} {m.type[:20]:<20} {m.params:>10,} {m.macs:>14,} {m.share:>6.1%}")
        lines.append(f"FLOPs = 2 x MACs = {self.flops:,}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "params": self.params, "macs": self.macs,
                "flops": self.flops, "activation_bytes": self.activation_bytes, "notes": list(self.notes),
                "rows": [{"name": r.name, "type": r.type, "params": r.params, "macs": r.macs, "flops": r.flops,
                          "output_shape": list(r.output_shape), "activation_bytes": r.activation_bytes,
                          "scope": list(r.scope)} for r in self.rows],
                "modules": [{"name": m.name, "depth": m.depth, "type": m.type, "params": m.params,
                             "macs": m.macs, "calls": m.calls, "share": m.share} for m in self.modules]}


def cost(model, input_shape) -> Cost:
    """Per-call parameters, MACs, output shape and activation memory of ``model`` on ``input_shape``.

    ``model``: a ``torch.nn.Module``; ``input_shape``: ``(N, C, *spatial)`` (a list of shapes, or
    example tensors, for several inputs). The model runs once on meta tensors in eval mode (no
    arithmetic, no memory; train/eval flags are restored). Rows: every call of a leaf module (a
    module called twice gives two rows) and every computing function called in a ``forward``
    (``F.conv2d``, ``x @ w``, ``torch.einsum``). ``print(cost(...))`` shows the tables.

    >>> import torch.nn as nn
    >>> c = cost(nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 2)), (2, 1, 8))
    >>> [(r.type, r.params, r.macs) for r in c.rows]
    [('Conv1d', 16, 144), ('ReLU', 0, 0), ('Flatten', 0, 0), ('Linear', 50, 96)]
    """
    from .._optional import require
    torch = require("torch")
    from . import graph as G
    from . import rules

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if G.is_leaf(model) and type(model).__module__.startswith(("torch.nn", "atrous.nn")):
        model = torch.nn.Sequential(model)
    xs, _ = G.torch_inputs(model, input_shape)
    g = G.record(model, xs)
    if g.error:
        raise ValueError(f"the model does not run on input_shape={input_shape!r}: {g.error}")
    rows: list[CostRow] = []
    by_call: dict = {}
    for n in g.nodes:
        if n.kind == "input":
            continue
        macs = rules.macs_of(n, g)
        if n.module is not None:                         # part of a leaf module's call
            key = n.module_name
            if key not in by_call:
                by_call[key] = len(rows)
                m = n.module
                rows.append(CostRow(key, type(m).__name__, sum(p.numel() for p in m.parameters()), 0, (), 0,
                                    n.scope[:-1] if n.scope and n.scope[-1] == key else n.scope))
            i = by_call[key]
            r = rows[i]
            out = _out(g, n, key)
            rows[i] = CostRow(r.name, r.type, r.params, r.macs + macs,
                              out[0] if out else r.output_shape, out[1] if out else r.activation_bytes, r.scope)
        elif macs:
            t = g.tensors[n.outs[0]] if n.outs else None
            rows.append(CostRow(n.name, n.op, 0, macs, tuple(t.shape) if t else (),
                                _bytes(g, n.outs, torch), n.scope))
    total_params = sum(p.numel() for p in model.parameters())
    total = sum(r.macs for r in rows)
    mods = _modules(model, rows, total, g.call_scope)
    notes = []
    return Cost(rows, total_params, total, sum(r.activation_bytes for r in rows), tuple(xs[0].shape), notes, mods)


def _bytes(g, outs, torch) -> int:
    tot = 0
    for t in outs:
        info = g.tensors[t]
        item = torch.empty((), dtype=info.dtype).element_size() if info.dtype is not None else 4
        tot += math.prod(info.shape) * item
    return tot


def _out(g, n, key):
    """(shape, bytes) of the module call's output if ``n`` produced it."""
    if g.calls.get(key) in n.outs:
        import torch
        t = g.tensors[g.calls[key]]
        item = torch.empty((), dtype=t.dtype).element_size() if t.dtype is not None else 4
        return tuple(t.shape), math.prod(t.shape) * item
    return None


def _modules(model, rows, total, call_scope) -> list:
    """Per-module totals over the calls in their scope (module call names map to qualified names)."""
    agg: dict = {}
    for r in rows:
        names = [""] + [call_scope.get(s, s) for s in r.scope]
        if r.name in call_scope:
            names.append(call_scope[r.name])
        for q in dict.fromkeys(names):
            a = agg.setdefault(q, [0, 0])
            a[0] += r.macs
            a[1] += 1
    mods = []
    for q, m in model.named_modules():
        if q not in agg:
            continue
        depth = 0 if q == "" else q.count(".") + 1
        macs, calls = agg[q]
        mods.append(ModuleCost(q, depth, type(m).__name__, sum(p.numel() for p in m.parameters()), macs,
                               calls, macs / total if total else 0.0))
    return mods
