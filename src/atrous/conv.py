"""The NumPy engine: N-D dilated convolution, its transpose and its gradients.

Dilated ("atrous") convolution as in Yu & Koltun, *Multi-Scale Context Aggregation by Dilated
Convolutions* (ICLR 2016) and Chen et al., *DeepLab* (TPAMI 2017): the ``k`` taps of a kernel sit
``dilation`` samples apart. Shapes and argument names are PyTorch's: input ``(N, C_in, *spatial)``,
weight ``(C_out, C_in // groups, *kernel)``, output ``(N, C_out, *out_spatial)``; 1-, 2- and 3-D go
through the same code, the rank is read from the weight. All per-axis arithmetic (effective kernel,
output sizes, padding modes) comes from :mod:`atrous.geometry`.

How it works
------------
*Only what is read.* Per axis, output ``t`` reads padded position ``t*s + d*j`` with tap ``j``
(stride ``s``, dilation ``d``). A tap that reads only padding for every output is *dead*: it is
skipped (its products are zeros; only a non-finite weight or gradient makes them NaN, which is
added explicitly, see below). The engine keeps the span ``[b, e)`` of padded positions that the live
taps read, so time and memory follow the output size and the live taps, never the stride, the
dilation or the padding as such (``stride=10**6`` or ``dilation=10**10`` cost what a small call costs).

*Phase grids.* That span is zero-padded once and split, per axis, into stride phases (polyphase):
phase ``r`` holds positions ``b + r, b + r + s, ...``; only the phases some live tap reads are built.
Tap ``j`` of output ``t`` then reads phase ``(d*j - b) % s`` at index ``t + (d*j - b) // s``: every
tap is a constant shift of the output box inside one phase grid.

*Gather + GEMM.* The output is cut into chunks (whole samples, blocks of lines or planes, or pieces
of one line, so that the chunk buffers stay under the memory budget). For a chunk, the tap windows
(the output box shifted per tap, cropped to the real outputs) are stacked into a patch that stays in
cache (im2col) and one GEMM per group writes the chunk straight into the result::

    y[n, :, box] = W (C_out, T*C_in)  @  patch (T*C_in, box)          (T live taps; per group)

The live taps of one phase are a product of arithmetic runs (one per axis), so all their windows
are one strided view and the patch takes one copy per phase. Variants, chosen per call and measured
with ``benchmarks/engine.py``: few output channels out of many -- one GEMM per tap straight on
contiguous flat windows of the grid (padding columns included and dropped at the end), accumulated
("tap"); 3-D volumes -- "shift" windows: flat windows, one span per plane, in which the taps along
the last axis are column shifts of each other, so the patch holds only the other taps and the
chunk runs one GEMM per last-axis tap on a shifted view of it, summed in a fixed order (forward,
transposed convolution and the fused backward); depthwise weights -- a broadcast multiply-add.
Big calls run the chunks on a small thread pool with single-threaded BLAS when ``threadpoolctl``
is installed, because NumPy's copies are otherwise single-threaded; the BLAS thread count is fixed
by the call's size (see _blas_enter). The chunking never depends on the thread count, and every
output value is computed by one fixed sequence of operations, so results are bit-identical however
the chunks are scheduled.

Backward, derived next to the forward
-------------------------------------
With the forward written per tap as ``y[t] = sum_j W_j x[t*s + d*j]`` (``t`` over real outputs,
``x`` zero-padded) and ``g = dL/dy``, the chain rule gives:

* ``dL/dW_j = sum_t g[t] x[t*s + d*j]^T`` -- a correlation of the input with the output gradient,
  in which the output gradient plays the kernel: it steps by the *dilation* ``d`` over the input
  while its own index steps by the *stride* (stride and dilation exchanged).
* ``dL/dx[i] = sum_{j, t: t*s + d*j = i} W_j^T g[t]`` -- the *transposed convolution* of ``g``
  (zero-inserted by the stride: the phases; kernel flipped: shifts ``-qoff_j``; same dilation). For
  each input phase it is a gather, the forward with the roles of ``x`` and ``g`` swapped: phase
  position ``q`` sums ``W_j^T g[q - qoff_j]`` over the taps ``j`` of that phase, ``g`` being
  zero-padded. :func:`conv_transpose` is exactly this operator.
* ``dL/db = sum over N and space of g``.

Indexed by the input position ``q`` instead, ``dL/dW_j = sum_q g[q - qoff_j] x[q]^T`` over the
phase of tap ``j``: the patch ``P`` of shifted ``g`` windows that gives ``dL/dx = W^T P`` also gives
``(dL/dW)^T += P x^T`` (:func:`_backward`, one patch for both gradients). The weight gradient sums
chunk partials in place, in a fixed order: chunk ``i`` into accumulator ``i % S``, each accumulator
taken by one thread at a time and filled in chunk order, the ``S`` accumulators summed in order
(``S`` is fixed by the machine and the budget, see :func:`_acc_slots`, never by the threads).

NaN and inf like PyTorch
------------------------
PyTorch multiplies every (output, tap) pair, padding zeros included, and nothing else. The engine
does the same: the forward and ``dL/dW`` read only real outputs (a NaN input poisons exactly the
outputs and weight taps that read it); a dead tap contributes ``0 * w`` to the forward and
``0 * g`` to ``dL/dW`` (NaN only when those are non-finite). In ``dL/dx`` the zero padding of ``g``
is not part of PyTorch's products, which only matters for non-finite weights: then the products of
finite values run the normal path and the others are added from exact counts of their NaN, +inf and
-inf products (:func:`_grad_input_nonfinite`). The one-patch backward multiplies the zero padding of
``g`` by ``x``, so it runs only on finite data; otherwise the two gradients take separate exact
paths. No RuntimeWarning is raised for non-finite data.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
import threading
from typing import NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import geometry
from .geometry import IntOrTuple, PaddingArg

__all__ = ["conv", "conv_transpose", "conv_grad", "get_memory_budget", "set_memory_budget"]

_DEFAULT_BUDGET = 256 * 2**20
_BUDGET = _DEFAULT_BUDGET
# Positions per chunk: about _CHUNK_ELEMS patch elements (2 MiB of float32, ~L2) and at least
# _MIN_ROWS positions so that the GEMMs stay efficient. Tuned with benchmarks/engine.py's shapes
# (interleaved A/B, EPYC with 2 MiB L2 per core): 2 MiB rather than 1 halves the chunks, hence the
# Python work per chunk that two threads serialise on the GIL -- 3-D 16 channels at 2 threads fwd
# 0.41 -> 0.53 of GEMM, 3-D N2 C16 24^3 bwd 0.55 -> 0.77 (1 thread 0.59 -> 0.65); the 2-D shapes
# move within the noise (+-0.04) at 1 and 2 threads; 4 MiB loses at 1 thread on 2-D backwards.
_CHUNK_ELEMS = 1 << 19
_MIN_ROWS = 256
_FUSED_ROWS = 512           # backward chunks: each also adds a weight-sized partial
_SHIFT_ROWS = 4096          # "shift" chunks: k GEMMs each, bigger ones amortise them (measured:
#                             3-D N2 C16 16^3 fwd, 1 thread, 0.73 of GEMM at 2048 -> 0.78 at 4096)
# The budget is shared by up to _SLOTS chunks running at once (a constant of the machine, so that
# the chunking, hence every rounding, never depends on how many threads happen to run).
_SLOTS = max(1, min(os.cpu_count() or 1, 8))


def _acc_slots(weight_elems, budget):
    """Weight-gradient accumulators: one per chunk slot, plus up to 3 more per slot that fit in a
    quarter of the budget (elements), so that threads taking the accumulators one at a time stay
    balanced. A fixed number, never the thread count. Returns (count, budget left for chunks)."""
    extra = min(3 * _SLOTS, (budget // 4) // max(1, weight_elems))
    return _SLOTS + extra, max(1, budget - extra * weight_elems)


# Tests force a strategy ("im2col", "tap" or "elementwise") or a window mode ("crop" or "flat")
# everywhere, and set _PARALLEL to False to run chunks serially.
_FORCE = None
_FORCE_MODE = None
_PARALLEL = True


# --------------------------------------------------------------------------------------- budget
def get_memory_budget() -> int:
    """Bytes the engine may use for its chunked work buffers (default 256 MiB).

    >>> get_memory_budget() > 0
    True
    """
    return _BUDGET


def set_memory_budget(nbytes: int | None) -> int:
    """Set the global work-buffer budget in bytes (``None`` restores 256 MiB); returns the old one.

    A per-call ``memory_budget=`` overrides it. The promise: beyond the arrays themselves -- the
    inputs and results, their zero-padded (phase-split) or contiguous copies, copies of the weight,
    and one weight-gradient accumulator and partial per core (up to 8) -- no call allocates more
    than the budget, shared by every chunk in flight (further accumulators, which balance the
    threads, come out of the budget). Below the buffers of one output position (about
    ``prod(kernel) * C_in`` values) the work cannot be cut further and that minimum is used.

    >>> old = set_memory_budget(64 * 2**20)
    >>> get_memory_budget()
    67108864
    >>> _ = set_memory_budget(old)
    """
    global _BUDGET
    old = _BUDGET
    _BUDGET = _check_budget(nbytes, "nbytes") if nbytes is not None else _DEFAULT_BUDGET
    return old


def _check_budget(value, name="memory_budget") -> int:
    if value is None:
        return _BUDGET
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int number of bytes, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 byte, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------- validation
def _as_float(name, a):
    """``np.asarray(a)``; TypeError naming ``name`` for non-float dtypes."""
    arr = np.asarray(a)
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name} must be a float16/float32/float64 array, got dtype {arr.dtype}")
    return arr


class _Spec(NamedTuple):
    n: int
    c_in: int
    c_out: int
    groups: int
    in_sizes: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    pads: tuple          # ((lo, hi), ...) per axis
    out_sizes: tuple
    dtype: np.dtype      # compute dtype
    out_dtype: np.dtype  # returned dtype
    budget: int


def _spec(x, weight, bias, stride, padding, dilation, groups, causal_axes, memory_budget,
          x_name="x", transposed=False, output_padding=0):
    """Validate every argument (before any work) and resolve the geometry."""
    x = _as_float(x_name, x)
    weight = _as_float("weight", weight)
    if bias is not None:
        bias = _as_float("bias", bias)
    if weight.ndim not in (3, 4, 5):
        raise ValueError(
            "weight must have shape (C_out, C_in // groups, *kernel) with 1, 2 or 3 kernel axes, "
            f"got weight.shape={weight.shape}")
    nd = weight.ndim - 2
    if x.ndim != nd + 2:
        raise ValueError(
            f"{x_name} must have shape (N, C, *spatial) with {nd} spatial axes to match "
            f"weight.shape={weight.shape}, got {x_name}.shape={x.shape}")
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups!r}")
    kernel = tuple(int(k) for k in weight.shape[2:])
    if min(kernel) < 1:
        raise ValueError(f"kernel sizes must be >= 1, got weight.shape={weight.shape}")
    stride = geometry.normalize_tuple(stride, nd, "stride")
    dilation = geometry.normalize_tuple(dilation, nd, "dilation")
    budget = _check_budget(memory_budget)
    n, c_x = x.shape[:2]
    in_sizes = tuple(int(v) for v in x.shape[2:])
    if not transposed:
        c_in, c_out = c_x, weight.shape[0]
        if c_in % groups:
            raise ValueError(f"C_in={c_in} (x.shape[1]) must be divisible by groups={groups}")
        if c_out % groups:
            raise ValueError(f"C_out={c_out} (weight.shape[0]) must be divisible by groups={groups}")
        if weight.shape[1] * groups != c_in:
            raise ValueError(
                f"weight.shape[1]={weight.shape[1]} must equal C_in // groups = {c_in} // {groups}"
                f" (x.shape={x.shape}, weight.shape={weight.shape})")
        pads = geometry.resolve_padding(padding, in_sizes, kernel, stride, dilation, causal_axes)
        out_sizes = geometry.conv_output_shape(in_sizes, kernel, stride, dilation, pads)
    else:
        # transposed conv: x carries the adjoint conv's *output* channels (weight.shape[0])
        c_out, c_in = c_x, weight.shape[1] * groups
        if c_out % groups:
            raise ValueError(f"C_in={c_out} (x.shape[1]) must be divisible by groups={groups}")
        if weight.shape[0] != c_out:
            raise ValueError(
                f"weight.shape[0]={weight.shape[0]} must equal C_in={c_out} of x for "
                f"conv_transpose (weight is (C_in, C_out // groups, *kernel) as in PyTorch: pass "
                f"the weight of the conv being transposed, not its transpose), x.shape={x.shape}")
        if isinstance(padding, str):
            raise ValueError(f"conv_transpose padding must be an int or a tuple of ints, got "
                             f"{padding!r}")
        pad = geometry.normalize_tuple(padding, nd, "padding", minimum=0)
        opad = geometry.normalize_tuple(output_padding, nd, "output_padding", minimum=0)
        for op, s, d in zip(opad, stride, dilation):
            if op >= s and op >= d:
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation per axis, got "
                    f"output_padding={opad} with stride={stride} and dilation={dilation}")
        full = tuple(geometry.transpose_output_size(m, k, s, d, p, op) for m, k, s, d, p, op
                     in zip(in_sizes, kernel, stride, dilation, pad, opad))
        if min(full) < 1:
            raise ValueError(
                f"conv_transpose output size {full} is < 1 (input {in_sizes}, kernel {kernel}, "
                f"stride {stride}, dilation {dilation}, padding {pad}, output_padding {opad})")
        pads = tuple((p, p) for p in pad)
        # the adjoint conv maps `full` back to `in_sizes` (or a little more, see output_padding)
        out_sizes, in_sizes = in_sizes, full
    c_bias = c_in if transposed else c_out          # channels of the returned array
    if bias is not None and bias.shape != (c_bias,):
        raise ValueError(f"bias must have shape ({c_bias},) (one per output channel), got "
                         f"bias.shape={bias.shape}")
    arrays = [x, weight] + ([bias] if bias is not None else [])
    out_dtype = np.result_type(*arrays)
    dtype = np.dtype(np.float32) if out_dtype == np.float16 else out_dtype
    spec = _Spec(int(n), int(c_in), int(c_out), int(groups), in_sizes, kernel, stride, dilation,
                 pads, tuple(out_sizes), dtype, out_dtype, budget)
    return spec, x, weight, bias


# ----------------------------------------------------------------------------------------- plan
class _Axis(NamedTuple):
    """One spatial axis: the phases that live taps read, and those taps."""
    sph: int         # phase-grid length
    fill: tuple      # per used phase: (q0, q1, i0): grid slots q0..q1-1 hold x[i0 + s*(q - q0)]
    runs: tuple      # per used phase: (j0, jstep, count, qoff0, qstep): its live taps are
    #                  j0 + jstep*i, and output t reads slot t + qoff0 + qstep*i (i < count)


class _Block(NamedTuple):
    """The live taps that read one phase grid: a product of arithmetic runs, one per axis."""
    ph: int          # phase index (C order over the axes' used phases)
    counts: tuple    # taps per axis
    qoff: tuple      # shift of the first tap, per axis
    qstep: tuple     # shift step between taps, per axis
    kidx: np.ndarray  # (*counts) flat kernel index of each tap


class _Plan(NamedTuple):
    axes: tuple      # _Axis per spatial axis (None when no tap ever reads the input)
    sph: tuple       # phase-grid shape
    nres: tuple      # used phases per axis (the grids are their product, C order)
    blocks: tuple    # _Block per phase grid that live taps read
    kidx: tuple      # flat kernel index of every live tap, in block order (the taps' order "T")
    dead: tuple      # flat kernel indices of the dead taps


def _axis_plan(m, lo, k, s, d, o):
    """Live taps of one axis (input ``m``, padding before ``lo``, ``o`` outputs), or None.

    Tap ``j`` of output ``t`` reads input ``t*s + d*j - lo``; it is live when some output reads a
    real input with it. Taps whose ``d*j`` agree modulo ``s`` read the same phase; those are
    ``s/gcd(s, d)`` apart and their live ones are consecutive (each is the previous one shifted
    by ``d/gcd(s, d)`` whole outputs), so every phase's live taps are one arithmetic run."""
    live = []
    for j in range(k):
        p = d * j - lo                       # input index read by output 0
        t = max(0, -(p // s))                # first output reading index >= 0
        if t < o and t * s + p < m:
            live.append(j)
    if not live:
        return None
    b = d * live[0]                           # the span [b, e) of padded positions read
    e = d * live[-1] + (o - 1) * s + 1
    sph = -(-(e - b) // s)
    fill, runs = [], []
    for r in sorted({(d * j - b) % s for j in live}):
        js = [j for j in live if (d * j - b) % s == r]
        g = math.gcd(s, d)
        runs.append((js[0], s // g, len(js), (d * js[0] - b) // s, d // g))
        q0 = max(0, -(-(lo - b - r) // s))   # slot q holds input index b + r + s*q - lo
        q1 = max(q0, min(sph, -(-(lo + m - b - r) // s)))
        fill.append((q0, q1, b + r + s * q0 - lo))
    return _Axis(sph, tuple(fill), tuple(runs))


def _plan(spec):
    return _plan_of(spec.in_sizes, spec.pads, spec.kernel, spec.stride, spec.dilation, spec.out_sizes)


@functools.lru_cache(maxsize=128)
def _plan_of(in_sizes, pads, kernel, stride, dilation, out_sizes):
    axes = [_axis_plan(m, lo, k, s, d, o) for m, (lo, _), k, s, d, o
            in zip(in_sizes, pads, kernel, stride, dilation, out_sizes)]
    K = math.prod(kernel)
    if any(a is None for a in axes):          # some axis reads only padding: every tap is dead
        return _Plan(None, None, None, (), (), tuple(range(K)))
    nres = tuple(len(a.fill) for a in axes)
    blocks = []
    kstride = [math.prod(kernel[a + 1:]) for a in range(len(axes))]
    for ph, combo in enumerate(itertools.product(*(range(n) for n in nres))):
        runs = [a.runs[r] for a, r in zip(axes, combo)]
        kidx = np.zeros([r[2] for r in runs], dtype=np.int64)       # flat kernel index per tap
        for a, (j0, jstep, c, _, _) in enumerate(runs):
            kidx += ((j0 + jstep * np.arange(c)) * kstride[a]).reshape((-1,) + (1,) * (len(runs) - a - 1))
        blocks.append(_Block(ph, tuple(r[2] for r in runs), tuple(r[3] for r in runs),
                             tuple(r[4] for r in runs), kidx))
    kidx = tuple(i for b in blocks for i in b.kidx.ravel().tolist())
    live = set(kidx)
    return _Plan(tuple(axes), tuple(a.sph for a in axes), nres, tuple(blocks), kidx,
                 tuple(i for i in range(K) if i not in live))


# ------------------------------------------------------------------------------------- chunking
class _Chunk(NamedTuple):
    """Samples [n0, n1) and, when ``a >= 0``, one sample's box positions with the indices of the
    axes before ``a`` fixed to ``prefix``, axis ``a`` in [u, v) and the later axes whole."""
    n0: int
    n1: int
    a: int
    prefix: tuple
    u: int
    v: int


def _sub(ch, box):
    """Shape of a chunk's part of the box."""
    return tuple(box) if ch.a < 0 else (ch.v - ch.u,) + tuple(box[ch.a + 1:])


def _flat_range(ch, box):
    """[r0, r1) of the chunk in the C-order flattened box of one sample."""
    if ch.a < 0:
        return 0, math.prod(box)
    inner = math.prod(box[ch.a + 1:])
    lead = 0
    for i, size in zip(ch.prefix + (ch.u,), box[:ch.a + 1]):
        lead = lead * size + i
    return lead * inner, (lead + ch.v - ch.u) * inner


def _chunks(n, box, per_pos, budget, min_rows=None, split=True):
    """Chunks of ``n`` samples of ``box`` with at most ``budget`` buffer elements each
    (``per_pos`` per position, at least one position), about _CHUNK_ELEMS for the cache, and,
    with ``split`` (calls big enough for the thread pool), at least ~8 chunks. Depends only on
    the shapes and the budget, never on the threads.

    Returns (a generator of the chunks in order, the positions of the largest chunk)."""
    M = math.prod(box)
    target = min(budget // (_SLOTS * per_pos), max(min_rows or _MIN_ROWS, _CHUNK_ELEMS // per_pos),
                 max(_MIN_ROWS // 4, -(-n * M // 8)) if split else n * M)
    target = max(1, target)
    if M <= target:                                          # whole samples
        step = max(1, target // M)
        return ((_Chunk(i, min(i + step, n), -1, (), 0, 0) for i in range(0, n, step)),
                min(step, n) * M)
    a, inner = len(box) - 1, 1                               # split axis: box[a+1:] fits
    while a > 0 and inner * box[a] <= target:
        inner *= box[a]
        a -= 1
    cnt = min(max(1, target // inner), box[a])
    return ((_Chunk(i, i + 1, a, pre, u, min(u + cnt, box[a])) for i in range(n)
             for pre in np.ndindex(*box[:a]) for u in range(0, box[a], cnt)), cnt * inner)


# ------------------------------------------------------------------------- chunk parallelism
# NumPy's element-wise work (patch copies) is single-threaded. When threadpoolctl is installed,
# big calls run their chunks on a thread pool, one chunk per thread at a time with single-threaded
# BLAS (NumPy releases the GIL inside copies, ufuncs and matmul); while another call holds the
# pool, they run serially, with single-threaded BLAS too (same rounding, see _blas_enter).
# Small calls and calls without threadpoolctl run serially with the caller's BLAS.
# Below _PAR_MIN_FLOPS the pool loses to that serial loop (per-chunk Python work serialised on the
# GIL, thread wake-ups): measured at 2 threads, interleaved, 3e8 against 2e7 -- 226 MFLOP (3-D
# N1 C32 16^3) 0.34 -> 0.44 of GEMM, 75 MFLOP (2-D N1 C32 64^2) 0.39 -> 0.59; at 382 MFLOP (3-D N2
# C16 24^3) the pool already wins (0.81 against 0.57 serial).
_PAR_MIN_FLOPS = 3e8
# Forwards stay serial (with the user's multi-threaded BLAS, see _blas_enter) up to 3x that:
# measured with benchmarks/engine_ab.py at 2 threads (default vs "pool:_FWD_SERIAL=0"), shares of
# GEMM: 2-D N4 C64 32^2 (302 MFLOP) 0.69 vs 0.64, 3-D N2 C16 24^3 (382 MFLOP) 0.74 vs 0.51; the
# 1.5 GFLOP 3-D N2 C32 24^3 forward gains from the pool.
_FWD_SERIAL = 3
_POOL = None                # (pid, size, ThreadPoolExecutor)
_CTL = None
_LOCK = threading.Lock()


def _controller():
    global _CTL
    if _CTL is None:
        try:
            from threadpoolctl import ThreadpoolController
            _CTL = ThreadpoolController()
        except Exception:          # not installed, or no BLAS found: run serially
            _CTL = False
    return _CTL or None


def _blas_threads(ctl) -> int:
    blas = [lc.num_threads for lc in ctl.lib_controllers if lc.user_api == "blas"]
    return max(1, min(blas) if blas else 1)


def _max_workers(flops) -> int:
    """Pool threads for a call: the user's BLAS threads (NumPy's), 1 for small calls."""
    if not _PARALLEL or flops < _PAR_MIN_FLOPS or _controller() is None or _LOCK.locked():
        return 1
    with _Blas.cond:               # while a single-threaded section runs, BLAS reads 1
        return _Blas.user if _Blas.count and _Blas.single else _blas_threads(_controller())


class _Blas:
    """BLAS thread state of the engine sections running now (see _blas_enter)."""
    cond = threading.Condition()
    count = 0            # sections running
    single = False       # they run single-threaded BLAS (else the user's count)
    user = 1             # the user's BLAS threads, read when a single section starts
    limiter = None       # threadpoolctl limiter to restore
    pid = os.getpid()    # (a child forked while a section ran starts afresh)


def _blas_control(ctl, force):
    """threadpoolctl >= 3.6 lets only one Python thread at a time (the first to set a limit,
    while it lives) change a process-wide OpenBLAS thread pool; others silently do nothing.
    Engine sections may start and end in any thread, so the one changing the limit takes
    control first (``force``) and gives it back after."""
    for lc in ctl.lib_controllers:
        clear = getattr(type(lc), "clear_controlling_thread", None)
        if clear is not None:
            clear(force=force)


def _blas_enter(big):
    """Run with a BLAS thread count fixed by the call's size: one thread for calls that may use
    the pool (``big``: see _PAR_MIN_FLOPS, _FWD_SERIAL), whether they get it or not; the user's
    count for small calls, which never do. OpenBLAS rounds differently at different thread
    counts (measured: 0.3.31 with Haswell kernels, the backward's GEMMs), so this makes a
    result independent of the scheduling and of concurrent calls. The count is process-wide
    state: sections of the other count wait until the running ones end; the last to end
    restores the user's setting."""
    ctl = _controller()
    if ctl is None:
        return
    if _Blas.pid != os.getpid():
        _Blas.cond, _Blas.count, _Blas.single, _Blas.limiter, _Blas.pid = (
            threading.Condition(), 0, False, None, os.getpid())
    with _Blas.cond:
        if big:
            while _Blas.count and not _Blas.single:
                _Blas.cond.wait()
            if _Blas.count == 0:
                _Blas.user = _blas_threads(ctl)
                _Blas.single = True
                if _Blas.user != 1:
                    _blas_control(ctl, True)
                    _Blas.limiter = ctl.limit(limits=1, user_api="blas")
                    _blas_control(ctl, False)
        else:           # (small calls never read the thread count: they cost ~0.1 ms)
            while _Blas.count and _Blas.single and _Blas.user != 1:
                _Blas.cond.wait()
            if _Blas.count == 0:
                _Blas.single = False
        _Blas.count += 1


def _blas_exit():
    ctl = _controller()
    if ctl is None:
        return
    with _Blas.cond:
        _Blas.count -= 1
        if _Blas.count == 0:
            _Blas.single = False
            if _Blas.limiter is not None:
                _blas_control(ctl, True)
                _Blas.limiter.restore_original_limits()
                _blas_control(ctl, False)
                _Blas.limiter = None
            _Blas.cond.notify_all()


def _run(work, tasks, workers, big):
    """``work(i, *t)`` for ``i, t in enumerate(tasks)`` (any iterable), on ``workers`` threads
    (serially in the caller when the pool is busy) with the BLAS threads of _blas_enter. The
    threads take the tasks in order from one shared iterator."""
    it = enumerate(tasks)
    _blas_enter(big)
    try:
        if workers > 1 and _run_pool(work, it, workers):
            return
        for i, t in it:
            work(i, *t)
    finally:
        _blas_exit()


def _run_pool(work, it, workers) -> bool:
    """Run the tasks of ``it`` on the pool; False (nothing run) when another call holds it."""
    global _POOL, _LOCK
    if _POOL is not None and _POOL[0] != os.getpid():        # forked child: the threads are gone
        _POOL, _LOCK = None, threading.Lock()
    if not _LOCK.acquire(blocking=False):                    # one parallel section at a time
        return False
    try:
        if _POOL is None or _POOL[1] < workers:
            from concurrent.futures import ThreadPoolExecutor
            _POOL = (os.getpid(), workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atrous"))
        take, failed = threading.Lock(), []
        errs = np.geterr()                  # NumPy's error state is per thread

        def loop():
            np.seterr(**errs)
            while not failed:
                with take:
                    nxt = next(it, None)
                if nxt is None:
                    return
                try:
                    work(nxt[0], *nxt[1])
                except BaseException:
                    failed.append(True)
                    raise

        for f in [_POOL[2].submit(loop) for _ in range(workers)]:
            f.result()
        return True
    finally:
        _LOCK.release()


def _copy(dst, src, workers):
    """``dst[...] = src`` for (N, C, ...) arrays, in the calling thread. Measured on the 2-core
    machine (2-core EPYC VM): splitting the copy over the 2 pool threads was slower at every size
    from 0.5 to 32 MiB (e.g. 2 MiB 0.13 ms -> 0.31 ms, 8 MiB 0.59 -> 0.70 ms, 32 MiB 3.5 -> 4.1 ms):
    one core already saturates the memory bandwidth and the pool's wake-up costs ~0.15 ms (in
    the engine, interleaved A/B at 2 threads: equal or 2-6% faster on the large 2-D/3-D shapes).
    ``workers`` is kept so that the call sites state the parallelism they could use."""
    dst[...] = src


# -------------------------------------------------------------------------------- work buffers
# A fresh large array costs a page fault per 4 KiB page on first touch (glibc returns freed large
# blocks to the system), which hurts most in serial calls with multi-threaded BLAS. Measured with
# benchmarks/engine_ab.py ("kept:" against "fresh:_KEEP=0"), 2 threads: 2-D N4 C64 32^2 forward
# 0.73 against 0.41 of GEMM, backward 0.58-0.60 against 0.49-0.56, 3-D N2 C16 16^3 forward
# 0.69-0.71 against 0.58-0.62; the large calls and 1 thread move within noise. So each thread
# keeps its buffers between chunks and calls -- one per kind: "src" the source grid of the calling
# thread, "work" a chunk's buffers, "acc" a thread's partial sum -- up to _KEEP bytes each;
# bigger requests get fresh arrays that are freed as usual.
_KEEP = 32 * 2**20
_FRESH = 1 << 17
_TLS = threading.local()


def _buffers(kind, shapes, dtype):
    """Uninitialised arrays of ``shapes``, carved from this thread's kept buffer of ``kind``;
    valid until this thread asks for the same kind again."""
    dtype = np.dtype(dtype)
    if sum(map(math.prod, shapes)) * dtype.itemsize < _FRESH:   # small: malloc reuses these
        return [np.empty(s, dtype=dtype) for s in shapes]           # without faults, and is cheaper
    sizes = [-(-math.prod(s) * dtype.itemsize // 64) * 64 for s in shapes]
    buf = getattr(_TLS, kind, None)
    if buf is None or not sum(sizes) + 64 <= buf.nbytes <= _KEEP:
        buf = np.empty(sum(sizes) + 64, np.uint8)
        if buf.nbytes <= _KEEP:
            setattr(_TLS, kind, buf)
    out, off = [], -buf.ctypes.data % 64         # each array on a 64-byte (cache line) boundary
    for shape, size in zip(shapes, sizes):
        out.append(np.ndarray(shape, dtype=dtype, buffer=buf, offset=off))
        off += size
    return out


# ------------------------------------------------------------------------------------- sources
class _Source(NamedTuple):
    """Zero-padded grids the taps read: ``flat`` (S, N, C, prod(grid) + tail) and its view
    ``grid`` (S, N, C, *grid); ``rs`` are the row strides of the flattened grid."""
    flat: np.ndarray
    grid: np.ndarray
    rs: tuple


def _source(shape, c, n, tail, dtype, S=1):
    P = math.prod(shape)
    flat, = _buffers("src", [(S, n, c, P + tail)], dtype)
    flat.fill(0)
    rs = tuple(math.prod(shape[a + 1:]) for a in range(len(shape)))
    return _Source(flat, flat[..., :P].reshape((S, n, c) + tuple(shape)), rs)


def _tail(src_shape, jobs):
    """Elements past the flat grid that the flat windows of ``jobs`` may read."""
    rs = [math.prod(src_shape[a + 1:]) for a in range(len(src_shape))]
    tail = 0
    for job in jobs:
        if job.flat:
            span = sum((b - 1) * r for b, r in zip(job.box, rs)) + 1
            for tb in job.taps:
                last = sum((st + sp * (c - 1)) * r for st, sp, c, r in zip(tb.start, tb.step, tb.counts, rs))
                tail = max(tail, last + span - math.prod(src_shape))
    return tail


def _phase_source(x, spec, plan, tail, workers):
    """x (N, C_in, *in) -> its used stride phases over the read span, zero-padded."""
    src = _source(plan.sph, spec.c_in, spec.n, tail, spec.dtype, S=math.prod(plan.nres))
    for ph, combo in enumerate(np.ndindex(*plan.nres)):
        qs, xs = [], []
        for ax, r, s in zip(plan.axes, combo, spec.stride):
            q0, q1, i0 = ax.fill[r]
            qs.append(slice(q0, q1))
            xs.append(slice(i0, i0 + s * (q1 - q0), s))
        if all(q.stop > q.start for q in qs):
            _copy(src.grid[ph][(slice(None), slice(None)) + tuple(qs)],
                  x[(slice(None), slice(None)) + tuple(xs)], workers)
    return src


def _finite(a) -> bool:
    """True when every value of ``a`` is finite (a sum is finite only then; an overflowing sum
    only makes us take the exact path)."""
    return bool(np.isfinite(np.sum(a)))


# -------------------------------------------------------------------------------- gather + GEMM
class _Taps(NamedTuple):
    """Taps reading source ``sidx`` at ``start + step*i`` (per axis, i < counts) for box position 0."""
    sidx: int
    start: tuple
    step: tuple
    counts: tuple


class _Job(NamedTuple):
    """``dst[:, :, origin + step*q] = sum_t wt[t] @ src[sidx_t, :, :, start_t + q]``, q in box."""
    taps: list       # _Taps blocks; the taps' order is block by block, C order inside
    wt: np.ndarray   # (T, G, c_dst/g, c_src/g)
    box: tuple
    origin: tuple    # dst index of box position 0, per axis
    step: tuple      # dst index step, per axis
    how: str         # "im2col", "tap" or "elementwise" (see _strategy)
    flat: bool       # windows are flat slices (with the padding columns) instead of crops
    shift: bool = False   # flat, and the last axis's taps are column shifts of one patch


def _waste(box, rs):
    """Upper bound of flat-window length / positions, over every chunk shape."""
    return max(rs[a] / math.prod(box[a + 1:]) for a in range(len(box)))


def _use_flat(box, rs, c_dst):
    if len(box) < 3:
        return False
    if _FORCE_MODE is not None:
        return _FORCE_MODE == "flat"
    # Measured (benchmarks/engine.py): cropped windows win in 1-D and 2-D, even for 8-sample lines;
    # for 3-D with lines of <= 16 samples a flat span per plane copies faster, as long as the extra
    # GEMM columns it computes (the padding inside a plane; their cost grows with C_out) are few.
    waste = ((box[1] - 1) * rs[1] + box[2]) / (box[1] * box[2])
    return box[-1] <= 16 and (waste - 1) * c_dst <= 16


def _shift_ok(box, taps, how) -> bool:
    """Whether a job can take the "shift" windows: one block of taps, several along the last
    axis, and their shifts at most half an output line (this bounds the longer spans)."""
    if how != "im2col" or len(taps) != 1 or taps[0].counts[-1] < 2:
        return False
    return 2 * taps[0].step[-1] * (taps[0].counts[-1] - 1) <= box[-1]


def _shift_geom(job, ch, rs):
    """A "shift" chunk: (k last-axis taps, their step st, extension e = st*(k-1), the length of
    its flat windows including e)."""
    tb = job.taps[0]
    k, st = tb.counts[-1], tb.step[-1]
    e = st * (k - 1)
    return k, st, e, math.prod(_flat_geom(ch, job.box, rs, ext=e)[0])


def _fill_shift_patch(patch, src, job, ch, groups, e):
    """The windows of the taps (t', 0) of a "shift" job, each e columns longer: patch
    (nn, G, T/k*c/g, span)."""
    tb = job.taps[0]
    _fill_patch(patch, src, [tb._replace(counts=tb.counts[:-1] + (1,))], ch, job.box, groups, True, ext=e)


def _shift_weights(wm, k):
    """The im2col weight (G, c_dst/g, T, c_src/g) of a "shift" job per shift i (the taps i, i + k,
    i + 2k, ...): (k, G, c_dst/g, T/k * c_src/g)."""
    G, cd, T, cs = wm.shape
    return np.ascontiguousarray(wm.reshape(G, cd, T // k, k, cs).transpose(3, 0, 1, 2, 4)).reshape(k, G, cd, -1)


def _windows(box, rs, c_dst, taps, how):
    """(flat, shift) for a job: see _use_flat and _shift_ok."""
    if how == "tap":
        return True, False
    if how != "im2col":
        return False, False
    # measured (benchmarks/engine_ab.py, see the README): 3-D N2 C16 16^3 forwards gain (0.64-0.67
    # -> 0.79 of GEMM at 1 thread), C32 24^3 within noise; 2-D ones lose (0.91-0.96 -> 0.82-0.87),
    # their patch copy being already small next to the GEMM
    if _FORCE_MODE == "shift" or (_FORCE_MODE is None and len(box) == 3):
        if _shift_ok(box, taps, how):
            return True, True
    if _FORCE_MODE == "shift":
        return False, False
    return _use_flat(box, rs, c_dst), False


def _strategy(c_red, c_acc, groups) -> str:
    """How to contract ``c_red`` channels (per group) into ``c_acc`` ones."""
    if _FORCE is not None:
        return _FORCE
    if c_red == 1 and c_acc == 1 and groups > 1:
        return "elementwise"       # depthwise: a broadcast multiply-add per tap
    if c_acc * 4 <= c_red and c_red >= 8:
        # few channels out of many: one GEMM per tap straight on the flat windows (no patch of
        # T*c_red rows for a result of c_acc rows), accumulated
        return "tap"
    return "im2col"


def _lead(ch, box):
    """Box index of the chunk's first position, per axis."""
    if ch.a < 0:
        return (0,) * len(box)
    return tuple(ch.prefix) + (ch.u,) + (0,) * (len(box) - ch.a - 1)


def _sub_rs(ch, box, rs):
    """Flat-grid strides of the chunk's sub-box axes."""
    return tuple(rs[len(box) - len(_sub(ch, box)):])


def _flat_geom(ch, box, rs, single=False, ext=0):
    """Layout of the chunk's flat windows, in elements: their shape and strides in the source
    grid, and the strides of the chunk's sub-box inside a compact buffer of that shape. Chunks of
    whole 3-D planes keep the planes apart (one flat span per plane: fewer padding columns than
    one span across planes) unless ``single``; others are one flat span. Each span is ``ext``
    elements longer (the shifts of a "shift" job)."""
    sub = _sub(ch, box)
    if len(box) == 3 and ch.a <= 0 and not single:
        span = (box[1] - 1) * rs[1] + box[2] + ext
        return (sub[0], span), (rs[0], 1), (span, rs[1], 1)
    srs = _sub_rs(ch, box, rs)
    return (sum((b - 1) * r for b, r in zip(sub, srs)) + 1 + ext,), (1,), srs


def _tap_view(src, tb, ch, box, flat, single=False, ext=0):
    """All taps of block ``tb`` for chunk ``ch`` as one strided view (nn, C, *counts, *sub), or
    (nn, C, *counts, *flat shape) for flat windows (see _flat_geom)."""
    S, N, C, Pf = src.flat.shape
    isz = src.flat.itemsize
    off = sum((st + i) * r for st, i, r in zip(tb.start, _lead(ch, box), src.rs))
    lead = (C * Pf * isz, Pf * isz) + tuple(sp * r * isz for sp, r in zip(tb.step, src.rs))
    if flat:
        shape, strides, _ = _flat_geom(ch, box, src.rs, single, ext)
        strides = tuple(r * isz for r in strides)
    else:
        shape, strides = _sub(ch, box), tuple(r * isz for r in _sub_rs(ch, box, src.rs))
    return np.ndarray((ch.n1 - ch.n0, C) + tb.counts + shape, dtype=src.flat.dtype, buffer=src.flat,
                      offset=(((tb.sidx * N + ch.n0) * C) * Pf + off) * isz, strides=lead + strides)


def _fill_patch(patch, src, taps, ch, box, groups, flat, gw_layout=False, ext=0):
    """Stack the tap windows of chunk ``ch``: patch (nn, G, T*c/g, ...), or (G, T*c/g, nn, ...)
    with ``gw_layout``. One copy per block of taps."""
    t0 = 0
    for tb in taps:
        v = _tap_view(src, tb, ch, box, flat, ext=ext)                     # (nn, C, *counts, *rest)
        nn, C, nk = v.shape[0], v.shape[1], len(tb.counts)
        T = math.prod(tb.counts)
        rest = v.shape[2 + nk:]
        v = v.reshape((nn, groups, C // groups) + v.shape[2:])     # (nn, G, c, *counts, *rest)
        cax, kax, rax = [2], list(range(3, 3 + nk)), list(range(3 + nk, v.ndim))
        if gw_layout:       # -> (G, *counts, c, nn, *rest)
            dst = patch[:, t0 * (C // groups):(t0 + T) * (C // groups)]
            dst.reshape((groups,) + tb.counts + (C // groups, nn) + rest)[...] = v.transpose(
                [1] + kax + cax + [0] + rax)
        else:               # -> (nn, G, *counts, c, *rest)
            dst = patch[:, :, t0 * (C // groups):(t0 + T) * (C // groups)]
            dst.reshape((nn, groups) + tb.counts + (C // groups,) + rest)[...] = v.transpose(
                [0, 1] + kax + cax + rax)
        t0 += T


def _box_view(arr, origin, step, box, ch, groups):
    """The chunk's part of ``arr`` (N, C, *space) whose box position q sits at origin + step*q:
    (nn, G, C/g, *sub)."""
    idx = []
    for b, (o, s) in enumerate(zip(origin, step)):
        if ch.a < 0 or b > ch.a:
            idx.append(slice(o, o + s * box[b], s))
        elif b < ch.a:
            idx.append(o + s * ch.prefix[b])
        else:
            idx.append(slice(o + s * ch.u, o + s * ch.v, s))
    v = arr[(slice(ch.n0, ch.n1), slice(None)) + tuple(idx)]
    return v.reshape((v.shape[0], groups, v.shape[1] // groups) + v.shape[2:])


def _crop_view(seg, ch, box, rs, single=False, ext=0):
    """The real positions of a flat-window array seg (..., L) (C-contiguous, L = the size of the
    chunk's flat shape) as (..., *sub)."""
    isz = seg.itemsize
    return np.ndarray(seg.shape[:-1] + _sub(ch, box), dtype=seg.dtype, buffer=seg,
                      strides=seg.strides[:-1] + tuple(r * isz for r in _flat_geom(ch, box, rs, single, ext)[2]))


def _limit(workers, biggest, budget):
    """Threads such that the chunks running at once stay within the budget (elements)."""
    return max(1, min(workers, budget // max(1, biggest)))


def _gather(src, jobs, dst, spec, groups, workers, split):
    """Run the jobs (see _Job): each chunk of each job's box is written once, by one GEMM (or one
    fixed sequence of multiply-adds), so the result does not depend on the scheduling."""
    isz = spec.dtype.itemsize
    budget = max(1, spec.budget // isz)                            # elements
    jobs = list(jobs)
    tasks, biggest, wmats = [], 1, []
    for ji, job in enumerate(jobs):
        T, _, cdg, csg = job.wt.shape
        cd, cs = cdg * groups, csg * groups
        direct = (not job.flat and all(s == 1 for s in job.step) and all(o == 0 for o in job.origin)
                  and tuple(job.box) == dst.shape[2:])
        if job.how == "elementwise":
            per = cd                                               # one product buffer
        elif job.how == "tap":
            per = math.ceil(2 * cd * _waste(job.box, src.rs))      # result + one product
        elif job.shift:
            # patch of T/k taps (k = the last axis's) + result + one product; each span is at most
            # box[-1]/2 longer (_shift_ok), and spans hold at least a line of the box
            per = math.ceil((T // job.taps[0].counts[-1] * cs + 2 * cd) * (_waste(job.box, src.rs) + 0.5))
        elif job.flat:
            per = math.ceil((T * cs + cd) * _waste(job.box, src.rs))   # patch + result
        else:
            per = T * cs + (0 if direct else cd)                   # patch (+ result)
        chunks, most = _chunks(spec.n, job.box, per, budget, _SHIFT_ROWS if job.shift else None, split)
        if job.shift and most < job.box[-1]:    # chunks inside one line: spans too short to shift
            jobs[ji] = job = job._replace(flat=False, shift=False)
            per = T * cs + (0 if direct else cd)
            chunks, most = _chunks(spec.n, job.box, per, budget, split=split)
        tasks.append(zip(itertools.repeat(ji), chunks, itertools.repeat(direct)))
        biggest = max(biggest, per * most)
        wm = np.ascontiguousarray(job.wt.transpose(1, 2, 0, 3))   # (G, c_dst/g, T, c_src/g)
        wmats.append(_shift_weights(wm, job.taps[0].counts[-1]) if job.shift
                     else wm.reshape(wm.shape[0], cdg, T * csg))  # (G, c_dst/g, T*c_src/g)
    dflat = dst.reshape(dst.shape[0], groups, dst.shape[1] // groups, -1)

    def work(i, ji, ch, direct):
        job = jobs[ji]
        T, _, cdg, csg = job.wt.shape
        nn, sub = ch.n1 - ch.n0, _sub(ch, job.box)
        dv = _box_view(dst, job.origin, job.step, job.box, ch, groups)   # (nn, G, c_dst/g, *sub)
        if job.how == "elementwise":       # dv = sum over taps and channels of w * window
            tmp, = _buffers("work", [dv.shape], dv.dtype)
            t = 0
            for tb in job.taps:
                v = _tap_view(src, tb, ch, job.box, False)
                v = v.reshape((nn, groups, csg) + v.shape[2:])          # (nn, G, c, *counts, *sub)
                for idx in np.ndindex(*tb.counts):
                    w = v[(slice(None), slice(None), slice(None)) + idx]
                    for c in range(csg):
                        wv = job.wt[t, :, :, c].reshape((1, groups, cdg) + (1,) * len(sub))
                        np.multiply(wv, w[:, :, c:c + 1], out=tmp if t or c else dv)
                        if t or c:
                            np.add(dv, tmp, out=dv)
                    t += 1
            return
        if job.how == "tap":               # one GEMM per tap on the flat windows, accumulated
            span = _flat_geom(ch, job.box, src.rs, True)[0][0]
            seg, tmp = _buffers("work", [(nn, groups, cdg, span)] * 2, spec.dtype)
            t = 0
            for tb in job.taps:
                v = _tap_view(src, tb, ch, job.box, True, True)          # (nn, C, *counts, span)
                v = v.reshape((nn, groups, csg) + v.shape[2:])
                for idx in np.ndindex(*tb.counts):
                    np.matmul(job.wt[t], v[(slice(None),) * 3 + idx], out=tmp if t else seg)
                    if t:
                        np.add(seg, tmp, out=seg)
                    t += 1
            dv[...] = _crop_view(seg, ch, job.box, src.rs, True)
            return
        if job.shift:
            # The taps of the last axis are i = 0..k-1 at step st: the windows of tap (t', i) are
            # those of tap (t', 0) shifted by i*st flat columns, so one patch of the T/k taps
            # (t', 0) over spans e = (k-1)*st longer serves all k: result = sum_i W_i @ patch
            # shifted by i*st -- a k-times smaller copy for k GEMMs (the sum in the order of i).
            k, st, e, span = _shift_geom(job, ch, src.rs)
            patch, seg, tmp = _buffers("work", [(nn, groups, T // k * csg, span)]
                                       + [(nn, groups, cdg, span - e)] * 2, spec.dtype)
            _fill_shift_patch(patch, src, job, ch, groups, e)
            for i in range(k):
                np.matmul(wmats[ji][i], patch[..., i * st:i * st + span - e], out=tmp if i else seg)
                if i:
                    np.add(seg, tmp, out=seg)
            dv[...] = _crop_view(seg, ch, job.box, src.rs, ext=e)
            return
        if job.flat:                       # GEMM over the flat windows, then drop the padding
            span = math.prod(_flat_geom(ch, job.box, src.rs)[0])
            patch, seg = _buffers("work", [(nn, groups, T * csg, span), (nn, groups, cdg, span)],
                                  spec.dtype)
            _fill_patch(patch, src, job.taps, ch, job.box, groups, True)
            np.matmul(wmats[ji], patch, out=seg)
            dv[...] = _crop_view(seg, ch, job.box, src.rs)
            return
        R = math.prod(sub)
        patch, out = _buffers("work", [(nn, groups, T * csg) + sub, (nn, groups, cdg, R)], spec.dtype)
        _fill_patch(patch, src, job.taps, ch, job.box, groups, False)
        patch = patch.reshape(nn, groups, T * csg, R)
        if direct:                         # the GEMM writes straight into the result
            r0, r1 = _flat_range(ch, job.box)
            np.matmul(wmats[ji], patch, out=dflat[ch.n0:ch.n1, :, :, r0:r1])
        else:
            np.matmul(wmats[ji], patch, out=out)
            dv[...] = out.reshape(dv.shape)

    _run(work, itertools.chain.from_iterable(tasks), _limit(workers, biggest, budget), split)


# -------------------------------------------------------------------------------------- forward
def _weights(weight, spec, kidx, transposed=False):
    """weight (C_out, C_in/g, *k) -> (T, G, C_out/g, C_in/g) for the taps ``kidx`` (with
    ``transposed``: (T, G, C_in/g, C_out/g)), as a view of the contiguous im2col weight matrix
    (G, c_dst/g, T, c_src/g) that the GEMMs read. One strided copy (a run of taps is one slice):
    the fancy-index copy plus the transposing copy it replaces cost ~1.6 ms per call for a
    256x256x3x3 weight in the engine (measured), serially, while the whole 2-thread call takes ~16 ms."""
    G = spec.groups
    w = weight.reshape(G, spec.c_out // G, spec.c_in // G, -1)          # (G, C_out/g, C_in/g, K)
    if transposed:
        w = w.transpose(0, 2, 1, 3)
    ks = [int(k) for k in kidx]
    out = np.empty(w.shape[:2] + (len(ks), w.shape[2]), dtype=spec.dtype)   # (G, c_dst/g, T, c_src/g)
    step = ks[1] - ks[0] if len(ks) > 1 else 1
    if step and all(b - a == step for a, b in zip(ks, ks[1:])):
        stop = ks[0] + step * len(ks)
        out[...] = w[..., ks[0]:(stop if stop >= 0 else None):step].transpose(0, 1, 3, 2)
    else:
        for t, k in enumerate(ks):
            out[:, :, t] = w[..., k]
    return out.transpose(2, 0, 1, 3)


def _flops(spec, plan=None):
    T = len(plan.kidx) if plan is not None else math.prod(spec.kernel)
    return 2 * spec.n * math.prod(spec.out_sizes) * spec.c_out * (spec.c_in // spec.groups) * T


def _forward_taps(plan):
    """The live taps as read by the forward: block b reads phase b.ph at b.qoff + b.qstep*i."""
    return [_Taps(b.ph, b.qoff, b.qstep, b.counts) for b in plan.blocks]


def _forward(x, weight, spec):
    """Core forward on validated arrays: (N, C_out, *out) in the compute dtype.

    ``y[n, :, t] = sum_j W_j @ phase_j[n, :, t + qoff_j]`` over the live taps, chunk by chunk.
    """
    G = spec.groups
    plan = _plan(spec)
    if plan.blocks:                # every output is written by one chunk
        y = np.empty((spec.n, spec.c_out) + spec.out_sizes, dtype=spec.dtype)
        big = _flops(spec, plan) >= _PAR_MIN_FLOPS * _FWD_SERIAL
        workers = _max_workers(_flops(spec, plan)) if big else 1
        rs = tuple(math.prod(plan.sph[a + 1:]) for a in range(len(plan.sph)))
        how = _strategy(spec.c_in // G, spec.c_out // G, G)
        nd = len(spec.out_sizes)
        taps = _forward_taps(plan)
        job = _Job(taps, _weights(weight, spec, plan.kidx), spec.out_sizes, (0,) * nd, (1,) * nd, how,
                   *_windows(spec.out_sizes, rs, spec.c_out, taps, how))
        src = _phase_source(x, spec, plan, _tail(plan.sph, [job]), workers)
        _gather(src, [job], y, spec, G, workers, big)
    else:
        y = np.zeros((spec.n, spec.c_out) + spec.out_sizes, dtype=spec.dtype)
    if plan.dead:                  # dead taps multiply padding zeros: 0, or NaN for a non-finite w
        w = weight.reshape(weight.shape[0], weight.shape[1], -1)[:, :, list(plan.dead)]
        if not _finite(w):
            y += (w.astype(spec.dtype) * 0).sum(axis=(1, 2)).reshape((-1,) + (1,) * len(spec.kernel))
    return y


# ------------------------------------------------------------------------------------- backward
def _transpose_jobs(gy, weight, spec, plan, how, workers, flat_ok=True):
    """The transposed convolution of gy as gathers, one job per input phase: (the zero-padded
    gy source, the jobs, the flat kernel index of each job's taps in the job's tap order)."""
    # Input phase r of an axis holds grid slots [q0, q1) of real inputs; slot q sums, over the
    # run of taps i of that phase, W_i^T g[q - qoff0 - qstep*i]. Read in reverse tap order the
    # shifts increase: tap i' = count-1-i reads g at q - qoff_last + qstep*i'. g is zero-padded
    # by `front` (and `back`) so that every window is in range.
    front, back = [], []
    for ax, o in zip(plan.axes, spec.out_sizes):
        need_lo, need_hi = [0], [0]
        for (q0, q1, _), (_, _, c, qoff0, qstep) in zip(ax.fill, ax.runs):
            if q1 > q0:
                need_lo.append(qoff0 + qstep * (c - 1) - q0)
                need_hi.append(q1 - qoff0 - o)
        front.append(max(need_lo))
        back.append(max(need_hi))
    gshape = tuple(o + f + b for o, f, b in zip(spec.out_sizes, front, back))
    grs = tuple(math.prod(gshape[a + 1:]) for a in range(len(gshape)))
    jobs, kidxs = [], []
    for blk, combo in zip(plan.blocks, np.ndindex(*plan.nres)):
        fills = [ax.fill[r] for ax, r in zip(plan.axes, combo)]
        box = tuple(q1 - q0 for q0, q1, _ in fills)
        if min(box) < 1:
            continue
        start = tuple(q0 - qo - qs * (c - 1) + f for (q0, _, _), qo, qs, c, f
                      in zip(fills, blk.qoff, blk.qstep, blk.counts, front))
        kidx = np.flip(blk.kidx).ravel()
        wt = _weights(weight, spec, kidx, transposed=True)              # (T, G, C_in/g, C_out/g)
        taps = [_Taps(0, start, blk.qstep, blk.counts)]
        flat, shift = _windows(box, grs, spec.c_in, taps, how) if flat_ok or how == "tap" else (False, False)
        jobs.append(_Job(taps, wt, box, tuple(f[2] for f in fills), spec.stride, how, flat, shift))
        kidxs.append(kidx)
    src = None
    if jobs:
        src = _source(gshape, spec.c_out, spec.n, _tail(gshape, jobs), spec.dtype)
        _copy(src.grid[0][(slice(None), slice(None)) + tuple(slice(f, f + o) for f, o in
                                                             zip(front, spec.out_sizes))],
              gy, workers)
    return src, jobs, kidxs


def _grad_input(gy, weight, spec, plan):
    """dL/dx (N, C_in, *in) for dL/dy = gy (N, C_out, *out): the transposed convolution, one
    gather per input phase (see the module docstring). Non-finite weights: see
    _grad_input_nonfinite."""
    if plan.blocks and not _finite(weight):
        return _grad_input_nonfinite(gy, weight, spec, plan)
    G = spec.groups
    gx = np.zeros((spec.n, spec.c_in) + spec.in_sizes, dtype=spec.dtype)
    if not plan.blocks:
        return gx
    workers = _max_workers(_flops(spec, plan))
    src, jobs, _ = _transpose_jobs(gy, weight, spec, plan, _strategy(spec.c_out // G, spec.c_in // G, G),
                                   workers)
    if jobs:
        _gather(src, jobs, gx, spec, G, workers, _flops(spec, plan) >= _PAR_MIN_FLOPS)
    return gx


def _backward(gy, x, weight, spec, plan, gb):
    """(dL/dx, dL/dW) together: per input phase, the patch P of zero-padded gy windows gives
    ``dx = W^T P`` and, for the taps of that phase, ``(dW)^T += P x^T`` with x at the same
    positions (``dW_j = sum_r g[r - qoff_j] x[r]^T``: the same sum as in the module docstring,
    indexed by the input position r). One patch instead of two. Exact only when x, gy and W are
    finite -- the zero rows of the padded gy then multiply finite x -- and used only then."""
    G = spec.groups
    cgi, cgo = spec.c_in // G, spec.c_out // G
    if (not plan.blocks or _strategy(cgo, cgi, G) != "im2col" or _FORCE_MODE == "flat"
            # gb (the sums of gy, already computed) is finite only when gy is: one pass less
            or not (_finite(weight) and _finite(gb) and _finite(x))):
        return _grad_input(gy, weight, spec, plan), _grad_weight(gy, x, spec, plan, gb)
    workers = _max_workers(_flops(spec, plan))
    split = _flops(spec, plan) >= _PAR_MIN_FLOPS
    src, jobs, kidxs = _transpose_jobs(gy, weight, spec, plan, "im2col", workers)
    gx = np.zeros((spec.n, spec.c_in) + spec.in_sizes, dtype=spec.dtype)
    x = np.ascontiguousarray(x)
    slots, budget = _acc_slots(G * len(plan.kidx) * cgo * cgi, max(1, spec.budget // spec.dtype.itemsize))
    rows, T, pers, mins, biggest, wmats = [], 0, [], [], 1, []
    for ji, (job, kidx) in enumerate(zip(jobs, kidxs)):
        rows.append(T)
        T += len(kidx)
        if job.shift:    # patch of T/k taps, dx result + product, x with zeros off the real positions
            per = math.ceil((len(kidx) // job.taps[0].counts[-1] * cgo + 3 * cgi)
                            * (_waste(job.box, src.rs) + 0.5))
            most = _chunks(spec.n, job.box, per, budget, _SHIFT_ROWS, split)[1]
            if most < job.box[-1]:                              # spans too short to shift
                jobs[ji] = job = job._replace(flat=False, shift=False)
        if not job.shift:
            jobs[ji] = job = job._replace(flat=False)           # (plain flat windows: not here)
            per = len(kidx) * cgo + 2 * cgi                     # patch, dx chunk, x chunk
        pers.append(per)
        mins.append(_SHIFT_ROWS if job.shift else _FUSED_ROWS)
        biggest = max(biggest, per * _chunks(spec.n, job.box, per, budget, mins[ji], split)[1])
        wm = np.ascontiguousarray(job.wt.transpose(1, 2, 0, 3))   # (G, C_in/g, T, C_out/g)
        wmats.append(_shift_weights(wm, job.taps[0].counts[-1]) if job.shift else wm.reshape(G, cgi, -1))

    def chunks():
        for ji, job in enumerate(jobs):
            for ch in _chunks(spec.n, job.box, pers[ji], budget, mins[ji], split)[0]:
                yield ji, ch

    def shifted(slot, ji, job, ch):
        """A chunk of a "shift" job (see _gather): k GEMMs for dx and k for dW on shifted views
        of one patch of T/k taps, x laid out like the patch's columns with zeros between the
        real positions (so the padding columns add nothing to dW), per sample in order."""
        k, st, e, span = _shift_geom(job, ch, src.rs)
        nn, T1, L = ch.n1 - ch.n0, len(kidxs[ji]) // k, span - e
        patch, seg, tmp, xf, part = _buffers("work", [(nn, G, T1 * cgo, span), (G, cgi, L), (G, cgi, L),
                                                      (nn, G, cgi, L), (G, T1 * cgo, cgi)], spec.dtype)
        _fill_shift_patch(patch, src, job, ch, G, e)
        xf.fill(0)
        _crop_view(xf, ch, job.box, src.rs, ext=e)[...] = _box_view(x, job.origin, job.step, job.box, ch, G)
        dv = _box_view(gx, job.origin, job.step, job.box, ch, G)   # (nn, G, C_in/g, *sub)
        acc = accs[slot].reshape(G, T, cgo, cgi)
        for n in range(nn):
            xt = xf[n].transpose(0, 2, 1)                         # (G, L, C_in/g)
            for i in range(k):
                win = patch[n, :, :, i * st:i * st + L]           # (G, T/k * C_out/g, L)
                np.matmul(wmats[ji][i], win, out=tmp if i else seg)
                if i:
                    np.add(seg, tmp, out=seg)
                np.matmul(win, xt, out=part)                      # (dW)^T of the taps i, i + k, ...
                a = acc[:, rows[ji] + i:rows[ji] + len(kidxs[ji]):k]
                np.add(a, part.reshape(a.shape), out=a)
            dv[n] = _crop_view(seg, ch, job.box, src.rs, ext=e)

    S = min(slots, sum(1 for _ in chunks()))
    accs = np.zeros((S, G, T * cgo, cgi), dtype=spec.dtype)     # (dW)^T per slot, taps in job order
    M = math.prod(spec.in_sizes)

    def work(i, slot):   # chunk i goes to slot i % S; each slot is one thread, in chunk order
        for ji, ch in itertools.islice(chunks(), slot, None, S):
            job = jobs[ji]
            if job.shift:
                shifted(slot, ji, job, ch)
                continue
            Tp, nn, sub = len(kidxs[ji]), ch.n1 - ch.n0, _sub(ch, job.box)
            L = nn * math.prod(sub)
            patch, out, xm, part = _buffers("work", [(G, Tp * cgo, L), (G, cgi, L), (G, cgi, nn) + sub,
                                                     (G, Tp * cgo, cgi)], spec.dtype)
            _fill_patch(patch, src, job.taps, ch, job.box, G, False, gw_layout=True)
            direct = (nn == 1 and all(s_ == 1 for s_ in job.step) and tuple(job.box) == spec.in_sizes)
            if direct:                                          # dx and x of the chunk, in place
                r0, r1 = _flat_range(ch, job.box)
                np.matmul(wmats[ji], patch, out=gx[ch.n0].reshape(G, cgi, M)[:, :, r0:r1])
                xm = x[ch.n0].reshape(G, cgi, M)[:, :, r0:r1]
            else:
                order = (1, 2, 0) + tuple(range(3, 3 + len(sub)))
                np.matmul(wmats[ji], patch, out=out)             # (G, C_in/g, L)
                dv = _box_view(gx, job.origin, job.step, job.box, ch, G)
                dv[...] = out.reshape((G, cgi, nn) + sub).transpose(
                    (2, 0, 1) + tuple(range(3, 3 + len(sub))))
                xm[...] = _box_view(x, job.origin, job.step, job.box, ch, G).transpose(order)
            np.matmul(patch, xm.reshape(G, cgi, L).transpose(0, 2, 1), out=part)   # (G, Tp*C_out/g, C_in/g)
            acc = accs[slot, :, rows[ji] * cgo:(rows[ji] + Tp) * cgo]
            np.add(acc, part, out=acc)

    _run(work, [(s_,) for s_ in range(S)], _limit(workers, biggest, budget), split)
    acc = accs[0]
    for k in range(1, S):
        acc += accs[k]
    gw = np.zeros((G, cgo, cgi, math.prod(spec.kernel)), dtype=spec.dtype)
    gw[..., np.concatenate(kidxs)] = acc.reshape(G, T, cgo, cgi).transpose(0, 2, 3, 1)
    return gx, gw.reshape((spec.c_out, cgi) + spec.kernel)


def _grad_input_nonfinite(gy, weight, spec, plan):
    """dL/dx with non-finite weights, exactly as PyTorch: only products of a weight with a real
    output gradient exist. Products of two finite values run the normal path (non-finite values
    zeroed); every other product is NaN or +-inf, which is decided by exact counts -- transposed
    convolutions of 0/1 arrays with 0/1 weights -- of the products of each kind:

        NaN  : w NaN, or g NaN, or (w = +-inf and g = 0), or (g = +-inf and w = 0)
        +inf : w = +inf, g > 0 | w = -inf, g < 0 | g = +inf, w > 0 | g = -inf, w < 0
        -inf : the same with one sign flipped

    A position with a NaN product, or with both +inf and -inf products, is NaN; else +-inf if it
    has such a product; else the finite sum.
    """
    w = weight.astype(spec.dtype, copy=False)
    g = gy
    wf, gf = np.isfinite(w), np.isfinite(g)
    gx = _grad_input(np.where(gf, g, 0), np.where(wf, w, 0), spec, plan)
    G = spec.groups

    def count(pairs):              # positions with at least one product g_i * w_i (0/1 arrays)
        gg = np.concatenate([a.reshape((spec.n, G, -1) + g.shape[2:]) for a, _ in pairs], axis=2)
        ww = np.concatenate([b.reshape((G, -1) + w.shape[1:]) for _, b in pairs], axis=1)
        s2 = spec._replace(c_out=len(pairs) * spec.c_out)
        return _grad_input(gg.reshape((spec.n, -1) + g.shape[2:]).astype(spec.dtype),
                           ww.reshape((-1,) + w.shape[1:]).astype(spec.dtype), s2, plan) > 0

    ones_g, ones_w = np.ones(g.shape, bool), np.ones(w.shape, bool)
    w_inf, g_inf = np.isinf(w), np.isinf(g)
    nan = count([(np.isnan(g), ones_w), (ones_g, np.isnan(w)), (g == 0, w_inf), (g_inf, w == 0)])
    up = count([(g > 0, w == np.inf), (g < 0, w == -np.inf), (g == np.inf, w > 0),
                (g == -np.inf, w < 0)])
    down = count([(g < 0, w == np.inf), (g > 0, w == -np.inf), (g == -np.inf, w > 0),
                  (g == np.inf, w < 0)])
    gx[up] = np.inf
    gx[down] = -np.inf
    gx[nan | (up & down)] = np.nan
    return gx


def _grad_weight(gy, x, spec, plan, gb):
    """dL/dW (C_out, C_in/g, *k): the sum over chunks of gy_chunk @ patch_chunk^T (the forward's
    patch), accumulated in place in a fixed order (see below): besides the chunk buffers, at
    most _SLOTS weight-sized accumulators and partials."""
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    gw = np.zeros((G, cgo, cgi, K), dtype=spec.dtype)
    if plan.blocks:
        workers = _max_workers(_flops(spec, plan))
        out, nd = spec.out_sizes, len(spec.out_sizes)
        rs = tuple(math.prod(plan.sph[a + 1:]) for a in range(len(plan.sph)))
        taps, T = _forward_taps(plan), len(plan.kidx)
        flat = _use_flat(out, rs, spec.c_out)
        src = _phase_source(x, spec, plan, _tail(plan.sph, [_Job(taps, None, out, None, None, "",
                                                                  flat)]), workers)
        if flat and not _finite(src.flat):
            flat = False           # flat windows would multiply non-finite inputs by zeros
        slots, budget = _acc_slots(G * T * cgo * cgi, max(1, spec.budget // spec.dtype.itemsize))
        per = T * spec.c_in + spec.c_out                           # patch + gradient chunk
        if flat:
            per = math.ceil(per * _waste(out, rs))
        # bigger chunks than the forward's: each adds a weight-sized partial
        split = _flops(spec, plan) >= _PAR_MIN_FLOPS
        chunks, most = _chunks(spec.n, out, per, budget, 4 * _MIN_ROWS, split)
        S = min(slots, sum(1 for _ in chunks))

        def partial(ch, part):
            nn, sub = ch.n1 - ch.n0, _sub(ch, out)
            gv = _box_view(gy, (0,) * nd, (1,) * nd, out, ch, G)     # (nn, G, C_out/g, *sub)
            if flat:
                span = math.prod(_flat_geom(ch, out, rs)[0])
                L = nn * span
                g, patch = _buffers("work", [(G, cgo, nn, span), (G, T * cgi, L)], spec.dtype)
                g.fill(0)                                            # zeros off the real outputs
                _crop_view(g, ch, out, rs)[...] = gv.transpose((1, 2, 0) + tuple(range(3, gv.ndim)))
            else:
                L = nn * math.prod(sub)
                if nn == 1:                                          # gy itself, no copy
                    r0, r1 = _flat_range(ch, out)
                    g = gy[ch.n0].reshape(G, cgo, -1)[:, :, r0:r1]
                    patch, = _buffers("work", [(G, T * cgi, L)], spec.dtype)
                else:
                    g, patch = _buffers("work", [(G, cgo, nn) + sub, (G, T * cgi, L)], spec.dtype)
                    g[...] = gv.transpose((1, 2, 0) + tuple(range(3, gv.ndim)))
            _fill_patch(patch, src, taps, ch, out, G, flat, gw_layout=True)
            # (dW)^T = patch @ g^T: OpenBLAS runs this layout up to 2x faster than g @ patch^T
            np.matmul(patch, g.reshape(G, cgo, L).transpose(0, 2, 1), out=part)

        # Fixed reduction order whatever the scheduling: chunk i is added to slot i % S, each
        # slot by one thread in chunk order, and the S slots are summed in order at the end.
        accs = np.zeros((S, G, T * cgi, cgo), dtype=spec.dtype)

        def work(i, slot):
            part, = _buffers("acc", [(G, T * cgi, cgo)], spec.dtype)
            for ch in itertools.islice(_chunks(spec.n, out, per, budget, 4 * _MIN_ROWS, split)[0], slot, None, S):
                partial(ch, part)
                np.add(accs[slot], part, out=accs[slot])

        _run(work, [(s,) for s in range(S)], _limit(workers, per * most, budget), split)
        acc = accs[0]
        for k in range(1, S):
            acc += accs[k]
        gw[..., list(plan.kidx)] = acc.reshape(G, T, cgi, cgo).transpose(0, 3, 2, 1)
    if plan.dead:                  # dead taps: sum of g * 0, NaN where g has a non-finite value
        gwv = gw.reshape(spec.c_out, cgi, K)
        for o in np.flatnonzero(~np.isfinite(gb)):      # (a finite sum has only finite terms)
            if not np.isfinite(gy[:, o]).all():
                gwv[o][:, list(plan.dead)] = np.nan
    return gw.reshape((spec.c_out, cgi) + spec.kernel)


# ------------------------------------------------------------------------------------ public API
def conv(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
         padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
         causal_axes: int | Sequence[int] = (0,), memory_budget: int | None = None) -> np.ndarray:
    """N-D dilated convolution (cross-correlation, like ``torch.nn.functional.conv{1,2,3}d``).

    Shapes: ``x`` ``(N, C_in, *spatial)``, ``weight`` ``(C_out, C_in // groups, *kernel)``,
    ``bias`` ``(C_out,)`` or ``None`` -> ``(N, C_out, *out_spatial)``, with 1, 2 or 3 spatial axes
    (taken from the weight). ``stride`` and ``dilation`` are an int or one int per axis;
    ``padding`` is an int, one int per axis, ``(lo, hi)`` pairs per axis, or ``"valid"``,
    ``"same"`` (``out = ceil(n / stride)``), ``"causal"`` (all padding before on ``causal_axes``)
    or ``"full"`` -- see :func:`atrous.geometry.resolve_padding`. float32/float64 are preserved;
    float16 is computed in float32 and returned as float16. ``memory_budget`` (bytes) caps the
    work buffers for this call (default :func:`get_memory_budget`). NaN and inf propagate as in
    PyTorch; the cost follows the output size, not the stride or dilation.

    Dilated convolutions: Yu & Koltun (ICLR 2016); DeepLab's atrous convolution (Chen et al. 2017).

    >>> import numpy as np
    >>> x = np.arange(8, dtype=np.float64).reshape(1, 1, 8)          # (N, C_in, L)
    >>> w = np.array([[[1.0, 0.0, -1.0]]])                              # (C_out, C_in, k)
    >>> conv(x, w, dilation=2)                                          # x[t] - x[t + 4]
    array([[[-4., -4., -4., -4.]]])
    >>> conv(np.ones((2, 4, 16, 16), np.float32), np.ones((6, 2, 3, 3), np.float32),
    ...      padding="same", dilation=(2, 4), groups=2).shape
    (2, 6, 16, 16)
    """
    spec, x, weight, bias = _spec(x, weight, bias, stride, padding, dilation, groups, causal_axes,
                                  memory_budget)
    with np.errstate(all="ignore"):
        if spec.n == 0 or spec.c_out == 0 or spec.c_in == 0:
            y = np.zeros((spec.n, spec.c_out) + spec.out_sizes, dtype=spec.dtype)
        else:
            y = _forward(x, weight, spec)
        if bias is not None:
            y += bias.astype(spec.dtype).reshape((-1,) + (1,) * len(spec.kernel))
        return y.astype(spec.out_dtype, copy=False)


def conv_transpose(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrTuple = 1,
                   padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1, *, memory_budget: int | None = None) -> np.ndarray:
    """Transposed N-D convolution, the adjoint of :func:`conv` (``F.conv_transpose{1,2,3}d``).

    Shapes: ``x`` ``(N, C_in, *spatial)``, ``weight`` ``(C_in, C_out // groups, *kernel)`` (PyTorch's
    layout), ``bias`` ``(C_out,)`` -> ``(N, C_out, *out)`` with
    ``out = (n - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1`` per axis.
    ``padding`` is an int or one int per axis; ``output_padding`` must be smaller than ``stride``
    or ``dilation`` on each axis. It is the input-gradient of ``conv(z, weight, stride=stride,
    padding=padding, dilation=dilation, groups=groups)``.

    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0]]])                                     # (N, C_in, L)
    >>> w = np.array([[[1.0, 10.0]]])                                    # (C_in, C_out, k)
    >>> conv_transpose(x, w, stride=2, dilation=3)                       # taps land 3 apart
    array([[[ 1.,  0.,  2., 10.,  0., 20.]]])
    >>> conv_transpose(np.ones((1, 4, 8, 8)), np.ones((4, 3, 3, 3)), stride=2, padding=1,
    ...                output_padding=1, dilation=2).shape
    (1, 3, 18, 18)
    """
    spec, x, weight, bias = _spec(x, weight, bias, stride, padding, dilation, groups, (0,),
                                  memory_budget, transposed=True, output_padding=output_padding)
    with np.errstate(all="ignore"):
        if spec.n == 0 or spec.c_out == 0 or spec.c_in == 0:
            y = np.zeros((spec.n, spec.c_in) + spec.in_sizes, dtype=spec.dtype)
        else:
            y = _grad_input(x.astype(spec.dtype, copy=False), weight, spec, _plan(spec))
        if bias is not None:
            y += bias.astype(spec.dtype).reshape((-1,) + (1,) * len(spec.kernel))
        return y.astype(spec.out_dtype, copy=False)


def conv_grad(grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
              stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
              causal_axes: int | Sequence[int] = (0,), memory_budget: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`conv`: ``(grad_x, grad_weight, grad_bias)`` for ``grad_output = dL/dy``.

    Same arguments as :func:`conv` (``bias`` is optional and only shape-checked). Shapes:
    ``grad_output`` ``(N, C_out, *out_spatial)`` (exactly ``conv``'s output shape), ``x``
    ``(N, C_in, *spatial)``, ``weight`` ``(C_out, C_in // groups, *kernel)`` ->
    ``grad_x`` like ``x``, ``grad_weight`` like ``weight``, ``grad_bias`` ``(C_out,)`` (the sum of
    ``grad_output`` over N and space). ``grad_x`` is a transposed convolution, ``grad_weight`` a
    correlation of ``x`` with ``grad_output`` with stride and dilation exchanged (derivation in the
    module docstring).

    >>> import numpy as np
    >>> x = np.arange(6, dtype=np.float64).reshape(1, 1, 6)
    >>> w = np.array([[[1.0, 2.0]]])
    >>> gx, gw, gb = conv_grad(np.ones((1, 1, 4)), x, w, dilation=2)   # y[t] = x[t] + 2 x[t+2]
    >>> gx
    array([[[1., 1., 3., 3., 2., 2.]]])
    >>> gw, gb
    (array([[[ 6., 14.]]]), array([4.]))
    """
    spec, x, weight, bias = _spec(x, weight, bias, stride, padding, dilation, groups, causal_axes,
                                  memory_budget)
    gy = _as_float("grad_output", grad_output)
    want = (spec.n, spec.c_out) + spec.out_sizes
    if gy.shape != want:
        raise ValueError(f"grad_output must have conv's output shape {want}, got "
                         f"grad_output.shape={gy.shape}")
    dt = np.result_type(spec.out_dtype, gy.dtype)
    spec = spec._replace(out_dtype=dt, dtype=np.dtype(np.float32) if dt == np.float16 else dt)
    with np.errstate(all="ignore"):
        gy = gy.astype(spec.dtype, copy=False)
        gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
        if spec.n == 0 or spec.c_out == 0 or spec.c_in == 0:
            gx = np.zeros(x.shape, dtype=spec.dtype)
            gw = np.zeros(weight.shape, dtype=spec.dtype)
        else:
            gx, gw = _backward(gy, x.astype(spec.dtype, copy=False), weight, spec, _plan(spec), gb)
        return (gx.astype(spec.out_dtype, copy=False), gw.astype(spec.out_dtype, copy=False),
                gb.astype(spec.out_dtype, copy=False))
