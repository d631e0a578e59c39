"""Engine settings A/B, interleaved in one process, as shares of NumPy's GEMM.

    python benchmarks/engine_ab.py [--threads N] [--repeat 9] [--only NAME] [--passes fwd,bwd]
                                   [--shape "(name, N, C_in, C_out, spatial, k, d, padding, groups)"]
                                   VARIANT [VARIANT ...]

A VARIANT is ``label:`` (the engine as it is) or ``label:NAME=VALUE,NAME=VALUE`` setting module
constants of ``atrous.conv`` for that variant only (values are Python literals, e.g.
``crop:_FORCE_MODE='crop'``, ``pool:_FWD_SERIAL=0``, ``fresh:_KEEP=0``). For every shape of
``benchmarks/engine.py`` (or ``--shape``) and pass, the variants run in turn ``--repeat`` times,
each timed like ``engine.py`` times atrous (a warm call, after a pause at several threads), and the
best time of each is printed as its share of NumPy's GEMM measured in the same run. The settings
are internal knobs for measuring the engine, not an API.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine as bench  # noqa: E402  (benchmarks/engine.py: shapes, GEMM anchor, timing)

import atrous  # noqa: E402


def parse_variant(text, module):
    label, sep, body = text.partition(":")
    if not sep or not label:
        raise SystemExit(f"variant must be 'label:' or 'label:NAME=VALUE,...', got {text!r}")
    settings = {}
    for item in filter(None, body.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not hasattr(module, name.strip()):
            raise SystemExit(f"unknown engine setting {name.strip()!r} in variant {text!r}")
        settings[name.strip()] = ast.literal_eval(value.strip())
    return label, settings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--only", default="")
    ap.add_argument("--passes", default="fwd,bwd")
    ap.add_argument("--shape", action="append", default=[],
                    help="a shape tuple like engine.py's SHAPES entries (repeatable)")
    args = ap.parse_args(argv)
    passes = args.passes.split(",")
    if not set(passes) <= {"fwd", "bwd"}:
        ap.error(f"--passes takes fwd and/or bwd, got {args.passes!r}")
    engine = importlib.import_module("atrous.conv")
    variants = [parse_variant(v, engine) for v in args.variants]
    defaults = {k: getattr(engine, k) for _, s in variants for k in s}
    from threadpoolctl import threadpool_limits
    if args.threads:
        threadpool_limits(limits=args.threads, user_api="blas")
    info, threads = bench.blas_info()
    print(f"CPU: {bench.cpu_model()}; BLAS: {info}; load average at start {bench.load():.2f}")
    shapes = [ast.literal_eval(s) for s in args.shape] or bench.SHAPES
    rng = np.random.default_rng(0)
    for name, n, cin, cout, sp, k, d, pad, g in shapes:
        if args.only not in name:
            continue
        nd = len(sp)
        x = rng.standard_normal((n, cin) + tuple(sp), dtype=np.float32)
        w = rng.standard_normal((cout, cin // g) + (k,) * nd, dtype=np.float32)
        y = atrous.conv(x, w, padding=pad, dilation=d, groups=g)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        m, kc = n * math.prod(y.shape[2:]), k ** nd * (cin // g)
        for kind in passes:
            def fn():
                if kind == "fwd":
                    return atrous.conv(x, w, padding=pad, dilation=d, groups=g)
                return atrous.conv_grad(gy, x, w, padding=pad, dilation=d, groups=g)
            gemms = ([bench.Gemm(rng, g, cout // g, kc, m, threads)] if kind == "fwd" else
                     [bench.Gemm(rng, g, cout // g, m, kc, threads), bench.Gemm(rng, g, kc, cout // g, m, threads)])
            best, tg = {label: math.inf for label, _ in variants}, math.inf
            try:
                for _ in range(args.repeat):
                    for label, settings in variants:
                        for key, value in {**defaults, **settings}.items():
                            setattr(engine, key, value)
                        bench.settle(threads, fn)
                        best[label] = min(best[label], bench.once(fn))
                    for key, value in defaults.items():
                        setattr(engine, key, value)
                    bench.settle(threads)
                    tg = sum(gm.time() for gm in gemms)
            finally:
                for key, value in defaults.items():
                    setattr(engine, key, value)
            flops = 2 * m * cout * kc * (2 if kind == "bwd" else 1)
            print(f"{name:28s} {kind} threads {threads}  " + "  ".join(
                f"{label} {tg / t:.2f}" for label, t in best.items())
                + f"  (GEMM {flops / tg / 1e9:.0f} GFLOP/s, best {min(best.values()) * 1e3:.2f} ms)"
                + f"  load {bench.load():.2f}", flush=True)


if __name__ == "__main__":
    main()
