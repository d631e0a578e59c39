"""The NumPy engine: N-D dilated convolution, its transpose and its gradients.

Dilated ("atrous") convolution as in Yu & Koltun, *Multi-Scale Context Aggregation by Dilated
Convolutions* (ICLR 2016) and Chen et al., *DeepLab* (TPAMI 2017): the ``k`` taps of a kernel sit
``dilation`` samples apart. Shapes and argument names are PyTorch's: input ``(N, C_in, *spatial)``,
weight ``(C_out, C_in // groups, *kernel)``, output ``(N, C_out, *out_spatial)``; 1-, 2- and 3-D go
through the same code, the rank is read from the weight. All per-axis arithmetic (effective kernel,
output sizes, padding modes) comes from :mod:`atrous.geometry`.

How it works (one layout serves forward, backward and transpose)
----------------------------------------------------------------
*Phase layout.* The input is zero-padded once and split, per axis, into ``stride`` phases
(polyphase): phase ``r`` holds padded positions ``r, r + s, r + 2s, ...``. Each phase is stored
channels-first with the batch folded into the spatial axes and everything flattened::

    xph[phase, c, row]       row = n * P + sum_a q_a * rs_a     (q_a: index inside the phase,
                                                                  P = prod(sph), rs_a = prod(sph[a+1:]))

Output ``t`` on axis ``a`` reads padded position ``t*s + d*j`` for tap ``j``, which lives in phase
``(d*j) % s`` at phase index ``t + (d*j) // s``. So on the flattened grid every tap is ONE constant
row offset ``off_j`` into ONE phase: the input window of a tap is a contiguous slice, and

    y_grid[:, row] = sum_j  W_j @ xph[phase_j, :, row + off_j]         (W_j: (C_out, C_in) per group)

is one large BLAS GEMM per tap ("tap" strategy), or a broadcast multiply-add for depthwise weights
("elementwise"); these compute on the phase grid and crop the rows that are not real outputs at the
end. The default ("im2col") stacks the tap windows of a block of output lines, cropped to the real
outputs, into a patch that stays in cache and runs one GEMM that writes straight into the result.
Rows are processed in chunks whose temporary buffers stay under the memory budget
(:func:`set_memory_budget`); besides the chunk buffers the engine holds one padded copy of the input
and the output on the phase grid (both proportional to the arrays themselves). Big calls run
their chunks on a small thread pool with single-threaded BLAS when ``threadpoolctl`` is installed,
because NumPy's copies and additions are otherwise single-threaded.

Backward, derived next to the forward
-------------------------------------
With the forward written per tap as ``y[row] = sum_j W_j x[row + off_j]`` (rows restricted to real
outputs) and ``gy = dL/dy`` placed on the same grid (zeros on rows that are not real outputs), the
chain rule gives:

* ``dL/dW_j = sum_row gy[row] x[row + off_j]^T`` -- a correlation of the input with the output
  gradient: the output gradient plays the kernel, stepping by the *dilation* ``d`` over the input
  while the output index steps by the *stride*: stride and dilation exchanged. One GEMM per tap with
  the long axis (rows) as the reduction axis.
* ``dL/dx[r] = sum_j W_j^T gy[r - off_j]`` over the taps ``j`` whose phase holds ``r`` -- the
  *transposed convolution* of ``gy`` (zero-inserted by the stride: the phases; kernel flipped: the
  offsets ``-off_j``; same dilation). It is computed like the forward, as a gather with the roles of
  ``x`` and ``y`` swapped, so every row of ``dx`` is written by one chunk. Undoing the phase split
  and dropping the padding (including the asymmetric pads of ``"same"`` and ``"causal"``) gives
  ``grad_x``. :func:`conv_transpose` is exactly this operator.
* ``dL/db = sum over N and spatial of gy``.
"""

from __future__ import annotations

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
# Rows of the phase grid per chunk: large enough for efficient GEMMs, small enough that a chunk's
# accumulator stays in cache. Tuned with benchmarks/engine.py.
_CHUNK_ELEMS = 1 << 18      # buffer elements (rows * channels) per chunk: 1 MiB of float32, ~L2
_MIN_ROWS = 256
# Tests set this to "tap", "im2col" or "elementwise" to exercise one strategy everywhere, and
# _PARALLEL to False to run chunks serially.
_FORCE = None
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

    A per-call ``memory_budget=`` overrides it. The budget caps the chunk buffers (patch matrices,
    per-tap products); the padded input copy and the output are extra.

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


# --------------------------------------------------------------------------------------- layout
class _Layout(NamedTuple):
    nph: int          # number of phases
    sph: tuple        # phase-grid size per axis
    rs: tuple         # row stride per axis on the flattened grid
    P: int            # rows per sample
    taps: list        # (phase, row offset) per tap, C order over the kernel
    last: int         # row of the last real output of a sample, relative to i*P


def _layout(spec) -> _Layout:
    padded = [m + lo + hi for m, (lo, hi) in zip(spec.in_sizes, spec.pads)]
    sph = tuple(-(-p // s) for p, s in zip(padded, spec.stride))
    rs = tuple(math.prod(sph[a + 1:]) for a in range(len(sph)))
    # tap j of output t reads padded position t*s + pos_j: phase pos_j % s, index t + pos_j // s
    pos = [geometry.tap_offsets(k, d) for k, d in zip(spec.kernel, spec.dilation)]
    taps = []
    for j in np.ndindex(*spec.kernel):
        ph, off = 0, 0
        for a, (ja, s) in enumerate(zip(j, spec.stride)):
            ph = ph * s + pos[a][ja] % s
            off += (pos[a][ja] // s) * rs[a]
        taps.append((ph, off))
    # the real outputs of sample i are rows i*P + [0, last] of the grid
    last = sum((o - 1) * r for o, r in zip(spec.out_sizes, rs))
    return _Layout(math.prod(spec.stride), sph, rs, math.prod(sph), taps, last)


def _tasks(spec, lay, row_elems, rows_cap, workers=1, whole=False):
    """Row ranges ``[r0, r1)`` covering the real output rows of every sample (every row if
    ``whole``). Small samples are merged and long ranges cut so that a range has at most
    ``rows_cap`` rows (the memory budget), about ``_CHUNK_ELEMS`` buffer elements (``row_elems``
    per row, to stay in cache), and there are a few ranges per worker thread."""
    span = lay.P if whole else lay.last + 1
    target = min(rows_cap, max(_MIN_ROWS, _CHUNK_ELEMS // max(row_elems, 1)))
    if workers > 1:
        target = min(target, max(_MIN_ROWS // 4, -(-spec.n * span // (3 * workers))))
    target = max(1, target)
    merged, cur = [], None
    for i in range(spec.n):
        a, b = i * lay.P, i * lay.P + span
        if cur is not None and b - cur[0] <= target:
            cur[1] = b
            continue
        if cur is not None:
            merged.append(cur)
        cur = [a, b]
    if cur is not None:
        merged.append(cur)
    return [(r0, min(r0 + target, b)) for a, b in merged for r0 in range(a, b, target)]


# ------------------------------------------------------------------------- chunk parallelism
# NumPy's element-wise work (patch copies, accumulation) is single-threaded. When threadpoolctl is
# installed, big calls run their row chunks on a thread pool, one chunk per thread at a time with
# single-threaded BLAS (NumPy releases the GIL inside copies, ufuncs and matmul). Without it, or
# for small calls, chunks run one after the other with multi-threaded BLAS.
_PAR_MIN_FLOPS = 2e7
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


def _max_workers(flops) -> int:
    if not _PARALLEL or flops < _PAR_MIN_FLOPS or _controller() is None:
        return 1
    blas = [lc.num_threads for lc in _controller().lib_controllers if lc.user_api == "blas"]
    return max(1, min(blas) if blas else 1)


def _run(work, tasks, workers):
    """``[work(*t) for t in tasks]``, on ``workers`` threads with single-threaded BLAS."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        return [work(*t) for t in tasks]
    global _POOL, _LOCK
    if _POOL is not None and _POOL[0] != os.getpid():    # forked child: the threads are gone
        _POOL, _LOCK = None, threading.Lock()
    # one parallel section at a time: the BLAS thread limit is process-wide state
    with _LOCK, _controller().limit(limits=1, user_api="blas"):
        if _POOL is None or _POOL[1] < workers:
            from concurrent.futures import ThreadPoolExecutor
            _POOL = (os.getpid(), workers,
                     ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atrous"))
        return list(_POOL[2].map(lambda t: work(*t), tasks))


def _phase_slices(spec, lay):
    """For each phase: (phase multi-index slices into the phase grid, slices into x)."""
    per_axis = []
    for m, (lo, _), s, _q_n in zip(spec.in_sizes, spec.pads, spec.stride, lay.sph):
        opts = []
        for r in range(s):
            q0 = max(0, -(-(lo - r) // s))           # first phase index inside the real input
            x0 = q0 * s + r - lo
            cnt = len(range(x0, m, s))
            opts.append((slice(q0, q0 + cnt), slice(x0, x0 + cnt * s if cnt else x0, s)))
        per_axis.append(opts)
    out = []
    for ph_idx in np.ndindex(*spec.stride):
        qs = tuple(per_axis[a][r][0] for a, r in enumerate(ph_idx))
        xs = tuple(per_axis[a][r][1] for a, r in enumerate(ph_idx))
        out.append((qs, xs))
    return out


def _copy(dst, src, workers):
    """``dst[...] = src``, split along axis 0 (channels) over the worker threads."""
    if workers <= 1 or dst.shape[0] < 2:
        dst[...] = src
        return
    step = -(-dst.shape[0] // (2 * workers))

    def part(a):
        dst[a:a + step] = src[a:a + step]
    _run(part, [(a,) for a in range(0, dst.shape[0], step)], workers)


def _to_phases(x, spec, lay, tail=0, workers=1):
    """(N, C, *spatial) -> zero-padded phase layout (nph, C, N*P + tail)."""
    c = x.shape[1]
    buf = np.zeros((lay.nph, c, spec.n * lay.P + tail), dtype=spec.dtype)
    grid = buf[:, :, :spec.n * lay.P].reshape((lay.nph, c, spec.n) + lay.sph)
    xt = x.transpose((1, 0) + tuple(range(2, x.ndim)))        # (C, N, *spatial), a view
    for ph, (qs, xs) in enumerate(_phase_slices(spec, lay)):
        _copy(grid[(ph, slice(None), slice(None)) + qs], xt[(slice(None), slice(None)) + xs],
              workers)
    return buf


def _from_phases(buf, spec, lay, c, workers=1):
    """Inverse of :func:`_to_phases`: phase layout (nph, C, N*P) -> (N, C, *in_sizes)."""
    out = np.empty((spec.n, c) + spec.in_sizes, dtype=spec.dtype)
    grid = buf.reshape((lay.nph, c, spec.n) + lay.sph)
    ot = out.transpose((1, 0) + tuple(range(2, out.ndim)))
    for ph, (qs, xs) in enumerate(_phase_slices(spec, lay)):
        _copy(ot[(slice(None), slice(None)) + xs], grid[(ph, slice(None), slice(None)) + qs],
              workers)
    return out


def _grid_to_out(grid, spec, lay, c, workers=1):
    """Grid (C, N*P) -> (N, C, *out_sizes), cropping the rows that are not real outputs."""
    g = grid.reshape((c, spec.n) + lay.sph)[(slice(None), slice(None))
                                             + tuple(slice(0, o) for o in spec.out_sizes)]
    out = np.empty((spec.n, c) + spec.out_sizes, dtype=spec.dtype)
    _copy(out.transpose((1, 0) + tuple(range(2, out.ndim))), g, workers)
    return out


def _strategy(c_red, c_acc, groups, K, backward=False) -> str:
    """How to contract ``c_red`` channels (per group) into ``c_acc`` ones over ``K`` taps."""
    if _FORCE is not None:
        return _FORCE
    if c_red == 1 and c_acc == 1 and groups > 1:
        return "elementwise"
    # im2col copies K*c_red values per row (in cache, on every thread) for one GEMM that reduces
    # over K*c_red; per-tap GEMMs reduce over c_red only and move about 3*K*c_acc values per row.
    # Measured with benchmarks/engine.py --strategy (noisy, shared machine): im2col won or tied
    # on every forward shape; for dL/dx per-tap GEMMs won once c_red >= 16 and c_red is not much
    # smaller than c_acc.
    if not backward or c_red * 2 <= c_acc or c_red < 16:
        return "im2col"
    return "tap"


def _weights(weight, spec):
    """weight (C_out, C_in//g, *k) -> per tap (K, G, C_out//g, C_in//g), compute dtype."""
    G, K = spec.groups, math.prod(spec.kernel)
    w = weight.astype(spec.dtype, copy=False).reshape(G, spec.c_out // G, spec.c_in // G, K)
    return np.ascontiguousarray(w.transpose(3, 0, 1, 2))


def _flops(spec):
    return 2 * spec.n * math.prod(spec.out_sizes) * spec.c_out * (spec.c_in // spec.groups) \
        * math.prod(spec.kernel)


def _accumulate(acc, terms, elementwise):
    """acc = sum of w @ v (or w * v) over ``terms`` = [(w, v), ...], with one temporary."""
    op = np.multiply if elementwise else np.matmul
    tmp = np.empty(acc.shape, dtype=acc.dtype) if len(terms) > 1 else None
    for i, (w, v) in enumerate(terms):
        op(w, v, out=acc if i == 0 else tmp)
        if i:
            np.add(acc, tmp, out=acc)


# -------------------------------------------------------------------------------------- forward
def _forward(x, weight, spec):
    """Core forward on validated arrays: returns (N, C_out, *out) in the compute dtype.

    ``y[:, row] = sum_j W_j @ xph[phase_j, :, row + off_j]`` on each chunk of grid rows.
    """
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    lay = _layout(spec)
    how = _strategy(cgi, cgo, G, K)
    workers = _max_workers(_flops(spec))
    wt = _weights(weight, spec)                                         # (K, G, C_out/g, C_in/g)
    if how == "im2col":
        # tail rows read past the grid by the window views (one plane for _forward_planes)
        tail = max(max(off for _, off in lay.taps), lay.rs[0])
        xph = _to_phases(x, spec, lay, tail, workers).reshape(lay.nph, G, cgi, -1)
        if len(spec.kernel) == 3 and spec.out_sizes[2] < 64:
            # short lines make the cropped windows slow to copy: keep the padded line ends
            rows_cap = spec.budget // (workers * K * spec.c_in * spec.dtype.itemsize)
            return _forward_planes(xph, wt, spec, lay, rows_cap, workers)
        return _forward_im2col(xph, wt, spec, lay, workers)
    xph = _to_phases(x, spec, lay, 0, workers).reshape(lay.nph, G, cgi, -1)
    row_elems = 2 * spec.c_out                                          # buffers per row
    tasks = _tasks(spec, lay, row_elems, spec.budget // (workers * row_elems * spec.dtype.itemsize),
                   workers)
    y = np.empty((G, cgo, spec.n * lay.P), dtype=spec.dtype)            # output on the grid

    def work(r0, r1):                                                   # acc: (G, C_out/g, R)
        _accumulate(y[:, :, r0:r1], [(wt[t], xph[ph, :, :, r0 + off:r1 + off])
                                     for t, (ph, off) in enumerate(lay.taps)],
                    how == "elementwise" and cgi == 1)
    _run(work, tasks, workers)
    return _grid_to_out(y.reshape(spec.c_out, -1), spec, lay, spec.c_out, workers)


def _forward_im2col(xph, wt, spec, lay, workers):
    """im2col straight into the output: a chunk is a block of output lines (axis 0) of one
    sample, or whole samples; its patch holds only real output positions, and the GEMM writes
    into the returned ``(N, C_out, *out)`` array, so no padding rows are computed or cropped.

    For tap ``j`` the window of the chunk is the phase grid seen at row offset ``off_j``:
    ``xph[phase_j, :, n*P + off_j:].reshape(*sph)[t0 range, :out1, :out2]``.
    """
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    out = spec.out_sizes
    M1 = math.prod(out[1:])                            # outputs per line of axis 0
    M = out[0] * M1                                    # outputs per sample
    wm = np.ascontiguousarray(wt.transpose(1, 2, 0, 3).reshape(G, 1, cgo, K * cgi))
    y = np.empty((spec.n, spec.c_out) + out, dtype=spec.dtype)
    per_pos = K * spec.c_in                            # patch elements per output position
    target = min(spec.budget // (workers * per_pos * spec.dtype.itemsize),
                 max(_MIN_ROWS, _CHUNK_ELEMS // per_pos))
    if workers > 1:
        target = min(target, max(_MIN_ROWS // 4, -(-spec.n * M // (3 * workers))))
    if M <= target:                                    # whole samples per chunk
        nn = max(1, target // M)
        tasks = [(n, min(n + nn, spec.n), 0, out[0]) for n in range(0, spec.n, nn)]
    else:                                              # blocks of lines (at least one line)
        cnt = max(1, target // M1)
        tasks = [(n, n + 1, a, min(a + cnt, out[0])) for n in range(spec.n)
                 for a in range(0, out[0], cnt)]
    crop = tuple(slice(0, o) for o in out[1:])

    def work(n0, n1, a, b):
        nn = n1 - n0
        patch = np.empty((G, nn, K * cgi, b - a) + out[1:], dtype=spec.dtype)
        for t, (ph, off) in enumerate(lay.taps):
            win = xph[ph, :, :, n0 * lay.P + off:n1 * lay.P + off]
            win = win.reshape((G, cgi, nn) + lay.sph)[(Ellipsis, slice(a, b)) + crop]
            patch[:, :, t * cgi:(t + 1) * cgi] = win.transpose((0, 2, 1) + tuple(range(3, win.ndim)))
        dst = y[n0:n1].reshape(nn, G, cgo, M)[:, :, :, a * M1:b * M1]    # (nn, G, C_out/g, R)
        np.matmul(wm, patch.reshape(G, nn, K * cgi, (b - a) * M1), out=dst.transpose(1, 0, 2, 3))

    _run(work, tasks, workers)
    return y


def _forward_planes(xph, wt, spec, lay, rows_cap, workers):
    """3-D im2col forward that skips the padded lines between output planes.

    On the flat grid the outputs of plane ``(n, t0)`` occupy ``L = (out1-1)*rs1 + out2`` rows
    starting at ``n*P + t0*rs0``; a chunk stacks a few such segments (one strided view per tap),
    so the GEMM sees no rows from the padding margins of axis 1.
    """
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    (o0, o1, o2), rs0, rs1 = spec.out_sizes, lay.rs[0], lay.rs[1]
    L = (o1 - 1) * rs1 + o2
    wm = np.ascontiguousarray(wt.transpose(1, 2, 0, 3).reshape(G, cgo, K * cgi))
    y = np.empty((G, cgo, spec.n * o0 * L), dtype=spec.dtype)     # (G, C_out/g, N*out0*L)
    target = max(1, min(rows_cap, max(8 * _MIN_ROWS, _CHUNK_ELEMS // (K * spec.c_in))))
    if workers > 1:
        target = min(target, max(_MIN_ROWS // 4, -(-spec.n * o0 * L // (3 * workers))))
    per = max(1, target // L)                                        # planes per chunk
    tasks = [(n, a, min(a + per, o0)) for n in range(spec.n) for a in range(0, o0, per)]

    def work(n, a, b):
        cnt, base = b - a, n * lay.P + a * rs0
        patch = np.empty((G, K * cgi, cnt, L), dtype=spec.dtype)        # (G, K*C_in/g, planes, L)
        for t, (ph, off) in enumerate(lay.taps):
            seg = xph[ph, :, :, base + off:base + off + cnt * rs0]       # (G, C_in/g, cnt*rs0)
            patch[:, t * cgi:(t + 1) * cgi] = seg.reshape(G, cgi, cnt, rs0)[..., :L]
        np.matmul(wm, patch.reshape(G, K * cgi, cnt * L),
                  out=y[:, :, (n * o0 + a) * L:(n * o0 + b) * L])

    _run(work, tasks, workers)
    isz = spec.dtype.itemsize
    ys = np.lib.stride_tricks.as_strided(                           # (C_out, N, out0, out1, out2)
        y, shape=(spec.c_out, spec.n, o0, o1, o2),
        strides=(spec.n * o0 * L * isz, o0 * L * isz, L * isz, rs1 * isz, isz), writeable=False)
    return ys.transpose(1, 0, 2, 3, 4).copy()


# ------------------------------------------------------------------------------------- backward
def _backward(gy, x, weight, spec, want_x=True, want_w=True):
    """(dL/dx, dL/dW) for dL/dy = gy (see the module docstring), either may be skipped.

    dL/dx is computed as a *gather* (the forward with roles swapped), so that every row of the
    result is written by one chunk: ``dx[phase p, row] = sum_{j in p} W_j^T gy[row - off_j]``.
    """
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    isz = spec.dtype.itemsize
    lay = _layout(spec)
    workers = _max_workers(_flops(spec))
    front = max(off for _, off in lay.taps)            # zero rows before the grid: row - off >= 0
    gyp = np.zeros((spec.c_out, front + spec.n * lay.P), dtype=spec.dtype)
    view = gyp[:, front:].reshape((spec.c_out, spec.n) + lay.sph)
    # gy may cover fewer outputs than the grid allows (conv_transpose's output_padding)
    _copy(view[(slice(None), slice(None)) + tuple(slice(0, o) for o in gy.shape[2:])],
          gy.transpose((1, 0) + tuple(range(2, gy.ndim))), workers)
    gyp = gyp.reshape(G, cgo, -1)                      # (G, C_out/g, front + rows)
    wt = _weights(weight, spec)                        # (K, G, C_out/g, C_in/g)
    gx = gw = None
    if want_x:
        wT = np.ascontiguousarray(wt.transpose(0, 1, 3, 2))              # (K, G, C_in/g, C_out/g)
        by_phase = [[(t, off) for t, (ph, off) in enumerate(lay.taps) if ph == p]
                    for p in range(lay.nph)]
        how = _strategy(cgo, cgi, G, K, backward=True)
        kmax = max(len(b) for b in by_phase)
        row_elems = kmax * spec.c_out if how == "im2col" else 2 * spec.c_in
        dx = np.empty((lay.nph, G, cgi, spec.n * lay.P), dtype=spec.dtype)
        for p, taps in enumerate(by_phase):
            if not taps:                               # no tap lands on this phase
                dx[p] = 0
        rng = _tasks(spec, lay, row_elems, spec.budget // (workers * row_elems * isz), workers,
                     whole=True)
        tasks = [(p, r0, r1) for p, taps in enumerate(by_phase) if taps for r0, r1 in rng]
        if how == "im2col":
            wm = [np.concatenate([wT[t] for t, _ in taps], axis=-1) if taps else None
                  for taps in by_phase]                                  # (G, C_in/g, Kp*C_out/g)

            def work(p, r0, r1):
                taps = by_phase[p]
                patch = np.empty((G, len(taps) * cgo, r1 - r0), dtype=spec.dtype)
                for i, (_, off) in enumerate(taps):
                    patch[:, i * cgo:(i + 1) * cgo] = gyp[:, :, front + r0 - off:front + r1 - off]
                np.matmul(wm[p], patch, out=dx[p, :, :, r0:r1])
        else:
            def work(p, r0, r1):                                        # acc: (G, C_in/g, R)
                _accumulate(dx[p, :, :, r0:r1],
                            [(wT[t], gyp[:, :, front + r0 - off:front + r1 - off])
                             for t, off in by_phase[p]], how == "elementwise" and cgo == 1)
        _run(work, tasks, workers)
        gx = _from_phases(dx.reshape(lay.nph, spec.c_in, -1), spec, lay, spec.c_in, workers)
    if want_w:
        xph = _to_phases(x, spec, lay, 0, workers).reshape(lay.nph, G, cgi, -1)

        def work(r0, r1):           # dW_j += gy[rows] @ x[rows + off_j]^T, reduced over rows
            dw = np.zeros((K, G, cgo, cgi), dtype=spec.dtype)
            tmp = np.empty((G, cgo, cgi), dtype=spec.dtype)
            g = gyp[:, :, front + r0:front + r1]
            for t, (ph, off) in enumerate(lay.taps):
                np.matmul(g, xph[ph, :, :, r0 + off:r1 + off].transpose(0, 2, 1), out=tmp)
                dw[t] += tmp
            return dw
        tasks = _tasks(spec, lay, spec.c_in + spec.c_out, 1 << 62, workers)
        dw = sum(_run(work, tasks, workers))
        # (K, G, C_out/g, C_in/g) -> (C_out, C_in/g, *k)
        gw = dw.transpose(1, 2, 3, 0).reshape((spec.c_out, cgi) + spec.kernel)
    return gx, gw


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
    chunk buffers for this call (default :func:`get_memory_budget`).

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
    if spec.n == 0 or spec.c_out == 0 or spec.c_in == 0:
        y = np.zeros((spec.n, spec.c_in) + spec.in_sizes, dtype=spec.dtype)
    else:
        y, _ = _backward(x.astype(spec.dtype, copy=False), None, weight, spec, want_w=False)
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
    gy = gy.astype(spec.dtype, copy=False)
    gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
    if spec.n == 0 or spec.c_out == 0 or spec.c_in == 0:
        gx = np.zeros(x.shape, dtype=spec.dtype)
        gw = np.zeros(weight.shape, dtype=spec.dtype)
    else:
        gx, gw = _backward(gy, x, weight, spec)
    return (gx.astype(spec.out_dtype, copy=False), gw.astype(spec.out_dtype, copy=False),
            gb.astype(spec.out_dtype, copy=False))
