"""`atrous compare` end to end: a --quick run writing every output, resume (skip finished runs,
same seed -> same number), an interrupted run leaving no partial record, atomic writes, bad options
as one-line errors, and (slow) torchrun with 2 processes equal to one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import numpy as np
import torch

from atrous.cli import main
from atrous.compare import runner as R
from atrous.compare import strategies as S

QUICK = ["compare", "--quick", "--quiet", "--no-plots"]


def _records(out):
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "res"
    threads = torch.get_num_threads()
    assert main(["compare", "--quick", "--quiet", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads          # the per-run thread count is restored
    return out


def test_quick_run_writes_every_output(quick_run, capsys):
    out = quick_run
    recs = _records(out)
    assert sorted(r["config"]["strategy"] for r in recs) == sorted(S.STRATEGIES)
    for name in ("accuracy.png", "fields.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## The claims, measured" in report
    for s in S.STRATEGIES:
        assert f"| {s} |" in report
    assert not [p for p in os.listdir(out) if p.endswith(".tmp") or p.endswith(".tmp.png")]
    by = {r["config"]["strategy"]: r for r in recs}
    for s, r in by.items():
        # parameters as reported == the rebuilt model's own count (oracle: sum of numel)
        torch.manual_seed(0)
        m = S.build(s, 1, 10, r["config"]["target_rf"], depth=r["config"]["depth"],
                    width=r["config"]["width"], in_size=40)
        assert r["params"] == sum(p.numel() for p in m.parameters())
        assert r["field"] == [m.plan.field] and (s == "plain" or m.plan.field >= 40)
        assert r["key"] == R.run_key(r["config"])
        assert len(r["curve"]) == r["config"]["epochs"] and 0 <= r["metric"] <= 1
    # relations the claims rely on, measured by atrous.cost (not hard-coded numbers)
    assert by["dilated"]["macs"] == by["plain"]["macs"] < by["large"]["macs"]
    assert by["pool"]["macs"] < by["plain"]["macs"] and by["stride"]["macs"] < by["plain"]["macs"]
    assert by["dilated"]["resolution"] == [40] and by["pool"]["resolution"][0] < 40
    assert by["gridded"]["coverage"]["holes"][0] > 0 == by["dilated"]["coverage"]["holes"][0]


def test_resume_skips_finished_runs_and_same_seed_same_number(quick_run, tmp_path, monkeypatch,
                                                              capsys):
    out = tmp_path / "res"
    shutil.copytree(quick_run, out)
    before = (out / "results.jsonl").read_bytes()
    monkeypatch.setattr(R, "run_one", lambda *a, **k: pytest.fail("a finished run was re-run"))
    assert main(QUICK + ["--out", str(out)]) == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert "6 runs" in capsys.readouterr().out
    monkeypatch.undo()
    # --force re-runs: the same seed gives the same numbers
    assert main(QUICK + ["--out", str(out), "--force", "--strategies", "dilated,pool"]) == 0
    old = {r["key"]: r for r in json.loads("[" + before.decode().strip().replace("\n", ",") + "]")}
    new = _records(out)
    assert len(new) == 6
    for r in new:
        if r["config"]["strategy"] in ("dilated", "pool"):
            assert r["metric"] == old[r["key"]]["metric"]
            assert r["loss"] == old[r["key"]]["loss"]


def test_interrupted_run_leaves_no_partial_record(tmp_path, monkeypatch):
    out = tmp_path / "res"
    real, calls = R.run_one, []

    def flaky(cfg, ds, bar=None):
        calls.append(cfg["strategy"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, ds, bar=bar)

    monkeypatch.setattr(R, "run_one", flaky)
    args = QUICK + ["--out", str(out), "--strategies", "plain,dilated,gridded,stride"]
    assert main(args) == 130
    first = _records(out)
    assert [r["config"]["strategy"] for r in first] == ["plain", "dilated"]
    assert sorted(os.listdir(out)) == ["results.jsonl"]          # no temp file, no report yet
    calls.clear()
    assert main(args) == 0
    assert calls == ["gridded", "stride"]                          # only the missing runs
    final = _records(out)
    assert final[:2] == first and len(final) == 4


def test_atomic_append_survives_interrupt_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    R.append_records(path, [{"key": "a", "v": 1}])
    before = path.read_bytes()

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        R.append_records(path, [{"key": "b", "v": 2}])
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["results.jsonl"]
    R.append_records(path, [{"key": "b", "v": 2}, {"key": "a", "v": 3}])
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"key": "b", "v": 2}, {"key": "a", "v": 3}]


@pytest.mark.parametrize("extra,msg", [
    (["--task", "fashion-mnst"], "did you mean 'fashion-mnist'"),
    (["--strategies", "plain,dilatd"], "did you mean 'dilated'"),
    (["--seeds", "0"], "--seeds must be an int >= 1, got '0'"),
    (["--epochs", "two"], "--epochs must be an int >= 1, got 'two'"),
    (["--target-rf", "5000"], "target_rf 5000 is out of reach"),
    (["--task", "fashion-mnist", "--data-dir", "{tmp}/none"], "apt-get install dataset-fashion-mnist"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, monkeypatch, extra, msg):
    import atrous.compare.data as D
    monkeypatch.setattr(D, "FASHION_DEBIAN_DIR", str(tmp_path / "no-debian"))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(QUICK + ["--out", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and err.startswith("atrous compare: error:")
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_out_is_a_file_or_corrupt_results(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(QUICK + ["--out", str(f)]) == 2
    assert "--out must be a directory" in capsys.readouterr().err
    d = tmp_path / "d"
    d.mkdir()
    (d / "results.jsonl").write_text("{not json\n")
    assert main(QUICK + ["--out", str(d)]) == 2
    assert "results.jsonl line 1 is not a run record" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for s in ("examples:", "--quick", "torchrun --nproc_per_node=2", "dataset-fashion-mnist",
              "--target-rf", "--force"):
        assert s in text


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    common = ["compare", "--quick", "--quiet", "--no-plots", "--seeds", "2",
              "--strategies", "plain,stride,dilated"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    one = subprocess.run([sys.executable, "-m", "atrous", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "atrous", *common, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    a = {r["key"]: r for r in _records(tmp_path / "one")}
    b = {r["key"]: r for r in _records(tmp_path / "two")}
    assert a.keys() == b.keys() and len(a) == 6
    assert {r["rank"] for r in b.values()} == {0, 1}               # both ranks trained
    for k in a:
        for field in ("metric", "curve", "loss", "params", "macs", "field", "coverage"):
            assert a[k][field] == b[k][field], (k, field)
    assert (tmp_path / "two" / "report.md").exists()


# ------------------------------------------------------------------ trustworthy runs (issue 10)

_WRITER = """
import sys
from atrous.compare import runner as R
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    R.append_records(path, [{"key": f"{who}-{i}", "who": who, "pad": "x" * 2000}])
"""


def test_concurrent_writers_keep_every_record(tmp_path):
    """Real concurrent processes appending to one results.jsonl (each append is a read-modify-write
    of the whole file): every record survives."""
    path = tmp_path / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{k}", "25"], env=env)
             for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    keys = [json.loads(x)["key"] for x in path.read_text().splitlines()]
    assert sorted(keys) == sorted(f"p{k}-{i}" for k in range(4) for i in range(25))
    assert sorted(os.listdir(tmp_path)) == ["results.jsonl"]        # no temp or lock file left


@pytest.mark.parametrize("extra,msg", [
    (["--seeds", "100000000"], "--seeds must be an int in 1..100, got 100000000"),
    (["--epochs", "100000"], "--epochs must be an int in 1..1000"),
    (["--depth", "1000"], "--depth must be an int in 1..64, got 1000"),
    (["--threads", "100000"], "--threads must be an int in 1.."),
    (["--patience", "-1"], "--patience must be an int >= 0"),
    (["--patience", "1000"], "--patience must be an int in 1..100"),
])
def test_bounds_are_checked_before_anything_runs(tmp_path, capsys, monkeypatch, extra, msg):
    import atrous.compare.data as D
    monkeypatch.setattr(D, "load_task", lambda *a, **k: pytest.fail("data loaded before the check"))
    assert main(QUICK + ["--out", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import atrous.compare.data as D
    monkeypatch.setattr(D, "load_task", lambda *a, **k: pytest.fail("data loaded before --out was checked"))
    monkeypatch.setattr(R, "load_task", lambda *a, **k: pytest.fail("data loaded before --out was checked"))
    monkeypatch.setattr(R, "run_one", lambda *a, **k: pytest.fail("trained before --out was checked"))
    f = tmp_path / "file"
    f.write_text("x")
    assert main(QUICK + ["--out", str(f / "sub")]) == 2                 # a file in the path
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written" in err and "Not a directory" in err
    if os.geteuid() != 0:                                                # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert main(QUICK + ["--out", str(ro)]) == 2
        assert "cannot be written" in capsys.readouterr().err


def test_nan_or_bad_labels_in_data_are_refused_naming_the_file(tmp_path, capsys, monkeypatch):
    import struct
    import atrous.compare.data as D
    monkeypatch.setattr(D, "FASHION_DEBIAN_DIR", str(tmp_path / "none"))
    rng = np.random.default_rng(0)

    def idx(a, code, fmt):
        return struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + \
            a.astype(fmt).tobytes()

    x = rng.random((8, 28, 28)).astype(np.float32)
    x[3, 5, 6] = np.nan
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx(x, 0x0D, ">f4"))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(rng.random((4, 28, 28)), 0x0D, ">f4"))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx(rng.integers(0, 10, 8), 0x08, ">u1"))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx(np.array([1, 2, 12, 3]), 0x08, ">u1"))
    args = QUICK + ["--task", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "NaN or infinite" in err and "(3, 5, 6)" in err
    x[3, 5, 6] = 0.5
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx(x, 0x0D, ">f4"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and "labels must be in 0..9, got 1..12" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def _tiny_ds(scale=1.0):
    from atrous.compare.data import Dataset
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 1, 40)) * scale).astype(np.float32)
    return Dataset("mnist1d", x, rng.integers(0, 10, 64), x[:16].copy(), rng.integers(0, 10, 16), 10)


def test_nan_loss_stops_the_run_with_a_clear_record(tmp_path):
    ds = _tiny_ds()
    study = R.Study(task="mnist1d", strategies=("plain", "dilated"), seeds=1, epochs=2, width=4,
                    batch_size=32, lr=1e30)                      # the weights overflow after one step
    recs = R.run_study(study, str(tmp_path), ds=ds, quiet=True)
    assert len(recs) == 2
    for r in recs:
        assert r["status"] == "diverged" and r["metric"] is None
        assert "training loss became" in r["error"] and "epoch 1, step 2 of 2" in r["error"]
    from atrous.compare.report import write_report
    report = write_report(recs, str(tmp_path), figures=False)
    assert "Runs that diverged" in report and "9.8" not in report


def test_plateau_rule_stops_and_restores_the_best_epoch():
    from atrous.compare import train as T
    # the rule itself, against a direct count on a known sequence
    rule, seq = T.PlateauRule(3), [.1, .2, .3, .3005, .29, .31, .30, .30, .30]
    got = [rule.update(v) for v in seq]
    assert [g[0] for g in got] == [True, True, True, False, False, True, False, False, False]
    assert [g[2] for g in got] == [False] * 8 + [True] and rule.best_epoch == 6
    assert [g[1] for g in got] == [False, False, False, False, True, False, False, True, False]
    # a real training run under the rule
    import torch
    torch.manual_seed(0)
    from atrous.compare import strategies as S
    ds = _tiny_ds()
    model = S.build("plain", 1, 10, 40, depth=2, width=4)
    res = T.train_run(model, ds, epochs=30, seed=0, batch_size=16, lr=1e-2, patience=2, n_val=16)
    assert res["status"] == "ok" and len(res["val_curve"]) == res["epochs_run"] <= 30
    if res["plateau"]:
        assert res["epochs_run"] - res["best_epoch"] == 2          # stopped 2 epochs after the best
        assert max(res["val_curve"]) == pytest.approx(res["val_curve"][res["best_epoch"] - 1])
    # the test metric is that of the best validation epoch's weights (restored), not the last epoch's
    assert res["metric"] == pytest.approx(res["curve"][res["best_epoch"] - 1])


def test_progress_is_one_plain_line_per_run_in_a_log(tmp_path):
    import io
    ds = _tiny_ds()
    study = R.Study(task="mnist1d", strategies=("plain", "dilated"), seeds=2, epochs=1, width=4,
                    batch_size=32)
    log = io.StringIO()
    R.run_study(study, str(tmp_path), ds=ds, stream=log)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("[1/4] plain seed 0: accuracy ")
    assert not any(c in log.getvalue() for c in "\r\x1b")
    log = io.StringIO()                                       # nothing to run: no bar, one line
    R.run_study(study, str(tmp_path), ds=ds, stream=log)
    assert log.getvalue() == f"nothing to run: all 4 runs are in {tmp_path}/results.jsonl (--force re-runs them)\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    R.run_study(study, str(tmp_path), ds=ds, stream=tty, force=True)
    assert "\r" in tty.getvalue() and "runs" in tty.getvalue()          # tqdm bars on a terminal


def test_default_out_is_per_task_and_data_is_in_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(QUICK + ["--strategies", "plain"]) == 0
    assert (tmp_path / "atrous-results" / "mnist1d" / "report.md").exists()
    ds1, ds2 = _tiny_ds(), _tiny_ds()
    ds2.y_train = ds2.y_train.copy()
    ds2.y_train[0] = (ds2.y_train[0] + 1) % 10
    study = R.Study(task="mnist1d", strategies=("plain",), seeds=1, epochs=1, width=4)
    k1 = {R.run_key(c) for c in R.plan_runs(study, ds1)}
    k2 = {R.run_key(c) for c in R.plan_runs(study, ds2)}
    assert k1.isdisjoint(k2)                         # other data -> other runs (a resume never mixes)
    study.data_dir = str(tmp_path / "elsewhere")
    assert k1.isdisjoint({R.run_key(c) for c in R.plan_runs(study, ds1)})


def test_duplicates_in_results_are_warned_and_counted_once(quick_run, tmp_path, capsys):
    out = tmp_path / "res"
    shutil.copytree(quick_run, out)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text + text)
    assert main(QUICK + ["--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "atrous compare: warning:" in cap.err and "6 duplicate record(s)" in cap.err
    assert "(6 runs," in cap.out
    report = (out / "report.md").read_text()
    assert "(n=1, no spread)" in report and "(n=2" not in report
