"""Speed of the NumPy engine vs PyTorch, measured side by side in one run.

    python benchmarks/engine.py [--repeat 5] [--markdown] [--only NAME] [--threads N]

For every shape: forward and backward (grad_x + grad_weight) GFLOP/s of ``atrous`` and of PyTorch
(float32, ``torch.set_num_threads`` = NumPy's BLAS threads), and the ratio ours / torch (> 1: we are
faster). FLOPs = 2 * N * C_out * prod(out) * C_in/groups * prod(k) for the forward, twice that for
the backward. Times are the best of ``--repeat`` runs, alternating ours and torch so that noise from
other processes hits both. Ratios are what count; absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import atrous
from atrous import geometry
from atrous._optional import require

# (name, N, C_in, C_out, spatial, kernel, dilation, padding, groups)
SHAPES = [
    ("2d N8 C64 64x64 d1", 8, 64, 64, (64, 64), 3, 1, "same", 1),
    ("2d N8 C64 64x64 d2", 8, 64, 64, (64, 64), 3, 2, "same", 1),
    ("2d N8 C64 64x64 d4", 8, 64, 64, (64, 64), 3, 4, "same", 1),
    ("2d N2 C256 32x32 d2", 2, 256, 256, (32, 32), 3, 2, "same", 1),
    ("1d N8 C64 L16384 d1 causal", 8, 64, 64, (16384,), 3, 1, "causal", 1),
    ("1d N8 C64 L16384 d16 causal", 8, 64, 64, (16384,), 3, 16, "causal", 1),
    ("1d depthwise N8 C64 L16384 d4", 8, 64, 64, (16384,), 3, 4, "same", 64),
    ("3d N2 C16 16^3 d2", 2, 16, 16, (16, 16, 16), 3, 2, "same", 1),
    ("2d small N1 C3->16 32x32 d2", 1, 3, 16, (32, 32), 3, 2, "same", 1),
]


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl missing", 1
    for p in threadpool_info():
        if p.get("user_api") == "blas" and "numpy" in p.get("filepath", ""):
            return (f"{p['internal_api']} {p.get('version')} ({p.get('architecture')}, "
                    f"{p['num_threads']} threads)"), p["num_threads"]
    return "unknown", 1


def torch_conv(torch, x, w, dilation, padding, groups):
    """torch's conv with atrous' padding rule: symmetric pads go to the conv itself, asymmetric
    ones (causal) through F.pad first, as a PyTorch user would write it."""
    nd = w.dim() - 2
    pads = geometry.resolve_padding(padding, tuple(x.shape[2:]), tuple(w.shape[2:]), (1,) * nd,
                                    (dilation,) * nd)
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    if all(lo == hi for lo, hi in pads):
        return conv(x, w, padding=tuple(lo for lo, _ in pads), dilation=dilation, groups=groups)
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]
    return conv(torch.nn.functional.pad(x, flat), w, dilation=dilation, groups=groups)


def best(fn, repeat):
    fn()                                  # warm up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--only", default="", help="run the shapes whose name contains this")
    ap.add_argument("--strategy", default=None, choices=("tap", "im2col", "elementwise"),
                    help="force one engine strategy (default: the engine's choice)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit NumPy's BLAS and torch to this many threads (default: as found)")
    ap.add_argument("--serial", action="store_true",
                    help="no chunk thread pool: chunks in sequence with multi-threaded BLAS")
    args = ap.parse_args(argv)
    torch = require("torch")
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    info, threads = blas_info()
    torch.set_num_threads(threads)
    print(f"numpy {np.__version__} BLAS: {info}; torch {torch.__version__} threads "
          f"{torch.get_num_threads()}; float32; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    import importlib
    engine = importlib.import_module("atrous.conv")
    engine._FORCE = args.strategy
    engine._PARALLEL = not args.serial
    rows = []
    rng = np.random.default_rng(0)
    for name, n, cin, cout, sp, k, d, pad, g in SHAPES:
        if args.only not in name:
            continue
        nd = len(sp)
        x = rng.standard_normal((n, cin) + sp, dtype=np.float32)
        w = rng.standard_normal((cout, cin // g) + (k,) * nd, dtype=np.float32)
        y = atrous.conv(x, w, padding=pad, dilation=d, groups=g)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        flops = 2 * n * cout * math.prod(y.shape[2:]) * (cin // g) * k ** nd
        xt, wt, gyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        xr, wr = xt.clone().requires_grad_(), wt.clone().requires_grad_()

        def t_fwd():
            with torch.no_grad():
                return torch_conv(torch, xt, wt, d, pad, g)

        def t_bwd():
            out = torch_conv(torch, xr, wr, d, pad, g)
            return torch.autograd.grad(out, (xr, wr), gyt)

        def a_fwd():
            return atrous.conv(x, w, padding=pad, dilation=d, groups=g)

        def a_bwd():
            return atrous.conv_grad(gy, x, w, padding=pad, dilation=d, groups=g)

        for kind, ours, theirs, fl in (("fwd", a_fwd, t_fwd, flops), ("bwd", a_bwd, t_bwd, 2 * flops)):
            ta, tt = [], []
            for _ in range(args.repeat):      # alternate so background load hits both alike
                ta.append(best(ours, 1))
                tt.append(best(theirs, 1))
            a, t = min(ta), min(tt)
            rows.append((name, kind, fl / a / 1e9, fl / t / 1e9, t / a))
            print(f"{name:32s} {kind}  atrous {fl / a / 1e9:7.1f} GFLOP/s  torch "
                  f"{fl / t / 1e9:7.1f} GFLOP/s  ratio {t / a:5.2f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.markdown:
        print("\n| shape | pass | atrous GFLOP/s | torch GFLOP/s | atrous / torch |")
        print("|---|---|---:|---:|---:|")
        for name, kind, ga, gt, r in rows:
            print(f"| {name} | {kind} | {ga:.1f} | {gt:.1f} | {r:.2f} |")


if __name__ == "__main__":
    main()
