"""Speed of the NumPy engine vs PyTorch and vs NumPy's own GEMM, measured side by side in one run.

    python benchmarks/engine.py [--repeat 5] [--markdown] [--only NAME] [--threads N] [--clock cpu]

For every shape, forward and backward (grad_x + grad_weight), float32:

* ``atrous`` and ``torch`` GFLOP/s (``torch.set_num_threads`` = NumPy's BLAS threads) and their
  ratio (> 1: we are faster);
* ``GEMM``: NumPy's single-precision GEMM throughput on the matrix products the pass amounts to
  (im2col shapes), at the same thread count: forward ``(C_out, K*C_in) @ (K*C_in, M)``, backward
  ``(C_out, M) @ (M, K*C_in)`` plus ``(K*C_in, C_out) @ (C_out, M)`` (per group; ``K`` = taps,
  ``M`` = N * output positions). Each product is timed in both memory layouts (``a @ b`` and
  ``b.T @ a.T``), as one ``np.matmul`` call and in blocks of 1024 and 4096 (a big GEMM is often
  slower than cache-sized ones) and, with several threads, split over that many Python threads with
  single-threaded BLAS; the best counts. This is the limit of an engine built on NumPy; ``share``
  = atrous / GEMM.

FLOPs = 2 * N * C_out * prod(out) * C_in/groups * prod(k) for the forward, twice that for the
backward. Times are the best of ``--repeat`` runs, alternating atrous, torch and the GEMM so that
noise from other processes hits all three; each atrous and torch call is timed right after an
untimed call of the same function (with several threads, after a 0.15 s pause, see ``SETTLE``).
Ratios are what count; the load average (1 min) is printed with every row and the CPU model and
BLAS kernels in the header.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
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
    ("3d N2 C16 16^3 d2", 2, 16, 16, (16, 16, 16), 3, 2, "same", 1),
    ("3d N2 C32 24^3 d2", 2, 32, 32, (24, 24, 24), 3, 2, "same", 1),
    ("1d N8 C64 L16384 d1 causal", 8, 64, 64, (16384,), 3, 1, "causal", 1),
    ("1d N8 C64 L16384 d16 causal", 8, 64, 64, (16384,), 3, 16, "causal", 1),
    ("1d depthwise N8 C64 L16384 d4", 8, 64, 64, (16384,), 3, 4, "same", 64),
    ("2d small N1 C3->16 32x32 d2", 1, 3, 16, (32, 32), 3, 2, "same", 1),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl missing", 1
    for p in threadpool_info():
        if p.get("user_api") == "blas" and "numpy" in p.get("filepath", ""):
            return (f"{p['internal_api']} {p.get('version')} ({p.get('architecture')} kernels, "
                    f"{p['num_threads']} threads)"), p["num_threads"]
    return "unknown", 1


def load():
    return os.getloadavg()[0]


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


CLOCK = time.perf_counter


# After a multi-threaded call, OpenBLAS's idle worker threads keep spinning for up to ~0.1 s and
# hold a core: measured here (2 cores), an engine call timed within 30 ms of a 2-thread NumPy GEMM
# took 25-27 ms (process CPU 65-75 ms) against 22 ms after 0.1-0.3 s (CPU 41-45 ms). With several
# threads every timed call therefore waits SETTLE seconds first, so that no pass is timed while
# the previous one's (the GEMM anchor's, or torch's) threads still spin. But an idle pause leaves
# the VM's cores cold: a 3-D engine call of ~2 ms took ~1 ms longer right after one (measured, 30
# calls each) -- so after the pause each contender runs once untimed and the next call, in the
# warm state of a training loop and with no other contender's threads spinning, is timed.
SETTLE = 0.15


def settle(threads, fn=None):
    if threads > 1:
        time.sleep(SETTLE)
    if fn is not None:
        fn()


def once(fn):
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


class Gemm:
    """The product ``(m, k) @ (k, n)`` (per group, float32) timed in several ways at the same
    thread count; ``time()`` runs every variant once and returns the best time seen so far.

    Variants: both memory layouts (``a @ b``, and ``b.T @ a.T`` with contiguous transposes: OpenBLAS
    can be 2x faster in one of them), each as one ``np.matmul`` call and in blocks of 4096 and 1024
    along ``n``, and -- with T > 1 threads -- the blocks split over T Python threads that each run
    single-threaded BLAS (how the engine's chunk pool runs)."""

    def __init__(self, rng, g, m, k, n, threads):
        self.ops = [(rng.standard_normal((g, m, k), dtype=np.float32),        # out = a @ b
                     rng.standard_normal((g, k, n), dtype=np.float32), np.empty((g, m, n), np.float32)),
                    (rng.standard_normal((g, n, k), dtype=np.float32),        # out.T = b.T @ a.T
                     rng.standard_normal((g, k, m), dtype=np.float32), np.empty((g, n, m), np.float32))]
        self.threads, self.n = threads, n
        blocks = [n] + [bl for bl in (4096, 1024) if bl < n]
        self.variants = [(lay, bl, False) for lay in (0, 1) for bl in blocks]
        if threads > 1:
            self.variants += [(lay, bl, True) for lay in (0, 1) for bl in blocks
                              if bl * threads <= n or bl == n]
        self.best = [math.inf] * len(self.variants)

    def run(self, lay, c0, c1, block):
        a, b, out = self.ops[lay]
        for c in range(c0, c1, block):
            e = min(c + block, c1)
            if lay == 0:
                np.matmul(a, b[:, :, c:e], out=out[:, :, c:e])
            else:
                np.matmul(a[:, c:e], b, out=out[:, c:e])

    def run_split(self, lay, block):
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits
        T = self.threads
        cuts = [self.n * i // T for i in range(T + 1)]
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(T) as ex:
            list(ex.map(lambda i: self.run(lay, cuts[i], cuts[i + 1], block), range(T)))

    def time(self):
        for i, (lay, bl, split) in enumerate(self.variants):
            fn = (lambda: self.run_split(lay, bl)) if split else (lambda: self.run(lay, 0, self.n, bl))
            self.best[i] = min(self.best[i], once(fn))
        return min(self.best)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--only", default="", help="run the shapes whose name contains this")
    ap.add_argument("--strategy", default=None, choices=("im2col", "tap", "elementwise"),
                    help="force one engine strategy (default: the engine's choice)")
    ap.add_argument("--mode", default=None, choices=("crop", "flat"),
                    help="force the tap-window mode (default: the engine's choice)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit NumPy's BLAS and torch to this many threads (default: as found)")
    ap.add_argument("--serial", action="store_true",
                    help="no chunk thread pool: chunks in sequence with multi-threaded BLAS")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall: elapsed time (default); cpu: CPU time of the calling thread, which "
                         "other processes barely disturb -- only with --threads 1, where atrous, "
                         "torch and the GEMM all run in the calling thread")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        if args.threads != 1:
            ap.error("--clock cpu needs --threads 1 (with more threads the work runs on other threads)")
        global CLOCK
        CLOCK = time.thread_time
    torch = require("torch")
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    info, threads = blas_info()
    torch.set_num_threads(threads)
    header = (f"CPU: {cpu_model()} ({os.cpu_count()} CPUs); numpy {np.__version__} BLAS: {info}; "
              f"torch {torch.__version__} threads {torch.get_num_threads()}; float32; "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
              f"clock {args.clock}; load average at start {load():.2f}")
    print(header, flush=True)
    import importlib
    engine = importlib.import_module("atrous.conv")
    engine._FORCE = args.strategy
    engine._FORCE_MODE = args.mode
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
        m = n * math.prod(y.shape[2:])
        kc = k ** nd * (cin // g)
        flops = 2 * m * cout * kc
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

        gemm_f = [Gemm(rng, g, cout // g, kc, m, threads)]
        gemm_b = [Gemm(rng, g, cout // g, m, kc, threads), Gemm(rng, g, kc, cout // g, m, threads)]
        for kind, ours, theirs, gemms, fl in (("fwd", a_fwd, t_fwd, gemm_f, flops),
                                              ("bwd", a_bwd, t_bwd, gemm_b, 2 * flops)):
            ours(), theirs()                  # warm up
            ta, tt, tg = math.inf, math.inf, math.inf
            for _ in range(args.repeat):      # alternate so background load hits all alike
                settle(threads, ours)
                ta = min(ta, once(ours))
                settle(threads, theirs)
                tt = min(tt, once(theirs))
                settle(threads)
                tg = sum(gm.time() for gm in gemms)
            r = (name, kind, fl / ta / 1e9, fl / tt / 1e9, tt / ta, fl / tg / 1e9, tg / ta, load())
            rows.append(r)
            print(f"{name:32s} {kind}  atrous {r[2]:7.1f}  torch {r[3]:7.1f}  ratio {r[4]:5.2f}  "
                  f"GEMM {r[5]:7.1f} GFLOP/s  share {r[6]:5.2f}  load {r[7]:.2f}", flush=True)
        del gemm_f, gemm_b
    print(f"load average at the end: {load():.2f}")
    if args.markdown:
        print(f"\n{header}\n")
        print("| shape | pass | atrous GFLOP/s | torch GFLOP/s | atrous / torch | NumPy GEMM GFLOP/s "
              "| atrous / GEMM | load |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, kind, ga, gt, r, gg, s, ld in rows:
            print(f"| {name} | {kind} | {ga:.1f} | {gt:.1f} | {r:.2f} | {gg:.1f} | {s:.2f} | {ld:.2f} |")


if __name__ == "__main__":
    main()
