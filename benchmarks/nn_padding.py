"""Overhead of atrous.nn.Conv*d's padding modes vs a hand-written nn.Conv*d with the same padding.

    python benchmarks/nn_padding.py [--seconds 2] [--threads 1] [--clock wall|cpu]

The hand-written twin: symmetric padding -> ``nn.Conv*d(padding=p)``; asymmetric -> one ``F.pad``
then ``nn.Conv*d(padding=0)`` (what you would write by hand). Same weights, outputs checked equal.
Forward time is the median of single calls of the two, interleaved (a, b, b, a, ...) for about
--seconds per case so that load from other processes hits both. Target: ratio ours / hand <= 1.05
on every row. The last rows time the hand-written module against an identical copy (a control: what
the protocol reports for no difference at all). On a loaded shared machine wall-clock ratios of the
large cases move by 10% or more between runs; ``--clock cpu`` times each call by the CPU time of the
process (``time.process_time``), which other processes do not inflate -- use it with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import atrous.nn as ann
from atrous import geometry

# (name, N, C, spatial, kernel, stride, dilation, padding)
CASES = [
    ("2d same d2 N8 C64 64x64", 8, 64, (64, 64), 3, 1, 2, "same"),
    ("2d same s2 d2 N8 C64 64x64 (asym)", 8, 64, (64, 64), 3, 2, 2, "same"),
    ("2d causal d4 N8 C32 64x64 (asym)", 8, 32, (64, 64), 3, 1, 4, "causal"),
    ("1d causal d8 N8 C64 L4096 (asym)", 8, 64, (4096,), 3, 1, 8, "causal"),
    ("1d causal d2 N1 C16 L256 (tiny)", 1, 16, (256,), 3, 1, 2, "causal"),
    ("1d same k4 N1 C16 L256 (tiny, asym)", 1, 16, (256,), 4, 1, 1, "same"),
    ("3d full d2 N2 C16 16^3", 2, 16, (16, 16, 16), 3, 1, 2, "full"),
    ("2d padding=1 N8 C64 64x64 (nn.Conv2d's own)", 8, 64, (64, 64), 3, 1, 1, 1),
    ("1d default padding=0 N1 C16 L256 (tiny)", 1, 16, (256,), 3, 1, 2, 0),
]


class HandWritten(nn.Module):
    def __init__(self, conv: nn.Module, pairs):
        super().__init__()
        self.sym = all(lo == hi for lo, hi in pairs)
        self.conv = conv
        self.pad = [v for lo, hi in reversed(pairs) for v in (lo, hi)]

    def forward(self, x):
        return self.conv(x) if self.sym else self.conv(F.pad(x, self.pad))


def build(n, c, spatial, k, s, d, padding):
    nd = len(spatial)
    ours = (ann.Conv1d, ann.Conv2d, ann.Conv3d)[nd - 1](c, c, k, stride=s, padding=padding, dilation=d)
    pairs = geometry.resolve_padding(padding, spatial, (k,) * nd, (s,) * nd, (d,) * nd)
    sym = all(lo == hi for lo, hi in pairs)
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1](c, c, k, stride=s, dilation=d,
                                                     padding=tuple(lo for lo, _ in pairs) if sym else 0)
    conv.load_state_dict(ours.state_dict())
    return ours.eval(), HandWritten(conv, pairs).eval(), torch.randn(n, c, *spatial)


CLOCK = time.perf_counter


def interleaved(a, b, x, calls):
    """Per-call times of ``a`` and ``b`` called alternately (a, b, b, a, ...) so drift and load from
    other processes hit both; returns the two medians."""
    ta, tb = [], []
    for i in range(calls):
        for fn, out in ((a, ta), (b, tb)) if i % 2 else ((b, tb), (a, ta)):
            t0 = CLOCK()
            fn(x)
            out.append(CLOCK() - t0)
    return statistics.median(ta), statistics.median(tb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (robust to load; use with --threads 1)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, float32 forward, median of interleaved calls, "
          f"{args.clock} clock")
    print(f"{'case':<44} {'hand us':>10} {'atrous us':>10} {'ours/hand':>10}")
    worst = 0.0
    with torch.no_grad():
        for name, n, c, spatial, k, s, d, padding in CASES:
            ours, hand, x = build(n, c, spatial, k, s, d, padding)
            torch.testing.assert_close(ours(x), hand(x), rtol=0, atol=0)
            t0 = time.perf_counter()
            hand(x)
            once = time.perf_counter() - t0
            calls = int(min(2000, max(30, args.seconds / max(once, 1e-7) / 2)))
            best_h, best_o = interleaved(hand, ours, x, calls)
            ratio = best_o / best_h
            worst = max(worst, ratio)
            print(f"{name:<44} {best_h * 1e6:>10.1f} {best_o * 1e6:>10.1f} {ratio:>10.3f}")
        # the noise floor: the same hand-written module against an identical copy, same protocol
        floor = []
        for name, n, c, spatial, k, s, d, padding in (CASES[0], CASES[4], CASES[6]):
            _, hand, x = build(n, c, spatial, k, s, d, padding)
            twin = copy.deepcopy(hand)
            t0 = time.perf_counter()
            hand(x)
            calls = int(min(2000, max(30, args.seconds / max(time.perf_counter() - t0, 1e-7) / 2)))
            a, b = interleaved(hand, twin, x, calls)
            floor.append(abs(b / a - 1))
            label = "control: hand vs its copy, " + name[:17]
            print(f"{label:<44} {a * 1e6:>10.1f} {b * 1e6:>10.1f} {b / a:>10.3f}")
    print(f"worst ratio {worst:.3f} (target <= 1.05); controls within +-{max(floor):.3f} of 1")
    return worst


if __name__ == "__main__":
    main()
