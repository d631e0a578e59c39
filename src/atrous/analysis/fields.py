"""The tap-map algebra of one spatial axis: how an op maps output positions to the inputs it reads.

Every op that moves positions is, per axis, a periodic *tap map*: "output ``phi + m*a`` reads input
positions ``taps[phi] + m*b``" (:class:`TapMap`; ``a = 1`` for a convolution or pooling with stride
``b``; ``a = stride`` for a transposed convolution; ``a = b = W`` for attention inside windows of
``W`` positions). The field of a tensor on one axis is then one of

* :class:`Periodic` -- output ``phi + m*P`` sees inputs ``[lo[phi] + m*J, hi[phi] + m*J]`` (``None``:
  that phase sees nothing): the field of anything built from convolutions, pooling, resampling,
  reshapes and windows;
* :class:`Const` -- every position sees the same interval ``[lo, hi]``: after an op that mixes the
  whole axis (global pooling, attention, normalisation statistics) or after indexing one position;
* ``None`` -- the tensor does not depend on the input along this axis (a parameter, a constant).

Composition (:func:`apply`) and union (:func:`union`) are exact. The input is taken as unbounded:
fields are not clipped at the borders (they may reach into padding); :func:`bounded_apply` replays a
map with the real extents. No torch.

>>> f = apply(IDENTITY, conv_map(3, 1, 2, 2))        # k=3, stride 1, dilation 2, padding 2
>>> f.at(0), f.at(5)
((-2, 2), (3, 7))
>>> apply(f, conv_map(2, 2, 1, 0)).at(1)           # then a 2x2/2 pooling: output 1 sees [0, 5]
(0, 5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from .. import geometry as geo

__all__ = ["TapMap", "Periodic", "Const", "IDENTITY", "apply", "union", "hull", "bounded_apply", "equal",
           "positionwise", "conv_map", "transpose_map", "mix_factor_map", "drop_factor_map", "index_to_coord",
           "FieldError"]


class FieldError(ValueError):
    """A field that exists but is not representable exactly (raised with the node's name added)."""


@dataclass(frozen=True)
class TapMap:
    """Output ``phi + m*a`` reads input positions ``taps[phi] + m*b`` (``len(taps) == a``)."""

    a: int
    b: int
    taps: tuple

    @property
    def is_identity(self) -> bool:
        return self.a == 1 and self.b == 1 and self.taps == ((0,),)


@dataclass(frozen=True)
class Periodic:
    """Output ``phi + m*P`` sees inputs ``[lo[phi] + m*J, hi[phi] + m*J]`` (``None``: sees nothing).

    With ``n`` the field is given position by position on the tensor's positions ``0 .. n-1`` only
    (``P = n``; nothing beyond, not even the padding extension): where branches on different grids
    meet (``align_corners`` resampling, odd scale factors) no single period describes it."""

    P: int = 1
    J: int = 1
    lo: tuple = (0,)
    hi: tuple = (0,)
    n: int | None = None

    def at(self, q: int):
        if self.n is not None and not 0 <= q < self.n:
            return None
        m, phi = divmod(q, self.P)
        if self.lo[phi] is None:
            return None
        return self.lo[phi] + m * self.J, self.hi[phi] + m * self.J

    def expand(self, P: int) -> Periodic:
        """The same field written with period ``P`` (a multiple of ``self.P``)."""
        r = P // self.P
        spans = [self.at(o) for o in range(P)]
        return Periodic(P, self.J * r, tuple(s and s[0] for s in spans), tuple(s and s[1] for s in spans))

    @property
    def jump(self) -> Fraction:
        """Input distance between neighbouring outputs (on average, for a field given position by
        position)."""
        if self.n is None:
            return Fraction(self.J, self.P)
        c = [Fraction(s[0] + s[1], 2) for s in (self.at(q) for q in range(self.n)) if s is not None]
        return (c[-1] - c[0]) / (len(c) - 1) if len(c) > 1 else Fraction(0)


@dataclass(frozen=True)
class Const:
    """Every position sees the same input interval ``[lo, hi]``."""

    lo: int
    hi: int


IDENTITY = Periodic()


def _reduce(f: Periodic) -> Periodic:
    """The smallest period that describes ``f``."""
    for p in range(1, f.P):
        if f.P % p or (f.J * p) % f.P:
            continue
        sh = f.J * p // f.P
        if all((f.lo[o + p] is None and f.lo[o] is None) or
               (f.lo[o] is not None and f.lo[o + p] is not None and
                f.lo[o + p] == f.lo[o] + sh and f.hi[o + p] == f.hi[o] + sh)
               for o in range(f.P - p)):
            return Periodic(p, sh, f.lo[:p], f.hi[:p])
    return f


def apply(f, t: TapMap | None):
    """The field after an op with tap map ``t`` whose input has field ``f``."""
    if t is None or f is None or isinstance(f, Const):
        return f
    if f.n is not None:                    # given position by position: so is the result
        low = min(min(ts) for ts in t.taps if ts) if any(t.taps) else 0
        count = t.a * max(0, (f.n - 1 - low) // t.b + 1)
        spans = []
        for o in range(count):
            m, phi = divmod(o, t.a)
            got = [s for s in (f.at(q + m * t.b) for q in t.taps[phi]) if s is not None]
            spans.append((min(s[0] for s in got), max(s[1] for s in got)) if got else None)
        return positionwise(spans)
    n = f.P // math.gcd(f.P, t.b)          # outputs advance a*n -> inputs advance n*b, a multiple of P
    P2, J2 = t.a * n, f.J * (n * t.b // f.P)
    lo, hi = [], []
    for o in range(P2):
        m, phi = divmod(o, t.a)
        spans = [s for s in (f.at(q + m * t.b) for q in t.taps[phi]) if s is not None]
        lo.append(min(s[0] for s in spans) if spans else None)
        hi.append(max(s[1] for s in spans) if spans else None)
    return _reduce(Periodic(P2, J2, tuple(lo), tuple(hi)))


def positionwise(spans: list):
    """A field given position by position (``Periodic`` with ``n``) from its spans."""
    if not spans:
        return None
    return Periodic(len(spans), 0, tuple(s and s[0] for s in spans), tuple(s and s[1] for s in spans), len(spans))


def bounded_apply(lo, hi, t: TapMap, n_out: int):
    """Spans position by position with real extents: output ``q < n_out`` reads the input positions of
    its taps that lie in ``[0, len(lo))`` only (a tap in padding reads nothing). ``lo``/``hi``: int64
    arrays of the input's spans (``lo > hi``: sees nothing); returns the output's."""
    import numpy as np
    n_in = len(lo)
    big = np.iinfo(np.int64).max // 4
    out_lo, out_hi = np.full(n_out, big, dtype=np.int64), np.full(n_out, -big, dtype=np.int64)
    for phi in range(min(t.a, n_out)):
        o = np.arange(phi, n_out, t.a)
        m = (o - phi) // t.a
        for q in t.taps[phi]:
            j = q + m * t.b
            ok = (j >= 0) & (j < n_in)
            if ok.any():
                oo, jj = o[ok], j[ok]
                out_lo[oo] = np.minimum(out_lo[oo], lo[jj])
                out_hi[oo] = np.maximum(out_hi[oo], hi[jj])
    return out_lo, out_hi


def hull(f, n: int | None):
    """The interval seen by the union of positions ``0 .. n-1`` (``None`` if nothing is seen)."""
    if f is None or isinstance(f, Const):
        return f
    if n is None:
        raise FieldError("the size of the axis is unknown (pass input_shape)")
    spans = [f.at(q) for q in range(min(f.P, n))] + [f.at(q) for q in range(max(0, n - f.P), n)]
    spans = [s for s in spans if s is not None]
    if not spans:
        return None
    return Const(min(s[0] for s in spans), max(s[1] for s in spans))


def union(fs: Sequence, where: str = "", whole: tuple | None = None, n: int | None = None):
    """Union of fields of one axis (extent semantics: the hull of the union).

    ``whole``: ``(lo, hi)`` of the input; a :class:`Const` covering it absorbs any other field.
    ``n``: the number of positions; with it, fields on different grids give a field position by
    position (:class:`Periodic` with ``n``) instead of an error.
    Raises :class:`FieldError` when the union is not representable (different jumps; a position
    dependent field joined with a constant one that does not cover the input).
    """
    fs = [f for f in fs if f is not None]
    if not fs:
        return None
    consts = [f for f in fs if isinstance(f, Const)]
    per = [f for f in fs if isinstance(f, Periodic)]
    if consts:
        c = Const(min(f.lo for f in consts), max(f.hi for f in consts))
        if not per:
            return c
        if whole is not None and c.lo <= whole[0] and c.hi >= whole[1]:
            return Const(whole[0], whole[1])
        raise FieldError(f"branches meeting at {where!r} join a position-dependent field with a fixed "
                         f"interval {c.lo}..{c.hi} that does not cover the input: the extent then "
                         "depends on the position and is not periodic")
    if len(per) == 1:
        return per[0]
    jumps = {f.jump for f in per}
    if n is not None and (len(jumps) > 1 or any(f.n is not None for f in per)):
        spans = []                           # branches on different grids: position by position
        for q in range(n):
            got = [s for s in (f.at(q) for f in per) if s is not None]
            spans.append((min(s[0] for s in got), max(s[1] for s in got)) if got else None)
        return positionwise(spans)
    if len(jumps) > 1:
        shown = ", ".join(str(j) for j in sorted(jumps))
        raise FieldError(f"branches meeting at {where!r} have different jumps ({shown}): their outputs "
                         "are not on one grid, so no single receptive field exists")
    P = math.lcm(*(f.P for f in per))
    ex = [f.expand(P) for f in per]
    lo = tuple(None if all(f.lo[o] is None for f in ex) else min(f.lo[o] for f in ex if f.lo[o] is not None)
               for o in range(P))
    hi = tuple(None if all(f.hi[o] is None for f in ex) else max(f.hi[o] for f in ex if f.hi[o] is not None)
               for o in range(P))
    return _reduce(Periodic(P, ex[0].J, lo, hi))


def equal(f, g) -> bool:
    """The same field (whatever the period it is written with)."""
    if isinstance(f, Periodic) and isinstance(g, Periodic) and (f.n is not None or g.n is not None):
        return f.n == g.n and all(f.at(q) == g.at(q) for q in range(f.n))
    if isinstance(f, Periodic) and isinstance(g, Periodic):
        P = math.lcm(f.P, g.P)
        a, b = f.expand(P), g.expand(P)
        return (a.J, a.lo, a.hi) == (b.J, b.lo, b.hi)
    return f == g


def centres(fs: Sequence) -> set:
    """Centres of output 0's spans (to report misaligned branches)."""
    out = set()
    for f in fs:
        if isinstance(f, Periodic) and f.lo[0] is not None:
            out.add(Fraction(f.lo[0] + f.hi[0], 2))
    return out


# ------------------------------------------------------------------------------ tap maps of ops

def conv_map(kernel: int, stride: int, dilation: int, pad_lo: int) -> TapMap:
    """Convolution / pooling along one axis: output ``o`` reads ``o*stride - pad_lo + i*dilation``."""
    return TapMap(1, stride, (geo.tap_offsets(kernel, dilation, pad_lo),))


def transpose_map(kernel: int, stride: int, dilation: int, padding: int) -> TapMap:
    """Transposed convolution: output ``o = i*stride - padding + k*dilation`` receives input ``i``.

    >>> transpose_map(4, 2, 1, 1).taps             # output 0 reads inputs 0 and -1, output 1 inputs 1 and 0
    ((0, -1), (1, 0))
    """
    return TapMap(stride, 1, geo.transpose_tap_offsets(kernel, stride, dilation, padding))


def mix_factor_map(mult: int, size: int) -> TapMap:
    """Mixing over one factor of a position ``c = ... + q*mult + r`` (``q < size``): position ``c``
    sees every ``c + (j - q)*mult``. For ``mult = 1`` these are windows of ``size`` positions.

    >>> mix_factor_map(1, 3)                        # windows of 3: 0..2, 3..5, ...
    TapMap(a=3, b=3, taps=((0, 1, 2), (0, 1, 2), (0, 1, 2)))
    """
    W = mult * size
    return TapMap(W, W, tuple(tuple(phi % mult + j * mult for j in range(size)) for phi in range(W)))


def drop_factor_map(mult: int, size: int) -> TapMap:
    """Reducing a factor away: the new position ``c' = hi*mult + r`` (the factor removed) reads
    ``hi*mult*size + j*mult + r`` for every ``j < size``.

    >>> drop_factor_map(1, 2)                       # mean over pairs: output o reads 2o, 2o + 1
    TapMap(a=1, b=2, taps=((0, 1),))
    """
    return TapMap(mult, mult * size, tuple(tuple(r + j * mult for j in range(size)) for r in range(mult)))


def index_to_coord(t: TapMap, mult: int) -> TapMap:
    """A tap map on the index of a factor with multiplier ``mult`` written on the axis coordinate
    ``c = index*mult + r`` (``r`` from lower factors that the op does not touch)."""
    if mult == 1:
        return t
    taps = []
    for phi in range(t.a * mult):
        p, r = divmod(phi, mult)
        taps.append(tuple(q * mult + r for q in t.taps[p]))
    return TapMap(t.a * mult, t.b * mult, tuple(taps))
