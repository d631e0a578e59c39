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

def analysis_field(data, path):
    """Path-count map of the output's receptive field (holes in red) and the field size per layer.

    ``data`` is what ``atrous show`` saves (:func:`atrous.analysis.commands.show_data`): ``coverage``
    (``Coverage.to_dict()``), optional ``path_counts_2d`` and ``layers`` (name, size, covered). The
    figure is written atomically.

    >>> import tempfile, os, atrous
    >>> from atrous.analysis.commands import show_data, parse_layers
    >>> d = show_data(parse_layers("k3d1,k3d2,k3d8"))
    >>> p = os.path.join(tempfile.mkdtemp(), "f.png"); analysis_field(d, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    cov = data["coverage"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.3, 1]})
    if "path_counts_2d" in data:
        m = np.asarray(data["path_counts_2d"], dtype=np.float64)
        off = cov["offset"]
        img = np.where(m > 0, np.log10(np.maximum(m, 1)), np.nan)
        cmap = plt.get_cmap("viridis").with_extremes(bad="tab:red")
        extent = (off[1] - 0.5, off[1] + m.shape[1] - 0.5, off[0] + m.shape[0] - 0.5, off[0] - 0.5)
        im = a0.imshow(img, cmap=cmap, extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=a0, label="log10 path count (red: hole)")
        a0.set_xlabel("input offset, axis 1")
        a0.set_ylabel("input offset, axis 0")
    else:
        for ax_i, (pc, off) in enumerate(zip(cov["path_counts"], cov["offset"])):
            pc = np.asarray(pc, dtype=np.float64)
            x = off + np.arange(len(pc))
            a0.bar(x, pc, width=1.0, alpha=0.7, label=f"axis {ax_i}")
            holes = x[pc == 0]
            a0.plot(holes, np.zeros_like(holes), "|", color="tab:red", ms=12,
                    label="hole" if ax_i == 0 and len(holes) else None)
        a0.set_xlabel("input offset from output 0")
        a0.set_ylabel("paths")
        a0.legend(fontsize=8)
    a0.set_title(f"{cov['name'] or 'output'}: extent {cov['extent']}, covered {cov['covered']}, "
                 f"cv {', '.join(f'{c:.2f}' for c in cov['cv'])}", fontsize=9)
    layers = data["layers"]
    x = np.arange(1, len(layers) + 1)
    ndim = len(layers[0]["size"]) if layers else 0
    for ax_i in range(ndim):
        a1.plot(x, [r["size"][ax_i] for r in layers], marker="o", label=f"size, axis {ax_i}")
        cv = [r["covered"][ax_i] if r["covered"] else np.nan for r in layers]
        a1.plot(x, cv, marker="x", linestyle="--", label=f"covered, axis {ax_i}")
    a1.set_xticks(x)
    a1.set_xticklabels([r["name"] for r in layers], rotation=60, ha="right", fontsize=7)
    a1.set_ylabel("input samples")
    a1.set_title("receptive field per layer", fontsize=9)
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


def compare_accuracy(rows, path):
    """Test metric (mean ± std over seeds) vs parameters and vs MACs, one point per strategy.

    >>> import tempfile, os
    >>> rows = [{"strategy": "plain", "mean": .9, "std": .01, "params": 100, "macs": 1000,
    ...          "metric_name": "accuracy"}]
    >>> p = os.path.join(tempfile.mkdtemp(), "a.png"); compare_accuracy(rows, p); os.path.getsize(p) > 0
    True
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    metric = rows[0]["metric_name"] if rows else "accuracy"
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per sample")):
        for r in rows:
            ax.errorbar(r[key], 100 * r["mean"], yerr=100 * r["std"], fmt="o", capsize=4,
                        label=r["strategy"])
            ax.annotate(r["strategy"], (r[key], 100 * r["mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {metric} (%)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"test {metric} vs cost (mean ± std over seeds)")
    _save_atomic(fig, path)


def compare_fields(rows, path):
    """Per strategy, the number of paths from each input offset to one output (log scale) over
    the receptive field: zero-height gaps inside the extent are holes.

    >>> import tempfile, os
    >>> rows = [{"strategy": "gridded", "path_counts": [1, 0, 2, 0, 1], "coverage": .6,
    ...          "field": [5]}]
    >>> p = os.path.join(tempfile.mkdtemp(), "f.png"); compare_fields(rows, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.1 * len(rows) + 0.8), squeeze=False,
                             sharex=True)
    for ax, r in zip(axes[:, 0], rows):
        pc = np.asarray(r["path_counts"], dtype=np.float64)
        while pc.ndim > 1:                       # N-D: the slice through the centre of the others
            pc = pc[pc.shape[0] // 2] if pc.ndim > 1 else pc
        off = np.arange(len(pc)) - (len(pc) - 1) / 2
        ax.bar(off, np.where(pc > 0, np.log10(np.maximum(pc, 1)) + 0.1, 0), width=1.0,
               color=np.where(pc > 0, "tab:blue", "tab:red"))
        holes = off[pc == 0]
        ax.plot(holes, np.zeros_like(holes), "|", color="tab:red", ms=10)
        ax.set_ylabel(r["strategy"], rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.text(1.0, 0.5, f"field {r['field'][0]}, coverage {100 * r['coverage']:.0f}%",
                transform=ax.transAxes, ha="left", va="center", fontsize=8)
    axes[-1, 0].set_xlabel("input offset from the output's centre (samples); bar height: "
                           "log10 path count, red: hole")
    fig.suptitle("receptive field and coverage per strategy")
    _save_atomic(fig, path)


def compare_curves(rows, path):
    """Learning curves: test metric per epoch per strategy, mean over seeds with a min-max band.

    >>> import tempfile, os
    >>> rows = [{"strategy": "plain", "curves": [[.5, .7], [.6, .8]], "metric_name": "accuracy"}]
    >>> p = os.path.join(tempfile.mkdtemp(), "c.png"); compare_curves(rows, p); os.path.getsize(p) > 0
    True
    """
    import numpy as np
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        c = np.asarray(r["curves"], dtype=np.float64) * 100      # (seeds, epochs)
        ep = np.arange(1, c.shape[1] + 1)
        line, = ax.plot(ep, c.mean(0), marker=".", label=r["strategy"])
        ax.fill_between(ep, c.min(0), c.max(0), color=line.get_color(), alpha=0.2)
    metric = rows[0]["metric_name"] if rows else "accuracy"
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning curves (mean, min-max over seeds)")
    _save_atomic(fig, path)
