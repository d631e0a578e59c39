"""Exact streaming inference for causal stacks: :func:`stream` turns a model into a stepper.

The model is traced with ``torch.fx``; every causal convolution becomes a streaming convolution that
keeps a ring buffer of exactly the ``(k - 1) * d`` past inputs it needs, everything else must be
pointwise in time (activations, 1x1 convs, residual adds, gating, channel chunk/cat, eval-mode batch
norm; dropout and identity are dropped). The result is an ordinary ``nn.Module`` whose forward is a
pure function of ``(x_chunk, state)`` (so it scripts with TorchScript and exports to ONNX with the
state as explicit inputs/outputs) -- the "fast WaveNet" queue idea of Paine et al. 2016
("Fast Wavenet Generation Algorithm").

State layout: ``state[0]`` is the time cursor ``t`` (int64, shape ``()``, samples consumed so far);
``state[1 + i]`` is layer ``i``'s ring buffer ``(N, d_i, k_i - 1, C_in_i)``: exactly the
``(k_i - 1) * d_i`` past samples, the input of time ``tau`` at ``[:, tau % d, (tau % L) // d]`` (see
:class:`StreamConv1d`). A zero state equals the zero causal padding of the offline model.

With ``inplace=True`` (default, fastest) :meth:`Stepper.step` writes the new samples into the given
ring buffers and returns them (``Stepper.clone_state`` makes a snapshot to keep); with
``inplace=False`` it returns new tensors and leaves its input state untouched (use this for
``torch.onnx.export``/``torch.export``).
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..analysis import rules
from .conv import DeviceArg, _ConvNd

__all__ = ["stream", "Stepper", "StreamConv1d"]

# Which ops are pointwise in time comes from the analysis's op-rule registry (atrous.analysis.rules),
# the one op table of the package; the tables below only choose faster code for the stepper.
_AS_FUNCTION = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid}
_FRESH_RESULTS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_INPLACE = {torch.relu: torch.relu_, torch.tanh: torch.tanh_, torch.sigmoid: torch.sigmoid_}
_DROPPED_MODULES = (nn.Identity, nn.Dropout, nn.AlphaDropout, nn.FeatureAlphaDropout)
_CHANNEL_SPLITS = {torch.chunk, torch.split, "chunk", "split"}
_CHANNEL_DIMS = (1, -2)


class _Cursor(nn.Module):
    """``int(t)``: the cursor as a Python int (a module, so that a pickled program can be re-traced)."""

    def forward(self, t: torch.Tensor) -> int:
        return int(t)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _ConvNd) or super().is_leaf_module(m, qualname)


class StreamConv1d(nn.Module):
    """A causal 1-D convolution that consumes a chunk and updates its ring buffer.

    ``forward(x (N, C_in, T), ring, t, ti) -> (y (N, C_out, T), ring')``. ``t`` is the cursor tensor,
    ``ti`` the same cursor as a Python int in the fast in-place mode (``-1`` otherwise). Weights are a
    snapshot of the source layer.

    Ring layout ``(N, d, k - 1, C_in)``, ``L = (k - 1) * d`` samples: the input of time ``tau`` sits at
    ``[:, tau % d, (tau % L) // d]``. The taps of step ``t`` (times ``t - d, ..., t - (k - 1) d``) all
    share ``tau % d``, so they are one contiguous ``(k - 1, C_in)`` block (a view, no gather), rotated
    by ``q = (t % L) // d`` -- matched by one of ``k - 1`` pre-rotated weight matrices -- and the new
    sample overwrites the oldest, row ``q`` of that block.

    >>> import torch, atrous.nn as ann
    >>> conv = ann.Conv1d(2, 3, 3, padding="causal", dilation=2)
    >>> sc = ann.StreamConv1d(conv.weight, conv.bias, dilation=2, groups=1, inplace=True)
    >>> x, ring, t = torch.randn(1, 2, 7), torch.zeros(1, 2, 2, 2), torch.zeros((), dtype=torch.long)
    >>> y1, ring = sc(x[:, :, :4], ring, t, -1)                 # (N, C_out, 4)
    >>> y2, ring = sc(x[:, :, 4:], ring, t + 4, -1)
    >>> torch.allclose(torch.cat([y1, y2], 2), conv(x), atol=1e-6)
    True
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int, groups: int,
                 inplace: bool) -> None:
        super().__init__()
        c_out, c_in_g, k = weight.shape
        self.k, self.dilation, self.groups, self.inplace = k, dilation, groups, inplace
        self.history = geometry.effective_kernel(k, dilation) - 1          # L = (k - 1) * d
        self.in_channels = c_in_g * groups
        self.fast = inplace and groups == 1
        w = weight.detach().clone()
        b = torch.zeros(c_out, dtype=w.dtype, device=w.device) if bias is None else bias.detach().clone()
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.register_buffer("w_last", w[:, :, k - 1].t().contiguous())         # (C_in, C_out)
        # w_rot[q][i * C_in + c, o] = w[o, c, (i - q) % (k - 1)]: block row i holds tap (i - q) % (k-1)
        rows = torch.arange(k - 1, device=w.device)
        rots = [w[:, :, (rows - q) % (k - 1)].permute(2, 1, 0).reshape(-1, c_out) for q in range(k - 1)]
        self.register_buffer("w_rot", torch.stack(rots))                       # (k-1, (k-1) C_in, C_out)
        self.register_buffer("arange", torch.arange(self.history, device=w.device))

    def _slots(self, tau: torch.Tensor) -> torch.Tensor:
        """Flat slot ``(tau % d) * (k - 1) + (tau % L) // d`` of times ``tau``."""
        return (tau % self.dilation) * (self.k - 1) + torch.div(tau % self.history, self.dilation,
                                                                 rounding_mode="floor")

    def forward(self, x: torch.Tensor, ring: torch.Tensor, t: torch.Tensor, ti: int
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        T, N, L = x.size(2), x.size(0), self.history
        if T == 1 and self.fast and ti >= 0:                 # one sample, in place: views + 2 GEMMs
            q = (ti % L) // self.dilation
            block = ring.select(1, ti % self.dilation)         # (N, k - 1, C_in) contiguous rows
            x2 = x.view(N, -1)                                 # (N, C_in)
            y = torch.mm(x2, self.w_last)                      # (N, C_out); mm + in-place adds are
            y.addmm_(block.reshape(N, -1), self.w_rot[q])      # ~3x cheaper than addmm with a 1-D bias
            y.add_(self.bias)
            block.select(1, q).copy_(x2)                       # newest replaces oldest
            return y.unsqueeze(2), ring                        # (N, C_out, 1)
        flat = ring.view(N, L, -1)                             # (N, L, C_in), slot order
        past = flat.index_select(1, self._slots(self.arange + (t - L)))   # (N, L, C_in) oldest first
        y = F.conv1d(torch.cat([past.transpose(1, 2), x], 2), self.weight, self.bias, 1, 0,
                     self.dilation, self.groups)              # (N, C_out, T)
        m = min(T, L)
        slots = self._slots(torch.arange(m, device=x.device) + (t + (T - m)))
        new = x[:, :, T - m:].transpose(1, 2)                  # (N, m, C_in)
        if self.inplace:
            flat.index_copy_(1, slots, new)
            return y, ring
        return y, flat.index_copy(1, slots, new).view(ring.shape)


def _layer_desc(name: str, m: nn.Module) -> str:
    return f"layer {name!r} ({type(m).__name__})"


def _causal_conv_spec(name: str, m: nn.Module):
    """``None`` for a pointwise conv (kept as is), ``(weight, bias, d, groups)`` for a causal one;
    raises naming the layer otherwise."""
    if isinstance(m, _ConvNd) and m._ndim == 1:
        k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        pad = m.pads((geometry.effective_kernel(k, d),))[0] if m._static else None
        mode = m.padding_mode
    elif isinstance(m, nn.Conv1d):
        k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        p = m.padding
        pad = (0, 0) if p == "valid" else None if isinstance(p, str) else (p[0], p[0])
        mode = m.padding_mode
    else:
        raise ValueError(f"stream: {_layer_desc(name, m)} is not a 1-D convolution; streaming "
                         "supports 1-D causal stacks only")
    if s != 1:
        raise ValueError(f"stream: {_layer_desc(name, m)} has stride {s}; streaming needs stride 1")
    span = geometry.effective_kernel(k, d) - 1
    if span == 0 and pad == (0, 0):
        return None
    if pad != (span, 0) or mode != "zeros":
        raise ValueError(
            f"stream: {_layer_desc(name, m)} is not causal: kernel {k}, dilation {d} needs zero padding "
            f"({span}, 0), got padding {getattr(m, 'padding', None)!r}, padding_mode {mode!r}")
    return m.weight, m.bias, d, m.groups


def _dim_pos(node: fx.Node) -> int:
    """Position of ``dim`` in the args: ``cat(tensors, dim)``, ``chunk/split(x, n, dim)``."""
    return 1 if node.target in (torch.cat, torch.concat) else 2


def _dim_of(node: fx.Node):
    i = _dim_pos(node)
    return node.kwargs.get("dim", node.args[i] if len(node.args) > i else 0)


def _check_pointwise(node: fx.Node, split_nodes: set) -> None:
    where = f"operation {node.format_node()!r}"
    if node.op == "call_function":
        if rules.pointwise_op(getattr(node.target, "__name__", ""), method=False):
            return
        if node.target is operator.getitem and node.args[0] in split_nodes and isinstance(node.args[1], int):
            return
        if node.target in (torch.chunk, torch.split, torch.cat, torch.concat):
            if _dim_of(node) in _CHANNEL_DIMS:
                if node.target in (torch.chunk, torch.split):
                    split_nodes.add(node)
                return
    elif node.op == "call_method":
        if rules.pointwise_op(node.target, method=True):
            return
        if node.target in ("chunk", "split"):
            if _dim_of(node) in _CHANNEL_DIMS:
                split_nodes.add(node)
                return
    raise ValueError(f"stream: {where} is not known to be pointwise in time; streaming supports "
                     "causal convs, pointwise ops, residual adds and channel chunk/cat")


class Stepper(nn.Module):
    """Streaming version of a causal model (built by :func:`stream`).

    ``state = s.init_state(batch_size)``; ``y, state = s.step(x, state)`` with ``x (N, C_in, T)``,
    any ``T >= 1``, ``y (N, C_out, T)``. ``forward(x, state_list) -> (y, new_state_list)`` is the
    same computation on a list (the form TorchScript and ONNX see). One stepper serves any number of
    states, one call at a time (not from several threads at once: the eager path caches ring views).

    ``step`` and the eager ``forward`` check the state against the stepper before any work: the number
    of tensors, the cursor ``state[0]`` (an int64 tensor of shape ``()``, ``>= 0``), each ring's
    shape ``(N, d, k - 1, C_in)``, dtype and device, one batch size ``N`` for ``x`` and every ring,
    and ``x``'s channels, length ``T >= 1``, dtype and device; a mismatch is a one-line error naming
    the state entry (and its layer). Rings already checked (the in-place stepper hands the same
    tensors back every step) are recognised by identity, so a step pays for the check once.

    Saving: ``torch.save(stepper)`` (a pickled module), or the TorchScript way,
    ``torch.jit.save(torch.jit.script(stepper), path)`` then ``m = torch.jit.load(path)``,
    ``state = m.zero_state(batch_size)`` and ``y, state = m(x, state)`` (no Python needed; the
    scripted form skips the checks). The state itself is plain tensors: ``torch.save`` it (it loads
    with ``weights_only=True``).

    >>> import torch, atrous.nn as ann
    >>> s = ann.stream(ann.WaveNet(1, 2, residual_channels=4, layers_per_stack=3))
    >>> s.history, [tuple(r.shape) for r in s.init_state(5)[1:3]]     # (k - 1) * d per layer
    ([1, 1, 2, 4], [(5, 1, 1, 1), (5, 1, 1, 4)])
    >>> y, state = s.step(torch.randn(5, 1, 1), s.init_state(5))
    >>> y.shape, int(state[0])
    (torch.Size([5, 2, 1]), 1)
    >>> s.step(torch.randn(4, 1, 1), state)
    Traceback (most recent call last):
    ...
    ValueError: state[1] (ring buffer of layer 'input') is for batch size 5, x has batch size 4
    """

    __jit_unused_properties__ = ["history"]

    def __init__(self, program: fx.GraphModule, convs: List[StreamConv1d], names: List[str],
                 in_channels: int, inplace: bool, script: bool = False,
                 single: Optional[fx.GraphModule] = None) -> None:
        super().__init__()
        self.has_single = single is not None
        single = program if single is None else single
        if script:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                program, single = torch.jit.script(program), torch.jit.script(single)
        self.program = program
        self.single = single
        self.scripted = script
        object.__setattr__(self, "_eager", None)   # closure program for eager T = 1 steps (not a submodule)
        object.__setattr__(self, "_checked", None)  # (batch size, rings) last checked, by identity
        self.in_channels = in_channels
        self.inplace = inplace
        self.ring_shapes: List[Tuple[int, int, int]] = [(c.dilation, c.k - 1, c.in_channels) for c in convs]
        self.layer_names = names
        w = convs[0].weight
        self.register_buffer("_ref", torch.empty(0, dtype=w.dtype, device=w.device), persistent=False)

    @property
    def history(self) -> List[int]:
        """Ring-buffer length ``(k - 1) * d`` of each streaming layer, in state order."""
        return [d * k1 for d, k1, _ in self.ring_shapes]

    def init_state(self, batch_size: int, device: Optional[DeviceArg] = None,
                   dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, ...]:
        """Zero state for ``batch_size`` sequences: ``(t, ring_0, ring_1, ...)`` on the stepper's
        device and dtype (``device``/``dtype``, if given, must be those: move the stepper with
        ``.to()`` to stream elsewhere)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        ref = self._ref
        if device is not None and torch.empty(0, device=device).device != ref.device:
            raise ValueError(f"device {device!r}: the stepper is on {ref.device}; move it with stepper.to(...) "
                             "and the state follows")
        if dtype is not None and dtype != ref.dtype:
            raise ValueError(f"dtype {dtype}: the stepper computes in {ref.dtype}; convert it with "
                             "stepper.to(dtype) and the state follows")
        return tuple(self.zero_state(batch_size))

    @torch.jit.export
    def zero_state(self, batch_size: int) -> List[torch.Tensor]:
        """:meth:`init_state` as a list (also on a scripted or loaded TorchScript stepper)."""
        ref = self._ref
        out = [torch.zeros((), dtype=torch.int64, device=ref.device)]
        for d, k1, c in self.ring_shapes:
            out.append(torch.zeros([batch_size, d, k1, c], dtype=ref.dtype, device=ref.device))
        return out

    @staticmethod
    def clone_state(state: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """A snapshot of ``state`` (the in-place stepper overwrites the buffers it is given)."""
        return tuple(s.clone() for s in state)

    @torch.jit.unused
    def check(self, x: torch.Tensor, state: Sequence[torch.Tensor]) -> None:
        """Raise a one-line ``ValueError``/``TypeError`` naming the entry if ``x`` and ``state``
        do not fit this stepper (see the class docstring); ``step`` calls it."""
        ref = self._ref
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor (N, {self.in_channels}, T), got {type(x).__name__}")
        if x.dim() != 3 or x.size(1) != self.in_channels or x.size(2) < 1:
            raise ValueError(f"x must be (N, {self.in_channels}, T) with T >= 1, got {tuple(x.shape)}")
        if x.dtype != ref.dtype:
            raise ValueError(f"x has dtype {x.dtype}, the stepper computes in {ref.dtype}; convert x "
                             f"(x.to({ref.dtype})) or the stepper (stepper.to({x.dtype}), then a new state)")
        if x.device != ref.device:
            raise ValueError(f"x is on {x.device}, the stepper on {ref.device}; move one of them")
        if not isinstance(state, (tuple, list)):
            raise TypeError(f"state must be the tuple of tensors from init_state(batch_size), got "
                            f"{type(state).__name__}")
        n = len(self.ring_shapes) + 1
        if len(state) != n:
            raise ValueError(f"state must have {n} tensors (the cursor t and {n - 1} ring buffers, from "
                             f"init_state(batch_size)), got {len(state)}")
        t = state[0]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 0:
            got = (f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__)
            raise ValueError(f"state[0] (the cursor t, samples consumed) must be an int64 tensor of shape (), "
                             f"got {got}")
        if t.device != ref.device:
            raise ValueError(f"state[0] (the cursor t) is on {t.device}, the stepper on {ref.device}")
        batch = x.size(0)
        rings = state[1:]
        seen = self._checked
        if seen is None or seen[0] != batch or len(seen[1]) != len(rings) or \
                not all(a is b for a, b in zip(seen[1], rings)):
            for i, (r, shape, name) in enumerate(zip(rings, self.ring_shapes, self.layer_names)):
                self._check_ring(i + 1, name, r, shape, batch)
            object.__setattr__(self, "_checked", (batch, tuple(rings)))
        if int(t) < 0:
            raise ValueError(f"state[0] (the cursor t, samples consumed) must be >= 0, got {int(t)}")

    def _check_ring(self, i: int, name: str, r, shape, batch: int) -> None:
        ref = self._ref
        where = f"state[{i}] (ring buffer of layer {name!r})"
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, got {type(r).__name__}")
        want = (batch, *shape)
        if tuple(r.shape) != want:
            if r.dim() == 4 and tuple(r.shape[1:]) == tuple(shape):
                raise ValueError(f"{where} is for batch size {r.shape[0]}, x has batch size {batch}")
            raise ValueError(f"{where} must have shape {want} = (N, dilation, kernel_size - 1, C_in), "
                             f"got {tuple(r.shape)}")
        if r.dtype != ref.dtype:
            raise ValueError(f"{where} has dtype {r.dtype}, the stepper computes in {ref.dtype}")
        if r.device != ref.device:
            raise ValueError(f"{where} is on {r.device}, the stepper on {ref.device}")
        if not r.is_contiguous():
            raise ValueError(f"{where} must be contiguous (the stepper writes into it); pass r.contiguous()")

    def step(self, x: torch.Tensor, state: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """Consume ``x (N, C_in, T)`` and return ``(y (N, C_out, T), new_state)``."""
        self.check(x, state)
        with torch.no_grad():
            if self.has_single and x.size(2) == 1:
                if self.scripted:
                    y, new = self.single(x, list(state))
                else:
                    if self._eager is None:
                        object.__setattr__(self, "_eager", _eager_program(self.single))
                    y, new = self._eager(x, list(state))
            else:
                y, new = self.program(x, list(state))
        if not self.inplace:                       # new rings, valid by construction
            object.__setattr__(self, "_checked", (x.size(0), tuple(new[1:])))
        return y, tuple(new)

    def __getstate__(self):                        # copy/pickle without the eager closures
        state = dict(super().__getstate__())
        state["_eager"] = None
        state["_checked"] = None
        return state

    def _apply(self, fn, recurse=True):            # .to()/.double(): rebuild the eager closures later
        object.__setattr__(self, "_eager", None)
        object.__setattr__(self, "_checked", None)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self.check(x, state)
        if self.has_single and x.size(2) == 1:
            return self.single(x, state)
        return self.program(x, state)


def stream(model: nn.Module, *, inplace: bool = True, script: bool = False) -> Stepper:
    """Build an exact streaming stepper for a causal 1-D model (TCN, WaveNet, or any ``nn.Module`` of
    causal :class:`atrous.nn.Conv1d` layers, pointwise ops and residual adds).

    The model is copied and put in eval mode (the stepper snapshots its weights); the streamed output
    equals ``model.eval()(x)`` on the concatenated sequence, for any chunking and batch size.
    ``inplace=False`` makes ``step`` a pure function (for ONNX export); ``script=True`` runs the
    programs under TorchScript (about the speed of the eager stepper, whose one-sample steps run as
    closures over plain tensors -- a step is a few small GEMMs and copies per layer).
    Raises ``ValueError`` naming the first layer or operation that is not causal and pointwise-safe
    (a strided or non-causal conv, pooling, slicing in time, ...).

    >>> import torch, atrous.nn as ann
    >>> tcn = ann.TCN(2, [8, 8], kernel_size=3).eval()
    >>> s = ann.stream(tcn)
    >>> x = torch.randn(3, 2, 10)                       # (N, C_in, T)
    >>> state = s.init_state(batch_size=3)
    >>> y1, state = s.step(x[:, :, :4], state)          # any chunk sizes
    >>> y2, state = s.step(x[:, :, 4:], state)
    >>> torch.allclose(torch.cat([y1, y2], 2), tcn(x), atol=1e-6)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for p in model.parameters():            # inference only: no autograd history through the rings
        p.requires_grad_(False)
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # data-dependent control flow etc.
        raise ValueError(f"stream: could not trace the model with torch.fx: {e}") from e
    program, convs, names, in_channels = _build(graph, model, inplace, None)
    single = None
    if inplace and all(c.groups == 1 for c in convs):
        single = _build(graph, model, inplace, convs)[0]      # None when some op is not 2-D safe
    return Stepper(program, convs, names, in_channels, inplace, script, single)


class _Single(nn.Module):
    """One-sample, in-place step of a :class:`StreamConv1d` on 2-D activations ``(N, C_in) -> (N, C_out)``."""

    def __init__(self, conv: StreamConv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, ring: torch.Tensor, ti: int) -> torch.Tensor:
        c = self.conv
        q = (ti % c.history) // c.dilation
        block = ring.select(1, ti % c.dilation)                 # (N, k - 1, C_in), taps rotated by q
        y = torch.mm(x, c.w_last)
        y.addmm_(block.reshape(x.size(0), -1), c.w_rot[q])
        y.add_(c.bias)
        block.select(1, q).copy_(x)                             # newest replaces oldest
        return y


def _single_fn(sc: StreamConv1d):
    """:class:`_Single`'s step as a closure over plain tensors: no module call, no attribute lookups.

    The ``(N, (k - 1) C)`` tap view and the ``(N, C)`` row view of each ring slot are made once per
    ring tensor (the in-place stepper gets the same tensors back every step), so a step is one GEMM,
    one accumulating GEMM, the bias add and the row copy.
    """
    d, L, w_last, bias = sc.dilation, sc.history, sc.w_last, sc.bias
    rots = list(sc.w_rot.unbind(0))
    views: dict = {}
    seen = [None]                                  # the ring the cached views belong to

    def single_step(x, ring, ti):
        if ring is not seen[0]:
            seen[0] = ring
            views.clear()
        r = ti % L
        v = views.get(r)
        if v is None:
            block = ring.select(1, ti % d)                       # (N, k - 1, C_in)
            v = views[r] = (block.view(ring.shape[0], -1), block.select(1, r // d), rots[r // d])
        taps, row, w_q = v
        y = torch.mm(x, w_last)
        y.addmm_(taps, w_q)
        y.add_(bias)
        row.copy_(x)                                             # newest replaces oldest
        return y
    return single_step


def _pointwise_fn(pw: _Pointwise):
    w, b = pw.w, pw.b

    def pointwise(x):
        y = torch.mm(x, w)
        y.add_(b)
        return y
    return pointwise


def _eager_program(single: fx.GraphModule) -> fx.GraphModule:
    """The T = 1 program with its streaming and 1x1 convs turned into closures (eager speed: the
    per-layer cost is then the handful of tensor ops, not ``Module.__call__`` and attribute lookups)."""
    g = fx.Graph()
    env: dict = {}
    root: dict = {}
    for node in single.graph.nodes:
        if node.op == "call_module":
            mod = single.get_submodule(node.target)
            if isinstance(mod, (_Single, _Pointwise)):
                fn = _single_fn(mod.conv) if isinstance(mod, _Single) else _pointwise_fn(mod)
                env[node] = g.call_function(fn, tuple(env[a] if isinstance(a, fx.Node) else a for a in node.args))
                continue
            root[node.target] = mod
        env[node] = g.node_copy(node, lambda n: env[n])
    return fx.GraphModule(root, g, class_name="EagerStep")


class _Pointwise(nn.Module):
    """A 1x1 convolution on 2-D activations ``(N, C_in) -> (N, C_out)``."""

    def __init__(self, m: nn.Module):
        super().__init__()
        w = m.weight.detach()[:, :, 0]
        self.register_buffer("w", w.t().contiguous())
        self.register_buffer("b", torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if m.bias is None
                             else m.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.mm(x, self.w)
        y.add_(self.b)
        return y


def _build(graph: fx.Graph, model: nn.Module, inplace: bool, single_of):
    """Rewrite the traced ``graph`` into ``forward(x, state) -> (y, new_state)``.

    ``single_of=None``: the general program (any T, 3-D activations), creating the streaming convs.
    ``single_of=convs``: the T = 1 program on 2-D ``(N, C)`` activations reusing ``convs``, or
    ``(None, ...)`` if some operation is not safe on 2-D activations.
    """
    single = single_of is not None
    modules = dict(model.named_modules())
    g = fx.Graph()
    x_in = g.placeholder("x")
    state_in = g.placeholder("state", type_expr=List[torch.Tensor])
    t = g.call_function(operator.getitem, (state_in, 0))
    root: dict = {"_atrous_cursor": _Cursor()}
    ti = g.call_module("_atrous_cursor", (t,)) if inplace else -1
    x_val = g.call_method("flatten", (x_in, 1)) if single else x_in       # (N, C_in) when single
    env: dict = {}
    convs: List[StreamConv1d] = []
    names: List[str] = []
    outputs: List[fx.Node] = []
    split_nodes: set = set()
    in_channels = None
    placeholders = 0
    result = None
    for node in graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise ValueError(f"stream: the model must take one input, got a second one {node.target!r}")
            env[node] = x_val
        elif node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, _DROPPED_MODULES):
                env[node] = env[node.args[0]]
            elif isinstance(m, (_ConvNd, nn.Conv1d)):
                spec = _causal_conv_spec(node.target, m)
                if in_channels is None:
                    in_channels = m.in_channels
                if spec is None:                                  # pointwise 1x1 conv
                    if single:
                        if m.groups != 1:
                            return None, None, None, None
                        name = f"_atrous_pointwise_{node.target.replace('.', '_')}"
                        root[name] = _Pointwise(m)
                        env[node] = g.call_module(name, (env[node.args[0]],))
                    else:
                        root[node.target] = m
                        env[node] = g.node_copy(node, lambda n: env[n])
                    continue
                weight, bias, d, groups = spec
                i = len(convs)
                sc = single_of[i] if single else StreamConv1d(weight, bias, d, groups, inplace)
                ring = g.call_function(operator.getitem, (state_in, 1 + i))
                if single:
                    root[f"_atrous_single{i}"] = _Single(sc)
                    env[node] = g.call_module(f"_atrous_single{i}", (env[node.args[0]], ring, ti))
                    outputs.append(ring)
                else:
                    root[f"_atrous_stream{i}"] = sc
                    out = g.call_module(f"_atrous_stream{i}", (env[node.args[0]], ring, t, ti))
                    env[node] = g.call_function(operator.getitem, (out, 0))
                    outputs.append(g.call_function(operator.getitem, (out, 1)))
                convs.append(sc)
                names.append(node.target)
            elif type(m) in _AS_FUNCTION:                         # stateless: skip the module call
                src = env[node.args[0]]
                fn = _AS_FUNCTION[type(m)]
                arg = node.args[0]
                fresh = (arg.op == "call_module" and isinstance(modules[arg.target], (_ConvNd, nn.Conv1d))) \
                    or (arg.op == "call_function" and arg.target in _FRESH_RESULTS)
                if single and fresh and len(arg.users) == 1:
                    fn = _INPLACE[fn]                             # sole user of a new tensor: no copy
                env[node] = g.call_function(fn, (src,))
            elif rules.pointwise_module(m):
                root[node.target] = m
                env[node] = g.node_copy(node, lambda n: env[n])
            else:
                raise ValueError(f"stream: {_layer_desc(node.target, m)} is not known to be causal and "
                                 "pointwise in time")
        elif node.op == "get_attr":
            if single:                      # a tensor constant may broadcast against (N, C, T)
                return None, None, None, None
            root[node.target] = operator.attrgetter(node.target)(model)
            env[node] = g.node_copy(node, lambda n: env[n])
        elif node.op in ("call_function", "call_method"):
            _check_pointwise(node, split_nodes)
            new = g.node_copy(node, lambda n: env[n])
            if single and (node.target in _CHANNEL_SPLITS or node.target in (torch.cat, torch.concat)):
                i = _dim_pos(node)                                # channel dim is 1 on (N, C) as well
                if len(new.args) > i:
                    new.args = new.args[:i] + (1,) + new.args[i + 1:]
                else:
                    new.kwargs = {**new.kwargs, "dim": 1}
            env[node] = new
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise ValueError("stream: the model must return a single tensor")
    if not convs:
        raise ValueError("stream: the model has no causal convolution with history to stream")
    y = g.call_method("unsqueeze", (env[result], 2)) if single else env[result]
    steps = g.call_method("size", (x_in, 2))
    t_new = g.call_method("add_", (t, steps)) if inplace else g.call_function(operator.add, (t, steps))
    g.output((y, [t_new] + outputs))
    program = fx.GraphModule(root, g, class_name="StreamProgram1" if single else "StreamProgram")
    return program, convs, names, in_channels
