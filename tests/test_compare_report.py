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
