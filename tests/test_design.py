"""design_dilations against an exhaustive, independently written enumeration."""

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import atrous


def brute_counts(dils, k):
    c = Counter(sum(p) for p in itertools.product(*[[t * d for t in range(k)] for d in dils]))
    return np.array([c.get(i, 0) for i in range(max(c) + 1)])


def full(dils, k):
    return bool((brute_counts(dils, k) > 0).all())


def exhaustive(target, k, depth):
    """Every multiset of `depth` dilations (ascending) with a hole-free field >= target."""
    top = (k ** depth - 1) // (k - 1)     # a hole-free field of depth layers is at most k**depth
    return {d for d in itertools.combinations_with_replacement(range(1, top + 1), depth)
            if 1 + (k - 1) * sum(d) >= target and full(d, k)}


@pytest.mark.parametrize("target,k", [(5, 3), (9, 3), (10, 3), (17, 3), pytest.param(28, 3, marks=pytest.mark.slow),
                                       (7, 2), (12, 4), (26, 5)])
def test_schedules_are_exactly_the_hole_free_ones_of_smallest_depth(target, k):
    res = atrous.design_dilations(target, kernel=k)
    depth = res[0].depth
    assert not any(exhaustive(target, k, dd) for dd in range(1, depth))      # nothing shallower works
    assert {s.dilations for s in res} == exhaustive(target, k, depth)         # and nothing is missed
    for s in res:
        c = brute_counts(s.dilations, k)
        assert s.field == len(c) == s.covered and s.field >= target
        assert s.cv == pytest.approx(c.std() / c.mean(), abs=1e-12)
        assert s.params_factor == depth * k
    cvs = [s.cv for s in res]
    assert all(a <= b + 1e-9 for a, b in zip(cvs, cvs[1:]))


def test_context_module_target_65():
    res = atrous.design_dilations(65, kernel=3)
    assert res[0].depth == 4 and res[0].dilations == (1, 3, 9, 27) and res[0].cv == 0.0
    exact = atrous.design_dilations(65, kernel=3, max_field=65)
    assert exact and all(s.field == 65 and full(s.dilations, 3) for s in exact)
    for s in res:
        assert atrous.hdc_check(list(s.dilations)).ok


@given(st.integers(2, 60), st.integers(2, 4))
@settings(max_examples=25)
def test_axes_2_cv_is_the_cv_of_the_2d_map(target, k):
    one = atrous.design_dilations(target, kernel=k, limit=3)
    two = atrous.design_dilations(target, kernel=k, axes=2)
    for s in one:
        c = brute_counts(s.dilations, k)
        m = np.multiply.outer(c, c).astype(float)
        match = [t for t in two if t.dilations == s.dilations][0]
        assert match.cv == pytest.approx(m.std() / m.mean(), abs=1e-9)
        assert match.params_factor == s.depth * k * k


def test_errors():
    with pytest.raises(ValueError, match="at most 3 layers"):
        atrous.design_dilations(100, kernel=3, max_layers=3)
    with pytest.raises(ValueError, match="target must be an int >= 2, got 1"):
        atrous.design_dilations(1)
    with pytest.raises(ValueError, match="kernel must be"):
        atrous.design_dilations(10, kernel=1)
    with pytest.raises(ValueError, match="max_field"):
        atrous.design_dilations(300, kernel=3)          # too many 6-layer schedules for the budget
    with pytest.raises(ValueError, match="limit must be"):
        atrous.design_dilations(30, limit=0)
    with pytest.raises(ValueError, match="max_field must be"):
        atrous.design_dilations(30, max_field=20)
