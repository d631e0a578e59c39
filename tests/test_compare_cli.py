"""`atrous compare` end to end: a --quick run writing every output, resume (skip finished runs,
same seed -> same number), an interrupted run leaving no partial record, atomic writes, bad options
as one-line errors, and (slow) torchrun with 2 processes equal to one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
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
