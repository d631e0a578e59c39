"""Figures (atrous.plot) checked on the matplotlib objects they draw, not on pixels: fixed colours
per strategy, no point hidden behind another, ticks on the field plot, `atrous show`'s axes
distinguishable with readable labels and offsets from the output's centre, one seed = no error bar."""

import numpy as np
import pytest

from atrous import plot
from atrous.analysis.commands import parse_layers, show_data


@pytest.fixture
def figs(monkeypatch):
    """Capture the figures instead of saving them."""
    got = []
    monkeypatch.setattr(plot, "_save_atomic", lambda fig, path: got.append(fig))
    yield got
    plt = plot._plt()
    for f in got:
        plt.close(f)


def _rows(names, params=1000, macs=10_000, std=0.01):
    return [{"strategy": n, "mean": 0.9 + i / 100, "std": std, "n": 3 if std else 1, "params": params,
             "macs": macs, "metric_name": "accuracy", "curves": [[.5, .6], [.55, .65, .7]],
             "path_counts": [1, 0, 2, 0, 1], "coverage": .6, "field": [5]} for i, n in enumerate(names)]


def test_every_strategy_keeps_one_colour_and_shared_costs_are_spread(figs):
    names = ["plain", "pool", "dilated", "gridded", "large"]
    plot.compare_accuracy(_rows(names), "a.png")
    plot.compare_accuracy(_rows(["dilated", "gridded"]), "b.png")   # another study, fewer strategies
    plot.compare_curves(_rows(["gridded", "dilated"]), "c.png")
    colour = {}
    for fig in figs:
        for ax in fig.axes:
            points = [(c.get_label(), c.lines[0]) for c in ax.containers if c.lines[0] is not None]
            points += [(line.get_label(), line) for line in ax.get_lines()]
            for label, line in points:
                if label in names:
                    colour.setdefault(label, set()).add(line.get_color())
    assert colour["dilated"] == {plot._color("dilated")} and colour["gridded"] == {plot._color("gridded")}
    assert len({plot._color(n) for n in names}) == len(names)
    # all five share one parameter count: their x positions on the params/MACs panels differ
    for ax in figs[0].axes[1:]:
        xs = [c.lines[0].get_xdata()[0] for c in ax.containers if c.get_label() in names]
        assert len(xs) == 5 and len(set(np.round(xs, 9))) == 5
        assert any("share" in t.get_text() for t in ax.texts)


def test_dodge_spreads_only_equal_values():
    out = plot._dodge([10, 10, 10, 50])
    assert out[3] == 50 and len(set(out[:3])) == 3 and out[1] == pytest.approx(10)


def test_one_seed_draws_no_error_bar(figs):
    plot.compare_accuracy(_rows(["plain"], std=None), "a.png")
    ax = figs[0].axes[0]
    caps = [c for c in ax.collections if len(c.get_segments()) and
            np.ptp(c.get_segments()[0][:, 1]) > 0]
    assert not caps


def test_fields_plot_has_y_ticks(figs):
    plot.compare_fields(_rows(["gridded", "dilated"]), "f.png")
    for ax in figs[0].axes:
        assert ax.get_yscale() == "log" and len(ax.get_yticks()) > 0
        assert ax.yaxis.get_visible()


def test_show_axes_distinguishable_and_offsets_from_the_centre(figs):
    d = show_data(parse_layers("k3x5d1x2pcausal,k3x3d2x1pcausal"))
    d.pop("path_counts_2d", None)
    plot.analysis_field(d, "s.png")
    fig = figs[0]
    marg = [ax for ax in fig.axes if ax.patches]
    assert len(marg) == 2                                    # one panel per axis
    colours = [marg[i].patches[0].get_facecolor() for i in range(2)]
    assert colours[0] != colours[1]
    for ax, ext in zip(marg, d["coverage"]["extent"]):
        xs = sorted(p.get_x() + p.get_width() / 2 for p in ax.patches)
        assert len(xs) == ext and xs[0] == pytest.approx(-xs[-1])   # causal too: centred on the output
        assert "from the output's centre" in ax.get_xlabel()
    right = fig.axes[-1]
    widths = {line.get_linewidth() for line in right.get_lines()}
    assert len(widths) > 1                                   # coinciding axes stay visible


def test_show_labels_stay_readable_for_deep_models(figs):
    d = show_data(parse_layers(",".join(["k3d1", "k3d2", "k3d5"] * 40)))
    for r in d["layers"]:
        r["name"] = "encoder.stage." + r["name"] + ".block.conv_with_a_long_name"
    plot.analysis_field(d, "s.png")
    right = figs[0].axes[-1]
    labels = [t.get_text() for t in right.get_xticklabels()]
    assert 20 <= len(labels) <= 41 and all(len(t) <= 22 for t in labels)
