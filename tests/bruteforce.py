"""Brute-force receptive-field oracle for tests (a helper module, not a test file).

The field of one output position is measured, not derived: in float64, on a deep copy of the model in
eval mode, take the union over a few random inputs of the support (nonzero or NaN) of the gradient of
that output (summed over channels and batch) with respect to the input, and report its bounding
interval per spatial axis. Before that, every normalisation weight, bias and running statistic, every
layer-scale factor and every parameter initialised to zero is randomised: libraries zero-init the last
BatchNorm gamma of residual branches and layer scales, and a zero gain hides a whole branch from a
gradient. The support of a gradient is inside the input by construction, so nothing is clipped here;
``assert_field_matches`` clips the analysed field to the input before comparing.

Used by tests/test_rf_models.py and by the held-out zoo harness (outside the project).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["randomise_parameters", "prepare", "bruteforce_span", "expected_span", "span_problems",
           "assert_field_matches",
           "default_positions", "output_spatial_shape", "pick_output", "SubmoduleOutput", "find_node",
           "node_output"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_SCALE_WORDS = ("gamma", "layer_scale", "ls1", "ls2", "scale", "alpha", "beta")


def randomise_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: random affine params and running stats of every norm layer (by type, and of any module
    with ``running_mean``/``running_var`` buffers), random values for every parameter that is all
    zeros or constant (layer scales such as ``gamma = 1e-6 * ones``, zero-init gains, zero cls tokens)
    and for parameters whose name says they are a scale. Returns ``model``."""
    g = torch.Generator().manual_seed(seed + 12345)

    def rand_like(t, lo=0.5, hi=1.5):
        return (torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(t.dtype)

    def sign_like(t):
        s = torch.randint(0, 2, t.shape, generator=g).to(t.dtype) * 2 - 1
        return s * rand_like(t)

    with torch.no_grad():
        for m in model.modules():
            is_norm = isinstance(m, _NORMS) or (
                isinstance(getattr(m, "running_var", None), torch.Tensor)
                and isinstance(getattr(m, "running_mean", None), torch.Tensor))
            if not is_norm:
                continue
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if isinstance(p, torch.Tensor) and p.is_floating_point():
                    p.copy_(sign_like(p) if pname == "weight" else rand_like(p, -0.5, 0.5))
            rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if isinstance(rm, torch.Tensor) and rm.is_floating_point():
                rm.copy_(rand_like(rm, -0.5, 0.5))
            if isinstance(rv, torch.Tensor) and rv.is_floating_point():
                rv.copy_(rand_like(rv, 0.5, 1.5))
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.numel() == 0:
                continue
            leaf = name.rsplit(".", 1)[-1].lower()
            constant = bool((p == p.reshape(-1)[0]).all())
            if constant or any(w in leaf for w in _SCALE_WORDS):
                # positive: a negative scale could meet a sqrt/log and turn every gradient into NaN
                p.copy_(rand_like(p) * (1.0 if constant else float(p.abs().max().clamp(min=0.1))))
    return model


def pick_output(out: Any, output: Any = None) -> torch.Tensor:
    """The tensor to analyse: ``output`` is a callable, an index into a tuple/list, a key of a dict, or
    None (the first tensor found, depth first)."""
    if callable(output):
        return output(out)
    if output is not None:
        return out[output]
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            try:
                return pick_output(o)
            except TypeError:
                continue
    if hasattr(out, "__dict__"):       # dataclass-like model outputs
        for v in vars(out).values():
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"no tensor in the model output of type {type(out).__name__}")


def _shapes(input_shape) -> list[tuple]:
    if isinstance(input_shape, torch.Tensor):
        return [tuple(input_shape.shape)]
    if isinstance(input_shape, (tuple, list)) and input_shape and isinstance(input_shape[0], int):
        return [tuple(input_shape)]
    return [tuple(s.shape) if isinstance(s, torch.Tensor) else tuple(s) for s in input_shape]


def _bounds(mask: torch.Tensor) -> tuple:
    """Bounding interval of a boolean spatial mask per axis (None on every axis if empty)."""
    if not bool(mask.any()):
        return (None,) * mask.dim()
    out = []
    for ax in range(mask.dim()):
        others = [d for d in range(mask.dim()) if d != ax]
        line = mask.any(dim=others) if others else mask
        idx = torch.nonzero(line).flatten()
        out.append((int(idx.min()), int(idx.max())))
    return tuple(out)


def bruteforce_span(model: nn.Module, input_shape, out_index: Sequence[int], n_samples: int = 3, seed: int = 0, *,
                    output: Any = None, spatial_dims: Sequence[int] | None = None, per_input: bool = False,
                    randomise: bool = True, prepared: nn.Module | None = None) -> tuple:
    """Measured receptive field of one output position: per input spatial axis ``(lo, hi)`` or None.

    ``input_shape``: ``(N, C, *spatial)`` or a list of shapes for a model with several inputs (the
    result is the union over the inputs unless ``per_input``, then one tuple per input).
    ``out_index``: one index per spatial dim of the output (negative counts from the end);
    ``spatial_dims``: which dims of the output tensor are spatial (default ``2, 3, ...``; pass e.g.
    ``(1, 2)`` for a channels-last ``(N, H, W, C)`` output, ``()`` for ``(N, classes)``);
    ``output``: which tensor of a tuple/dict output (see :func:`pick_output`).
    ``prepared``: a float64, eval-mode, randomised copy to reuse across calls (see :func:`prepare`).
    """
    shapes = _shapes(input_shape)
    m = prepared if prepared is not None else prepare(model, seed, randomise)
    g = torch.Generator().manual_seed(seed)
    support = [torch.zeros(s[2:], dtype=torch.bool) for s in shapes]
    for _ in range(n_samples):
        leaves = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
        xs = [x * 1.0 for x in leaves]            # not leaves: in-place ops on the input stay legal
        with torch.enable_grad():
            out = pick_output(m(*xs), output)
            dims = tuple(range(2, out.dim())) if spatial_dims is None else tuple(spatial_dims)
            if len(out_index) != len(dims):
                raise ValueError(f"out_index {tuple(out_index)} has {len(out_index)} entries, the output "
                                 f"{tuple(out.shape)} has spatial dims {dims}")
            idx: list = [slice(None)] * out.dim()
            for d, i in zip(dims, out_index):
                idx[d] = i
            sel = out[tuple(idx)]
            if not sel.requires_grad:
                continue
            sel = sel.sum()
            grads = torch.autograd.grad(sel, leaves, allow_unused=True)
        for sup, gr in zip(support, grads):
            if gr is not None:
                sup |= ((gr != 0) | torch.isnan(gr)).any(dim=0).any(dim=0)
    if per_input:
        return tuple(_bounds(s) for s in support)
    if len({s.shape for s in support}) == 1:
        return _bounds(torch.stack(support).any(dim=0))
    per = [_bounds(s) for s in support]      # inputs of different sizes: union of intervals per axis
    out = []
    for ax in range(len(per[0])):
        iv = [p[ax] for p in per if p[ax] is not None]
        out.append((min(i[0] for i in iv), max(i[1] for i in iv)) if iv else None)
    return tuple(out)


class _WindowSum(nn.Module):
    """A max pooling's window as a sum (same kernel, stride, padding, dilation): its gradient reaches
    every input of the window, where a max pooling's reaches only the argmax (yet every input of the
    window can become the max, so the output depends on all of them)."""

    def __init__(self, m):
        super().__init__()
        self.nd = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(m)]
        tup = lambda v: (v,) * self.nd if isinstance(v, int) else tuple(v)  # noqa: E731
        self.k, self.d, self.p = tup(m.kernel_size), tup(m.dilation), tup(m.padding)
        self.s = tup(m.stride if m.stride is not None else m.kernel_size)
        self.ceil = m.ceil_mode

    def forward(self, x):
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        c = x.shape[1]
        w = torch.ones((c, 1) + self.k, dtype=x.dtype, device=x.device)
        pad = list(self.p)
        if self.ceil:                     # ceil_mode: one more window at the end where a window starts inside
            extra = []
            for n, k, s, d, p in zip(x.shape[2:], self.k, self.s, self.d, self.p):
                eff = d * (k - 1) + 1
                out = -(-(n + 2 * p - eff) // s) + 1
                if (out - 1) * s >= n + p:
                    out -= 1
                extra.append(max(0, (out - 1) * s + eff - (n + 2 * p)))
            x = F.pad(x, [v for e in reversed(extra) for v in (0, e)])
        return conv(x, w, None, self.s, tuple(pad), self.d, c)


def prepare(model: nn.Module, seed: int = 0, randomise: bool = True) -> nn.Module:
    """A float64, eval-mode deep copy of ``model`` with its norms/scales/zero params randomised, its
    max-pooling modules replaced by window sums of the same geometry (see :class:`_WindowSum`) and its
    ReLU modules by leaky ones (the same dependence structure, a gradient that is never zero)."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    if randomise:
        randomise_parameters(m, seed)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d) and not child.return_indices:
                setattr(parent, name, _WindowSum(child))
            elif type(child) in (nn.ReLU, nn.ReLU6):
                # a dead ReLU (e.g. every unit of a squeeze-excitation gate negative for the samples)
                # hides a dependence from the gradient; a leaky one has the same structure
                setattr(parent, name, nn.LeakyReLU(0.1))
    return m


def output_spatial_shape(model: nn.Module, input_shape, output: Any = None,
                         spatial_dims: Sequence[int] | None = None) -> tuple:
    """Spatial sizes of the model's (picked) output, from a no-grad forward on zeros."""
    shapes = _shapes(input_shape)
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    dtype = p.dtype if p is not None else torch.float32
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            out = pick_output(model(*[torch.zeros(s, dtype=dtype) for s in shapes]), output)
        finally:
            model.train(was)
    dims = tuple(range(2, out.dim())) if spatial_dims is None else tuple(spatial_dims)
    return tuple(out.shape[d] for d in dims)


def default_positions(out_spatial: Sequence[int]) -> list[tuple]:
    """Border and interior output positions: the first, the centre, the last (deduplicated)."""
    cands = [tuple(0 for _ in out_spatial), tuple(n // 2 for n in out_spatial), tuple(n - 1 for n in out_spatial),
             tuple((n // 2 if a % 2 == 0 else n - 1) for a, n in enumerate(out_spatial))]
    seen: list[tuple] = []
    for c in cands:
        if c not in seen:
            seen.append(c)
    return seen


def expected_span(rf, index: Sequence[int], in_spatial: Sequence[int]) -> tuple:
    """``rf.span(index)`` clipped to ``[0, n - 1]`` per axis; whole-input axes give the whole axis;
    a span entirely outside the input (or None) on any axis gives None on every axis (the output then
    sees no input position at all, which is what the brute force reports)."""
    whole = tuple(getattr(rf, "whole_input", ()) or (False,) * len(in_spatial))
    if all(whole):
        return tuple((0, n - 1) for n in in_spatial)
    sp = rf.span(tuple(index))
    out = []
    for ax, n in enumerate(in_spatial):
        if whole[ax]:
            out.append((0, n - 1))
            continue
        s = sp[ax]
        if s is None:
            out.append(None)
            continue
        lo, hi = max(int(s[0]), 0), min(int(s[1]), n - 1)
        out.append((lo, hi) if lo <= hi else None)
    if any(o is None for o in out):         # reads only padding on one axis: sees no input at all
        return (None,) * len(out)
    return tuple(out)


def span_problems(got: tuple, rf, index: Sequence[int], in_spatial: Sequence[int]) -> list[tuple]:
    """Differences between the brute-force support ``got`` (per axis ``(lo, hi)`` or None) and the analysed
    field at output ``index``: ``[(axis, kind, text)]`` with kind ``too_small`` (the output depends on an
    input position outside the analysed span: the dangerous error) or ``too_large``.

    A span end inside the input must be hit exactly. A span end beyond the border is clipped, and there
    only containment is required: a dilated kernel straddling the border may have its first in-input tap
    one gap inside (taps -1 and 1 of a dilation-2 kernel: the span clips to [0, 1], the support is {1}).
    Whole-input axes must see the whole axis; a span entirely outside the input on some axis means the
    output sees nothing."""
    n_ax = len(in_spatial)
    whole = tuple(getattr(rf, "whole_input", ()) or (False,) * n_ax)
    sp = rf.span(tuple(index)) if not all(whole) else (None,) * n_ax
    want_empty = any(not whole[ax] and (sp[ax] is None or sp[ax][1] < 0 or sp[ax][0] > in_spatial[ax] - 1)
                     for ax in range(n_ax))
    got_empty = all(g is None for g in got)
    if want_empty or got_empty:
        if want_empty and not got_empty:
            return [(None, "too_small", f"analysis: sees no input; brute force {got}")]
        if got_empty and not want_empty:
            return [(None, "too_large", f"analysis: sees {expected_span(rf, index, in_spatial)}; brute force nothing")]
        return []
    out = []
    for ax, n in enumerate(in_spatial):
        g = got[ax]
        if whole[ax]:
            if g != (0, n - 1):
                out.append((ax, "too_large", f"axis {ax}: analysis whole input, brute force {g}"))
            continue
        lo, hi = int(sp[ax][0]), int(sp[ax][1])
        clo, chi = max(lo, 0), min(hi, n - 1)
        if g[0] < clo or g[1] > chi:
            out.append((ax, "too_small", f"axis {ax}: brute force {g} outside the analysed span ({lo}, {hi})"))
        elif (lo >= 0 and g[0] != lo) or (hi <= n - 1 and g[1] != hi):
            out.append((ax, "too_large", f"axis {ax}: brute force {g}, analysed span ({lo}, {hi}) is larger"))
    return out


def assert_field_matches(model: nn.Module, input_shape, out_indices: Sequence[Sequence[int]] | None = None, *,
                         rf=None, output: Any = None, spatial_dims: Sequence[int] | None = None,
                         n_samples: int = 3, seed: int = 0, analyse: Callable | None = None) -> list:
    """Assert that the analysed field (``rf``, default ``atrous.receptive_field(model, input_shape)``)
    equals the brute-force support at each output position in ``out_indices`` (default: corners and
    centre), per axis, within the input (see :func:`span_problems`; whole-input axes compare with the
    whole axis). Returns ``[(index, oracle, analysed span clipped)]``."""
    import atrous

    shapes = _shapes(input_shape)
    in_spatial = shapes[0][2:]
    if rf is None:
        rf = (analyse or atrous.receptive_field)(model, input_shape if len(shapes) > 1 else shapes[0])
    if out_indices is None:
        out_indices = default_positions(output_spatial_shape(model, input_shape, output, spatial_dims))
    prepared = prepare(model, seed)
    rows, bad = [], []
    for idx in out_indices:
        got = bruteforce_span(model, input_shape, idx, n_samples, seed, output=output, spatial_dims=spatial_dims,
                              prepared=prepared)
        if not idx and len(in_spatial):      # an output without spatial dims: the field is per input axis
            idx = (0,) * len(in_spatial)
        rows.append((tuple(idx), got, expected_span(rf, idx, in_spatial)))
        for _, kind, text in span_problems(got, rf, idx, in_spatial):
            bad.append(f"output {tuple(idx)}: {kind}: {text}")
    if bad:
        raise AssertionError(f"receptive field mismatch (size {rf.size}, jump {rf.jump}, start {rf.start}, "
                             f"whole {getattr(rf, 'whole_input', None)}):\n  " + "\n  ".join(bad))
    return rows


# ----------------------------------------------------------------------------------------------
# the output of a submodule or of one graph node, as a model (oracle for ``at=`` and per-node fields)
# ----------------------------------------------------------------------------------------------

class SubmoduleOutput(nn.Module):
    """Runs ``model`` and returns the output of submodule ``path`` (its ``call``-th call, default the last)."""

    def __init__(self, model: nn.Module, path: str, call: int = -1):
        super().__init__()
        self.model, self.path, self.call = model, path, call

    def forward(self, *xs):
        seen = []
        h = self.model.get_submodule(self.path).register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            self.model(*xs)
        finally:
            h.remove()
        if not seen:
            raise ValueError(f"submodule {self.path!r} was not called")
        return seen[self.call]


def find_node(gm, name: str):
    """The fx node an analysis name refers to: the fx node name itself, a module target (first call) or a
    module target with the fx-style call suffix (``layer1.0.relu_2`` = the third call of ``layer1.0.relu``)."""
    import re
    nodes = list(gm.graph.nodes)
    for n in nodes:
        if n.name == name:
            return n
    mods = [n for n in nodes if n.op == "call_module"]
    calls = [n for n in mods if n.target == name]
    if calls:
        return calls[0]
    m = re.fullmatch(r"(.+)_(\d+)", name)
    if m:
        calls = [n for n in mods if n.target == m.group(1)]
        if int(m.group(2)) < len(calls):
            return calls[int(m.group(2))]
    raise KeyError(f"no fx node for {name!r}")


def node_output(model: nn.Module, name: str) -> nn.Module:
    """``model`` traced by torch.fx, returning the output of the node ``name`` (see :func:`find_node`)."""
    import torch.fx as fx
    gm = fx.symbolic_trace(copy.deepcopy(model).eval())     # eval: drop-path/dropout branches traced away
    target = find_node(gm, name)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    gm.graph.erase_node(out)
    gm.graph.output(target)
    gm.graph.eliminate_dead_code()      # later in-place ops (out += identity; relu(inplace)) must not run
    gm.recompile()
    return gm
