"""`atrous rf`, `atrous design`, `atrous show`: output agrees with the library; bad specs are one line."""

import json
import os
import textwrap

import pytest

import atrous
from atrous import Layer
from atrous.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_rf_table_and_json_match_library(capsys):
    rc, out, _ = run(capsys, "rf", "--layers", "k3d1,k3d2,k3d4")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "type", "kernel", "stride", "dilation", "size", "jump", "start", "local",
                                "coverage"]
    assert lines[3].split()[5] == "15" and lines[3].split()[-1] == "15/15"
    rc, out, _ = run(capsys, "rf", "--layers", "k3x5d1x2,k2s2,k3d3", "--json")
    data = json.loads(out)
    rf = atrous.receptive_field([Layer((3, 5), dilation=(1, 2)), Layer(2, stride=2), Layer(3, dilation=3)])
    assert tuple(data["receptive_field"]["size"]) == rf.size
    assert tuple(data["receptive_field"]["jump"]) == rf.jump
    cov = atrous.coverage([Layer((3, 5), dilation=(1, 2)), Layer(2, stride=2), Layer(3, dilation=3)])
    assert tuple(data["layers"][-1]["covered"]) == cov.covered


def test_rf_model_from_factory(tmp_path, capsys, monkeypatch):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def make():
            return nn.Sequential(nn.Conv1d(1, 4, 3, dilation=2), nn.ReLU(), nn.MaxPool1d(2),
                                 nn.Conv1d(4, 4, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))
    """))
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "rf", "--model", "mynets:make", "--input-shape", "1,1,40")
    assert rc == 0 and "position-dependent local field: '3', local size 10, jump 2" in out
    assert "every output sees the whole input (global from '4')" in out
    rc, out, _ = run(capsys, "rf", "--model", "mynets:make", "--input-shape", "1,1,40", "--at", "3", "--json")
    assert json.loads(out)["receptive_field"]["size"] == [10]
    rc, _, err = run(capsys, "rf", "--model", "mynets:mkae", "--input-shape", "1,1,40")
    assert rc == 2 and "did you mean 'make'" in err and len(err.strip().splitlines()) == 1


def test_design_cli_matches_library(capsys):
    rc, out, _ = run(capsys, "design", "--rf", "65", "--kernel", "3", "--json", "--limit", "3")
    got = [tuple(s["dilations"]) for s in json.loads(out)]
    assert got == [s.dilations for s in atrous.design_dilations(65, kernel=3, limit=3)]
    rc, out, _ = run(capsys, "design", "--rf", "65", "--kernel", "3")
    assert rc == 0 and "1,3,9,27" in out


def test_show_writes_figure_and_data(tmp_path, capsys):
    out_png = tmp_path / "sub" / "fig.png"
    rc, out, _ = run(capsys, "show", "--layers", "k3x3d2x2,k3x3d4x4", "--out", str(out_png))
    assert rc == 0 and out_png.stat().st_size > 0
    data = json.loads((tmp_path / "sub" / "fig.json").read_text())
    assert data["coverage"]["holes"] == list(atrous.coverage([(2, 2), (4, 4)]).holes)
    assert not [f for f in os.listdir(tmp_path / "sub") if f.endswith(".tmp") or ".tmp." in f]


@pytest.mark.parametrize("argv,msg", [
    (["rf", "--layers", "k3q2"], "unknown letter 'q'"),
    (["rf", "--layers", "k3psme"], "did you mean 'same'"),
    (["rf", "--layers", "k3d0"], "dilation must be >= 1"),
    (["rf", "--layers", "k3,,k3"], "empty layer spec"),
    (["rf"], "exactly one of --layers or --model"),
    (["rf", "--model", "x:y"], "--input-shape"),
    (["rf", "--layers", "k3", "--input-shape", "1,a"], "--input-shape must be"),
    (["rf", "--model", "nomodule_xyz:f", "--input-shape", "1,1,8"], "cannot import"),
    (["rf", "--layers", "k3d1", "--at", "7"], "is not a node or submodule"),
    (["design", "--rf", "100", "--max-layers", "3"], "at most 3 layers"),
    (["design", "--rf", "1"], "target must be"),
    (["show", "--layers", "k3", "--out", "x.txt"], "--out must end"),
])
def test_bad_input_is_one_line(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_rf_prints_transposed_phases_and_empty_outputs(tmp_path, capsys, monkeypatch):
    (tmp_path / "tnets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def make():
            return nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, dilation=2)
    """))
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "rf", "--model", "tnets:make", "--input-shape", "1,1,16")
    assert rc == 0 and "0: no input" in out and "receive no input" in out
    import torch.nn as nn
    rf = atrous.receptive_field(nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1, dilation=2), (1, 1, 16))
    lo, hi = rf.phases[0][1]
    assert f"1: [{lo}, {hi}]" in out
