"""Coverage and gridding: which input positions an output actually reaches, and by how many paths.

Extent is not coverage. A single 3-tap layer with dilation 2 spans 5 inputs (its extent) but reads
only 3 of them (its coverage); stacking dilated layers whose dilations share a factor leaves holes
forever -- the *gridding* artefact (Yu & Koltun 2016; Wang et al. 2018, "Understanding Convolution
for Semantic Segmentation", who propose hybrid dilated convolution, HDC).

The path-count map counts, for every input offset, the tap sequences (one tap per layer) that lead
from output 0 to it. For a chain of stride-1 layers it is the convolution of the layers' tap
indicators, each spread by its dilation times the jump; a zero inside the extent is a hole, and the
coefficient of variation (std / mean over the extent) measures how unevenly the field is sampled.
Everything is computed with 1-D shifted sums of tap indicators per axis (separable, so the N-D map of
a chain is the outer product); branches (residual adds, concatenation) add their maps.

>>> import atrous
>>> cov = atrous.coverage([2], kernel=3)
>>> cov.extent, cov.covered, cov.holes, cov.largest_hole
((5,), (3,), (2,), (1,))
>>> cov.path_counts[0].tolist()
[1, 0, 1, 0, 1]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .fields import Periodic
from .receptive_field import Layer, analyse, field_of
from .receptive_field import is_torch_module
from .values import EApply, EInput, EOpaque

__all__ = ["Coverage", "coverage", "HDCResult", "hdc_check", "hdc_recursion"]


@dataclass(frozen=True)
class Coverage:
    """Coverage of one output's receptive field, per spatial axis.

    ``extent``: input samples spanned (= the receptive-field size); ``covered``: samples reached by
    at least one path; ``holes = extent - covered``; ``largest_hole``: the longest run of unreached
    samples; ``path_counts[ax]``: int array of length ``extent[ax]``, paths from output 0 to each
    input offset (summed over the other axes); ``offset[ax]``: input coordinate of
    ``path_counts[ax][0]`` relative to output 0; ``cv``: coefficient of variation (std/mean) of
    ``path_counts`` over the extent. ``path_counts_nd`` is the exact N-D map (``covered_nd``,
    ``holes_nd`` from it): for a chain the outer product of the per-axis maps; for a graph with
    branches computed on the N-D grid.

    >>> cov = coverage([2], kernel=3)            # one 3-tap layer, d=2: extent 5, covered 3
    >>> cov.extent, cov.covered, cov.holes, cov.path_counts[0].tolist()
    ((5,), (3,), (2,), [1, 0, 1, 0, 1])
    """

    extent: tuple
    covered: tuple
    holes: tuple
    largest_hole: tuple
    path_counts: list
    cv: tuple
    offset: tuple
    name: str = ""
    _nd: Callable | None = field(default=None, repr=False, compare=False)
    notes: tuple = ()

    @property
    def path_counts_nd(self) -> np.ndarray:
        """Exact N-D path-count map, shape ``extent`` (``path_counts`` are its marginals)."""
        if self._nd is not None:
            return self._nd()
        # a chain is separable: marginal_ax = u_ax * prod(sum u_other), so the map is the outer
        # product of the marginals divided by total**(ndim - 1)
        out = self.path_counts[0]
        for pc in self.path_counts[1:]:
            out = np.multiply.outer(out, pc)
        total = self.path_counts[0].sum()
        return out // total ** (len(self.path_counts) - 1)

    @property
    def covered_nd(self) -> int:
        """Number of N-D input positions reached."""
        return int(np.count_nonzero(self.path_counts_nd))

    @property
    def holes_nd(self) -> int:
        """Number of N-D positions inside the extent box that no path reaches."""
        return int(math.prod(self.extent)) - self.covered_nd

    @property
    def hole_positions(self) -> list:
        """Per axis, the input offsets (relative to output 0) inside the extent that are unreached."""
        return [np.flatnonzero(pc == 0) + off for pc, off in zip(self.path_counts, self.offset)]

    def to_dict(self) -> dict:
        return {"name": self.name, "extent": list(self.extent), "covered": list(self.covered),
                "holes": list(self.holes), "largest_hole": list(self.largest_hole),
                "cv": list(self.cv), "offset": list(self.offset), "notes": list(self.notes),
                "path_counts": [pc.tolist() for pc in self.path_counts]}


def _stats(pc: np.ndarray):
    nz = pc != 0
    covered = int(nz.sum())
    # longest run of zeros
    z = np.concatenate(([0], (~nz).astype(np.int8), [0]))
    d = np.diff(z)
    runs = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
    largest = int(runs.max()) if runs.size else 0
    f = pc.astype(np.float64)
    cv = float(f.std() / f.mean()) if f.mean() > 0 else float("inf")
    return covered, largest, cv


def _make(arrays: Sequence[np.ndarray], offsets, name="", nd=None, notes=()) -> Coverage:
    ext, cov, holes, big, cvs = [], [], [], [], []
    trimmed, offs = [], []
    for pc, off in zip(arrays, offsets):
        nzi = np.flatnonzero(pc)
        pc = pc[nzi[0]:nzi[-1] + 1]
        off = off + int(nzi[0])
        c, lh, cv = _stats(pc)
        ext.append(len(pc)), cov.append(c), holes.append(len(pc) - c), big.append(lh), cvs.append(cv)
        trimmed.append(pc), offs.append(off)
    return Coverage(tuple(ext), tuple(cov), tuple(holes), tuple(big), trimmed, tuple(cvs), tuple(offs),
                    name, nd, notes)


def _dtype_for(bound: int):
    return np.int64 if bound < 2 ** 62 else object


# ---------------------------------------------------------------------------------------- engine

def _shift_sum(arr: np.ndarray, shifts: Sequence[int], axis: int) -> np.ndarray:
    """``out[x] = sum_s arr[x - s]`` along ``axis`` with the origin moved to ``min(shifts)``."""
    lo = min(shifts)
    span = max(shifts) - lo
    shape = list(arr.shape)
    shape[axis] += span
    out = np.zeros(shape, dtype=arr.dtype)
    n = arr.shape[axis]
    for s in shifts:
        sl = [slice(None)] * arr.ndim
        sl[axis] = slice(s - lo, s - lo + n)
        out[tuple(sl)] += arr
    return out


def _bound(g) -> int:
    """An upper bound on path counts (product of taps over the calls) to pick an exact dtype."""
    b = 1
    for n in g.nodes:
        k = n.kwargs.get("kernel") if n.kind == "layer" else None
        if k is not None:
            b *= math.prod(k)
        elif n.kind == "call":
            b *= 64
        if b >= 2 ** 62:
            return b
    return b


class _Global(ValueError):
    """The walk reached an op that mixes positions globally (no local path)."""


class _Walk:
    """The path-count walk over a value's build expression (see :mod:`atrous.analysis.values`)."""

    def __init__(self, ndim: int, nd: bool, dt):
        self.ndim, self.nd, self.dt = ndim, nd, dt
        self.memo: dict = {}
        self.notes: list = []

    def __call__(self, e):
        key = id(e)
        if key not in self.memo:
            self.memo[key] = (e, self._eval(e))
        return self.memo[key][1]

    def _eval(self, e):
        ndim, nd, dt = self.ndim, self.nd, self.dt
        if isinstance(e, EInput):
            arrs = np.ones((1,) * ndim, dt) if nd else [np.ones(1, dt) for _ in range(ndim)]
            return [0] * ndim, [1] * ndim, arrs
        if isinstance(e, EOpaque):
            raise _Global(f"coverage is undefined past {e.why} (no local path reaches here); pass at= a "
                          "node before it")
        if isinstance(e, EApply):
            org, jmp, arrs = self(e.src)
            org, jmp = list(org), list(jmp)
            arrs = arrs.copy() if nd else list(arrs)
            for ax, t in enumerate(e.maps):
                if t is None:
                    continue
                if t.a != 1:
                    raise ValueError(
                        "coverage needs one output grid per node, but a transposed convolution, an upsampling "
                        "or a window partition gives each output phase its own field; use "
                        "receptive_field(...).phases for the field of each output phase")
                shifts = [q * jmp[ax] for q in t.taps[0]]
                if nd:
                    arrs = _shift_sum(arrs, shifts, ax)
                else:
                    arrs[ax] = _shift_sum(arrs[ax], shifts, 0)
                    for other in range(ndim):
                        if other != ax:
                            arrs[other] = arrs[other] * len(shifts)
                org[ax] += min(shifts)
                jmp[ax] *= t.b
            return org, jmp, arrs
        # EUnion: the local paths only (a global gate or mixing branch adds no taps)
        ins, skipped = [], []
        for s in e.srcs:
            try:
                ins.append(self(s))
            except _Global as err:
                skipped.append(str(err).split(" (")[0].replace("coverage is undefined past ", ""))
        if not ins:
            raise _Global(f"coverage is undefined past {e.where} (no local path reaches here); pass at= a "
                          "node before it")
        for s in skipped:
            if s not in self.notes:
                self.notes.append(s)
        jmps = {tuple(s[1]) for s in ins}
        if len(jmps) > 1:
            raise ValueError(f"branches meeting at {e.where!r} have different jumps {sorted(jmps)}")
        org = [min(s[0][ax] for s in ins) for ax in range(ndim)]
        if nd:
            shape = [max(s[0][ax] + s[2].shape[ax] for s in ins) - org[ax] for ax in range(ndim)]
            out = np.zeros(shape, dt)
            for o, _, a in ins:
                out[tuple(slice(o[ax] - org[ax], o[ax] - org[ax] + a.shape[ax]) for ax in range(ndim))] += a
            arrs = out
        else:
            arrs = []
            for ax in range(ndim):
                n = max(s[0][ax] + len(s[2][ax]) for s in ins) - org[ax]
                out = np.zeros(n, dt)
                for o, _, a in ins:
                    out[o[ax] - org[ax]:o[ax] - org[ax] + len(a[ax])] += a[ax]
                arrs.append(out)
        return org, list(ins[0][1]), arrs


def all_marginals(g, vals) -> dict:
    """Per node name ``(covered, extent)`` from the 1-D marginals, or ``None`` where coverage is
    undefined (constants, global fields, transposed/upsampled grids)."""
    walk = _Walk(g.ndim, False, _dtype_for(_bound(g)))
    out = {}
    for n in g.nodes:
        if n.kind == "input" or not n.outs or n.outs[0] not in vals:
            continue
        v = vals[n.outs[0]]
        if v.expr is None:
            out[n.name] = None
            continue
        try:
            _, _, arrs = walk(v.expr)
        except ValueError:
            out[n.name] = None
            continue
        cov, ext = [], []
        for a in arrs:
            nz = np.flatnonzero(a)
            c, _, _ = _stats(a[nz[0]:nz[-1] + 1])
            cov.append(c)
            ext.append(int(nz[-1] - nz[0] + 1))
        out[n.name] = (tuple(cov), tuple(ext))
    return out


def _spec(spec, kernel):
    if isinstance(spec, (list, tuple)) and spec and all(
            isinstance(v, numbers.Integral)
            or (isinstance(v, tuple) and all(isinstance(u, numbers.Integral) for u in v))
            for v in spec) and not isinstance(spec[0], bool):
        return [Layer(kernel=kernel, dilation=d) for d in spec]
    if isinstance(spec, (list, tuple)) and not spec:
        raise ValueError("dilations must be a non-empty list")
    return spec


def coverage(model, input_shape=None, at: str | None = None, *, kernel: int = 3, nd: bool = False) -> Coverage:
    """Extent, coverage, holes and path counts of the field of output 0, per spatial axis.

    ``model``: a list of dilations (ints, or per-axis tuples; each layer has ``kernel`` taps and
    stride 1), a list of :class:`atrous.Layer`, or a ``torch.nn.Module`` (with
    ``input_shape=(N, C, *spatial)``). ``at``: a node/submodule name (default: the output, or the last
    node whose field depends on the position if the model ends in global pooling/flatten). ``nd``:
    also compute the exact N-D map of a model with branches now (chains always get it lazily as an
    outer product).

    Paths count spatial taps only (channels are not multiplied in) and follow the **local paths**:
    a global op (a squeeze-excitation gate, attention, normalisation statistics) adds no taps, and is
    named in ``notes``. Transposed convolutions, upsampling and windows give each output phase its
    own field: use :func:`atrous.receptive_field` there.

    >>> cov = coverage([1, 2, 4, 8], kernel=3)
    >>> cov.extent, cov.covered, cov.holes
    ((31,), (31,), (0,))
    >>> coverage([2, 4], kernel=3).holes        # common factor 2: every other input is missed
    (6,)
    >>> coverage([(1, 2), (1, 2)], kernel=3).extent
    (5, 9)
    """
    spec = _spec(model, kernel)
    g, vals, t = analyse(spec, input_shape, at)
    v = vals[t]
    name = g.nodes[g.tensors[t].node].name if at is None or at not in g.calls else at
    if not all(isinstance(f, Periodic) for f in v.local):
        rf = field_of(g, vals, t)
        if at is not None or rf.last_spatial is None:
            raise ValueError(f"{name!r} has no position-dependent local field (global pooling, attention or a "
                             "flatten reaches it); coverage is defined for local paths: pass at= a node before it")
        name = rf.last_spatial.name
        t = g.node(name).outs[0]
        v = vals[t]
    if v.expr is None:
        raise ValueError(f"{name!r} does not depend on the input")
    dt = _dtype_for(_bound(g))
    walk = _Walk(g.ndim, False, dt)
    org, _, arrs = walk(v.expr)
    ndfun = None
    if is_torch_module(model) and g.ndim > 1:
        cache: dict = {}

        def ndfun():
            if "v" not in cache:
                _, _, a = _Walk(g.ndim, True, dt)(v.expr)
                nz = np.nonzero(a)
                cache["v"] = a[tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)]
            return cache["v"]
        if nd:
            ndfun()
    notes = tuple(f"{n}: a global op, not counted (coverage follows the local paths)" for n in walk.notes)
    return _make(arrs, org, name, ndfun, notes)


# ---------------------------------------------------------------------------------------- HDC

def hdc_recursion(dilations: Sequence[int]) -> list[int]:
    """Wang et al. 2018's ``M_i`` for ``i = 1..n`` (returned in that order).

    ``M_n = r_n``, ``M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i)``: the largest
    distance between two nonzero inputs of layer ``i``'s field; the rule asks ``M_2 <= K``.

    >>> hdc_recursion([1, 2, 5])
    [1, 2, 5]
    >>> hdc_recursion([1, 2, 9])[1]
    5
    """
    r = list(dilations)
    M = [0] * len(r)
    M[-1] = r[-1]
    for i in range(len(r) - 2, -1, -1):
        M[i] = max(M[i + 1] - 2 * r[i], M[i + 1] - 2 * (M[i + 1] - r[i]), r[i])
    return M


@dataclass(frozen=True)
class HDCResult:
    """``ok``: no holes (brute-force coverage); ``recursion_ok``: Wang et al.'s ``M_2 <= K``
    (``None`` for a single layer); ``M``: the recursion; ``common_factor``: gcd of the dilations;
    ``reasons``: why, in words; ``coverage``: the :class:`Coverage`."""

    ok: bool
    reasons: list
    recursion_ok: bool | None
    M: tuple
    common_factor: int
    coverage: Coverage

    def __bool__(self):
        return self.ok


def hdc_check(dilations: Sequence[int], kernel: int = 3) -> HDCResult:
    """Hybrid dilated convolution check (Wang et al. 2018) of a stride-1 stack, recursion and brute force.

    ``ok`` is the brute-force answer (no holes in the field); the paper's recursion is reported
    alongside because it can disagree: it never looks at ``r_1``, so ``[4, 1]`` passes it yet misses
    inputs, and it depends on the order while coverage does not.

    >>> hdc_check([1, 2, 5]).ok
    True
    >>> r = hdc_check([2, 4, 8])
    >>> r.ok, r.common_factor
    (False, 2)
    >>> r = hdc_check([4, 1])
    >>> r.recursion_ok, r.ok
    (True, False)
    """
    if not isinstance(dilations, (list, tuple)) or not dilations:
        raise ValueError(f"dilations must be a non-empty list of ints >= 1, got {dilations!r}")
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dilations):
        raise ValueError(f"dilations must be ints >= 1, got {tuple(dilations)!r}")
    if not isinstance(kernel, numbers.Integral) or kernel < 2:
        raise ValueError(f"kernel must be an int >= 2, got {kernel!r}")
    cov = coverage(list(dilations), kernel=kernel)
    reasons = []
    M = hdc_recursion(dilations)
    rec_ok = None if len(dilations) < 2 else M[1] <= kernel
    if rec_ok is None:
        reasons.append("recursion: needs at least 2 layers (M_2 undefined)")
    elif rec_ok:
        reasons.append(f"recursion: M_2 = {M[1]} <= K = {kernel}")
    else:
        reasons.append(f"recursion: M_2 = {M[1]} > K = {kernel}")
    g = math.gcd(*dilations)
    if g > 1:
        reasons.append(f"common factor {g}: every dilation is a multiple of {g}, so only every {g}-th "
                       "input is reached (gridding)")
    if cov.holes[0]:
        holes = cov.hole_positions[0]
        shown = ", ".join(map(str, holes[:8])) + (", ..." if len(holes) > 8 else "")
        reasons.append(f"coverage: {cov.holes[0]} of {cov.extent[0]} inputs unreached (offsets {shown}); "
                       f"largest hole {cov.largest_hole[0]}")
    else:
        reasons.append(f"coverage: all {cov.extent[0]} inputs reached (cv {cov.cv[0]:.3f})")
    ok = cov.holes[0] == 0
    if rec_ok and not ok:
        reasons.append("the recursion accepts this schedule but it still has holes")
    if rec_ok is False and ok:
        reasons.append("the recursion rejects this order, but the field has no holes")
    return HDCResult(ok, reasons, rec_ok, tuple(M), g, cov)
