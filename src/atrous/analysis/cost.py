"""Parameters, multiply-accumulates and activation memory of a PyTorch model, per layer.

MACs (multiply-accumulates) count convolutions and linear layers, where they dominate:

* convolution: ``N * C_out * prod(out_spatial) * (C_in / groups) * prod(kernel)`` -- dilation
  spaces the taps but does not add any, so it does not change the count for a given output size;
* transposed convolution: ``N * C_in * prod(in_spatial) * (C_out / groups) * prod(kernel)``
  (every input sample scatters through every tap);
* linear: ``prod(leading dims) * in_features * out_features``.

Bias additions, normalisation, activations and pooling count 0 MACs. Parameters are
``sum(p.numel())`` (each shared parameter once in the total). Activation bytes are the size of each
layer's output (``numel * element_size``), what training keeps for the backward pass.

>>> import torch.nn as nn, atrous
>>> c = atrous.cost(nn.Conv2d(3, 8, 3, padding=2, dilation=2), (1, 3, 16, 16))
>>> c.params, c.macs, c.rows[0].output_shape
(224, 55296, (1, 8, 16, 16))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CostRow", "Cost", "cost"]


@dataclass(frozen=True)
class CostRow:
    """One call of a leaf module: ``name`` (qualified module name), ``type``, ``params``, ``macs``,
    ``output_shape``, ``activation_bytes``."""

    name: str
    type: str
    params: int
    macs: int
    output_shape: tuple
    activation_bytes: int


@dataclass(frozen=True)
class Cost:
    """Per-layer ``rows`` in call order and totals: ``params`` (unique parameters of the model),
    ``macs`` and ``activation_bytes`` (sums over the rows); ``notes`` say what was not counted."""

    rows: list
    params: int
    macs: int
    activation_bytes: int
    input_shape: tuple
    notes: list = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table (one line per row, then the totals)."""
        head = f"{'layer':<28} {'type':<18} {'params':>10} {'MACs':>14} {'output':<20} {'act. bytes':>12}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name:<28} {r.type:<18} {r.params:>10,} {r.macs:>14,} "
                         f"{'x'.join(map(str, r.output_shape)):<20} {r.activation_bytes:>12,}")
        lines.append(f"{'total':<28} {'':<18} {self.params:>10,} {self.macs:>14,} {'':<20} "
                     f"{self.activation_bytes:>12,}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "params": self.params, "macs": self.macs,
                "activation_bytes": self.activation_bytes, "notes": list(self.notes),
                "rows": [{"name": r.name, "type": r.type, "params": r.params, "macs": r.macs,
                          "output_shape": list(r.output_shape), "activation_bytes": r.activation_bytes}
                         for r in self.rows]}


def _macs(m, x, y, nn) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        k = math.prod(m.kernel_size)
        if m.transposed:
            return x.shape[0] * m.in_channels * math.prod(x.shape[2:]) * (m.out_channels // m.groups) * k
        return y.shape[0] * m.out_channels * math.prod(y.shape[2:]) * (m.in_channels // m.groups) * k
    if isinstance(m, nn.Linear):
        return math.prod(x.shape[:-1]) * m.in_features * m.out_features
    from .receptive_field import _conv_like
    if _conv_like(m, y.dim() - 2):    # atrous.nn.Conv*d & co: weight (C_out, C_in/groups, *kernel)
        return y.shape[0] * math.prod(y.shape[2:]) * m.weight.numel()
    return 0


def cost(model, input_shape) -> Cost:
    """Per-layer parameters, MACs, output shape and activation memory of ``model`` on ``input_shape``.

    ``model``: a ``torch.nn.Module``; ``input_shape``: ``(N, C, *spatial)``. The model runs once on
    zeros (in eval mode, without gradients; train/eval flags are restored) with forward hooks on its
    leaf modules; a module called twice gives two rows. Only shapes are needed, so the run uses meta
    tensors (no arithmetic) when every op supports them. Operations written as functions in a
    ``forward`` (``F.conv2d``, ``x @ w``) are not seen and are listed in ``notes`` if detected.

    >>> import torch.nn as nn
    >>> c = cost(nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 2)), (2, 1, 8))
    >>> [(r.type, r.params, r.macs) for r in c.rows]
    [('Conv1d', 16, 144), ('ReLU', 0, 0), ('Flatten', 0, 0), ('Linear', 50, 96)]
    """
    from .._optional import require
    torch = require("torch")
    nn = torch.nn
    from .receptive_field import _check_shape, _run_shapes

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_shape = _check_shape(input_shape)
    rows: list[CostRow] = []
    hooks = []
    from .receptive_field import _conv_like
    nd = len(input_shape) - 2
    convs = [q for q, m in model.named_modules() if _conv_like(m, nd)]
    # leaf modules, with conv-like modules (e.g. weight-normed) as leaves holding their parametrizations
    leaves = [(q, m) for q, m in model.named_modules()
              if (q in convs or not list(m.children())) and not any(q.startswith(c + ".") for c in convs)]

    def hook(name):
        def fn(m, inp, out):
            outs = out if isinstance(out, (tuple, list)) else (out,)
            tens = [o for o in outs if torch.is_tensor(o)]
            x = inp[0] if inp and torch.is_tensor(inp[0]) else None
            y = tens[0] if tens else None
            params = sum(p.numel() for p in m.parameters())
            rows.append(CostRow(name, type(m).__name__, params,
                                _macs(m, x, y, nn) if x is not None and y is not None else 0,
                                tuple(y.shape) if y is not None else (),
                                sum(t.numel() * t.element_size() for t in tens)))
        return fn

    for name, m in leaves:
        hooks.append(m.register_forward_hook(hook(name or type(m).__name__)))
    try:
        # shapes only: parameters swapped for meta tensors (falls back to a real run if needed)
        _run_shapes(model, model, input_shape, lambda x: (rows.clear(), model(x)))
    finally:
        for h in hooks:
            h.remove()
    notes = []
    own = [n for n, p in model.named_parameters()
           if not any((q == "" or n.startswith(q + ".")) and
                      (type(m).__module__.startswith("torch.nn") or q in convs) for q, m in leaves)]
    if own:
        notes.append(f"parameters used outside leaf modules (functional ops; their MACs are not counted): "
                     f"{', '.join(own[:5])}{', ...' if len(own) > 5 else ''}")
    total_params = sum(p.numel() for p in model.parameters())
    return Cost(rows, total_params, sum(r.macs for r in rows), sum(r.activation_bytes for r in rows),
                input_shape, notes)
