"""Dilation schedules that reach a target receptive field with no holes (no gridding).

A stride-1 stack of ``L`` layers with ``k`` taps and dilations ``d_1..d_L`` has extent
``1 + (k-1) * sum(d)`` and reaches the offsets ``{sum_l t_l d_l : 0 <= t_l < k}``. That set has at
most ``k**L`` elements, so a hole-free field of size ``target`` needs ``L >= ceil(log_k(target))``
layers -- and ``d = 1, k, k**2, ...`` reaches exactly ``k**L``, so that depth is always enough. The
set and the path counts do not depend on the order of the layers, so schedules are multisets,
listed in ascending order (the usual "increasing then reset" HDC schedules of Wang et al. 2018,
"Understanding Convolution for Semantic Segmentation", are orderings of these).

Search: dilations in ascending order; the next dilation may not exceed the first unreached offset
(later, larger dilations can never fill a hole below them), and a branch stops when even ``k``-fold
growth per remaining layer cannot reach the target. Survivors are ranked by how evenly they sample
the field (coefficient of variation of the path-count map; Luo et al. 2016 note that paths
concentrate at the centre), then by parameters, then by how little they overshoot the target.

>>> best = design_dilations(65, kernel=3)[0]      # every input reached by exactly one path
>>> best.dilations, best.field, best.covered, best.cv
((1, 3, 9, 27), 81, 81, 0.0)
>>> design_dilations(65, kernel=3, max_field=67)[0].dilations
(1, 3, 7, 22)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import geometry

__all__ = ["Schedule", "design_dilations"]


@dataclass(frozen=True)
class Schedule:
    """One hole-free dilation schedule.

    ``dilations`` (ascending; any order has the same field and coverage), ``kernel``, ``field``
    (extent = covered, in input samples, per axis), ``covered``, ``cv`` (coefficient of variation of
    the ``axes``-D path-count map over the field; lower = more uniform), ``params_factor`` (weights
    per input/output channel pair: ``depth * kernel**axes``), ``depth``.
    """

    dilations: tuple
    kernel: int
    field: int
    covered: int
    cv: float
    params_factor: int
    depth: int

    def to_dict(self) -> dict:
        return {"dilations": list(self.dilations), "kernel": self.kernel, "field": self.field,
                "covered": self.covered, "cv": self.cv, "params_factor": self.params_factor,
                "depth": self.depth}


def _counts(dilations, k) -> np.ndarray:
    """Path counts of a stride-1 stack (1-D): shifted sums of the tap indicator."""
    c = np.ones(1, dtype=np.float64)
    for d in dilations:
        out = np.zeros(len(c) + (k - 1) * d)
        for t in range(k):
            out[t * d:t * d + len(c)] += c
        c = out
    return c


def _search(target: int, k: int, depth: int, budget: int, max_field: int):
    """All ascending hole-free schedules of ``depth`` layers with ``target <= extent <= max_field``."""
    found, nodes = [], 0

    def rec(mask: int, ext: int, count: int, r: int, lo: int, path: list):
        nonlocal nodes
        nodes += 1
        if nodes > budget:
            raise RuntimeError
        if r == 0:
            if ext >= target and count == ext:
                found.append(tuple(path))
            return
        if count * k ** r < target:
            return
        hole = (~mask & (mask + 1)).bit_length() - 1          # first unreached offset
        # the remaining r layers use dilations >= d, adding >= (k-1)*d*r to the extent
        top = min(hole, (max_field - ext) // ((k - 1) * r))
        for d in range(lo, top + 1):
            m2 = 0
            for t in range(k):
                m2 |= mask << (t * d)
            ext2 = ext + geometry.effective_kernel(k, d) - 1      # rf_step at jump 1
            rec(m2, ext2, m2.bit_count(), r - 1, d, path + [d])

    rec(1, 1, 1, depth, 1, [])
    return found


def design_dilations(target: int, kernel: int = 3, max_layers: int | None = None, axes: int = 1,
                     limit: int | None = None, max_field: int | None = None,
                     budget: int = 300_000) -> list[Schedule]:
    """Schedules of the smallest depth reaching a field ``>= target`` with full coverage, best first.

    ``target``: field size in input samples (per axis); ``kernel``: taps per layer (stride 1);
    ``max_layers``: raise ``ValueError`` if more would be needed; ``axes``: 1 for ``(N, C, L)``
    stacks, 2 for ``k x k`` kernels on ``(N, C, H, W)`` (changes ``cv`` and ``params_factor``, not the
    schedules); ``limit``: keep the best few; ``max_field``: only schedules whose field is at most
    this (e.g. ``max_field=target`` for an exact field; default: no bound); ``budget``: search nodes
    before giving up with an error (deep stacks have very many schedules: narrow with ``max_field``).

    >>> [s.dilations for s in design_dilations(9, kernel=3)]
    [(1, 3)]
    >>> [(s.dilations, s.field) for s in design_dilations(10, kernel=3, limit=3)]
    [((1, 3, 9), 27), ((1, 3, 8), 25), ((1, 1, 4), 13)]
    >>> design_dilations(100, kernel=3, max_layers=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no schedule of at most 3 layers ... reach at most 27 positions (dilations 1, 3, 9)
    """
    for name, v, lo in (("target", target, 2), ("kernel", kernel, 2), ("axes", axes, 1)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    if max_field is not None and (not isinstance(max_field, numbers.Integral) or max_field < target):
        raise ValueError(f"max_field must be an int >= target ({target}), got {max_field!r}")
    if max_layers is not None and (not isinstance(max_layers, numbers.Integral) or max_layers < 1):
        raise ValueError(f"max_layers must be an int >= 1 or None, got {max_layers!r}")
    depth = max(1, math.ceil(math.log(target) / math.log(kernel) - 1e-12))
    while kernel ** depth < target:
        depth += 1
    if max_layers is not None and depth > max_layers:
        ex = ", ".join(str(kernel ** i) for i in range(max_layers))
        raise ValueError(
            f"no schedule of at most {max_layers} layers with kernel {kernel} reaches a field of {target} "
            f"without holes: {max_layers} layers reach at most {kernel ** max_layers} positions "
            f"(dilations {ex})")
    try:
        found = _search(target, kernel, depth, budget, max_field or kernel ** depth)
    except RuntimeError:
        raise ValueError(f"the search for target={target}, kernel={kernel} ({depth} layers) exceeded "
                         f"budget={budget} nodes; narrow it with max_field= (e.g. {target + target // 10}), "
                         "raise budget, or use a larger kernel") from None
    if not found:
        raise ValueError(f"no hole-free schedule of {depth} layers with kernel {kernel} has a field in "
                         f"[{target}, {max_field}]; raise max_field")
    out = []
    for dil in found:
        c = _counts(dil, kernel)
        ratio = float((c ** 2).mean() / c.mean() ** 2)      # E[x^2]/E[x]^2 of the 1-D map
        cv = math.sqrt(max(ratio ** axes - 1.0, 0.0))       # the axes-D map is an outer product
        out.append(Schedule(dil, kernel, len(c), int((c > 0).sum()), cv, depth * kernel ** axes, depth))
    out.sort(key=lambda s: (round(s.cv, 12), s.params_factor, s.field - target, s.dilations))
    return out[:limit] if limit else out
