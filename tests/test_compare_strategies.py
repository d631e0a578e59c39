"""The strategy factory: every strategy reaches its planned field (brute force: perturb one input
sample, see whether the centre output changes), coverage/holes by the same brute force, same depth
and head, parameter counts against a closed-form count, and errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import atrous
from atrous.compare import strategies as S


def _affecting(model, length, dims=1):
    """Brute force on the body: input offsets (relative to the centre output's position) whose
    perturbation changes the centre output. Weights made positive and inputs positive so every
    ReLU is active and a large bump wins every max-pool: a change <=> a path exists."""
    body = model.body.double().eval()
    with torch.no_grad():
        for m in body.modules():
            if hasattr(m, "weight") and m.weight is not None and m.weight.ndim > 1:
                m.weight.abs_().add_(0.1)
    base = torch.ones((1, 1) + (length,) * dims, dtype=torch.float64)
    with torch.no_grad():
        out0 = body(base)
        n_out = out0.shape[2]
        centre = n_out // 2
        # one perturbed copy per input position along axis 0 (other axes: the middle row)
        xs = base.repeat(length, 1, *([1] * dims))
        mid = (length // 2,) * (dims - 1)
        for i in range(length):
            xs[(i, 0, i) + mid] += 1000.0
        outs = body(xs)
    idx = (slice(None), 0, centre) + tuple(s // 2 for s in out0.shape[3:])
    changed = (outs[idx] != out0[(0, 0, centre) + tuple(s // 2 for s in out0.shape[3:])]).numpy()
    return np.nonzero(changed)[0], n_out


@pytest.mark.parametrize("strategy", S.STRATEGIES)
@settings(max_examples=4)
@given(target=st.integers(5, 41), depth=st.integers(3, 6))
def test_field_by_brute_force_1d(strategy, target, depth):
    try:
        plan = S.plan(strategy, target, depth)
    except ValueError:
        return  # unreachable at this depth: covered by test_unreachable_target
    torch.manual_seed(0)
    length = 4 * plan.field + 8
    model = S.build(strategy, 1, 10, target, depth=depth, width=3, in_size=length)
    pos, _ = _affecting(model, length)
    extent = int(pos.max() - pos.min() + 1)
    assert extent == plan.field
    if strategy != "plain":
        assert plan.field >= target
    else:
        assert plan.field == 1 + 2 * depth                       # closed form, d = 1, k = 3
    if strategy == "dilated":
        assert len(pos) == extent                                # hole-free
    if strategy == "gridded":
        assert len(pos) == (extent + 1) // 2                     # every other offset is a hole
        assert set(np.diff(pos)) == {2}
    # the analysis API agrees with the brute force (the check the runner does before training)
    assert S.verify_field(model, (1, 1, length)).size == (plan.field,)


@pytest.mark.parametrize("strategy", ["pool", "stride", "dilated"])
def test_field_by_brute_force_2d(strategy):
    torch.manual_seed(0)
    n = 3 * S.plan(strategy, 15, 3).field + 4
    model = S.build(strategy, 1, 11, target_rf=15, dims=2, depth=3, width=2, dense=True, in_size=n)
    pos, _ = _affecting(model, n, dims=2)
    assert pos.max() - pos.min() + 1 == model.plan.field
    assert S.verify_field(model, (1, 1, n, n)).size == (model.plan.field,) * 2


def test_coverage_api_agrees_with_brute_force():
    for name in ("dilated", "gridded"):
        model = S.build(name, 1, 10, 40)
        pos, _ = _affecting(model, 100)
        cov = atrous.coverage(model.body, input_shape=(1, 1, 100))
        assert (cov.extent, cov.covered) == ((pos.max() - pos.min() + 1,), (len(pos),))


def _closed_form_params(plan, c_in, width, classes, dims):
    n, c = 0, c_in
    for k in plan.kernels:
        n += width * c * k ** dims + 2 * width           # conv (no bias) + BatchNorm affine
        c = width
    return n + width * classes + classes          # linear or 1x1 conv head, with bias


@pytest.mark.parametrize("strategy", S.STRATEGIES)
@pytest.mark.parametrize("dims,dense", [(1, False), (2, True)])
def test_same_depth_head_and_params(strategy, dims, dense):
    m = S.build(strategy, 1, 10, target_rf=28, dims=dims, depth=5, width=8, dense=dense, in_size=28)
    convs = [x for x in m.body.modules() if isinstance(x, torch.nn.modules.conv._ConvNd)
             or type(x).__name__.startswith("Conv")]
    assert len(convs) == 5
    n = sum(p.numel() for p in m.parameters())
    assert n == _closed_form_params(m.plan, 1, 8, 10, dims)
    x = torch.randn(2, 1, *(28,) * dims)
    assert m(x).shape == ((2, 10, *(28,) * dims) if dense else (2, 10))


def test_strategies_differ_only_where_they_should():
    p = {s: S.plan(s, 40, 5) for s in S.STRATEGIES}
    assert p["dilated"].kernels == p["plain"].kernels == p["pool"].kernels == (3,) * 5
    assert p["pool"].strides == p["dilated"].strides == (1,) * 5 and any(p["pool"].pools)
    assert set(p["stride"].strides) == {1, 2} and not any(p["stride"].pools)
    assert p["large"].dilations == (1,) * 5 and p["large"].kernels[0] > 3
    assert all(d % 2 == 0 for d in p["gridded"].dilations)
    # pool/stride use the fewest downsamplings that reach the target
    for s in ("pool", "stride"):
        n = sum(p[s].pools) if s == "pool" else p[s].strides.count(2)
        fewer = S._field((3,) * 5, tuple(2 if i < n - 1 and s == "stride" else 1 for i in range(5)),
                         (1,) * 5, tuple(i < n - 1 and s == "pool" for i in range(5)))
        assert fewer < 40 <= p[s].field
    # large uses the smallest odd kernel: closed form 1 + depth*(k-1) >= target
    k = p["large"].kernels[0]
    assert 1 + 5 * (k - 1) >= 40 > 1 + 5 * (k - 3)


def test_dilated_schedule_comes_from_design_dilations(monkeypatch):
    import atrous.design
    from types import SimpleNamespace as NS
    calls = []

    def fake(target, kernel=3, max_layers=None, max_field=None):
        calls.append((target, kernel, max_layers, max_field))
        return [NS(dilations=(1, 3, 9))]                 # "the smallest depth is 3" for any target

    monkeypatch.setattr(atrous.design, "design_dilations", fake)
    assert S.plan("dilated", 40, 5).dilations == (1, 1, 1, 3, 9)      # 2 extra d=1 layers in front
    assert calls[-1] == (40 - 2 * 2, 3, 3, 40 - 4 + 4)
    calls.clear()
    assert S.plan("gridded", 40, 5).dilations == (2, 2, 2, 6, 18)     # factor 2, half the target
    assert calls[-1][0] == 21 - 4


def test_dilated_schedule_real_design():
    for target, depth in ((40, 5), (28, 5), (64, 6), (10, 5)):
        p = S.plan("dilated", target, depth)
        assert len(p.dilations) == depth and target <= p.field <= target + 4
        g = S.plan("gridded", target, depth)
        assert len(g.dilations) == depth and g.field >= target


def test_errors():
    with pytest.raises(ValueError, match="did you mean 'gridded'"):
        S.plan("grided", 40)
    with pytest.raises(ValueError, match="target_rf must be >= 1, got 0"):
        S.plan("dilated", 0)
    with pytest.raises(TypeError, match="depth must be an int"):
        S.plan("plain", 40, depth=2.5)
    with pytest.raises(ValueError, match="out of reach of 'stride' at depth 2"):
        S.plan("stride", 1000, depth=2)
    with pytest.raises(ValueError, match="too small"):
        S.plan("pool", 40, depth=5, in_size=4)
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        S.build("plain", 1, 10, 40, dims=4)
    with pytest.raises(ValueError, match="must not repeat"):
        S.check_strategies("plain,plain")
