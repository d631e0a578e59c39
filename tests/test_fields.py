"""The tap-map algebra (atrous.analysis.fields) against brute-force sets of positions."""

import pytest
from hypothesis import given, settings, strategies as st

from atrous.analysis import fields as fl


def reads(t: fl.TapMap, o: int) -> set:
    """Brute force: the input positions output ``o`` of tap map ``t`` reads."""
    m, phi = divmod(o, t.a)
    return {q + m * t.b for q in t.taps[phi]}


def through(maps, o: int) -> set:
    """Input positions reached from output ``o`` through ``maps`` (applied input-first)."""
    cur = {o}
    for t in reversed(maps):
        cur = set().union(*(reads(t, p) for p in cur)) if cur else set()
    return cur


tapmaps = st.one_of(
    st.builds(fl.conv_map, st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 3)),
    st.builds(fl.transpose_map, st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2)),
    st.builds(fl.mix_factor_map, st.integers(1, 3), st.integers(1, 3)),
    st.builds(fl.drop_factor_map, st.integers(1, 3), st.integers(1, 3)),
    st.builds(lambda n, s: fl.TapMap(n, n, tuple((((p - s) % n),) for p in range(n))),   # a roll by s
              st.integers(1, 5), st.integers(0, 4)),
)


@settings(max_examples=300)
@given(st.lists(tapmaps, min_size=1, max_size=4))
def test_apply_equals_brute_force_composition(maps):
    f = fl.IDENTITY
    for t in maps:
        f = fl.apply(f, t)
    for o in range(40):
        got = f.at(o)
        want = through(maps, o)
        assert got == ((min(want), max(want)) if want else None), (maps, o)


@given(st.lists(tapmaps, min_size=1, max_size=3), st.lists(tapmaps, min_size=1, max_size=3))
def test_union_is_the_hull_of_both_or_refuses(a, b):
    fa, fb = fl.IDENTITY, fl.IDENTITY
    for t in a:
        fa = fl.apply(fa, t)
    for t in b:
        fb = fl.apply(fb, t)
    if fa.jump != fb.jump:
        with pytest.raises(fl.FieldError, match="different jumps"):
            fl.union([fa, fb], "add")
        return
    u = fl.union([fa, fb], "add")
    for o in range(30):
        spans = [s for s in (fa.at(o), fb.at(o)) if s is not None]
        assert u.at(o) == ((min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None)


def test_hull_and_constant_fields():
    f = fl.apply(fl.IDENTITY, fl.conv_map(3, 2, 1, 1))         # output o reads 2o-1 .. 2o+1
    assert fl.hull(f, 5) == fl.Const(-1, 9)
    assert fl.union([f, fl.Const(-5, 20)], "mul", whole=(0, 9)) == fl.Const(0, 9)    # a gate over everything
    with pytest.raises(fl.FieldError, match="does not cover the input"):
        fl.union([f, fl.Const(2, 3)], "mul", whole=(0, 9))
    assert fl.union([None, f], "add") == f and fl.apply(None, fl.conv_map(3, 1, 1, 0)) is None


def test_factor_maps_by_definition():
    # windows of 3: position c sees its window [3*(c//3), 3*(c//3) + 2]
    w = fl.apply(fl.IDENTITY, fl.mix_factor_map(1, 3))
    assert [w.at(c) for c in range(6)] == [(0, 2)] * 3 + [(3, 5)] * 3
    # mixing the outer factor of c = q*4 + r (q < 3): c sees r, r + 4, r + 8
    g = fl.apply(fl.IDENTITY, fl.mix_factor_map(4, 3))
    assert [g.at(c) for c in (0, 5, 11)] == [(0, 8), (1, 9), (3, 11)]
    # reducing pairs away: position c' reads 2c', 2c' + 1 (an average pooling by a reshape + mean)
    d = fl.apply(fl.IDENTITY, fl.drop_factor_map(1, 2))
    assert [d.at(c) for c in range(3)] == [(0, 1), (2, 3), (4, 5)]
    t = fl.index_to_coord(fl.conv_map(3, 1, 1, 1), 2)        # a conv on the outer index of c = i*2 + r
    assert reads(t, 4) == {2, 4, 6} and reads(t, 5) == {3, 5, 7}
