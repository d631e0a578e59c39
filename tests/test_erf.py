"""Effective receptive field against the closed form of linear stacks (Luo et al. 2016):
variance per axis = sum_l (j_{l-1} d_l)^2 (k_l^2 - 1) / 12; uniform 3x3, n layers: sigma = sqrt(2n/3)."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import atrous
from atrous import Layer
from atrous.analysis.erf import linear_stack_sigma


def uniform_stack(specs, dim):
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
    layers = []
    for k, s, d in specs:
        c = conv(1, 1, k, stride=s, dilation=d, bias=False)
        nn.init.constant_(c.weight, 1.0 / c.weight.numel())
        layers.append(c)
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("n", [1, 3, 8])
def test_uniform_3x3_sigma_is_sqrt_2n_over_3(n):
    net = uniform_stack([(3, 1, 1)] * n, 2)
    e = atrous.effective_receptive_field(net, (1, 1, 2 * n + 5, 2 * n + 5), n_samples=2)
    assert e.sigma == pytest.approx((math.sqrt(2 * n / 3),) * 2, rel=1e-9)
    rf = atrous.receptive_field(net, (1, 1, 2 * n + 5, 2 * n + 5))
    assert e.mean == pytest.approx(tuple(s + o * j for s, o, j in zip(rf.start, e.output_index, rf.jump)))


def test_dilated_strided_stack_matches_formula_1d():
    specs = [(3, 1, 2), (4, 2, 1), (3, 1, 3), (2, 1, 1)]
    net = uniform_stack(specs, 1)
    e = atrous.effective_receptive_field(net, (1, 1, 120), n_samples=1)
    # hand evaluation of the formula: jumps before the layers are 1, 1, 2, 2
    var = (1 * 2) ** 2 * 8 / 12 + (1 * 1) ** 2 * 15 / 12 + (2 * 3) ** 2 * 8 / 12 + (2 * 1) ** 2 * 3 / 12
    assert e.sigma[0] ** 2 == pytest.approx(var, rel=1e-9)
    assert linear_stack_sigma([Layer(k, stride=s, dilation=d) for k, s, d in specs])[0] ** 2 == pytest.approx(var)


def test_anisotropic_2d_matches_linear_stack_sigma():
    net = nn.Sequential(nn.Conv2d(1, 1, (3, 5), dilation=(2, 1), bias=False),
                        nn.Conv2d(1, 1, (2, 3), stride=(1, 2), bias=False),
                        nn.Conv2d(1, 1, 3, dilation=(1, 3), bias=False)).double()
    for c in net:
        nn.init.constant_(c.weight, 1.0)
    e = atrous.effective_receptive_field(net, (1, 1, 31, 41), n_samples=1)
    want = linear_stack_sigma([Layer((3, 5), dilation=(2, 1)), Layer((2, 3), stride=(1, 2)),
                               Layer(3, dilation=(1, 3))])
    assert e.sigma == pytest.approx(want, rel=1e-9)


def test_random_init_average_leaves_model_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    before = [p.detach().clone() for p in net.parameters()]
    e = atrous.effective_receptive_field(net, (1, 2, 24, 24), n_samples=4, n_inits=3)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert net.training
    rf = e.rf
    assert rf.size == (9, 9)
    # the gradient is zero outside the theoretical field
    lo = [s - (n - 1) / 2 + o * j for s, n, o, j in zip(rf.start, rf.size, e.output_index, rf.jump)]
    inside = np.zeros(e.map.shape, bool)
    inside[int(lo[0]):int(lo[0]) + 9, int(lo[1]):int(lo[1]) + 9] = True
    assert not e.map[~inside].any() and e.map[inside].sum() > 0
    assert 0 < e.sigma[0] < rf.size[0] / 2 and 0 < e.fraction_within(2) <= 1


def test_at_submodule_and_errors():
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 5), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    e = atrous.effective_receptive_field(net, (1, 1, 20), n_samples=2, at="1")
    assert e.rf.size == (7,) and e.map.shape == (20,)
    with pytest.raises(ValueError, match="pass at="):
        atrous.effective_receptive_field(net, (1, 1, 20))
    with pytest.raises(ValueError, match="n_samples must be"):
        atrous.effective_receptive_field(net, (1, 1, 20), n_samples=0)
    with pytest.raises(ValueError, match="not a node or submodule"):
        atrous.effective_receptive_field(net, (1, 1, 20), at="9")
