"""atrous.geometry against closed-form rules and a brute-force enumeration of windows."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrous import geometry as g


def brute_outputs(n, k, s, d, lo, hi):
    """Count window positions by walking the padded axis (independent of the formula)."""
    count, start = 0, 0
    while start + d * (k - 1) < n + lo + hi:
        count += 1
        start += s
    return count


@given(n=st.integers(1, 60), k=st.integers(1, 7), s=st.integers(1, 5), d=st.integers(1, 6),
       lo=st.integers(0, 6), hi=st.integers(0, 6))
def test_output_size_matches_brute_force(n, k, s, d, lo, hi):
    eff = d * (k - 1) + 1
    if n + lo + hi < eff:
        with pytest.raises(ValueError, match=f"effective kernel {eff}"):
            g.output_size(n, k, s, d, (lo, hi))
    else:
        assert g.output_size(n, k, s, d, (lo, hi)) == brute_outputs(n, k, s, d, lo, hi)


@given(n=st.integers(1, 80), k=st.integers(1, 7), s=st.integers(1, 5), d=st.integers(1, 6))
def test_same_padding_gives_ceil_and_tf_split(n, k, s, d):
    ((lo, hi),) = g.resolve_padding("same", (n,), (k,), (s,), (d,))
    assert g.output_size(n, k, s, d, (lo, hi)) == math.ceil(n / s)
    assert hi - lo in (0, 1)  # the extra sample goes on the high side (TensorFlow)
    # TensorFlow's closed form
    total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
    assert (lo, hi) == (total // 2, total - total // 2)


@given(n=st.integers(1, 80), k=st.integers(1, 7), s=st.integers(1, 5), d=st.integers(1, 6))
def test_causal_output_t_sees_only_past(n, k, s, d):
    ((lo, hi),) = g.resolve_padding("causal", (n,), (k,), (s,), (d,))
    assert hi == 0
    m = g.output_size(n, k, s, d, (lo, hi))
    assert m == math.ceil(n / s)
    for t in range(m):
        last_tap = t * s + d * (k - 1) - lo  # input index of the last tap of output t
        assert last_tap == t * s  # sees up to its own position, never later


def test_causal_on_second_axis_only():
    pads = g.resolve_padding("causal", (10, 10), (3, 3), (1, 1), (2, 2), causal_axes=1)
    assert pads == ((2, 2), (4, 0))
    with pytest.raises(ValueError, match="causal_axes"):
        g.resolve_padding("causal", (10,), (3,), (1,), (1,), causal_axes=3)


def test_full_and_valid():
    assert g.resolve_padding("full", (4,), (3,), (1,), (3,)) == ((6, 6),)
    assert g.resolve_padding("valid", (4, 4), (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    # full output: n + eff - 1
    assert g.output_size(4, 3, 1, 3, (6, 6)) == 4 + 7 - 1


@pytest.mark.parametrize("spec,err,match", [
    ("sme", ValueError, r"did you mean 'same'"),
    ("bogus", ValueError, r"got 'bogus'"),
    (-1, ValueError, r"padding must be >= 0, got -1"),
    ((1, 2, 3), ValueError, r"one entry per spatial axis \(2\)"),
    (((0, -1), 0), ValueError, r"padding must be >= 0 per side"),
    ((1.5, 1), TypeError, r"ints or \(lo, hi\) pairs"),
    (1.5, TypeError, r"padding must be an int"),
])
def test_bad_padding(spec, err, match):
    with pytest.raises(err, match=match):
        g.resolve_padding(spec, (8, 8), (3, 3), (1, 1), (1, 1))


@pytest.mark.parametrize("value,err,match", [
    ((2, 0), ValueError, r"dilation must be >= 1 per axis, got \(2, 0\)"),
    (0, ValueError, r"dilation must be >= 1 per axis, got 0"),
    ((1, 2, 3), ValueError, r"tuple of 2 ints .* length 3"),
    ((1.0, 2), TypeError, r"dilation must contain ints"),
    ("2", TypeError, r"dilation must be an int"),
    (True, TypeError, r"dilation must be an int"),
])
def test_normalize_tuple_errors(value, err, match):
    with pytest.raises(err, match=match):
        g.normalize_tuple(value, 2, "dilation")


def test_transpose_output_size_inverts_conv():
    # a conv mapping n -> m and its transpose with matching output_padding maps m -> n
    for n in range(5, 30):
        for s in (1, 2, 3):
            for d in (1, 2):
                m = g.output_size(n, 3, s, d, (1, 1))
                op = (n + 2 - (d * 2 + 1)) % s
                assert g.transpose_output_size(m, 3, s, d, 1, op) == n


def test_rf_step_yu_koltun_context_module():
    # Yu & Koltun 2016, Table 1: 3x3 layers with dilations 1,1,2,4,8,16,1 then a 1x1 layer;
    # published fields 3,5,9,17,33,65,67,67
    r, fields = (1, 1, 0.0), []
    for k, d in [(3, 1), (3, 1), (3, 2), (3, 4), (3, 8), (3, 16), (3, 1), (1, 1)]:
        r = g.rf_step(*r, kernel=k, pad_lo=d * (k - 1) // 2, dilation=d)
        fields.append(r[0])
    assert fields == [3, 5, 9, 17, 33, 65, 67, 67]
