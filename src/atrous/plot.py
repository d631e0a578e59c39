"""Every matplotlib figure of atrous (extra: ``plot``). Imported lazily; figures are drawn from
saved data (dicts/arrays/JSON records), never from state that only lived in memory.
"""

from __future__ import annotations

from ._optional import require


def _plt():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- analysis figures (coverage / path counts / field growth) ---

_AXIS_COLORS = ("#1f77b4", "#d95f02", "#7570b3")      # axis 0, 1, 2 in every panel of `atrous show`


def _short(name: str, n: int = 22) -> str:
    """``name`` cut in the middle to at most ``n`` characters (``layer4.1.c…v2``)."""
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n - n // 2):]


def analysis_field(data, path):
    """Path-count map of the output's receptive field (holes in red) and the field size per layer.

    ``data`` is what ``atrous show`` saves (:func:`atrous.analysis.commands.show_data`): ``coverage``
    (``Coverage.to_dict()``), optional ``path_counts_2d`` and ``layers`` (name, size, covered).
    Offsets are measured from the output's centre (the centre of its field), as in ``atrous
    compare``'s ``fields.png``. Each axis has its own panel and colour; deep models get thinned,
    shortened layer labels. The figure is written atomically.

    >>> import tempfile, os, atrous
    >>> from atrous.analysis.commands import show_data, parse_layers
    >>> d = show_data(parse_layers("k3d1,k3d2,k3d8"))
    >>> p = os.path.join(tempfile.mkdtemp(), "f.png"); analysis_field(d, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    cov = data["coverage"]
    layers = data["layers"]
    n_layers = len(layers)
    right_w = min(max(5.0, 0.22 * n_layers), 14.0)
    fig = plt.figure(figsize=(6.5 + right_w, 4.6))
    outer = fig.add_gridspec(1, 2, width_ratios=[6.0, right_w], wspace=0.25)
    title = (f"{cov['name'] or 'output'}: extent {cov['extent']}, covered {cov['covered']}, "
             f"cv {', '.join(f'{c:.2f}' for c in cov['cv'])}")
    if "path_counts_2d" in data:
        a0 = fig.add_subplot(outer[0])
        m = np.asarray(data["path_counts_2d"], dtype=np.float64)
        c0, c1 = (m.shape[0] - 1) / 2, (m.shape[1] - 1) / 2
        img = np.where(m > 0, np.log10(np.maximum(m, 1)), np.nan)
        cmap = plt.get_cmap("viridis").with_extremes(bad="tab:red")
        extent = (-c1 - 0.5, c1 + 0.5, c0 + 0.5, -c0 - 0.5)
        im = a0.imshow(img, cmap=cmap, extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=a0, label="log10 path count (red: hole)")
        a0.set_xlabel("input offset from the output's centre, axis 1", color=_AXIS_COLORS[1])
        a0.set_ylabel("input offset from the output's centre, axis 0", color=_AXIS_COLORS[0])
        a0.set_title(title, fontsize=9)
    else:
        pcs = cov["path_counts"]
        rows = outer[0].subgridspec(len(pcs), 1, hspace=0.55)
        for ax_i, pc in enumerate(pcs):
            a = fig.add_subplot(rows[ax_i])
            pc = np.asarray(pc, dtype=np.float64)
            x = np.arange(len(pc)) - (len(pc) - 1) / 2
            col = _AXIS_COLORS[ax_i % len(_AXIS_COLORS)]
            a.bar(x, pc, width=1.0, color=col, edgecolor="white" if len(pc) <= 60 else col, linewidth=0.3)
            holes = x[pc == 0]
            a.plot(holes, np.zeros_like(holes), "|", color="tab:red", ms=12, mew=2,
                   label=f"hole ({len(holes)})" if len(holes) else None)
            a.set_ylabel(f"paths\naxis {ax_i}", color=col)
            a.tick_params(axis="y", colors=col)
            a.set_xlabel(f"input offset from the output's centre, axis {ax_i}", fontsize=8)
            if len(holes):
                a.legend(fontsize=7, loc="upper right")
            if ax_i == 0:
                a.set_title(title, fontsize=9)
    a1 = fig.add_subplot(outer[1])
    x = np.arange(1, n_layers + 1)
    ndim = len(layers[0]["size"]) if layers else 0
    sizes = [[r["size"][ax_i] for r in layers] for ax_i in range(ndim)]
    covs = [[r["covered"][ax_i] if r["covered"] else np.nan for r in layers] for ax_i in range(ndim)]
    few = n_layers <= 40
    for ax_i in range(ndim):
        col = _AXIS_COLORS[ax_i % len(_AXIS_COLORS)]
        lw, ms = (4.5 - 1.5 * ax_i, 9 - 3 * ax_i) if ndim > 1 else (1.8, 6)   # coinciding axes stay visible
        same = next((j for j in range(ax_i) if sizes[j] == sizes[ax_i] and np.allclose(covs[j], covs[ax_i],
                                                                                     equal_nan=True)), None)
        tag = f" (= axis {same})" if same is not None else ""
        a1.plot(x, sizes[ax_i], marker="os^"[ax_i % 3] if few else None, ms=ms, lw=lw, color=col,
                alpha=0.85, label=f"size, axis {ax_i}{tag}")
        a1.plot(x, covs[ax_i], marker="x" if few else None, ms=ms, lw=max(lw - 1, 1), linestyle="--",
                color=col, alpha=0.85, label=f"covered, axis {ax_i}{tag}")
    step = max(1, int(np.ceil(n_layers / 40)))          # at most ~40 labels, each readable
    ticks = x[::step]
    a1.set_xticks(ticks)
    a1.set_xticklabels([_short(layers[i - 1]["name"]) for i in ticks], rotation=60, ha="right",
                       fontsize=7 if n_layers <= 40 else 6)
    a1.set_xlim(0.5, n_layers + 0.5)
    a1.set_ylabel("input samples")
    a1.set_title("receptive field per layer" + (f" (one label in {step}; {n_layers} layers)" if step > 1 else ""),
                 fontsize=9)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    _save_atomic(fig, path)


# --- compare figures (accuracy vs params/MACs, field pictures, learning curves) ---
# Each takes the summary rows of atrous.compare.report.summarize (built from results.jsonl) and
# writes one PNG atomically (temporary file + os.replace): never a half-written figure.

def _save_atomic(fig, path):
    import os

    from ._io import atomic_write
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)


# One colour per strategy / output-stride variant, the same in every figure and every run.
_COLORS = {"plain": "#7f7f7f", "pool": "#1f77b4", "stride": "#ff7f0e", "large": "#9467bd",
           "dilated": "#2ca02c", "gridded": "#d62728",
           "os32": "#440154", "os16": "#3b528b", "os8": "#21918c", "os4": "#5ec962", "os2": "#b5de2b",
           "os1": "#fde725"}


def _color(name: str) -> str:
    """The fixed colour of a strategy or variant (``'dilated'`` is always green)."""
    if name in _COLORS:
        return _COLORS[name]
    import zlib
    return f"C{zlib.crc32(name.encode()) % 10}"


def _dodge(xs, factor=1.06):
    """Spread points that share an x (on a log axis) sideways, so none hides another: a group of m
    equal values becomes ``x * factor**(i - (m-1)/2)``."""
    out, groups = list(xs), {}
    for i, x in enumerate(xs):
        groups.setdefault(x, []).append(i)
    for x, idx in groups.items():
        for j, i in enumerate(idx):
            out[i] = x * factor ** (j - (len(idx) - 1) / 2)
    return out


def compare_accuracy(rows, path):
    """Test metric (mean ± std over seeds; no bar when one seed) per strategy, and vs parameters and
    vs MACs. Strategies that share a cost (same parameters, same MACs) are spread sideways and
    listed in the panel, so every point stays visible.

    >>> import tempfile, os
    >>> rows = [{"strategy": "plain", "mean": .9, "std": .01, "params": 100, "macs": 1000,
    ...          "metric_name": "accuracy"}, {"strategy": "dilated", "mean": .92, "std": None,
    ...          "params": 100, "macs": 1000, "metric_name": "accuracy"}]
    >>> p = os.path.join(tempfile.mkdtemp(), "a.png"); compare_accuracy(rows, p); os.path.getsize(p) > 0
    True
    """
    plt = _plt()
    rows = [r for r in rows if r.get("mean") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True,
                             gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
    metric = rows[0]["metric_name"] if rows else "accuracy"
    ax = axes[0]
    for i, r in enumerate(rows):
        ax.errorbar(i, 100 * r["mean"], yerr=100 * (r.get("std") or 0), fmt="o", capsize=4,
                    color=_color(r["strategy"]), ms=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["strategy"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.set_title("per strategy", fontsize=9)
    for ax, key, label in ((axes[1], "params", "parameters"), (axes[2], "macs", "MACs per sample")):
        xs = _dodge([r[key] for r in rows])
        for x, r in zip(xs, rows):
            ax.errorbar(x, 100 * r["mean"], yerr=100 * (r.get("std") or 0), fmt="o", capsize=4,
                        color=_color(r["strategy"]), label=r["strategy"], ms=7)
        shared = {}
        for r in rows:
            shared.setdefault(r[key], []).append(r["strategy"])
        notes = [f"{', '.join(v)} share {k:,}" for k, v in shared.items() if len(v) > 1]
        if notes:
            ax.text(0.02, 0.02, "spread sideways: " + "; ".join(notes), transform=ax.transAxes,
                    fontsize=7, va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8, loc="best")
    fig.suptitle(f"test {metric} vs cost (mean ± std over seeds; no bar: one seed)")
    _save_atomic(fig, path)


def compare_fields(rows, path):
    """Per strategy, the number of paths from each input offset to one output (log scale, with
    ticks) over the receptive field, offsets from the output's centre: red marks are holes.

    >>> import tempfile, os
    >>> rows = [{"strategy": "gridded", "path_counts": [1, 0, 2, 0, 1], "coverage": .6,
    ...          "field": [5]}]
    >>> p = os.path.join(tempfile.mkdtemp(), "f.png"); compare_fields(rows, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    rows = [r for r in rows if r.get("path_counts") is not None]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.35 * len(rows) + 0.9), squeeze=False,
                             sharex=True)
    for ax, r in zip(axes[:, 0], rows):
        pc = np.asarray(r["path_counts"], dtype=np.float64)
        while pc.ndim > 1:                       # N-D: the slice through the centre of the others
            pc = pc[pc.shape[0] // 2]
        off = np.arange(len(pc)) - (len(pc) - 1) / 2
        ax.bar(off[pc > 0], pc[pc > 0], width=1.0, color=_color(r["strategy"]))
        holes = off[pc == 0]
        top = max(pc.max(), 1.0)
        ax.set_yscale("log")
        ax.set_ylim(0.5, top * 2)
        ax.plot(holes, np.full_like(holes, 0.7), "|", color="tab:red", ms=10, mew=2)
        ax.set_ylabel(r["strategy"], rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.text(1.01, 0.5, f"field {r['field'][0]}\ncoverage {100 * r['coverage']:.0f}%",
                transform=ax.transAxes, ha="left", va="center", fontsize=8)
    axes[-1, 0].set_xlabel("input offset from the output's centre (samples); bar height: path count "
                           "(log scale), red: hole")
    fig.suptitle("receptive field and coverage per strategy")
    _save_atomic(fig, path)


def compare_curves(rows, path):
    """Learning curves: test metric per epoch per strategy, mean over seeds with a min-max band
    (runs of different lengths, as under the plateau rule, are averaged over the seeds still running).

    >>> import tempfile, os
    >>> rows = [{"strategy": "plain", "curves": [[.5, .7], [.6, .8, .85]], "metric_name": "accuracy"}]
    >>> p = os.path.join(tempfile.mkdtemp(), "c.png"); compare_curves(rows, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        curves = [c for c in r.get("curves", []) if len(c)]
        if not curves:
            continue
        n = max(len(c) for c in curves)
        c = np.full((len(curves), n), np.nan)
        for i, cu in enumerate(curves):
            c[i, :len(cu)] = cu
        c *= 100                                                    # (seeds, epochs)
        ep = np.arange(1, n + 1)
        col = _color(r["strategy"])
        ax.plot(ep, np.nanmean(c, 0), marker=".", label=r["strategy"], color=col)
        ax.fill_between(ep, np.nanmin(c, 0), np.nanmax(c, 0), color=col, alpha=0.2)
    metric = rows[0]["metric_name"] if rows else "accuracy"
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning curves (mean, min-max over seeds)")
    _save_atomic(fig, path)


def compare_output_stride(rows, path):
    """The output-stride study: test mIoU and boundary-band accuracy per output stride (mean ± std
    over seeds; coarse strides left), and mIoU vs MACs.

    >>> import tempfile, os
    >>> rows = [{"strategy": f"os{s}", "output_stride": s, "mean": m, "std": .01, "n": 3, "macs": 10 ** 6 // s,
    ...          "band": {"2": {"mean": m - .1, "std": .02, "n": 3}}, "metric_name": "mIoU"}
    ...         for s, m in ((32, .3), (8, .5))]
    >>> p = os.path.join(tempfile.mkdtemp(), "o.png"); compare_output_stride(rows, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    rows = [r for r in rows if r.get("mean") is not None]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(rows))
    labels = [str(r["output_stride"]) for r in rows]
    series = [("test mIoU", lambda r: (r["mean"], r["std"]))]
    for w in sorted({w for r in rows for w in r.get("band", {})}, key=int):
        series.append((f"accuracy within {w} px of a boundary",
                       lambda r, w=w: ((r["band"].get(w) or {}).get("mean"), (r["band"].get(w) or {}).get("std"))))
    for i, (label, get) in enumerate(series):
        m = np.array([get(r)[0] if get(r)[0] is not None else np.nan for r in rows], dtype=float) * 100
        s = np.array([get(r)[1] if get(r)[1] is not None else 0.0 for r in rows], dtype=float) * 100
        a0.errorbar(x + (i - (len(series) - 1) / 2) * 0.06, m, yerr=s, marker="o" if i == 0 else "s",
                    capsize=4, linestyle="-" if i == 0 else "--", label=label, color=f"C{i}")
    a0.set_xticks(x)
    a0.set_xticklabels(labels)
    a0.set_xlabel("output stride (coarse -> fine)")
    a0.set_ylabel("%")
    a0.grid(alpha=0.3)
    a0.legend(fontsize=8)
    a0.set_title("score vs output stride (mean ± std over seeds)", fontsize=9)
    for r in rows:
        col = _color(r["strategy"])
        a1.errorbar(r["macs"], 100 * r["mean"], yerr=100 * (r["std"] or 0), fmt="o", capsize=4,
                    color=col, label=f"OS {r['output_stride']}")
    a1.set_xscale("log")
    a1.xaxis.set_minor_formatter(plt.NullFormatter())      # crowded minor labels on a short decade
    a1.set_xlabel("MACs per sample")
    a1.set_ylabel("test mIoU (%)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a1.set_title("mIoU vs compute", fontsize=9)
    _save_atomic(fig, path)
