"""Metrics (accuracy, mIoU) against brute-force loops, the summary against `statistics`, the claims'
verdicts on constructed records whose answer is known, and the 2-D tasks end to end on tiny IDX
files written here."""

import gzip
import json
import statistics
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atrous.cli import main
from atrous.compare import report as Rp
from atrous.compare import train as T


@settings(max_examples=30)
@given(n=st.integers(1, 60), c=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_miou_and_confusion_against_brute_force(n, c, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.integers(0, c, n), rng.integers(0, c, n)
    conf = T.confusion(pred, target, c)
    for i in range(c):
        for j in range(c):
            assert conf[i, j] == sum(1 for p, t in zip(pred, target) if t == i and p == j)
    ious = []
    for k in range(c):
        p, t = {i for i in range(n) if pred[i] == k}, {i for i in range(n) if target[i] == k}
        if p | t:
            ious.append(len(p & t) / len(p | t))
    assert T.miou(conf) == pytest.approx(sum(ious) / len(ious))


def test_evaluate_accuracy_and_dense_miou():
    import torch
    x = np.random.default_rng(0).standard_normal((37, 3)).astype(np.float32)
    model = torch.nn.Linear(3, 4)
    with torch.no_grad():
        want_pred = model(torch.from_numpy(x)).argmax(1).numpy()
    y = np.arange(37) % 4
    assert T.evaluate(model, x, y, 4, dense=False, batch_size=5) == pytest.approx(
        np.mean(want_pred == y))
    assert T.evaluate(model, x, y, 4, dense=True, batch_size=8) == pytest.approx(
        T.miou(T.confusion(want_pred, y, 4)))


def _rec(strategy, seed, metric, params=100, macs=1000, res=40, covered=41, extent=41, t=1.0):
    return {"config": {"strategy": strategy, "seed": seed}, "metric": metric, "params": params,
            "macs": macs, "field": [extent], "resolution": [res], "epoch_time": t,
            "throughput": 10.0, "metric_name": "accuracy", "curve": [metric],
            "coverage": {"extent": [extent], "covered": [covered], "path_counts": [[1] * extent]}}


def test_summary_matches_statistics():
    recs = [_rec("dilated", s, m) for s, m in enumerate([0.91, 0.95, 0.96])]
    row = Rp.summarize(recs)[0]
    assert row["mean"] == pytest.approx(statistics.mean([0.91, 0.95, 0.96]))
    assert row["std"] == pytest.approx(statistics.stdev([0.91, 0.95, 0.96]))
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]


def _study(dilated, gridded, pool, stride, plain, large, large_params=300, large_macs=3000):
    recs = []
    for s in range(3):
        eps = (s - 1) * 0.002                                  # std 0.002 for every strategy
        recs += [_rec("dilated", s, dilated + eps), _rec("gridded", s, gridded + eps, covered=21),
                 _rec("pool", s, pool + eps, res=5, macs=250), _rec("stride", s, stride + eps, res=5,
                                                                     macs=150),
                 _rec("plain", s, plain + eps, extent=11, covered=11),
                 _rec("large", s, large + eps, params=large_params, macs=large_macs)]
    return {c["claim"][:30]: c["verdict"] for c in Rp.claims(Rp.summarize(recs))}


def test_claims_verdicts_follow_the_numbers():
    v = _study(dilated=.98, gridded=.95, pool=.96, stride=.93, plain=.90, large=.98)
    assert len(v) == 7 and all(x == "confirmed" for x in v.values())
    v = _study(dilated=.90, gridded=.95, pool=.96, stride=.93, plain=.98, large=.98)
    assert v["A hole-free schedule loses les"] == "refuted"
    assert v["Growing the field helps: the d"] == "refuted"
    assert v["The resolution cut costs accur"] == "refuted"
    v = _study(dilated=.95, gridded=.9501, pool=.99, stride=.90, plain=.95, large=.95,
               large_params=100, large_macs=1000)
    assert v["A hole-free schedule loses les"] == "within seed noise"
    assert v["The resolution cut costs accur"] == "qualified"             # beats one, loses one
    assert v["A larger kernel costs paramete"] == "refuted"


def test_claims_skip_missing_strategies_and_tables_render():
    rows = Rp.summarize([_rec("plain", 0, .9), _rec("dilated", 0, .91)])
    cs = Rp.claims(rows)
    assert {c["claim"][:20] for c in cs} == {"Dilation keeps the p", "Growing the field he"}
    md, txt = Rp.table_markdown(rows), Rp.table_text(rows)
    assert md.count("\n") == 3 and "| dilated | 41 |" in md and txt.splitlines()[2].startswith("dilated")


def _idx(arr):
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(head + arr.astype(">u1").tobytes())


@pytest.mark.parametrize("task", ["fashion-seg", "fashion-mnist"])
def test_2d_tasks_end_to_end_on_tiny_idx_files(tmp_path, task):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 40),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 20)}
    for name, a in files.items():
        (tmp_path / (name + ".gz")).write_bytes(_idx(a))
    out = tmp_path / "out"
    assert main(["compare", "--task", task, "--quick", "--quiet", "--data-dir", str(tmp_path),
                 "--strategies", "pool,dilated", "--epochs", "1", "--width", "2",
                 "--no-plots", "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by = {r["config"]["strategy"]: r for r in recs}
    size = 64 if task == "fashion-seg" else 28
    assert by["dilated"]["resolution"] == [size, size]
    assert by["pool"]["resolution"][0] < size
    assert by["dilated"]["field"][0] >= size and by["pool"]["field"][0] >= size
    assert by["dilated"]["metric_name"] == ("mIoU" if task == "fashion-seg" else "accuracy")
    assert "## The claims, measured" in (out / "report.md").read_text()


# ------------------------------------------------------------------ report rules (issue 10, part 2)

def test_one_seed_is_not_enough_and_prints_no_spread():
    recs = [_rec(s, 0, m, res=5 if s in ("pool", "stride") else 40)
            for s, m in (("dilated", .98), ("pool", .90), ("stride", .85), ("gridded", .80), ("plain", .70))]
    rows = Rp.summarize(recs)
    assert all(r["std"] is None and r["n"] == 1 for r in rows)
    v = {c["claim"][:30]: c["verdict"] for c in Rp.claims(rows)}
    for claim in ("The resolution cut costs accur", "A hole-free schedule loses les",
                  "Growing the field helps: the d"):
        assert v[claim] == Rp.NOT_ENOUGH                     # big differences, but no spread measured
    md = Rp.table_markdown(rows)
    assert "± 0.00" not in md and "98.00 (n=1, no spread)" in md
    # measured properties (not statistics) are still judged
    assert v["Pooling and striding cut resol"] == "confirmed"


def test_two_seeds_against_one_is_not_enough():
    recs = [_rec("dilated", s, .98 + s * .001) for s in range(3)] + [_rec("gridded", 0, .5)]
    v = {c["claim"][:20]: c["verdict"] for c in Rp.claims(Rp.summarize(recs))}
    assert v["A hole-free schedule"] == Rp.NOT_ENOUGH


def test_near_chance_is_not_enough():
    recs = []
    for s in range(3):
        for name, m in (("dilated", .16 + s * .001), ("plain", .12 + s * .001)):
            r = _rec(name, s, m)
            r["chance"] = 0.1                                     # 10 classes
            recs.append(r)
    rows = Rp.summarize(recs)
    assert Rp.near_chance(rows[0]) and rows[0]["chance"] == pytest.approx(0.1)
    v = {c["claim"][:20]: c["verdict"] for c in Rp.claims(rows)}
    assert v["Growing the field he"] == Rp.NOT_ENOUGH                # both near chance: noise
    for r in recs:
        if r["config"]["strategy"] == "dilated":
            r["metric"] += 0.6                     # one side well above chance: that is evidence
    v = {c["claim"][:20]: c["verdict"] for c in Rp.claims(Rp.summarize(recs))}
    assert v["Growing the field he"] == "confirmed"


def test_unequal_fields_are_stated():
    recs = []
    for s in range(3):
        recs += [_rec("dilated", s, .98 + s * .001, extent=41, covered=41),
                 _rec("pool", s, .95 + s * .001, res=5, extent=54, covered=54),
                 _rec("stride", s, .93 + s * .001, res=5, extent=47, covered=47),
                 _rec("gridded", s, .90 + s * .001, extent=41, covered=21)]
    cs = {c["claim"][:20]: c for c in Rp.claims(Rp.summarize(recs))}
    ev = cs["The resolution cut c"]["evidence"]
    assert "dilated 41, pool 54, stride 47" in ev and "they differ" in ev
    ev = cs["A hole-free schedule"]["evidence"]
    assert "equal fields (dilated 41, gridded 41)" in ev and "differ" not in ev


def test_duplicated_records_are_counted_once(tmp_path):
    from atrous.compare import runner as R
    recs = [dict(_rec("dilated", s, .9 + s / 100), key=f"k{s}") for s in range(3)]
    path = tmp_path / "results.jsonl"
    R.append_records(path, recs)
    text = path.read_text()
    path.write_text(text + text)                                  # two result files concatenated
    with pytest.warns(R.RecordWarning, match="3 duplicate record"):
        got = R.read_records(path)
    assert [r["key"] for r in got] == ["k0", "k1", "k2"]
    row = Rp.summarize(got)[0]
    assert row["n"] == 3 and row["std"] == pytest.approx(statistics.stdev([.90, .91, .92]))
    # a later line with the same key replaces the earlier one
    changed = dict(recs[1], metric=0.5)
    path.write_text(text + json.dumps(changed) + "\n")
    with pytest.warns(R.RecordWarning, match="1 duplicate"):
        got = R.read_records(path)
    assert [r["metric"] for r in got] == [.90, .92, .5]
    # an append rewrites the file without duplicates
    R.append_records(path, [dict(_rec("dilated", 5, .7), key="k5")])
    assert len(path.read_text().splitlines()) == 4


def test_diverged_runs_are_left_out_and_listed(tmp_path):
    recs = [_rec("dilated", s, .9 + s / 100) for s in range(2)]
    bad = _rec("dilated", 2, None)
    bad.update(status="diverged", error="training loss became nan at epoch 2, step 3 of 8")
    rows = Rp.summarize(recs + [bad])
    assert rows[0]["n"] == 2 and rows[0]["diverged"][0]["seed"] == 2
    for r in recs + [bad]:
        r["key"] = str(r["config"]["seed"])
        r["config"]["task"] = "mnist1d"
    text = Rp.write_report(recs + [bad], str(tmp_path), figures=False)
    assert "Runs that diverged" in text and "loss became nan at epoch 2" in text


@settings(max_examples=25)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4), width=st.integers(1, 3),
       seed=st.integers(0, 1000))
def test_boundary_band_against_brute_force(h, w, c, width, seed):
    y = np.random.default_rng(seed).integers(0, c, (2, h, w))
    band = T.boundary_band(y, width)
    for n in range(2):
        for i in range(h):
            for j in range(w):
                win = y[n, max(i - width, 0):i + width + 1, max(j - width, 0):j + width + 1]
                assert band[n, i, j] == (len(np.unique(win)) > 1)


def test_chance_score_and_band_scores():
    import torch
    y_train = np.array([[0, 0], [0, 1]])
    y_test = np.array([[[0, 1], [1, 1]]])
    # constant prediction of class 0: IoU class 0 = 1/4, class 1 = 0 -> mIoU 1/8
    assert T.chance_score(y_train, y_test, 2, dense=True) == pytest.approx(0.125)
    assert T.chance_score(np.array([2, 2, 1]), np.array([2, 1, 1, 1]), 3, dense=False) == 0.25

    class Fixed(torch.nn.Module):                     # predicts class 1 everywhere but pixel (0, 0)
        def forward(self, x):
            out = torch.zeros(len(x), 2, 2, 2)
            out[:, 1] = 1
            out[:, 0, 0, 0] = 2
            return out

    s = T.scores(Fixed(), np.zeros((1, 1, 2, 2), np.float32), y_test, 2, dense=True, band_widths=(1,))
    assert s["metric"] == pytest.approx(1.0) and s["band_acc"] == {"1": 1.0}
