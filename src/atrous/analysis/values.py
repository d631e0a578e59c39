"""What the analysis knows about one tensor: which input positions each of its elements depends on.

A tensor's dimensions are labelled by *factors* (:class:`Factor`): batch, channel (features),
spatial axis ``k`` of the input, or other (no position). A dimension may hold several factors (a
flattened ``H*W`` token axis holds ``H`` then ``W``); a spatial axis may be split over several
dimensions (a window partition holds the window index in the batch dimension and the position inside
the window in a token dimension). The *coordinate* of an element on spatial axis ``k`` is
``sum(index_f * mult_f)`` over the axis's factors, a mixed-radix number in ``[0, N_k)``.

A :class:`Value` holds the labels and, per spatial axis, the field as a function of that coordinate
(:mod:`atrous.analysis.fields`): ``full`` (every dependence) and ``local`` (the local paths alone:
normalisation statistics over positions and global-pooling gates ignored). Reshapes and permutes
only move labels; convolutions apply tap maps to one factor; ops that mix dimensions (attention,
reductions, statistics) mix the factors those dimensions hold. Anything that cannot be followed
exactly raises :class:`Unsupported` with the reason; the graph adds the node's name.

Pure Python and NumPy; the torch side lives in :mod:`atrous.analysis.graph` and :mod:`atrous.analysis.rules`.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Sequence

import numpy as np

from . import fields as fl
from .fields import Const, FieldError, Periodic, TapMap

__all__ = ["Factor", "Value", "Unsupported"]


class Unsupported(ValueError):
    """An op the analysis cannot follow exactly (the message says why; the graph names the node)."""


class Factor(NamedTuple):
    """One factor of a tensor dimension: ``kind`` is ``'b'`` batch, ``'c'`` channel/feature, ``'s'``
    spatial (``axis``: which input axis, ``mult``: its weight in the coordinate), ``'o'`` other (no
    position), ``'e'`` a broadcast (``expand``: every element along it is the same) or ``'x'``
    positions merged by a concatenation or an untracked move (tracked only as a union)."""

    kind: str
    size: int | None
    axis: int = -1
    mult: int = 1


def S(size, axis, mult=1) -> Factor:
    return Factor("s", size, axis, mult)


def C(size) -> Factor:
    return Factor("c", size)


def O(size) -> Factor:  # noqa: E743 (a label kind, not a lambda)
    return Factor("o", size)


# ---------------------------------------------------------------------------------- coverage exprs

class Expr:
    """How a tensor's field was built, for the path-count walk of :mod:`atrous.analysis.coverage`."""
    __slots__ = ()


@dataclass(frozen=True, eq=False)
class EInput(Expr):
    index: int
    sizes: tuple = ()    # per axis: the input's extent


@dataclass(frozen=True, eq=False)
class EApply(Expr):
    src: Expr
    maps: tuple          # per axis: TapMap or None
    sizes: tuple = ()    # per axis: the result's extent (None: unknown)


@dataclass(frozen=True, eq=False)
class EUnion(Expr):
    srcs: tuple
    where: str


@dataclass(frozen=True, eq=False)
class EOpaque(Expr):
    why: str
    src: Expr | None = None     # with ``axes``: only those axes were mixed; the others replay from src
    axes: tuple = ()


# ------------------------------------------------------------------------------------------ value

@dataclass(frozen=True, eq=False)
class Value:
    """Labels and fields of one tensor (see the module docstring)."""

    shape: tuple
    dims: tuple                 # per tensor dim: tuple of Factor
    full: tuple                 # per input axis: Periodic | Const | None
    local: tuple
    whole: tuple                # per input axis: (lo, hi) of the input (a Const covering it is "whole")
    where: tuple = ()           # per input axis: the node that made the axis global, or None
    expr: Expr | None = None
    notes: tuple = ()
    lossy: str | None = None    # node whose concatenation merged positions (must be mixed away)
    chan_mixed: str | None = None   # node that joined channels with different fields
    last_spatial: tuple | None = None   # (name, Value) of the last node with position-dependent fields
    llossy: str | None = None   # the same for the local field (the local paths have not mixed them)
    pieces: tuple | None = None  # (dim, ((start, stop, Value), ...), full, local): what a positional cat
                                 # joined, valid while the fields and that dim's label are unchanged

    # ----------------------------------------------------------------- construction
    @staticmethod
    def input(shape: tuple, sizes: tuple, index: int = 0) -> Value:
        """An input ``(N, C, *spatial)``; ``sizes`` are the spatial sizes of the analysed input."""
        nd = len(sizes)
        dims = [(Factor("b", shape[0]),), (C(shape[1]),)] + [(S(n, k),) for k, n in enumerate(shape[2:])]
        ident = (fl.IDENTITY,) * nd
        return Value(tuple(shape), tuple(dims), ident, ident, tuple((0, n - 1) if n else None for n in sizes),
                     (None,) * nd, EInput(index, tuple(sizes)))

    @staticmethod
    def constant(shape: tuple, whole: tuple) -> Value:
        nd = len(whole)
        return Value(tuple(shape), tuple((O(n),) for n in shape), (None,) * nd, (None,) * nd, whole,
                     (None,) * nd, None)

    @property
    def ndim(self) -> int:
        return len(self.full)

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def dependent(self) -> bool:
        return any(f is not None for f in self.full) or any(f is not None for f in self.local)

    def factors(self, axis: int) -> list:
        """``(dim, position, Factor)`` for every factor of spatial ``axis``."""
        cache = self.__dict__.get("_factors")
        if cache is None:
            cache = {}
            for d, fs in enumerate(self.dims):
                for i, f in enumerate(fs):
                    if f.kind == "s":
                        cache.setdefault(f.axis, []).append((d, i, f))
            self.__dict__["_factors"] = cache
        return list(cache.get(axis, ()))

    def extent(self, axis: int) -> int | None:
        fs = self.factors(axis)
        if not fs:
            return 1 if isinstance(self.full[axis], Periodic) else None
        if any(f.size is None for _, _, f in fs):
            return None
        return math.prod(f.size for _, _, f in fs)

    def with_(self, **kw) -> Value:
        return replace(self, **kw)

    def add_note(self, note: str) -> Value:
        return self if not note or note in self.notes else replace(self, notes=self.notes + (note,))


def replace(v: Value, **kw) -> Value:
    """``dataclasses.replace`` for :class:`Value`, without re-running ``__init__`` (the analysis makes
    thousands of these per model)."""
    new = object.__new__(Value)
    d = new.__dict__
    d.update(v.__dict__)
    d.pop("_factors", None)
    d.update(kw)
    return new


# ------------------------------------------------------------------------------------ helpers

def _norm_dim(d: int, rank: int, what: str = "dim") -> int:
    if not -rank <= d < max(rank, 1):
        raise Unsupported(f"{what} {d} is out of range for a tensor of rank {rank}")
    return d % rank if rank else 0


def _remult(dims: list, axis: int) -> list:
    """Recompute the multipliers of ``axis``'s factors from their sizes (order by old multiplier)."""
    fs = sorted(((f.mult, d, i) for d, dfs in enumerate(dims) for i, f in enumerate(dfs)
                 if f.kind == "s" and f.axis == axis))
    m = 1
    for _, d, i in fs:
        f = dims[d][i]
        dims[d] = tuple(dims[d][:i]) + (f._replace(mult=m),) + tuple(dims[d][i + 1:])
        m *= f.size if f.size is not None else 1
    return dims


def _whole_const(v: Value, axis: int) -> Const | None:
    w = v.whole[axis]
    return Const(w[0], w[1]) if w is not None else None


def _hull(v: Value, f, axis: int, n):
    try:
        c = fl.hull(f, n)
    except FieldError as e:
        raise Unsupported(str(e)) from None
    if isinstance(c, Const) and isinstance(f, Periodic) and (f is v.full[axis] or f is v.local[axis]):
        r = reach(v, axis)       # the hull of unbounded spans counts padding that no real position reads
        if r is NOTHING:
            return None
        if r is None and (seen := UNREPLAYED.get()) is not None and axis not in seen:
            seen.append(axis)    # the node lowering now says so (graph.lower)
        if r is not None and max(c.lo, r.lo) <= min(c.hi, r.hi):
            c = Const(max(c.lo, r.lo), min(c.hi, r.hi))
    if isinstance(c, Const) and v.whole[axis] is not None:
        lo, hi = v.whole[axis]
        if c.lo <= lo and c.hi >= hi:
            return Const(lo, hi)
    return c


class _NoReplay(Exception):
    pass


_REPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
REACH_LIMIT = 1 << 22        # positions per axis replayed by :func:`reach` (arrays of this length)
# the spatial axes on which a node's global op took the hull of unbounded spans because its input
# could not be replayed (graph.lower sets a list per node and notes it on the node's outputs)
UNREPLAYED: contextvars.ContextVar = contextvars.ContextVar("unreplayed", default=None)
NOTHING = Const(0, -1)       # :func:`reach` of a tensor whose positions read only padding


def reach(v: Value, axis: int) -> Const | None:
    """The input positions the tensor's positions ``0 .. n-1`` really read on ``axis``, as an interval.

    Fields are unbounded (a span may reach into padding); their hull over all positions can then
    claim input positions that no element depends on (a valid stride-2 conv drops the last row, a
    padded conv after it reaches past it). This replays the tensor's build (``v.expr``) position by
    position with the real extents, where a tap in padding reads nothing. ``None`` when the build
    cannot be replayed exactly (an opaque step, unknown extents, more than :data:`REACH_LIMIT`
    input positions) or the replay does not reproduce ``v.full[axis]`` (the field was built another
    way). :data:`NOTHING` when no position reads any input position."""
    f = v.full[axis]
    if v.expr is None or not isinstance(f, Periodic):
        return None
    try:
        u, lo, hi = _replay(v.expr, axis)
    except (_NoReplay, FieldError):
        return None
    if len(lo) != v.extent(axis) or not fl.equal(u, f):
        return None
    ok = lo <= hi
    if not ok.any():
        return NOTHING
    return Const(int(lo[ok].min()), int(hi[ok].max()))


def _replay(e: Expr, k: int):
    """``(unbounded field, lo, hi)`` of expression ``e`` on axis ``k``; memoised per expression."""
    memo = _REPLAYS.setdefault(e, {})
    if k in memo:
        got = memo[k]
        if got is None:
            raise _NoReplay
        return got
    memo[k] = None
    if isinstance(e, EInput):
        n = e.sizes[k] if k < len(e.sizes) else None
        if not n or n > REACH_LIMIT:
            raise _NoReplay
        idx = np.arange(n, dtype=np.int64)
        got = (fl.IDENTITY, idx, idx)
    elif isinstance(e, EApply):
        u, lo, hi = _replay(e.src, k)
        t = e.maps[k]
        n = e.sizes[k] if k < len(e.sizes) else None
        if n is None:
            raise _NoReplay
        if t is None:
            if n != len(lo):
                raise _NoReplay
            got = (u, lo, hi)
        else:
            got = (fl.apply(u, t),) + fl.bounded_apply(lo, hi, t, n)
    elif isinstance(e, EOpaque) and e.src is not None and k not in e.axes:
        got = _replay(e.src, k)
    elif isinstance(e, EUnion):
        parts = [_replay(s, k) for s in e.srcs]
        if len({len(p[1]) for p in parts}) != 1:
            raise _NoReplay
        got = (fl.union([p[0] for p in parts], e.where, None, len(parts[0][1])),
               np.minimum.reduce([p[1] for p in parts]), np.maximum.reduce([p[2] for p in parts]))
    else:
        raise _NoReplay
    memo[k] = got
    return got


def _canon(fs: tuple) -> tuple:
    """Merge neighbouring factors that are one: ``(axis k, 8, mult 7), (axis k, 7, mult 1)`` is
    ``(axis k, 56, mult 1)``; neighbouring channel (or batch, other) factors are one channel factor."""
    out: list = []
    for f in fs:
        if out:
            g = out[-1]
            if f.kind == "s" and g.kind == "s" and g.axis == f.axis and f.size and g.size and \
                    g.mult == f.mult * f.size:
                out[-1] = Factor("s", g.size * f.size, f.axis, f.mult)
                continue
            if f.kind == g.kind and f.kind in ("c", "b", "o", "e") and f.size and g.size:
                out[-1] = Factor(f.kind, g.size * f.size)
                continue
        out.append(f if f.kind == "s" else Factor(f.kind, f.size))
    return tuple(out)


def _finish(v: Value) -> Value:
    """Canonical labels; axes left with no factor (all size 1) become constant over the tensor."""
    v = replace(v, dims=tuple(_canon(d) for d in v.dims))
    if v.lossy and all(_is_whole(v, k, v.full[k]) and v.where[k] for k in range(v.ndim)):
        v = replace(v, lossy=None)    # a global op mixed everything: which positions merged no longer matters
    if v.llossy and all(f is None for f in v.local):
        v = replace(v, llossy=None)
    full, local = list(v.full), list(v.local)
    for k in range(v.ndim):
        if not v.factors(k):
            for arr in (full, local):
                if isinstance(arr[k], Periodic):
                    s = arr[k].at(0)
                    arr[k] = None if s is None else Const(*s)
    return replace(v, full=tuple(full), local=tuple(local))


def _is_whole(v: Value, k: int, f) -> bool:
    w = v.whole[k]
    return isinstance(f, Const) and w is not None and f.lo <= w[0] and f.hi >= w[1]


def _apply_all(fields_: tuple, maps: Sequence) -> tuple:
    return tuple(fl.apply(f, t) for f, t in zip(fields_, maps))


def apply_maps(v: Value, maps: Sequence, dims: tuple | None = None, shape: tuple | None = None) -> Value:
    """Apply one tap map per axis (``None``: unchanged) to both fields; optionally new labels."""
    if all(t is None for t in maps):
        out = v
    else:
        out = replace(v, full=_apply_all(v.full, maps), local=_apply_all(v.local, maps),
                      expr=EApply(v.expr, tuple(maps)) if v.expr is not None else None)
    if dims is not None:
        out = replace(out, dims=tuple(dims), shape=tuple(shape))
    return _sized(out)


def _sized(v: Value) -> Value:
    """Record the result's extents in a fresh :class:`EApply` (for :func:`reach`)."""
    e = v.expr
    if isinstance(e, EApply) and not e.sizes:
        v = replace(v, expr=EApply(e.src, e.maps, tuple(v.extent(k) for k in range(v.ndim))))
    return v


def relabel(v: Value, dims, shape) -> Value:
    return _finish(replace(v, dims=tuple(tuple(d) for d in dims), shape=tuple(shape)))


# --------------------------------------------------------------------------------- reshape

def reshape(v: Value, shape: Sequence[int], node: str = "") -> Value:
    """Labels after ``view``/``reshape`` (see :func:`_reshape`); a view that cuts through the
    factors of a dimension merges the positions there (:func:`merge_positions`)."""
    try:
        return _reshape(v, shape)
    except Unsupported:
        if not node or math.prod(shape) != math.prod(v.shape):
            raise
    merged = merge_positions(v, range(v.rank), node)
    flat = replace(merged, dims=tuple((Factor("x" if any(f.kind == "x" for f in fs) else "o", n),)
                                      for fs, n in zip(merged.dims, merged.shape)))
    out = [(Factor("x" if any(f.kind == "x" for fs in flat.dims for f in fs) else "o", n),) for n in shape]
    return relabel(flat, out, shape)


def _reshape(v: Value, shape: Sequence[int]) -> Value:
    """Labels after ``view``/``reshape``: the row-major factor sequence regrouped into ``shape``.

    Factors are split when a new dimension takes part of one (a spatial factor of ``n`` split into
    ``(n1, n2)`` becomes the outer ``n1`` (multiplier ``mult*n2``) and the inner ``n2``).
    """
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != math.prod(v.shape):
        raise Unsupported(f"cannot view shape {tuple(v.shape)} as {shape}")
    flat = [f for d in v.dims for f in d]
    out: list = []
    i = 0
    for size in shape:
        group: list = []
        need = size
        while need > 1 or (need == 1 and i < len(flat) and flat[i].size == 1 and not group and size == 1):
            if i >= len(flat):
                raise Unsupported(f"cannot view shape {tuple(v.shape)} as {shape}")
            f = flat[i]
            if f.size == 1:
                group.append(f)
                i += 1
                if size == 1:
                    break
                continue
            if f.size <= need:
                if need % f.size:
                    raise Unsupported(f"view {tuple(v.shape)} -> {shape} splits dimensions across factor "
                                      "boundaries")
                group.append(f)
                need //= f.size
                i += 1
            else:
                if f.size % need:
                    raise Unsupported(f"view {tuple(v.shape)} -> {shape} splits dimensions across factor "
                                      "boundaries")
                inner = f.size // need
                group.append(f._replace(size=need, mult=f.mult * inner))
                flat[i] = f._replace(size=inner)
                need = 1
        out.append(tuple(group))
    # trailing size-1 factors join the last dimension
    while i < len(flat):
        if flat[i].size != 1:
            raise Unsupported(f"cannot view shape {tuple(v.shape)} as {shape}")
        if out:
            out[-1] = out[-1] + (flat[i],)
        i += 1
    return _refine(relabel(v, out, shape))


def _refine(v: Value) -> Value:
    """A channel (or broadcast) factor placed right inside the finest spatial factor of an axis
    subdivides its positions (pixel shuffle, nearest upsampling by expand + reshape): position
    ``c*r + j`` reads what position ``c`` read."""
    dims = [list(d) for d in v.dims]
    maps: list = [None] * v.ndim
    for fs in dims:
        for i in range(len(fs) - 1):
            f, g = fs[i], fs[i + 1]
            if f.kind == "s" and f.mult == 1 and g.kind in ("c", "e") and g.size and g.size > 1 \
                    and maps[f.axis] is None and len(v.factors(f.axis)) == 1:   # the whole axis is here
                r = g.size
                k = f.axis
                for dd, ffs in enumerate(dims):
                    for j, h in enumerate(ffs):
                        if h.kind == "s" and h.axis == k:
                            dims[dd][j] = h._replace(mult=h.mult * r)
                fs[i + 1] = Factor("s", r, k, 1)
                maps[k] = TapMap(r, 1, ((0,),) * r)
    if all(t is None for t in maps):
        return v
    return _finish(apply_maps(v, maps, tuple(tuple(d) for d in dims), v.shape))


def permute(v: Value, perm: Sequence[int]) -> Value:
    perm = [_norm_dim(p, v.rank) for p in perm]
    if sorted(perm) != list(range(v.rank)):
        raise Unsupported(f"permutation {tuple(perm)} of a rank-{v.rank} tensor")
    return relabel(v, [v.dims[p] for p in perm], [v.shape[p] for p in perm])


def expand(v: Value, shape: Sequence[int]) -> Value:
    """``expand``/``broadcast_to``: new leading dims and size-1 dims broadcast (no positions)."""
    shape = tuple(shape)
    lead = len(shape) - v.rank
    dims = [(O(n),) for n in shape[:lead]]
    for d, (n, old) in enumerate(zip(shape[lead:], v.shape)):
        n = old if n == -1 else n
        if n != old:
            dims.append((Factor("e", n),))          # broadcast: every element along it is the same
        else:
            dims.append(v.dims[d])
    out = relabel(v, dims, [old if n == -1 else n for n, old in zip(shape, (None,) * lead + tuple(v.shape))])
    # axes whose only factors were size-1 broadcast dims are now constant over the tensor: _finish did it
    return out


# ---------------------------------------------------------------------------- mixing

def mix(v: Value, dims: Sequence[int], kind: str, node: str, remove: bool = False, keepdim: bool = False
        ) -> Value:
    """Every output element depends on all elements along ``dims``.

    ``kind``: ``'stat'`` (normalisation statistics, softmax: the local path is the identity),
    ``'pool'`` (reductions: a reduction over a whole axis has no local path) or ``'mix'`` (learned or
    attention mixing: local = full). ``remove``: the dims disappear (``keepdim``: they stay, size 1).
    """
    dims = sorted({_norm_dim(d, v.rank) for d in dims})
    full, local, where = list(v.full), list(v.local), list(v.where)
    new_dims = [list(d) for d in v.dims]
    maps_full: list = [None] * v.ndim
    opaque = None
    whole_axes: list = []
    notes = v.notes
    for k in range(v.ndim):
        fac = v.factors(k)
        mixed = [(d, i, f) for d, i, f in fac if d in dims]
        if not mixed:
            continue
        if len(mixed) == len(fac):                       # the whole axis
            n = v.extent(k)
            full[k] = _hull(v, full[k], k, n)
            where[k] = where[k] or node
            if kind != "stat":          # a global mix or reduction is not a local path
                local[k] = None
                opaque = f"{node} mixes every position of spatial axis {k}"
                whole_axes.append(k)
            continue
        ts = []
        if remove:
            for _, _, f in sorted(mixed, key=lambda t: -t[2].mult):
                ts.append(fl.drop_factor_map(f.mult, f.size))
        else:
            ts = [fl.mix_factor_map(f.mult, f.size) for _, _, f in mixed]
        top = max(f.mult for _, _, f in fac)
        spans_axis = any(f.mult == top for _, _, f in mixed)    # e.g. attention across patches
        for t in ts:
            full[k] = fl.apply(full[k], t)
            if kind != "stat" and not spans_axis:
                local[k] = fl.apply(local[k], t)
        if spans_axis:
            where[k] = where[k] or node
            if kind != "stat":
                local[k] = None
        if len(ts) == 1:
            maps_full[k] = ts[0]
        else:
            opaque = opaque or f"{node} mixes several factors of spatial axis {k}"
            whole_axes.append(None)          # opaque on every axis
    lossy, llossy = v.lossy, v.llossy
    xs = [d for d, fs in enumerate(v.dims) for f in fs if f.kind == "x"]
    if lossy and xs and all(d in dims for d in xs):
        lossy = None                  # the merged positions are mixed away: the union is now exact
        llossy = llossy if kind == "stat" else None
        for d in dims:
            new_dims[d] = [f._replace(kind="o") if f.kind == "x" else f for f in new_dims[d]]
        where = [w or (node if isinstance(f, Const) else None) for w, f in zip(where, full)]
        if kind != "stat":               # a global mix or reduction of them is not a local path
            local = [None if isinstance(f, Const) else lf for f, lf in zip(full, local)]
    shape = list(v.shape)
    if remove:
        for d in reversed(dims):
            if keepdim:
                new_dims[d] = []
                shape[d] = 1
            else:
                del new_dims[d]
                del shape[d]
        for k in range(v.ndim):
            new_dims = _remult(new_dims, k)
    expr = v.expr
    if expr is not None:
        if opaque and None not in whole_axes and not any(t is not None for t in maps_full):
            expr = EOpaque(opaque, expr, tuple(whole_axes))       # the other axes are untouched
        else:
            expr = EOpaque(opaque) if opaque else (EApply(expr, tuple(maps_full))
                                                   if any(t is not None for t in maps_full) else expr)
    out = replace(v, dims=tuple(tuple(d) for d in new_dims), shape=tuple(shape), full=tuple(full),
                  local=tuple(local), where=tuple(where), expr=expr, lossy=lossy, llossy=llossy, notes=notes)
    return _finish(_sized(out))


def drop_dim(v: Value, dim: int, node: str, new: Sequence[Factor], size: int, kind: str = "mix") -> Value:
    """Replace dimension ``dim`` by fresh labels ``new`` of ``size`` after mixing everything in it
    (a convolution's channel mixing, a linear layer's feature mixing)."""
    dim = _norm_dim(dim, v.rank)
    if any(f.kind in ("s", "x") for f in v.dims[dim]):
        v = mix(v, [dim], kind, node, remove=True, keepdim=True)
    dims = list(v.dims)
    dims[dim] = tuple(new)
    shape = list(v.shape)
    shape[dim] = size
    return relabel(v, dims, shape)


# ------------------------------------------------------------------------- taps on one dim

def taps(v: Value, dim: int, t: TapMap, out_size: int | None, what: str, node: str = "") -> Value:
    """A convolution-like op along tensor dimension ``dim`` with index tap map ``t``."""
    dim = _norm_dim(dim, v.rank)
    fs = v.dims[dim]
    if len([f for f in fs if f.size != 1 and f.kind in ("s", "x")]) > 1 or (
            any(f.kind == "s" and f.size != 1 for f in fs) and len([f for f in fs if f.size != 1]) > 1):
        v = merge_positions(v, [dim], node or what)        # e.g. a pad of a flattened (position, other) dim
        fs = v.dims[dim]
    sp = [f for f in fs if f.kind == "s"]
    dims = list(v.dims)
    shape = list(v.shape)
    shape[dim] = out_size
    if t.is_identity and out_size == v.shape[dim]:  # a 1x1, stride-1 op: positions unchanged
        return v
    if not sp:                                     # along a dimension with no positions (channels ...)
        kind = "c" if any(f.kind == "c" for f in fs) else ("x" if any(f.kind == "x" for f in fs) else "o")
        dims[dim] = (Factor(kind, out_size),)
        return relabel(v, dims, shape)
    f = sp[0]
    others = [g for d, i, g in v.factors(f.axis) if (d, i) != (dim, fs.index(f))]
    maps = [None] * v.ndim
    if any(g.mult > f.mult for g in others):
        # inside a partition (windows, patches): index i < n of each part reads i*b + taps, and taps
        # that leave the part read its zero padding, not the neighbour: exact with the part's period
        if t.a != 1:
            raise Unsupported(f"{what} with several output phases inside a partition of spatial axis {f.axis}")
        n, m = f.size, f.mult
        taps_ = []
        for phi in range(out_size * m):
            i, r = divmod(phi, m)
            taps_.append(tuple((i * t.b + q) * m + r for q in t.taps[0] if 0 <= i * t.b + q < n))
        maps[f.axis] = TapMap(out_size * m, n * m, tuple(taps_))
    else:
        maps[f.axis] = fl.index_to_coord(t, f.mult)
    dims[dim] = (f._replace(size=out_size),)
    dims = _remult([tuple(d) for d in dims], f.axis)
    out = apply_maps(v, maps, dims, shape)
    new = out.full[f.axis]
    if isinstance(new, Periodic) and any(lo is None for lo in new.lo) and not (
            isinstance(v.full[f.axis], Periodic) and any(lo is None for lo in v.full[f.axis].lo)):
        n_out = out.extent(f.axis)
        empty = [o for o, lo in enumerate(new.lo) if lo is None and (n_out is None or o < n_out)]
    else:
        empty = []
    if empty:
        out = out.add_note(f"{node or what}: on spatial axis {f.axis} outputs o with o % {new.P} in {empty} "
                           "receive no input (empty field)")
    return out


# ------------------------------------------------------------------------- broadcasting union

def _same_positions(a: tuple, b: tuple) -> bool:
    pa = [f for f in a if f.kind == "s" and f.size != 1]
    pb = [f for f in b if f.kind == "s" and f.size != 1]
    return pa == pb


def _broadcast_dims(vals: Sequence[Value], shape: tuple, node: str):
    """Output labels of an elementwise op on ``vals`` broadcast to ``shape``; per value, the axes it
    only holds in broadcast (size-1) dims (it is constant along those in the output)."""
    rank = len(shape)
    dims = []
    for d in range(rank):
        chosen = None
        for v in vals:
            vd = d - (rank - v.rank)
            if vd < 0 or v.shape[vd] == 1 and shape[d] != 1:
                continue
            lab = v.dims[vd]
            if any(f.kind == "x" for f in lab) and (chosen is None or not any(f.kind == "x" for f in chosen)):
                chosen = (Factor("x", shape[d]),)     # merged positions win: tracked as a union
                continue
            if chosen is None:
                chosen = lab
            elif any(f.kind == "x" for f in chosen):
                continue
            elif not _same_positions(chosen, lab):
                merged = _interleave(chosen, lab)
                if merged is not None:
                    chosen = merged
                elif not any(f.kind == "s" for f in chosen):
                    chosen = lab
                elif any(f.kind == "s" for f in lab):
                    raise Unsupported(f"elementwise op on tensors whose dimension {d} holds different "
                                      f"positions ({_show(chosen)} vs {_show(lab)}): misaligned layouts")
        dims.append(chosen if chosen is not None else ((O(shape[d]),) if shape[d] != 1 else ()))
    return dims


def _interleave(a: tuple, b: tuple):
    """One label from two with the same factor sizes where, factor by factor, at most one holds a
    position (each tensor is constant along the other's positions there), else ``None``."""
    if len(a) != len(b) or any(f.size != g.size for f, g in zip(a, b)):
        return None
    out = []
    for f, g in zip(a, b):
        if f.kind == "s" and g.kind == "s" and f != g:
            return None
        if "x" in (f.kind, g.kind):              # merged positions win: they are tracked as a union
            out.append(Factor("x", f.size))
            continue
        out.append(f if f.kind == "s" else g if g.kind == "s" else f)
    return tuple(out)


def _show(fs) -> str:
    names = {"b": "batch", "c": "channel", "o": "other", "x": "merged", "e": "broadcast"}
    return "(" + ", ".join(f"axis{f.axis}:{f.size}" + (f"*{f.mult}" if f.mult != 1 else "") if f.kind == "s"
                           else f"{names[f.kind]}:{f.size}" for f in fs) + ")"


def union(vals: Sequence[Value], shape: tuple, node: str) -> Value:
    """An elementwise op (add, mul, where, ...): broadcast labels, union of the fields."""
    dep = [v for v in vals if v.dependent]
    base = dep or list(vals)
    if not base:
        raise Unsupported("no tensor inputs")
    shape = tuple(shape)
    if len(dep) == 1 and tuple(dep[0].shape) == shape:      # an activation, a constant added: unchanged
        return dep[0]
    dims = _broadcast_dims(dep, shape, node) if dep else [(O(n),) for n in shape]
    tmp = Value(tuple(shape), tuple(tuple(d) for d in dims), base[0].full, base[0].local, base[0].whole)
    nd = base[0].ndim
    full, local, where = [], [], []
    grid_notes: list = []
    for k in range(nd):
        out_has = bool(tmp.factors(k))
        fk, lk, wk = [], [], []
        for v in dep:
            f, lf = v.full[k], v.local[k]
            rank_off = len(shape) - v.rank
            if v.factors(k) and any(any(g.kind == "x" for g in tmp.dims[d + rank_off]) for d, _, _ in v.factors(k)):
                f, lf = _hull(v, f, k, v.extent(k)), _hull(v, lf, k, v.extent(k))   # merged in the output
            elif out_has and v.factors(k):
                rank_off = len(shape) - v.rank
                mine = [(d + rank_off, f_.size, f_.mult) for d, _, f_ in v.factors(k) if f_.size != 1]
                theirs = [(d, f_.size, f_.mult) for d, _, f_ in tmp.factors(k) if f_.size != 1]
                dead = [t for t in mine if t[0] not in {d for d, _, _ in theirs}]
                if dead and mine != theirs:
                    res = _drop_dead(f, lf, mine, dead)
                    if res is not None:
                        f, lf, mine = res
                M = _coarse(set(mine), set(theirs)) if mine != theirs else None
                if M:
                    f, lf = _upsample(f, M), _upsample(lf, M)
                elif mine != theirs:
                    if all(v.shape[d - rank_off] == 1 for d, _, _ in mine) or not mine or (
                            _every_span_whole(v, f, k) and _every_span_whole(v, lf, k, True)):
                        f, lf = _hull(v, f, k, v.extent(k)), _hull(v, lf, k, v.extent(k))
                    else:
                        raise Unsupported(f"elementwise op on tensors that hold spatial axis {k} in "
                                          "different dimensions: misaligned layouts")
            fk.append(f)
            lk.append(lf)
            wk.append(v.where[k])
        n_k = tmp.extent(k) if out_has else None
        full.append(_union_or_merge(fk, node, base[0].whole[k], [v.lossy for v in dep], dep, k, n_k))
        local.append(_union_or_merge(lk, node, base[0].whole[k], [v.llossy for v in dep], dep, k, n_k))
        where.append(next((w for w in wk if w), None))
        if _became_positionwise(full[-1], fk):
            grid_notes.append(f"{node}: branches on different grids meet on spatial axis {k} (jumps "
                              f"{', '.join(str(f.jump) for f in fk if isinstance(f, Periodic))}); the field is given "
                              "position by position there, without the extension into padding")
    notes = list(grid_notes)
    for v in dep:
        notes += [n for n in v.notes if n not in notes]
    exprs = list({id(v.expr): v.expr for v in dep if v.expr is not None}.values())
    expr = exprs[0] if len(exprs) == 1 else (EUnion(tuple(exprs), node) if exprs else None)
    lossy = next((v.lossy for v in dep if v.lossy), None)
    llossy = next((v.llossy for v in dep if v.llossy), None)
    chan = next((v.chan_mixed for v in dep if v.chan_mixed), None)
    last = next((v.last_spatial for v in dep if v.last_spatial is not None), None)
    out = Value(tuple(shape), tuple(tuple(d) for d in dims), tuple(full), tuple(local), base[0].whole,
                tuple(where), expr, tuple(notes), lossy, chan, last, llossy)
    pcs = {id(v.pieces): v.pieces for v in dep if v.pieces is not None and v.rank == len(shape)}
    if len(pcs) == 1:
        out = replace(out, pieces=next(iter(pcs.values())))
    return _finish(out)


def _drop_dead(f, lf, facs: list, dead: list):
    """Remove factors the fields do not depend on (a position that only indexes copies of the same
    values, e.g. the key offset of relative-position logits): ``(f, lf, remaining factors)`` with the
    multipliers renormalised, or ``None`` if a field depends on one of them."""
    for _, n, m in dead:
        t = fl.mix_factor_map(m, n)
        if not (fl.equal(fl.apply(f, t), f) and fl.equal(fl.apply(lf, t), lf)):
            return None
    for w, n, m in sorted(dead, key=lambda x: -x[2]):
        t = fl.drop_factor_map(m, n)
        f, lf = fl.apply(f, t), fl.apply(lf, t)
        facs = [(w2, n2, m2 // n if m2 > m else m2) for (w2, n2, m2) in facs if (w2, n2, m2) != (w, n, m)]
    return f, lf, facs


def _coarse(mine: set, theirs: set) -> int | None:
    """``M`` when ``mine`` (``(where, size, mult)`` factors of one axis) is ``theirs`` on a grid ``M``
    times coarser: the same factors with multipliers ``/M``, the rest of ``theirs`` the ``M`` finer
    positions below (a per-block tensor broadcast over the positions inside each block)."""
    if not mine:
        return None
    for w, s, m in mine:
        for w2, s2, m2 in theirs:
            if w2 == w and s2 == s and m2 % m == 0 and m2 > m:
                M = m2 // m
                scaled = {(a, b, c * M) for a, b, c in mine}
                rest = theirs - scaled
                if scaled <= theirs and all(c < M for _, _, c in rest) and \
                        math.prod(b for _, b, _ in rest) == M:
                    return M
    return None


def _regrid(mine: set, theirs: set, mixed: set):
    """A tap map reading an operand on another grid of the same blocks: ``mine`` and ``theirs``
    share their outer factors (same letters and sizes) with multipliers in one ratio; the operand's
    finer factors are all mixed (its field does not depend on them) and the output's finer ones lie
    below the shared ones. Position ``c`` of the output reads ``(c // m_out) * m_mine``."""
    shared = [(w, s, m, m2) for (w, s, m) in mine for (w2, s2, m2) in theirs if w2 == w and s2 == s]
    if not shared or len(shared) != len(mine):
        return None
    ratios = {Fraction(m2, m) for _, _, m, m2 in shared}
    if len(ratios) != 1:
        return None
    m_op = min(m for _, _, m, _ in shared)
    m_out = min(m2 for _, _, _, m2 in shared)
    rest = theirs - {(w, s, m2) for w, s, _, m2 in shared}
    if any(m >= m_out for _, _, m in rest) or math.prod(s for _, s, _ in rest) != m_out:
        return None
    if math.prod(s for s, m in mixed if m < m_op) != m_op:
        return None                          # the operand's finer positions are not all mixed
    return TapMap(m_out, m_op, ((0,),) * m_out)


def _upsample(f, M: int):
    """A field on a grid ``M`` times coarser, read at the finer positions (position ``c`` reads ``c // M``)."""
    return fl.apply(f, TapMap(M, 1, ((0,),) * M))


def _became_positionwise(f, fs) -> bool:
    return isinstance(f, Periodic) and f.n is not None and not any(isinstance(g, Periodic) and g.n for g in fs)


def _union_or_merge(fs: list, node: str, whole, lossy: list, vals: list, k: int, n: int | None = None):
    """The union of one axis's fields (``n`` positions); when an operand is already an upper bound
    (``lossy``) and the exact union is not representable, the union of their hulls (still an upper
    bound)."""
    try:
        return fl.union(fs, node, whole, n)
    except FieldError as e:
        c = _absorbed(fs, vals, k)
        if c is not None:
            return c
        if not any(lossy):
            raise Unsupported(str(e)) from None
    return fl.union([_hull(v, f, k, v.extent(k)) if isinstance(f, Periodic) else f for v, f in zip(vals, fs)],
                    node, whole)


def _absorbed(fs: list, vals: list, k: int) -> Const | None:
    """A fixed interval (a global branch: pyramid pooling, a gate) joined to position-dependent
    fields that read only inside it: every position then sees exactly that interval. ``None``
    unless each position-dependent operand's real reach (:func:`reach`) is inside it."""
    consts = [f for f in fs if isinstance(f, Const)]
    if not consts:
        return None
    c = Const(min(f.lo for f in consts), max(f.hi for f in consts))
    for v, f in zip(vals, fs):
        if isinstance(f, Periodic):
            r = reach(v, k) if f is v.full[k] or f is v.local[k] else None
            if r is None or (r is not NOTHING and (r.lo < c.lo or r.hi > c.hi)):
                return None
    return c


def _every_span_whole(v: Value, f, k: int, none_ok: bool = False) -> bool:
    """Every position of ``v`` sees the whole input on axis ``k`` (then how positions line up with
    another tensor's does not matter)."""
    if f is None:
        return none_ok
    if isinstance(f, Const):
        return _is_whole(v, k, f)
    n, w = v.extent(k), v.whole[k]
    if n is None or w is None or n > 4096:
        return False
    return all(s is not None and s[0] <= w[0] and s[1] >= w[1] for s in (f.at(q) for q in range(n)))


def misaligned_note(vals: Sequence[Value], node: str) -> str:
    """A note when branches meeting at ``node`` have different centres on some axis."""
    dep = [v for v in vals if v.dependent]
    for k in range(dep[0].ndim if dep else 0):
        cs = fl.centres([v.full[k] for v in dep])
        if len(cs) > 1:
            shown = sorted(float(c) if c.denominator != 1 else int(c) for c in cs)
            return (f"{node}: branches are misaligned on spatial axis {k} (centres of output 0 at {shown}); "
                    "the field is their union")
    return ""


def merge_positions(v: Value, dims: Sequence[int], node: str) -> Value:
    """Give up tracking positions inside ``dims`` (an op moves them in a way the labels cannot
    follow): every axis they hold becomes the union over all its positions (an upper bound), and the
    value is marked ``lossy`` -- exact again only once a global op mixes everything; otherwise the
    field at the output is refused, never given."""
    dims = [_norm_dim(d, v.rank) for d in dims]
    axes = {f.axis for d in dims for f in v.dims[d] if f.kind == "s" and f.size != 1}
    if not axes:
        return v
    full, local = list(v.full), list(v.local)
    for k in axes:
        n = v.extent(k)
        full[k], local[k] = _hull(v, full[k], k, n), _hull(v, local[k], k, n)
    new = [tuple(Factor("x", f.size) if f.kind == "s" and (d in dims or f.axis in axes) else f for f in fs)
           for d, fs in enumerate(v.dims)]
    return replace(v, dims=tuple(new), full=tuple(full), local=tuple(local), lossy=v.lossy or node,
                   llossy=v.llossy or node, expr=EOpaque(f"{node} moves positions the analysis does not track"))


def position_fields(v: Value) -> tuple:
    """``(full, local, positions)`` per axis as seen from the tensor's *position*: factors of an axis
    held in another dimension than its outermost factor (sub-pixel positions in channels after a pixel
    unshuffle) are unioned, as an output position covers all its channels; ``positions`` is the
    number of positions along the axis (``None`` where the tensor has none)."""
    full, local = list(v.full), list(v.local)
    count: list = [None] * v.ndim
    for k in range(v.ndim):
        fac = v.factors(k)
        if not fac:
            continue
        top = max(fac, key=lambda t: t[2].mult)[0]
        count[k] = math.prod(f.size for d, _, f in fac if d == top and f.size)
        for f in sorted((f for d, _, f in fac if d != top), key=lambda f: -f.mult):
            t = fl.drop_factor_map(f.mult, f.size)          # highest first: lower multipliers stay valid
            full[k], local[k] = fl.apply(full[k], t), fl.apply(local[k], t)
    return tuple(full), tuple(local), tuple(count)


def reverse(v: Value, dim: int, node: str = "") -> Value:
    """``flip`` along ``dim``: position ``i`` reads ``n - 1 - i``, exactly, position by position."""
    fs = [f for f in v.dims[dim] if f.size != 1]
    if not any(f.kind in ("s", "x") for f in fs):
        return v
    if len(fs) != 1 or fs[0].kind != "s" or len(v.factors(fs[0].axis)) != 1:
        return merge_positions(v, [dim], node or "flip")
    k, n = fs[0].axis, fs[0].size
    full, local = list(v.full), list(v.local)
    for arr in (full, local):
        f = arr[k]
        if isinstance(f, Periodic):
            arr[k] = fl.positionwise([f.at(n - 1 - q) for q in range(n)])
    return replace(v, full=tuple(full), local=tuple(local),
                   expr=EOpaque(f"{node or 'flip'} reverses positions") if v.expr is not None else None)


def cyclic_shift(v: Value, dim: int, s: int, node: str = "") -> Value:
    """``torch.roll`` by ``s`` along ``dim``: position ``i`` reads ``(i - s) mod n``, exactly (the
    field gets the period of the rolled positions: outputs near the border read the other side)."""
    fs = [f for f in v.dims[dim] if f.size != 1]
    n = v.shape[dim]
    s %= max(n, 1)
    if s == 0 or not any(f.kind in ("s", "x") for f in fs):
        return v
    if len(fs) != 1 or fs[0].kind != "s":
        return merge_positions(v, [dim], node or "roll")
    f = fs[0]
    m = f.mult
    a = n * m
    t = TapMap(a, a, tuple(((((phi // m) - s) % n) * m + phi % m,) for phi in range(a)))
    maps = [None] * v.ndim
    maps[f.axis] = t
    return apply_maps(v, maps)


# ------------------------------------------------------------------------------- cat / index

def cat(vals: Sequence[Value], dim: int, shape: tuple, node: str) -> Value:
    """Concatenation along ``dim``: along channels a union; along positions the positions merge
    (tracked as one union, exact only once a later op mixes that dimension)."""
    rank = len(shape)
    dim = _norm_dim(dim, rank)
    dep = [v for v in vals if v.dependent]
    if not dep:
        return Value.constant(shape, vals[0].whole)
    positional = any(f.kind in ("s", "x") for v in dep for f in v.dims[dim])
    parts, start = [], 0
    for v in vals:                                      # each input, exactly, for a later slice of it
        n = v.shape[dim] if v.rank > dim else 0
        if n:
            parts.append((start, start + n, v))
        start += n
    fixed = []
    for v in dep:
        if positional:
            ks = [k for k in range(v.ndim) if any(d == dim for d, _, _ in v.factors(k))]
            for k in ks:
                if any(d != dim for d, _, _ in v.factors(k)):
                    raise Unsupported(f"concatenation along a dimension that holds part of spatial axis {k}")
            if ks:          # each axis's hull from v as it came (its build replays), then one opaque step
                fk, lk = list(v.full), list(v.local)
                for k in ks:
                    fk[k], lk[k] = _hull(v, fk[k], k, v.extent(k)), _hull(v, lk[k], k, v.extent(k))
                v = v.with_(full=tuple(fk), local=tuple(lk), expr=EOpaque(
                    f"{node} concatenates along spatial axis {', '.join(map(str, ks))}"))
            d = list(v.dims)
            d[dim] = (Factor("x", v.shape[dim]),)
            v = v.with_(dims=tuple(d))
        fixed.append(v)
    # elementwise union over the other dims (same labels required); the cat dim gets its own label
    probe = [v.with_(shape=tuple(v.shape[:dim]) + (shape[dim],) + tuple(v.shape[dim + 1:]),
                     dims=v.dims[:dim] + ((),) + v.dims[dim + 1:]) for v in fixed]
    out = union(probe, shape, node)
    d = list(out.dims)
    if positional:
        d[dim] = (Factor("x", shape[dim]),)
    else:
        kinds = {f.kind for v in dep for f in v.dims[dim]}
        d[dim] = (Factor("c" if "c" in kinds or not kinds else sorted(kinds)[0], shape[dim]),)
    out = out.with_(dims=tuple(d))
    if positional:
        out = out.with_(lossy=out.lossy or node, llossy=out.llossy or node)
        out = out.with_(pieces=(dim, tuple(parts), out.full, out.local, out.dims[dim], out.expr, out.where))
    elif len({(v.full, v.local) for v in dep}) > 1 or len(dep) < len(vals):
        out = out.with_(chan_mixed=out.chan_mixed or node)
    return out


def _piece(v: Value, dim: int, start: int, stop: int, step: int) -> Value | None:
    """The input of a positional concatenation that ``v[start:stop]`` along ``dim`` takes back,
    exactly, if nothing changed the fields since (e.g. the patch tokens after a class token was
    joined and only pointwise or per-token ops ran)."""
    if v.pieces is None or step != 1:
        return None
    pdim, parts, full, local, label, expr, where = v.pieces
    if pdim != dim or v.dims[dim] != label:
        return None
    same_full = v.full == full and v.expr is expr and v.where == where      # nothing touched the fields
    same_local = v.local == local
    if not (same_full or not v.lossy) or not (same_local or not v.llossy):
        return None
    for a, b, p in parts:
        if (a, b) == (start, stop) and p.rank == v.rank:
            dims = v.dims[:dim] + (p.dims[dim],) + v.dims[dim + 1:]
            shape = v.shape[:dim] + (b - a,) + v.shape[dim + 1:]
            if same_full:        # this part's own fields, exactly
                f, w, e, lossy = p.full, p.where, p.expr, p.lossy
            else:                # a global op made every element's field exact and the same
                f, w, e, lossy = v.full, v.where, EOpaque(f"{v.lossy or 'a global op'} mixed positions"), None
            lf, llossy = (p.local, p.llossy) if same_local else (v.local, None)
            out = replace(p, dims=dims, shape=shape, notes=v.notes, pieces=None, full=f, where=w, expr=e,
                          lossy=lossy, local=lf, llossy=llossy)
            return _finish(out) if out.dependent else Value.constant(shape, v.whole)
    return None


def select_range(v: Value, dim: int, start: int, stop: int, step: int, node: str, keep: bool = True,
                 op: str = "slice") -> Value:
    """``x[..., start:stop:step, ...]`` along ``dim`` (``keep=False``: an integer index, dim removed)."""
    dim = _norm_dim(dim, v.rank)
    n = v.shape[dim]
    size = len(range(start, stop, step))
    fs = v.dims[dim]
    dims = [list(d) for d in v.dims]
    shape = list(v.shape)
    if (start, stop, step) == (0, n, 1) and keep:
        return v
    piece = _piece(v, dim, start, stop, step) if keep else None
    if piece is not None:
        return piece
    if size == 0:
        shape[dim] = 0
        return Value.constant(tuple(shape) if keep else tuple(shape[:dim] + shape[dim + 1:]), v.whole)
    sp = [f for f in fs if f.kind == "s" and f.size != 1]
    if not sp:
        if v.chan_mixed and any(f.kind == "c" for f in fs) and v.dependent:
            v = v.add_note(f"{node}: selects channels of {v.chan_mixed!r}, which joined channels with "
                           "different fields; the field is the union over all of them (an upper bound)")
        kind = "x" if any(f.kind == "x" for f in fs) else (fs[0].kind if fs else "o")
        if keep:
            dims[dim] = [Factor(kind if kind in ("b", "c", "x") else "o", size)]
            shape[dim] = size
        else:
            del dims[dim]
            del shape[dim]
        return relabel(v, dims, shape)
    nonunit = [f for f in fs if f.size != 1]
    if len(nonunit) > 1:   # part of a flattened dimension (e.g. tokens[1:]): its positions merge
        return select_range(merge_positions(v, [dim], node), dim, start, stop, step, node, keep, op)
    f = nonunit[0]
    k, m = f.axis, f.mult
    # positions c = ... + i*m + r  ->  c' = ... + i'*m + r with i = start + i'*step
    top = not any(g.mult > m for _, _, g in v.factors(k))
    if keep and top:           # the outermost factor: c' = i'*m + r reads (start + i'*step)*m + r
        t = TapMap(m, step * m, tuple((start * m + r,) for r in range(m))) if size else None
    elif keep:                 # inside a partition: the partition index keeps its own period
        a, b = size * m, n * m
        tps = tuple(((start + (phi // m) * step) * m + phi % m,) for phi in range(a))
        t = TapMap(a, b, tps) if size else None
    else:
        t = TapMap(m, n * m, tuple((start * m + r,) for r in range(m)))
    maps = [None] * v.ndim
    maps[k] = t
    if keep:
        dims[dim] = [g if g is not f else f._replace(size=size) for g in fs]
        shape[dim] = size
    else:
        del dims[dim]
        del shape[dim]
    dims = _remult(dims, k)
    if t is None:
        raise Unsupported(f"{op} keeps no position")
    out = apply_maps(v, maps, tuple(tuple(d) for d in dims), shape)
    return _finish(out)


# ----------------------------------------------------------------------------------- einsum

def _parse_einsum(spec: str, ranks: Sequence[int]):
    spec = spec.replace(" ", "")
    if "->" in spec:
        lhs, rhs = spec.split("->")
    else:
        lhs, rhs = spec, None
    ins = lhs.split(",")
    if len(ins) != len(ranks):
        raise Unsupported(f"einsum {spec!r} names {len(ins)} operands, got {len(ranks)}")
    n_ell = max((r - len(s.replace("...", "")) for s, r in zip(ins, ranks) if "..." in s), default=0)
    ell = [f"\u2026{i}" for i in range(n_ell)]
    out_in = []
    for s, r in zip(ins, ranks):
        if "..." in s:
            a, b = s.split("...")
            k = r - len(a) - len(b)
            out_in.append(list(a) + ell[n_ell - k:] + list(b))
        else:
            out_in.append(list(s))
        if len(out_in[-1]) != r:
            raise Unsupported(f"einsum {spec!r}: operand of rank {r} does not match {s!r}")
    if rhs is None:
        counts: dict = {}
        for letters in out_in:
            for c in letters:
                counts[c] = counts.get(c, 0) + 1
        out = ell + sorted(c for c, n in counts.items() if n == 1 and not c.startswith("\u2026"))
    elif "..." in rhs:
        a, b = rhs.split("...")
        out = list(a) + ell + list(b)
    else:
        out = list(rhs)
    return out_in, out


def einsum(spec: str, vals: Sequence[Value], shape: tuple, node: str) -> Value:
    """A contraction written as einsum: contracted letters mix their dims; a position that appears
    in two output dims (attention logits: queries and keys) keeps the first, the second is mixed;
    a contracted position that the output holds through another operand (attention values inside
    windows) is mixed in place, on the output's coordinates."""
    in_letters, out = _parse_einsum(spec, [v.rank for v in vals])
    size = dict(zip(out, shape))

    def positional(fs):
        return [f for f in fs if f.kind in ("s", "x") and f.size != 1]

    def keys(fs):
        return {(f.axis, f.size, f.mult) for f in positional(fs) if f.kind == "s"}

    ops = []
    for v, letters in zip(vals, in_letters):
        if not v.dependent:
            continue
        if len(set(letters)) != len(letters):
            rep = [d for d, c in enumerate(letters) if letters.count(c) > 1]
            if any(f.kind in ("s", "x") for d in rep for f in v.dims[d]):
                raise Unsupported(f"einsum {spec!r} takes a diagonal over positions")
        ops.append([v, list(letters), set()])       # value, letters, letters mixed in place
    if not ops:
        return Value.constant(shape, vals[0].whole)
    kept0 = set()
    for v, letters, _ in ops:
        for d, c in enumerate(letters):
            if c in out and v.shape[d] == size[c]:
                kept0 |= keys(v.dims[d])
    for op in ops:
        v, letters, inplace = op
        cdims = [d for d, c in enumerate(letters) if c not in out]
        stay = [d for d in cdims if keys(v.dims[d]) and keys(v.dims[d]) <= kept0]
        if any(keys(v.dims[d]) & kept0 for d in cdims if d not in stay):
            raise Unsupported(f"einsum {spec!r}: a contracted dimension holds positions the output keeps only in part")
        if stay:
            v = mix(v, stay, "mix", node)
            inplace |= {letters[d] for d in stay}
        drop = [d for d in cdims if d not in stay]
        if drop:
            v = mix(v, drop, "mix", node, remove=True)
            letters = [c for d, c in enumerate(letters) if d not in drop]
        op[0], op[1] = v, letters

    lab: dict = {}
    for c in out:
        cands = [v.dims[letters.index(c)] for v, letters, _ in ops
                 if c in letters and v.shape[letters.index(c)] == size[c]]
        pos = [fs for fs in cands if positional(fs)]
        if any(f.kind == "x" for fs in pos for f in fs):                  # merged positions win
            pos = [(Factor("x", size[c]),)]
        for p in pos[1:]:
            a, b = positional(p), positional(pos[0])
            scales = {Fraction(g.mult, f.mult) for f, g in zip(a, b)} if len(a) == len(b) and all(
                (f.kind, f.axis, f.size) == (g.kind, g.axis, g.size) for f, g in zip(a, b)) else {0, 1}
            if a != b and len(scales) != 1:
                raise Unsupported(f"einsum {spec!r}: operands hold different positions in {c!r}")
        lab[c] = pos[0] if pos else (cands[0] if cands else (O(size[c]),))
        if not pos and cands:
            kinds = {f.kind for fs in cands for f in fs}
            lab[c] = (Factor("c" if "c" in kinds else ("b" if kinds == {"b"} else "o"), size[c]),)
    seen: set = set()
    dup: set = set()

    def overlaps(f, g) -> bool:   # digit ranges [mult, mult*size) of two factors of one axis
        return f[0] == g[0] and f[2] < g[2] * g[1] and g[2] < f[2] * f[1]

    for c in out:
        ks = keys(lab[c])
        if not ks:
            continue
        clash = [any(overlaps(f, g) for g in seen) for f in ks]
        if ks <= seen or all(clash):
            dup.add(c)            # keys: the same positions again, or another grid of an axis held already
        elif any(clash):
            raise Unsupported(f"einsum {spec!r}: output dimension {c!r} repeats part of a position")
        else:
            seen |= ks
    nd = ops[0][0].ndim
    fulls, locs, wheres, exprs, notes = [], [], [], [], []
    lossy = chan = last = llossy = None
    for v, letters, inplace in ops:
        ddims = [d for d, c in enumerate(letters) if c in dup and positional(v.dims[d])]
        if ddims:
            v = mix(v, ddims, "mix", node)
        fk, lk = list(v.full), list(v.local)
        for k in range(nd):
            if any(d < len(letters) and letters[d] in lab and any(g.kind == "x" for g in lab[letters[d]])
                   for d, _, _ in v.factors(k)):                  # merged in the output: a union
                fk[k], lk[k] = _hull(v, fk[k], k, v.extent(k)), _hull(v, lk[k], k, v.extent(k))
                continue
            mine = {(letters[d], f.size, f.mult) for d, _, f in v.factors(k) if f.size != 1 and d < len(letters)
                    and letters[d] in out and letters[d] not in dup and v.shape[d] == size[letters[d]]}
            theirs = {(c, f.size, f.mult) for c in out if c not in dup for f in lab[c]
                      if f.kind == "s" and f.axis == k and f.size != 1}
            mixed = {(f.size, f.mult) for d, _, f in v.factors(k)
                     if letters[d] in dup or letters[d] in inplace}
            dead = [t for t in mine if t[0] not in {c for c, _, _ in theirs}]
            if dead and not (mine <= theirs):
                res = _drop_dead(fk[k], lk[k], list(mine) + [("#", s_, m) for s_, m in mixed], dead)
                if res is not None:
                    fk[k], lk[k] = res[0], res[1]
                    mine = {t for t in res[2] if t[0] != "#"}
                    mixed = {(s_, m) for c, s_, m in res[2] if c == "#"}
            if mine <= theirs and {(s_, m) for _, s_, m in theirs - mine} <= mixed:
                continue
            M = _coarse(mine, theirs)
            if M:                                  # a per-block operand (keys of overlapping windows)
                fk[k], lk[k] = _upsample(fk[k], M), _upsample(lk[k], M)
                continue
            t = _regrid(mine, theirs, mixed)
            if t is not None:                      # keys on a finer grid of the same blocks (pooled queries)
                fk[k], lk[k] = fl.apply(fk[k], t), fl.apply(lk[k], t)
                continue
            if not mine and not v.factors(k):
                continue
            if not mine:
                fk[k], lk[k] = _hull(v, fk[k], k, v.extent(k)), _hull(v, lk[k], k, v.extent(k))
                continue
            raise Unsupported(f"einsum {spec!r}: an operand holds spatial axis {k} in other dimensions than "
                              "the output")
        fulls.append(fk)
        locs.append(lk)
        wheres.append(v.where)
        if v.expr is not None:
            exprs.append(v.expr)
        notes += [n for n in v.notes if n not in notes]
        lossy, chan, llossy = lossy or v.lossy, chan or v.chan_mixed, llossy or v.llossy
        last = last or v.last_spatial
    full, local, where = [], [], []
    w0 = ops[0][0].whole
    opv = [op[0] for op in ops]
    for k in range(nd):
        sizes_k = [f.size for c in out if c not in dup for f in lab[c] if f.kind == "s" and f.axis == k]
        n_k = math.prod(sizes_k) if sizes_k else None
        full.append(_union_or_merge([f[k] for f in fulls], node, w0[k], [v.lossy for v in opv], opv, k, n_k))
        local.append(_union_or_merge([f[k] for f in locs], node, w0[k], [v.llossy for v in opv], opv, k, n_k))
        where.append(next((w[k] for w in wheres if w[k]), None))
    dims = tuple(((O(size[c]),) if c in dup else tuple(lab[c])) for c in out)
    expr = exprs[0] if len(exprs) == 1 else (EUnion(tuple(exprs), node) if exprs else None)
    return _finish(Value(tuple(shape), dims, tuple(full), tuple(local), w0, tuple(where), expr,
                         tuple(notes), lossy, chan, last, llossy))
