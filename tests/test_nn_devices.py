"""Devices: nothing in atrous.nn (layers, conversion, streaming state) or in a compare run hard-codes the
CPU. There is no GPU on the development machine: placement is checked on the ``meta`` device (shapes,
no data) and every ``device`` test runs on CUDA too when it is available."""

import numpy as np
import pytest
import torch
from torch import nn

import atrous.nn as ann

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

LAYERS = [
    (lambda: ann.Conv1d(3, 4, 3, stride=2, padding="same", dilation=2), (2, 3, 17), (2, 4, 9)),
    (lambda: ann.Conv2d(3, 4, 3, padding="causal", dilation=(2, 1)), (2, 3, 9, 8), (2, 4, 9, 8)),
    (lambda: ann.Conv3d(3, 4, 2, padding="full"), (1, 3, 4, 5, 6), (1, 4, 5, 6, 7)),
    (lambda: ann.AvgPool2d(3, 1, 1, dilation=2, count_include_pad=False), (1, 3, 9, 9), (1, 3, 7, 7)),
    (lambda: ann.ContextModule(3), (1, 3, 12, 12), (1, 3, 12, 12)),
    (lambda: ann.ASPP(3, 4, rates=(2, 3)).eval(), (2, 3, 9, 9), (2, 4, 9, 9)),
    (lambda: ann.TCN(3, [4, 4], 3), (2, 3, 20), (2, 4, 20)),
    (lambda: ann.WaveNet(3, 2, residual_channels=4, layers_per_stack=3), (2, 3, 20), (2, 2, 20)),
]


@pytest.mark.parametrize("device", DEVICES + ["meta"])
@pytest.mark.parametrize("make,shape,out", LAYERS)
def test_layers_run_where_their_parameters_are(make, shape, out, device):
    torch.manual_seed(0)
    m = make().to(device)
    y = m(torch.randn(shape, device=device))
    assert y.device.type == device and tuple(y.shape) == out


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_convert_to_dilated_follows_the_model(device):
    torch.manual_seed(1)
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2, padding=1) for _ in range(4)], nn.MaxPool2d(2),
                        ann.Conv2d(3, 3, 2, padding="same"), nn.AvgPool2d(2), nn.Conv2d(3, 3, 3, padding=1))
    net = net.to(device)
    assert ann.output_stride_of(net, 64) == (64, 64)
    conv = ann.convert_to_dilated(net, output_stride=8, input_size=64)
    assert {p.device.type for p in conv.parameters()} == {device}
    assert ann.output_stride_of(conv, 64) == (8, 8)
    x = torch.randn(1, 3, 64, 64, device=device)
    y, want = conv(x), net(x)
    assert y.device.type == device and y[..., ::8, ::8].shape == want.shape
    if device != "meta":
        torch.testing.assert_close(y[..., ::8, ::8], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_compare_training_and_evaluation_run_on_the_models_device(device):
    from atrous.compare import strategies as S
    from atrous.compare import train as T
    from atrous.compare.data import Dataset

    rng = np.random.default_rng(0)
    ds = Dataset("toy", rng.standard_normal((40, 1, 24)).astype(np.float32), rng.integers(0, 3, 40),
                 rng.standard_normal((20, 1, 24)).astype(np.float32), rng.integers(0, 3, 20), 3)
    torch.manual_seed(0)
    model = S.build("dilated", 1, 3, target_rf=12, depth=3, width=4).to(device)
    rec = T.train_run(model, ds, epochs=1, seed=0, batch_size=16)
    assert {p.device.type for p in model.parameters()} == {device}
    assert 0.0 <= rec["metric"] <= 1.0 and len(rec["curve"]) == 1 and rec["throughput"] > 0
    # the reported metric is the accuracy of the trained model, computed here on the CPU
    model.eval()
    with torch.no_grad():
        pred = model.cpu()(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    assert rec["metric"] == pytest.approx(float((pred == ds.y_test).mean()))


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_analysis_follows_the_model(device):
    """receptive_field/cost run shapes only (any device, meta included); the effective receptive field
    runs the model where it is and returns a NumPy map (refused by name on meta: it needs weights)."""
    import atrous
    net = nn.Sequential(nn.Conv2d(2, 3, 3, dilation=2), nn.ReLU(), nn.Conv2d(3, 1, 3)).to(device)
    assert atrous.receptive_field(net, (1, 2, 16, 16)).size == (7, 7)
    assert atrous.cost(net, (1, 2, 16, 16)).macs == 3 * 144 * 2 * 9 + 1 * 100 * 3 * 9
    if device == "meta":
        with pytest.raises(ValueError, match="meta device"):
            atrous.effective_receptive_field(net, (1, 2, 16, 16), n_samples=2)
        return
    e = atrous.effective_receptive_field(net, (1, 2, 16, 16), n_samples=2)
    assert isinstance(e.map, np.ndarray) and e.map.shape == (16, 16) and e.rf.size == (7, 7)
