"""``report.md`` and the terminal table of a study, made from the saved run records only.

The section "The claims, measured" takes each claim of the design note (Yu & Koltun 2016; the
gridding analysis of Wang et al. 2018) and states what the numbers of this study say about it:
*confirmed*, *refuted*, *within seed noise* or *qualified*, with the figures.

>>> recs = [{"config": {"strategy": "plain", "seed": s}, "metric": m, "params": 10, "macs": 100,
...          "field": [11], "resolution": [40], "coverage": {"extent": [11], "covered": [11]},
...          "epoch_time": 1.0, "throughput": 5.0, "metric_name": "accuracy"}
...         for s, m in enumerate([0.9, 0.92])]
>>> rows = summarize(recs)
>>> round(rows[0]["mean"], 3), round(rows[0]["std"], 4), rows[0]["n"]
(0.91, 0.0141, 2)
"""

from __future__ import annotations

import math
import os

import numpy as np

from .strategies import STRATEGIES

__all__ = ["summarize", "claims", "table_markdown", "table_text", "write_report", "compare_means"]


def _prod(v) -> int:
    return int(np.prod(v)) if isinstance(v, (list, tuple)) else int(v)


def summarize(records: list[dict]) -> list[dict]:
    """One row per strategy (in :data:`STRATEGIES` order): metric mean/std over seeds (sample std),
    and the seed-independent measurements (field, coverage, params, MACs, resolution) plus mean
    epoch time and throughput."""
    rows = []
    for name in STRATEGIES:
        rs = [r for r in records if r["config"]["strategy"] == name]
        if not rs:
            continue
        m = np.array([r["metric"] for r in rs], dtype=np.float64)
        r0 = rs[0]
        cov = r0["coverage"]
        rows.append({
            "strategy": name, "n": len(rs), "seeds": sorted(r["config"]["seed"] for r in rs),
            "mean": float(m.mean()), "std": float(m.std(ddof=1)) if len(m) > 1 else 0.0,
            "metrics": m.tolist(), "metric_name": r0.get("metric_name", "accuracy"),
            "params": int(r0["params"]), "macs": int(r0["macs"]),
            "field": list(r0["field"]), "resolution": list(r0["resolution"]),
            "coverage": _prod(cov["covered"]) / max(_prod(cov["extent"]), 1),
            "covered": cov["covered"], "extent": cov["extent"],
            "path_counts": (cov["path_counts"][0] if cov.get("path_counts")
                            and isinstance(cov["path_counts"][0], list) else cov.get("path_counts")),
            "epoch_time": float(np.mean([r["epoch_time"] for r in rs])),
            "throughput": float(np.mean([r["throughput"] for r in rs])),
            "curves": [r.get("curve", []) for r in rs],
            "plan": r0.get("plan"),
        })
    return rows


def compare_means(a: dict, b: dict) -> tuple[float, float, str]:
    """``(difference a - b, its standard error, verdict)``; the verdict is ``'higher'``/``'lower'``
    when the difference exceeds twice the standard error (Welch), else ``'same'`` (within seed
    noise). With one seed each, any difference under 0.5 percentage points counts as noise.

    >>> compare_means({"mean": .95, "std": .01, "n": 3}, {"mean": .90, "std": .01, "n": 3})[2]
    'higher'
    """
    d = a["mean"] - b["mean"]
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    tol = 2 * se if (a["n"] > 1 and b["n"] > 1) else 0.005
    return d, se, ("same" if abs(d) <= tol else "higher" if d > 0 else "lower")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _diff(a, b, metric) -> str:
    d, se, v = compare_means(a, b)
    words = {"higher": "higher", "lower": "lower", "same": "the same within seed noise"}[v]
    return (f"{metric} {_pct(a['mean'])} vs {_pct(b['mean'])}: {a['strategy']} is {words} "
            f"({100 * d:+.1f} points, 2 s.e. = {200 * se:.1f})")


def _res(r) -> str:
    return "x".join(str(v) for v in r["resolution"])


def claims(rows: list[dict]) -> list[dict]:
    """Each claim with a verdict and the evidence, computed from the summary rows. A claim whose
    strategies are not in the study says so."""
    by = {r["strategy"]: r for r in rows}
    metric = rows[0]["metric_name"] if rows else "accuracy"
    out = []

    def need(*names):
        return all(n in by for n in names)

    def add(claim, verdict, evidence):
        out.append({"claim": claim, "verdict": verdict, "evidence": evidence})

    c = "Pooling and striding cut resolution; dilation keeps it."
    if need("dilated") and (need("pool") or need("stride")):
        ev = [f"final feature map: dilated {_res(by['dilated'])}"]
        ev += [f"{n} {_res(by[n])}" for n in ("pool", "stride") if n in by]
        cut = all(_prod(by[n]["resolution"]) < _prod(by["dilated"]["resolution"])
                  for n in ("pool", "stride") if n in by)
        add(c, "confirmed" if cut else "refuted", "; ".join(ev))
    c = "The resolution cut costs accuracy: dilation beats pooling and striding at equal field."
    if need("dilated") and (need("pool") or need("stride")):
        vs = [compare_means(by["dilated"], by[n])[2] for n in ("pool", "stride") if n in by]
        v = ("confirmed" if all(x == "higher" for x in vs) else
             "refuted" if all(x == "lower" for x in vs) else
             "within seed noise" if all(x == "same" for x in vs) else "qualified")
        add(c, v, "; ".join(_diff(by["dilated"], by[n], metric) for n in ("pool", "stride") if n in by))
    c = "A larger kernel costs parameters and compute; dilation reaches the same field without them."
    if need("large", "dilated"):
        L, D = by["large"], by["dilated"]
        v = "confirmed" if L["params"] > D["params"] and L["macs"] > D["macs"] else "refuted"
        add(c, v, f"large: {L['params']:,} params, {L['macs']:,} MACs, {L['epoch_time']:.2f} s/epoch; "
                  f"dilated: {D['params']:,} params, {D['macs']:,} MACs, {D['epoch_time']:.2f} s/epoch "
                  f"(x{L['params'] / D['params']:.2f} params, x{L['macs'] / D['macs']:.2f} MACs); "
                  + _diff(D, L, metric))
    c = "Dilation keeps the parameters and MACs of the d=1 stack (it does not lower MACs versus d=1)."
    if need("plain", "dilated"):
        P, D = by["plain"], by["dilated"]
        same = P["params"] == D["params"] and P["macs"] == D["macs"]
        add(c, "confirmed" if same else "refuted",
            f"plain {P['params']:,} params / {P['macs']:,} MACs, dilated {D['params']:,} / "
            f"{D['macs']:,}; field {P['field'][0]} -> {D['field'][0]}; wall time per epoch "
            f"{P['epoch_time']:.2f} s vs {D['epoch_time']:.2f} s, inference "
            f"{P['throughput']:,.0f} vs {D['throughput']:,.0f} samples/s")
    c = "Pooling and striding are the cheap way to a large field."
    if need("dilated") and (need("pool") or need("stride")):
        ev = "; ".join(f"{n}: {by[n]['macs']:,} MACs ({by[n]['macs'] / by['dilated']['macs']:.2f}x "
                       f"dilated), {by[n]['throughput']:,.0f} samples/s" for n in ("pool", "stride")
                       if n in by)
        cheaper = all(by[n]["macs"] < by["dilated"]["macs"] for n in ("pool", "stride") if n in by)
        add(c, "confirmed" if cheaper else "refuted", ev)
    c = "A hole-free schedule loses less information than a gridded one (same extent, holes)."
    if need("dilated", "gridded"):
        D, G = by["dilated"], by["gridded"]
        v = {"higher": "confirmed", "lower": "refuted", "same": "within seed noise"}[
            compare_means(D, G)[2]]
        add(c, v, f"coverage of the field: dilated {_pct(D['coverage'])}, gridded "
                  f"{_pct(G['coverage'])}; " + _diff(D, G, metric))
    c = "Growing the field helps: the dilated stack beats the small-field d=1 baseline."
    if need("plain", "dilated"):
        v = {"higher": "confirmed", "lower": "refuted", "same": "within seed noise"}[
            compare_means(by["dilated"], by["plain"])[2]]
        add(c, v, f"field {by['plain']['field'][0]} vs {by['dilated']['field'][0]}; "
                  + _diff(by["dilated"], by["plain"], metric))
    return out


def _fmt_int(v: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)


_HEAD = ("strategy", "field", "coverage", "params", "MACs", "resolution", "{metric}", "s/epoch",
         "samples/s")


def _cells(r) -> list[str]:
    return [r["strategy"], "x".join(str(v) for v in r["field"]), _pct(r["coverage"]),
            f"{r['params']:,}", _fmt_int(r["macs"]), _res(r),
            f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (n={r['n']})",
            f"{r['epoch_time']:.2f}", f"{r['throughput']:,.0f}"]


def table_markdown(rows: list[dict]) -> str:
    """The summary as a Markdown table."""
    metric = rows[0]["metric_name"] if rows else "accuracy"
    head = [h.format(metric=f"test {metric} %") for h in _HEAD]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def table_text(rows: list[dict]) -> str:
    """The summary as an aligned plain-text table for the terminal."""
    metric = rows[0]["metric_name"] if rows else "accuracy"
    head = [h.format(metric=f"{metric} %") for h in _HEAD]
    cells = [head] + [_cells(r) for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c[i].rjust(w[i]) if i else c[i].ljust(w[i]) for i in range(len(c)))
                     for c in cells)


FIGURES = {"accuracy.png": "test metric vs parameters and vs MACs (mean ± std over seeds)",
           "fields.png": "which input offsets reach one output (path counts; gaps are holes)",
           "curves.png": "learning curves (test metric per epoch, mean over seeds)"}


def write_figures(rows: list[dict], out: str) -> list[str]:
    """Draw the three PNGs of the study into ``out``; return their file names."""
    from .. import plot
    plot.compare_accuracy(rows, os.path.join(out, "accuracy.png"))
    plot.compare_fields(rows, os.path.join(out, "fields.png"))
    plot.compare_curves(rows, os.path.join(out, "curves.png"))
    return list(FIGURES)


def write_report(records: list[dict], out: str, command: str = "atrous compare",
                 figures: bool = True) -> str:
    """Write ``out/report.md`` (and the PNGs when ``figures``) atomically; return the report text."""
    from .runner import atomic_write
    rows = summarize(records)
    cfg = records[0]["config"] if records else {}
    metric = rows[0]["metric_name"] if rows else "accuracy"
    lines = [
        "# atrous compare: pooling vs stride vs large kernel vs dilation", "",
        f"Command: `{command}`", "",
        f"Task **{cfg.get('task')}** ({cfg.get('n_train')} train / {cfg.get('n_test')} test), target "
        f"receptive field {cfg.get('target_rf')} per axis, depth {cfg.get('depth')}, width "
        f"{cfg.get('width')}, {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, AdamW lr "
        f"{cfg.get('lr')} (one-cycle), torch threads per run {cfg.get('threads')}. "
        f"Test {metric}: mean ± sample std over seeds. {len(records)} runs, "
        f"{sum(r.get('train_time', 0.0) for r in records):.0f} s of training in total.", "",
        table_markdown(rows), "",
        "*field*: receptive field per axis (`atrous.receptive_field`, checked against the plan); "
        "*coverage*: share of the field's input offsets that reach an output through some path "
        "(`atrous.coverage`; gaps are gridding holes); *resolution*: final feature map before the "
        "head; *MACs* per sample (`atrous.cost`); times are wall-clock on a shared machine.", "",
        "## The claims, measured", "",
    ]
    for c in claims(rows):
        lines += [f"- **{c['claim']}** — *{c['verdict']}*. {c['evidence']}."]
    if figures and rows:
        write_figures(rows, out)
        lines += ["", "## Figures", ""]
        lines += [f"- `{name}`: {what}\n\n  ![{name}]({name})" for name, what in FIGURES.items()]
    text = "\n".join(lines) + "\n"
    with atomic_write(os.path.join(out, "report.md")) as f:
        f.write(text)
    return text
