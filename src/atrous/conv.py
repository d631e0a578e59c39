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

is one large BLAS GEMM per tap ("tap" strategy), or one GEMM on the stacked slices ("im2col"
strategy, better when ``C_in`` is small), or a broadcast multiply-add for depthwise weights
("elementwise"). Outputs are computed on the phase grid and the rows that are not real outputs are
cropped at the end. Rows are processed in chunks whose temporary buffers stay under the memory
budget (:func:`set_memory_budget`); besides the chunk buffers the engine holds one padded copy of
the input and the output on the phase grid (both proportional to the arrays themselves).

Backward, derived next to the forward
-------------------------------------
With the forward written per tap as ``y[row] = sum_j W_j x[row + off_j]`` (rows restricted to real
outputs), the chain rule gives, for a loss with ``gy = dL/dy`` placed on the same grid (zeros on rows
that are not real outputs):

* ``dL/dW_j = sum_row gy[row] x[row + off_j]^T`` -- a correlation of the input with the output
  gradient: the output gradient plays the kernel, stepping by the *dilation* ``d`` over the input
  while the output index steps by the *stride*: stride and dilation exchanged. One GEMM per tap with
  the long axis (rows) as the reduction axis.
* ``dL/dx[row + off_j] += W_j^T gy[row]`` -- a scatter-add of every tap, i.e. the *transposed
  convolution* of ``gy`` (zero-inserted by the stride, kernel flipped, same dilation). Undoing the
  phase split and dropping the padding (including the asymmetric pads of ``"same"`` and
  ``"causal"``) gives ``grad_x``. :func:`conv_transpose` is exactly this operator.
* ``dL/db = sum over N and spatial of gy``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import geometry

__all__ = ["conv", "conv_transpose", "conv_grad", "get_memory_budget", "set_memory_budget"]

_DEFAULT_BUDGET = 256 * 2**20
_BUDGET = _DEFAULT_BUDGET
# Rows of the phase grid per chunk: large enough for efficient GEMMs, small enough that a chunk's
# accumulator stays in cache. Tuned with benchmarks/engine.py.
_CHUNK_ELEMS = 1 << 18      # accumulator elements (rows * channels) per chunk
_MIN_ROWS = 1024
# Tests set this to "tap", "im2col" or "elementwise" to exercise one strategy everywhere.
_FORCE = None


# --------------------------------------------------------------------------------------- budget
def get_memory_budget() -> int:
    """Bytes the engine may use for its chunked work buffers (default 256 MiB).

    >>> get_memory_budget() > 0
    True
    """
    return _BUDGET


def set_memory_budget(nbytes) -> int:
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
    """Array view of ``a`` plus its compute dtype; TypeError for non-float dtypes."""
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
                f"conv_transpose (weight is (C_in, C_out // groups, *kernel)), x.shape={x.shape}")
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
    chunks: list      # (r0, r1) row ranges that cover every real output


def _layout(spec, acc_channels) -> _Layout:
    padded = [m + lo + hi for m, (lo, hi) in zip(spec.in_sizes, spec.pads)]
    sph = tuple(-(-p // s) for p, s in zip(padded, spec.stride))
    rs = tuple(math.prod(sph[a + 1:]) for a in range(len(sph)))
    P = math.prod(sph)
    taps = []
    for j in np.ndindex(*spec.kernel):
        ph, off = 0, 0
        for a, (ja, s, d) in enumerate(zip(j, spec.stride, spec.dilation)):
            ph = ph * s + (d * ja) % s
            off += ((d * ja) // s) * rs[a]
        taps.append((ph, off))
    nph = math.prod(spec.stride)
    # rows of sample i that hold real outputs: [i*P, i*P + last]
    last = sum((o - 1) * r for o, r in zip(spec.out_sizes, rs))
    target = max(_MIN_ROWS, _CHUNK_ELEMS // max(acc_channels, 1))
    chunks, cur = [], None
    for i in range(spec.n):
        a, b = i * P, i * P + last + 1
        if cur is not None and b - cur[0] <= target:
            cur[1] = b
            continue
        if cur is not None:
            chunks.append(tuple(cur))
        cur = [a, b]
    if cur is not None:
        chunks.append(tuple(cur))
    return _Layout(nph, sph, rs, P, taps, chunks)


def _split(chunks, rows):
    """Cut row ranges into pieces of at most ``rows`` rows."""
    for r0, r1 in chunks:
        for a in range(r0, r1, rows):
            yield a, min(a + rows, r1)


def _phase_slices(spec, lay):
    """For each phase: (phase multi-index slices into the phase grid, slices into x)."""
    per_axis = []
    for m, (lo, _), s, q_n in zip(spec.in_sizes, spec.pads, spec.stride, lay.sph):
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


def _to_phases(x, spec, lay):
    """(N, C, *spatial) -> zero-padded phase layout (nph, C, N*P)."""
    c = x.shape[1]
    buf = np.zeros((lay.nph, c, spec.n * lay.P), dtype=spec.dtype)
    grid = buf.reshape((lay.nph, c, spec.n) + lay.sph)
    xt = x.transpose((1, 0) + tuple(range(2, x.ndim)))        # (C, N, *spatial), a view
    for ph, (qs, xs) in enumerate(_phase_slices(spec, lay)):
        grid[(ph, slice(None), slice(None)) + qs] = xt[(slice(None), slice(None)) + xs]
    return buf


def _from_phases(buf, spec, lay, c):
    """Inverse of :func:`_to_phases`: phase layout (nph, C, N*P) -> (N, C, *in_sizes)."""
    out = np.empty((spec.n, c) + spec.in_sizes, dtype=spec.dtype)
    grid = buf.reshape((lay.nph, c, spec.n) + lay.sph)
    ot = out.transpose((1, 0) + tuple(range(2, out.ndim)))
    for ph, (qs, xs) in enumerate(_phase_slices(spec, lay)):
        ot[(slice(None), slice(None)) + xs] = grid[(ph, slice(None), slice(None)) + qs]
    return out


def _grid_to_out(grid, spec, lay, c):
    """Grid (C, N*P) -> (N, C, *out_sizes), cropping the rows that are not real outputs."""
    g = grid.reshape((c, spec.n) + lay.sph)[(slice(None), slice(None))
                                             + tuple(slice(0, o) for o in spec.out_sizes)]
    return np.ascontiguousarray(g.transpose((1, 0) + tuple(range(2, g.ndim))))


def _out_to_grid(gy, spec, lay):
    """(N, C_out, *out) -> zero grid (C_out, N*P) holding gy at the real output rows."""
    grid = np.zeros((spec.c_out, spec.n * lay.P), dtype=spec.dtype)
    view = grid.reshape((spec.c_out, spec.n) + lay.sph)
    # gy may cover fewer outputs than the grid allows (conv_transpose's output_padding)
    view[(slice(None), slice(None)) + tuple(slice(0, o) for o in gy.shape[2:])] = \
        gy.transpose((1, 0) + tuple(range(2, gy.ndim)))
    return grid


def _strategy(spec) -> str:
    if _FORCE is not None:
        return _FORCE
    cg_in = spec.c_in // spec.groups
    if cg_in == 1 and spec.groups > 1:
        return "elementwise"
    K = math.prod(spec.kernel)
    # im2col copies K*C_in values per row to run one GEMM; per-tap accumulation moves about
    # 2*K*C_out. Stack the taps when the copy is the cheaper of the two, or the GEMMs are tiny.
    if cg_in * 2 <= spec.c_out // spec.groups or cg_in < 16:
        return "im2col"
    return "tap"


def _weights(weight, spec):
    """weight (C_out, C_in//g, *k) -> per tap (K, G, C_out//g, C_in//g), compute dtype."""
    G, K = spec.groups, math.prod(spec.kernel)
    w = weight.astype(spec.dtype, copy=False).reshape(G, spec.c_out // G, spec.c_in // G, K)
    return np.ascontiguousarray(w.transpose(3, 0, 1, 2))


def _rows_for(budget, bytes_per_row):
    return max(1, budget // max(bytes_per_row, 1))


# -------------------------------------------------------------------------------------- forward
def _forward(x, weight, spec):
    """Core forward on validated arrays: returns (N, C_out, *out) in the compute dtype."""
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    isz = spec.dtype.itemsize
    lay = _layout(spec, spec.c_out)
    xph = _to_phases(x, spec, lay).reshape(lay.nph, G, cgi, -1)        # (nph, G, C_in/g, rows)
    wt = _weights(weight, spec)                                         # (K, G, C_out/g, C_in/g)
    y = np.empty((G, cgo, spec.n * lay.P), dtype=spec.dtype)            # output on the grid
    how = _strategy(spec)
    if how == "im2col":
        wm = np.ascontiguousarray(wt.transpose(1, 2, 0, 3).reshape(G, cgo, K * cgi))
        rows = _rows_for(spec.budget, K * spec.c_in * isz)
        patch = np.empty((G, K * cgi, min(rows, max((b - a for a, b in lay.chunks), default=0))),
                         dtype=spec.dtype)
        for r0, r1 in _split(lay.chunks, rows):
            p = patch[:, :, :r1 - r0]
            for t, (ph, off) in enumerate(lay.taps):                   # (G, K*C_in/g, R)
                p[:, t * cgi:(t + 1) * cgi] = xph[ph, :, :, r0 + off:r1 + off]
            np.matmul(wm, p, out=y[:, :, r0:r1])
    else:
        rows = _rows_for(spec.budget, spec.c_out * isz)
        tmp_buf = np.empty(spec.c_out * min(rows, spec.n * lay.P), dtype=spec.dtype)
        ew = how == "elementwise" and cgi == 1       # wt[t]: (G, C_out/g, 1), broadcast multiply
        for r0, r1 in _split(lay.chunks, rows):
            acc = y[:, :, r0:r1]                                         # (G, C_out/g, R)
            tmp = tmp_buf[:acc.size].reshape(acc.shape)
            for t, (ph, off) in enumerate(lay.taps):
                xs = xph[ph, :, :, r0 + off:r1 + off]                    # (G, C_in/g, R)
                if ew:
                    np.multiply(wt[t], xs, out=acc if t == 0 else tmp)
                else:
                    np.matmul(wt[t], xs, out=acc if t == 0 else tmp)
                if t:
                    np.add(acc, tmp, out=acc)
    return _grid_to_out(y.reshape(spec.c_out, -1), spec, lay, spec.c_out)


# ------------------------------------------------------------------------------------- backward
def _grad_input(gy, weight, spec):
    """dL/dx for dL/dy = gy: the transposed convolution, as a scatter-add of every tap.

    ``dx[row + off_j] += W_j^T gy[row]`` (see the module docstring). Returns (N, C_in, *in_sizes).
    """
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    isz = spec.dtype.itemsize
    lay = _layout(spec, spec.c_in)
    gyg = _out_to_grid(gy, spec, lay).reshape(G, cgo, -1)               # (G, C_out/g, rows)
    dx = np.zeros((lay.nph, G, cgi, spec.n * lay.P), dtype=spec.dtype)
    wt = _weights(weight, spec)                                         # (K, G, C_out/g, C_in/g)
    how = _strategy(spec)
    if how == "im2col":       # col2im: one GEMM for all taps, then K shifted adds
        wm = np.ascontiguousarray(wt.transpose(1, 0, 3, 2).reshape(G, K * cgi, cgo))
        rows = _rows_for(spec.budget, K * spec.c_in * isz)
    else:
        wm = np.ascontiguousarray(wt.transpose(0, 1, 3, 2))              # (K, G, C_in/g, C_out/g)
        rows = _rows_for(spec.budget, spec.c_in * isz)
    for r0, r1 in _split(lay.chunks, rows):
        g = gyg[:, :, r0:r1]
        if how == "im2col":
            cols = np.matmul(wm, g)                                     # (G, K*C_in/g, R)
            for t, (ph, off) in enumerate(lay.taps):
                d = dx[ph, :, :, r0 + off:r1 + off]
                np.add(d, cols[:, t * cgi:(t + 1) * cgi], out=d)
        else:
            tmp = np.empty((G, cgi, r1 - r0), dtype=spec.dtype)
            for t, (ph, off) in enumerate(lay.taps):
                if how == "elementwise" and cgo == 1:
                    np.multiply(wm[t], g, out=tmp)                       # (G,1,1) * (G,1,R)
                else:
                    np.matmul(wm[t], g, out=tmp)
                d = dx[ph, :, :, r0 + off:r1 + off]
                np.add(d, tmp, out=d)
    return _from_phases(dx.reshape(lay.nph, spec.c_in, -1), spec, lay, spec.c_in)


def _grad_weight(gy, x, spec):
    """dL/dW_j = sum_row gy[row] x[row + off_j]^T: one GEMM per tap reducing over the rows."""
    G, K = spec.groups, math.prod(spec.kernel)
    cgi, cgo = spec.c_in // G, spec.c_out // G
    lay = _layout(spec, spec.c_out)
    xph = _to_phases(x, spec, lay).reshape(lay.nph, G, cgi, -1)
    gyg = _out_to_grid(gy, spec, lay).reshape(G, cgo, -1)
    dw = np.zeros((K, G, cgo, cgi), dtype=spec.dtype)
    tmp = np.empty((G, cgo, cgi), dtype=spec.dtype)
    rows = max(_MIN_ROWS, _CHUNK_ELEMS // max(spec.c_in + spec.c_out, 1))
    for r0, r1 in _split(lay.chunks, rows):
        g = gyg[:, :, r0:r1]
        for t, (ph, off) in enumerate(lay.taps):
            xs = xph[ph, :, :, r0 + off:r1 + off]                        # (G, C_in/g, R)
            np.matmul(g, xs.transpose(0, 2, 1), out=tmp)
            dw[t] += tmp
    # (K, G, C_out/g, C_in/g) -> (C_out, C_in/g, *k)
    return dw.transpose(1, 2, 3, 0).reshape((spec.c_out, cgi) + spec.kernel)


# ------------------------------------------------------------------------------------ public API
def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, causal_axes=(0,),
         memory_budget=None):
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


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, *, memory_budget=None):
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
        y = _grad_input(x.astype(spec.dtype, copy=False), weight, spec)
    if bias is not None:
        y += bias.astype(spec.dtype).reshape((-1,) + (1,) * len(spec.kernel))
    return y.astype(spec.out_dtype, copy=False)


def conv_grad(grad_output, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
              causal_axes=(0,), memory_budget=None):
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
        gx = _grad_input(gy, weight, spec)
        gw = _grad_weight(gy, x, spec)
    return (gx.astype(spec.out_dtype, copy=False), gw.astype(spec.out_dtype, copy=False),
            gb.astype(spec.out_dtype, copy=False))
