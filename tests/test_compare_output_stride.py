"""The output-stride study: the backbone's variants against independent oracles (the original
backbone's output subsampled, brute-force gradient support for the field, parameter counts), same
initial weights across strides, and the study end to end on a tiny configuration (tiny IDX files
written here)."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

import atrous
from atrous.cli import main
from atrous.compare import output_stride as O
from atrous.compare import report as Rp


def _support_extent(net, n, trials=3):
    """Brute force: union over random float64 inputs of the input-gradient support of the centre
    output (all channels), per axis extent. Norm statistics randomised first."""
    net = net.double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g, dtype=torch.float64) + 0.5)  # ReLUs on
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    seen = torch.zeros(n, n, dtype=torch.bool)
    for _ in range(trials):
        x = torch.randn(1, 1, n, n, dtype=torch.float64, generator=g, requires_grad=True)
        y = net(x)
        c = y.shape[-1] // 2
        y[0, :, c, c].sum().backward()
        seen |= (x.grad[0, 0] != 0) | torch.isnan(x.grad[0, 0])
    rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("s", [32, 8, 4])
def test_variant_field_by_brute_force(s):
    torch.manual_seed(0)
    net = O.convert(O.backbone(1, 2), s, input_size=256)
    want = atrous.receptive_field(net, (1, 1, 256, 256)).size
    assert _support_extent(net, 256) == tuple(want) == (183, 183)


def test_variants_equal_the_backbone_subsampled_and_keep_field_and_params():
    torch.manual_seed(1)
    base = O.backbone(1, 3).double().eval()
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    ref = base(x)                                                   # (2, 24, 2, 2)
    n = sum(p.numel() for p in base.parameters())
    for s in (16, 8, 4, 2):
        net = O.convert(base, s).eval()
        f = 32 // s
        out = net(x)
        assert out.shape[-1] == 64 // s
        torch.testing.assert_close(out[..., ::f, ::f], ref, rtol=0, atol=1e-12)
        assert sum(p.numel() for p in net.parameters()) == n
    assert O.verify_variants((32, 16, 8, 4), width=2) == {s: (183, 183) for s in (32, 16, 8, 4)}
    # the original is untouched
    assert all(m.stride in ((2, 2), (1, 1)) and m.dilation == (1, 1)
               for m in base.modules() if isinstance(m, torch.nn.Conv2d))


def test_same_seed_same_initial_weights_across_strides():
    nets = {}
    for s in (32, 4):
        torch.manual_seed(7)
        nets[s] = O.build_variant(s, width=2)
    a, b = (dict(nets[s].named_parameters()) for s in (32, 4))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    y = nets[4](torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 11, 64, 64)


def test_check_output_strides():
    assert O.check_output_strides("4,32") == (32, 4)
    for bad, msg in (("32,3", "among"), ("", "at least one"), ("8,8", "must not repeat"), ("x", "ints")):
        with pytest.raises(ValueError, match=msg):
            O.check_output_strides(bad)


def _row(s, mean, std=.01, n=3, band=None, macs=None, field=(183, 183), params=1000):
    return {"strategy": f"os{s}", "output_stride": s, "mean": mean, "std": std, "n": n, "chance": 0.05,
            "field": list(field), "params": params, "macs": macs or 10 ** 7 // s, "epoch_time": 1.0,
            "resolution": [64 // s, 64 // s],
            "band": {"2": {"mean": band if band is not None else mean - .1, "std": std, "n": n}},
            "metric_name": "mIoU"}


def _verdicts(rows):
    return {c["claim"][:20]: c["verdict"] for c in Rp.claims_output_stride(rows)}


def test_output_stride_claims_follow_the_numbers():
    v = _verdicts([_row(32, .30), _row(16, .40), _row(8, .45), _row(4, .50)])
    assert v == {"Conversion to dilati": "confirmed", "Keeping resolution h": "confirmed",
                 "Near object boundari": "confirmed", "Resolution costs com": "confirmed"}
    v = _verdicts([_row(32, .50), _row(16, .40), _row(8, .30)])
    assert v["Keeping resolution h"] == "refuted"
    v = _verdicts([_row(32, .40), _row(16, .401), _row(8, .402)])
    assert v["Keeping resolution h"] == "within seed noise"
    v = _verdicts([_row(32, .30), _row(16, .40), _row(8, .405)])
    assert v["Keeping resolution h"].startswith("confirmed (overall")
    v = _verdicts([_row(32, .30, std=None, n=1), _row(8, .50, std=None, n=1)])
    assert v["Keeping resolution h"] == Rp.NOT_ENOUGH and v["Near object boundari"] == Rp.NOT_ENOUGH
    v = _verdicts([_row(32, .30), _row(8, .50, field=(100, 100), params=999)])
    assert v["Conversion to dilati"] == "refuted"


def test_trend_beside_the_paper_by_feature_map_size():
    rows = [_row(32, .10), _row(16, .25), _row(8, .40), _row(4, .50)]
    ev = next(c["evidence"] for c in Rp.claims_output_stride(rows) if c["claim"].startswith("Keeping"))
    # maps 16, 8, 4, 2 match the paper's ceil(513/OS) = 17, 9, 5, 3 (OS 32, 64, 128, 256)
    want = [O.PAPER_MIOU[s] / O.PAPER_MIOU[32] for s in (32, 64, 128, 256)]
    assert ("DeepLabv3 at the nearest map sizes (513-pixel crops) 17x17 1.00, 9x9 "
            f"{want[1]:.2f}, 5x5 {want[2]:.2f}, 3x3 {want[3]:.2f}") in ev
    assert "here 16x16 1.00, 8x8 0.80, 4x4 0.50, 2x2 0.20" in ev
    assert "here OS 8 -> 32 loses 30.0 points" in ev


def _idx(arr):
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(head + arr.astype(">u1").tobytes())


def _fashion(d, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in files.items():
        (d / (name + ".gz")).write_bytes(_idx(a))


def test_output_stride_study_end_to_end_tiny(tmp_path, capsys):
    _fashion(tmp_path)
    out = tmp_path / "out"
    args = ["compare", "--study", "output-stride", "--quick", "--quiet", "--data-dir", str(tmp_path),
            "--seeds", "2", "--epochs", "3", "--patience", "1", "--out", str(out)]
    assert main(args) == 0
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 8
    by = {}
    for r in recs:
        by.setdefault(r["config"]["output_stride"], []).append(r)
    assert sorted(by) == [4, 8, 16, 32]
    for s, rs in by.items():
        for r in rs:
            assert r["status"] == "ok" and r["field"] == [183, 183]
            assert r["resolution"] == [64 // s] * 2 and r["output_stride"] == [s, s]
            assert 1 <= r["epochs_run"] <= 3 and len(r["curve"]) == len(r["val_curve"]) == r["epochs_run"]
            assert r["config"]["n_val"] >= 1 and set(r["band_acc"]) == {"1", "2", "4"}
            assert 0 <= r["metric"] <= 1 and 0 <= r["chance"] <= 1
    macs = [by[s][0]["macs"] for s in (32, 16, 8, 4)]
    assert macs == sorted(macs) and len(set(macs)) == 4
    assert len({by[s][0]["params"] for s in by}) == 1
    report = (out / "report.md").read_text()
    assert "output stride of one backbone" in report and "Conversion to dilation keeps" in report
    assert "DeepLabv3" in report and "± 0.00" not in report
    for name in ("accuracy.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "os4" in text and "acc. ≤2px of edge %" in text


@pytest.mark.parametrize("extra,msg", [
    (["--study", "output-strid"], "did you mean 'output-stride'"),
    (["--study", "output-stride", "--task", "mnist1d"], "task must be 'fashion-seg'"),
    (["--study", "output-stride", "--output-strides", "32,12"], "output strides must be among"),
    (["--output-strides", "32,8"], "--output-strides belongs to --study output-stride"),
])
def test_output_stride_bad_options(tmp_path, capsys, extra, msg):
    assert main(["compare", "--quick", "--quiet", "--out", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
