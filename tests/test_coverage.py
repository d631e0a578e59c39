"""Coverage, path counts and the HDC rule, against brute-force unions of tap positions.

Oracles: the multiset of all tap-offset sums (itertools.product over one tap per layer), written
independently of the shifted-sum engine; for torch models with branches, the input gradient of one
output of the same net with every weight 1 and no nonlinearity (which *is* the path-count map).
"""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import atrous
from atrous import Layer


def brute_counts(layers_1d):
    """layers_1d: list of (kernel, stride, dilation). Counter of input offsets over all tap paths."""
    steps, jump = [], 1
    for k, s, d in layers_1d:
        steps.append([t * d * jump for t in range(k)])
        jump *= s
    return Counter(sum(p) for p in itertools.product(*steps))


def counts_array(counter):
    lo, hi = min(counter), max(counter)
    return lo, np.array([counter.get(i, 0) for i in range(lo, hi + 1)])


def test_single_dilated_layer_extent_is_not_coverage():
    cov = atrous.coverage([2], kernel=3)
    assert cov.extent == (5,) and cov.covered == (3,) and cov.holes == (2,)


@given(st.lists(st.tuples(st.integers(2, 4), st.integers(1, 2), st.integers(1, 6)), min_size=1, max_size=5))
@settings(max_examples=80)
def test_chain_path_counts_equal_brute_force(specs):
    cov = atrous.coverage([Layer(kernel=k, stride=s, dilation=d) for k, s, d in specs])
    lo, ref = counts_array(brute_counts(specs))
    assert np.array_equal(cov.path_counts[0], ref)
    assert cov.offset == (lo,)
    assert cov.covered == (int((ref > 0).sum()),) and cov.extent == (len(ref),)
    zero_runs = [len(list(g)) for z, g in itertools.groupby(ref == 0) if z]
    assert cov.largest_hole == (max(zero_runs, default=0),)
    assert cov.cv[0] == pytest.approx(ref.std() / ref.mean())
    # the extent is the receptive-field size
    assert cov.extent == atrous.receptive_field([Layer(kernel=k, stride=s, dilation=d) for k, s, d in specs]).size


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3))
@settings(max_examples=30)
def test_2d_anisotropic_map_is_brute_force_union(dils):
    cov = atrous.coverage(list(dils), kernel=(3, 2))
    taps = [[(t * dh, u * dw) for t in range(3) for u in range(2)] for dh, dw in dils]
    ref = Counter(tuple(map(sum, zip(*p))) for p in itertools.product(*taps))
    nd = cov.path_counts_nd
    assert nd.shape == cov.extent
    got = {(i, j): int(v) for (i, j), v in np.ndenumerate(nd) if v}
    assert got == dict(ref)
    assert cov.covered_nd == len(ref)
    assert cov.holes_nd == math.prod(cov.extent) - len(ref)
    for ax in range(2):   # marginals
        assert np.array_equal(cov.path_counts[ax], nd.sum(axis=1 - ax))


def test_large_2d_stack_extent_about_1000():
    dil = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1, 2]
    cov = atrous.coverage([(d, d) for d in dil], kernel=3)
    assert cov.extent == (1 + 2 * sum(dil),) * 2 and cov.holes == (0, 0)


def _ones(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.endswith("weight") else 0.0)
    return model.double()


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, (3, 1), dilation=(2, 1), padding=(2, 0))
        self.b = nn.Conv2d(1, 1, (1, 3), dilation=(1, 3), padding=(0, 3))
        self.c = nn.Conv2d(1, 1, 3, dilation=2, padding=2)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_model_with_branches_nd_map_equals_gradient():
    net = _ones(Res())
    shape = (1, 1, 21, 21)
    cov = atrous.coverage(net, input_shape=shape, nd=True)
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    net(x)[0, 0, 10, 10].backward()
    g = x.grad[0, 0].numpy()
    nz = np.nonzero(g)
    box = g[nz[0].min():nz[0].max() + 1, nz[1].min():nz[1].max() + 1]
    assert np.array_equal(cov.path_counts_nd, box.round().astype(np.int64))
    # branches that cross (3x1 + 1x3): the 2-D map has holes the chain formula would not give
    assert cov.holes_nd == int((box == 0).sum()) > 0
    for ax in range(2):
        assert np.array_equal(cov.path_counts[ax], cov.path_counts_nd.sum(axis=1 - ax))


def test_model_ending_in_global_pool_reports_last_spatial_node():
    net = nn.Sequential(nn.Conv1d(1, 2, 3, dilation=2), nn.ReLU(), nn.Conv1d(2, 2, 3, dilation=4),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2, 3))
    cov = atrous.coverage(net, input_shape=(1, 1, 40))
    assert cov.name == "2"
    assert np.array_equal(cov.path_counts[0], counts_array(brute_counts([(3, 1, 2), (3, 1, 4)]))[1])
    with pytest.raises(ValueError, match="no position-dependent local field"):
        atrous.coverage(net, input_shape=(1, 1, 40), at="5")


def test_transposed_model_is_a_clear_error():
    with pytest.raises(ValueError, match="receptive_field"):
        atrous.coverage(nn.ConvTranspose1d(1, 1, 3, stride=2), input_shape=(1, 1, 8))


def test_bad_dilations():
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        atrous.coverage([1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        atrous.coverage([])
    with pytest.raises(ValueError, match="dilations must be ints"):
        atrous.hdc_check([1, 2.5])


# ---------------------------------------------------------------- HDC (Wang et al. 2018)

def brute_full(dils, k=3):
    c = brute_counts([(k, 1, d) for d in dils])
    return set(c) == set(range(min(c), max(c) + 1))


def test_hdc_paper_examples():
    # Wang et al. 2018, Sec. 3.3: [1, 2, 5] satisfies M_2 <= 3; [1, 2, 9] gives M_2 = 5
    r = atrous.hdc_check([1, 2, 5], kernel=3)
    assert r.ok and r.recursion_ok and r.M[1] == 2
    r = atrous.hdc_check([1, 2, 9], kernel=3)
    assert not r.ok and not r.recursion_ok and r.M[1] == 5


def test_hdc_common_factor_flagged():
    r = atrous.hdc_check([2, 4, 8])
    assert r.common_factor == 2 and not r.ok
    assert any("common factor 2" in s for s in r.reasons)


def test_hdc_recursion_accepts_schedules_with_holes():
    r = atrous.hdc_check([4, 1])
    assert r.recursion_ok and not r.ok and not brute_full([4, 1])
    assert any("still has holes" in s for s in r.reasons)
    r = atrous.hdc_check([1, 5, 1, 1])   # rejected by the recursion (order), yet hole-free
    assert r.recursion_ok is False and r.ok and brute_full([1, 5, 1, 1])


@given(st.lists(st.integers(1, 9), min_size=2, max_size=4), st.integers(2, 4))
@settings(max_examples=80)
def test_hdc_ok_is_brute_force_and_recursion_formula(dils, k):
    r = atrous.hdc_check(dils, kernel=k)
    assert r.ok == brute_full(dils, k)
    # recursion by its definition, written forwards over the reversed list
    M = dils[-1]
    ms = [M]
    for ri in reversed(dils[:-1]):
        M = max(M - 2 * ri, M - 2 * (M - ri), ri)
        ms.append(M)
    assert list(r.M) == ms[::-1] and r.recursion_ok == (ms[::-1][1] <= k)
    assert r.common_factor == math.gcd(*dils)


def test_coverage_follows_the_local_paths_through_a_gate():
    """A squeeze-excitation gate adds no taps: the coverage of an SE net is the coverage of the same
    net without the gate (independently computed), and the gate is named in the notes."""
    import rf_models as R
    with_se = atrous.coverage(R.SENet(se=True), (1, 3, 32, 32))
    without = atrous.coverage(R.SENet(se=False), (1, 3, 32, 32))
    assert with_se.extent == without.extent == (5, 5) and with_se.covered == without.covered
    assert all(np.array_equal(a, b) for a, b in zip(with_se.path_counts, without.path_counts))
    assert with_se.notes and "global op" in with_se.notes[0] and not without.notes
