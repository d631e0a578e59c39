"""Receptive field of hand-built models of every family in issue 9, against the brute-force oracle.

Each case of tests/rf_models.py is analysed with ``atrous.receptive_field`` and compared per axis with
the support of the input gradient (tests/bruteforce.py), clipped to the input; whole-input axes, the
node where the field became global, the field of the local paths, one ``receptive_fields`` entry per
call with torch.fx-style names, ``at=`` on submodules and node names, and refusals by name are checked
too. The oracle is independent of the analysis: it never looks at the graph.
"""

import functools
import os
import re
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
import torch.fx as fx  # noqa: E402
import torch.nn as nn  # noqa: E402

import atrous  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import bruteforce as bf  # noqa: E402
import rf_models as R  # noqa: E402


def _params(cases):
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


FIELD_CASES = [c for c in R.CASES if not c.error and not c.exact_or_refused]
SHAPES = lambda c: c.input_shape if isinstance(c.input_shape[0], int) else [tuple(s) for s in c.input_shape]  # noqa: E731


def _analysed(case, **kw):
    if not kw:
        return _analysed_cached(case.name)
    model = case.factory(device="meta") if case.meta else case.factory()
    return atrous.receptive_field(model, SHAPES(case), **kw)


@functools.cache
def _analysed_cached(name):
    """One analysis per case for the whole module (results are frozen dataclasses; errors are not cached)."""
    case = R.CASES_BY_NAME[name]
    model = case.factory(device="meta") if case.meta else case.factory()
    return atrous.receptive_field(model, SHAPES(case))


def _whole(case):
    return tuple(case.whole) if case.whole is not None else (False,) * case.ndim


# ----------------------------------------------------------------------------------------------
# the field equals the brute-force support
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _params(FIELD_CASES))
def test_field_matches_bruteforce(case):
    rf = _analysed(case)
    assert tuple(rf.whole_input) == _whole(case), f"whole_input {rf.whole_input}, expected {_whole(case)}"
    bf.assert_field_matches(case.factory(), SHAPES(case), case.positions, rf=rf, output=case.output,
                            spatial_dims=case.spatial_dims)


@pytest.mark.parametrize("case", _params([c for c in FIELD_CASES if c.closed_form]))
def test_closed_form(case):
    rf = _analysed(case)
    cf = case.closed_form
    for key in ("size", "jump", "start"):
        if key in cf:
            assert tuple(getattr(rf, key)) == tuple(cf[key]), f"{key}: got {getattr(rf, key)}, want {cf[key]}"
    for idx, span in cf.get("span", {}).items():
        assert tuple(rf.span(idx)) == tuple(span), f"span{idx}: got {rf.span(idx)}, want {span}"


def test_oracle_self_check_against_closed_forms():
    """The oracle itself, on stacks whose field is known by hand (independent of atrous)."""
    ctx = nn.Sequential(*[nn.Conv1d(1, 1, 3, padding=d, dilation=d) for d in (1, 2, 4, 8)])     # size 31
    assert bf.bruteforce_span(ctx, (1, 1, 64), (32,)) == ((17, 47),)
    assert bf.bruteforce_span(ctx, (1, 1, 64), (0,)) == ((0, 15),)            # support stays in the input
    strided = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 2, (3, 1), stride=2, dilation=2))
    # axis 0: size 3 + 2*2*2 = 11, jump 4; axis 1: size 3, jump 4
    assert bf.bruteforce_span(strided, (1, 1, 41, 41), (3, 5)) == ((12, 22), (20, 22))
    causal = nn.Sequential(nn.ConstantPad1d((4, 0), 0.0), nn.Conv1d(1, 1, 3, dilation=2))
    assert bf.bruteforce_span(causal, (1, 1, 16), (10,)) == ((6, 10),)


def test_oracle_sees_zero_initialised_branches():
    """A residual branch whose last BN gamma and layer scale are zero is still part of the field."""
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(nn.Conv1d(2, 2, 5, padding=2), nn.BatchNorm1d(2))
            nn.init.zeros_(self.branch[1].weight)
            self.gamma = nn.Parameter(torch.zeros(2, 1))

        def forward(self, x):
            return x + self.gamma * self.branch(x)

    assert bf.bruteforce_span(Res(), (1, 2, 16), (8,)) == ((6, 10),)
    assert bf.bruteforce_span(Res(), (1, 2, 16), (8,), randomise=False) == ((8, 8),)


def test_oracle_counts_nan_and_several_inputs():
    class NormAtZero(nn.Module):
        """The channel norm of a zero vector at position 4: its gradient is NaN (0/0) at the taps."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3, padding=1)
            self.register_buffer("mask", (torch.arange(8) != 4).double())

        def forward(self, x):
            y = self.conv(x) * self.mask
            return torch.sqrt((y * y).sum(dim=1, keepdim=True))      # d sqrt(0) = inf, times 2y = 0: NaN

    assert bf.bruteforce_span(NormAtZero(), (1, 1, 8), (4,)) == ((3, 5),)
    two = R.TwoInputs("add")
    assert bf.bruteforce_span(two, [(1, 3, 16, 16)] * 2, (8, 8), per_input=True) == (((6, 10), (6, 10)),
                                                                                       ((5, 11), (5, 11)))
    assert bf.bruteforce_span(two, [(1, 3, 16, 16)] * 2, (8, 8)) == ((5, 11), (5, 11))


# ----------------------------------------------------------------------------------------------
# global ops: where the field became whole, and the field of the local paths alone
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _params(FIELD_CASES))
def test_global_at(case):
    rf = _analysed(case)
    ga = tuple(rf.global_at)
    assert len(ga) == case.ndim
    for ax, w in enumerate(case.glob if case.glob is not None else _whole(case)):
        if w:
            assert isinstance(ga[ax], str) and ga[ax], f"axis {ax} is whole but global_at is {ga[ax]!r}"
        else:
            assert ga[ax] is None, f"axis {ax} is local but global_at is {ga[ax]!r}"


@pytest.mark.parametrize("case", _params([c for c in FIELD_CASES if c.local_twin or c.local_none]))
def test_local_field_of_global_models(case):
    rf = _analysed(case)
    if case.local_none:
        assert rf.local is None, f"no local path reaches the output, got local size {rf.local.size}"
        return
    assert rf.local is not None
    assert not any(rf.local.whole_input)
    twin = case.local_twin()
    bf.assert_field_matches(twin, SHAPES(case), case.positions, rf=rf.local, output=case.output,
                            spatial_dims=case.spatial_dims)


@pytest.mark.parametrize("case", _params([c for c in FIELD_CASES if c.whole is None][:8]))
def test_local_field_of_local_models_is_the_field(case):
    rf = _analysed(case)
    assert rf.local is not None
    assert (rf.local.size, rf.local.jump, rf.local.start) == (rf.size, rf.jump, rf.start)


def test_last_spatial_of_classifier_is_the_features_field():
    shape = (1, 3, 64, 64)
    rf = atrous.receptive_field(R.ResNet(R.BasicBlock, [2, 2]), shape)
    feat = atrous.receptive_field(R.ResNet(R.BasicBlock, [2, 2], features_only=True), shape)
    assert rf.last_spatial is not None
    assert (rf.last_spatial.size, rf.last_spatial.jump, rf.last_spatial.start) == (feat.size, feat.jump, feat.start)


# ----------------------------------------------------------------------------------------------
# refusals: unknown ops and modules of unknown dependence are errors naming the node and the op
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _params([c for c in R.CASES if c.error]))
def test_refused_by_name(case):
    with pytest.raises(ValueError, match=case.error):
        _analysed(case)


@pytest.mark.parametrize("case", _params([c for c in R.CASES if c.exact_or_refused]))
def test_exact_or_refused(case):
    try:
        rf = _analysed(case)
    except ValueError as e:
        assert re.search(r"node|module|op", str(e)), f"a refusal must name the node/op: {e}"
        return
    bf.assert_field_matches(case.factory(), SHAPES(case), rf=rf)


def test_unknown_op_error_names_node_op_and_shape():
    with pytest.raises(ValueError) as e:
        atrous.receptive_field(R.GridSample(), (1, 3, 16, 16))
    msg = str(e.value)
    assert "grid_sample" in msg and re.search(r"1, 4, 16, 16", msg), msg


def test_input_too_small_names_the_layer(capfd):
    net = nn.Sequential(nn.Conv1d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3))
    with pytest.raises(ValueError) as e:
        atrous.receptive_field(net, (1, 1, 2))
    msg = str(e.value)
    assert re.search(r"'2'|MaxPool1d|'3'|Conv1d", msg) and "\n" not in msg.strip(), msg
    assert "ShapeProp" not in capfd.readouterr().err


# ----------------------------------------------------------------------------------------------
# one node per call, torch.fx names; at= on submodules and node names
# ----------------------------------------------------------------------------------------------

def test_issue_repro_module_called_twice():
    rfs = atrous.receptive_fields(R.ActTwice(), (1, 1, 16))
    assert list(rfs) == ["c1", "act", "c2", "act_1"]
    assert [r.size[0] for r in rfs.values()] == [3, 3, 5, 5]
    assert atrous.receptive_field(R.ActTwice(), (1, 1, 16), at="act").size == (3,)
    assert atrous.receptive_field(R.ActTwice(), (1, 1, 16), at="act_1").size == (5,)


def test_coverage_follows_the_last_call():
    cov = atrous.coverage(R.ActTwice(), (1, 1, 16))
    assert cov.extent == (5,)


@pytest.mark.parametrize("case", _params([c for c in FIELD_CASES if c.names]))
def test_names_count(case):
    model = case.factory(device="meta") if case.meta else case.factory()
    keys = list(atrous.receptive_fields(model, SHAPES(case)))
    for pattern, n in case.names.items():
        hits = [k for k in keys if re.search(pattern, k)]
        assert len(hits) == n, f"{pattern}: {hits} (keys: {keys})"


def _fx_tensor_nodes(model, shape):
    """The eval-mode fx graph and its tensor-valued call nodes that depend on an input."""
    from torch.fx.passes.shape_prop import ShapeProp
    model.eval()                          # the analysis has eval semantics: trace the eval-mode graph
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(*[torch.randn(s) for s in ([shape] if isinstance(shape[0], int) else shape)])
    is_tensor = lambda n: isinstance(n.meta.get("tensor_meta"), fx.passes.shape_prop.TensorMetadata)  # noqa: E731
    live: set = set()                     # depends on an input through tensors (not through x.shape)
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in live and (is_tensor(a) or a.op == "call_method" and a.target == "chunk"
                                                       or a.target in (torch.chunk, torch.unbind, torch.split)
                                                       or a.target in ("unbind", "split"))
                                        for a in n.all_input_nodes):
            live.add(n)
    return gm, [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method") and n in live
                and isinstance(n.meta.get("tensor_meta"), fx.passes.shape_prop.TensorMetadata)]


FX_NAME_CASES = ["act_called_twice", "shared_conv_two_inputs", "resnet_basic_features", "resnet_bottleneck_features",
                 "shufflenet_v2_features", "convnext_features", "unet_transpose_nearest", "deeplab_aspp",
                 "efficientnet_features", "swin_window"]


def _base(name):
    return re.sub(r"_\d+$", "", name)


@pytest.mark.parametrize("name", FX_NAME_CASES)
def test_one_entry_per_call_in_execution_order(name):
    """Every tensor-valued call of the fx graph that depends on the input has exactly one entry, in execution
    order. A module called k times gives ``target``, ``target_1`` ... (or the fx node names ``layer1_0_relu_1``);
    functions and methods get fx's node name, or the same base name numbered among the tensor-valued calls of
    that name (fx also numbers calls on shapes, ``getitem`` of ``x.shape``, which an eager capture cannot see)."""
    case = R.CASES_BY_NAME[name]
    gm, nodes = _fx_tensor_nodes(case.factory(), SHAPES(case))
    tensor_calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")
                    and isinstance(n.meta.get("tensor_meta"), fx.passes.shape_prop.TensorMetadata)]
    rfs = atrous.receptive_fields(case.factory(), SHAPES(case))
    keys = list(rfs)
    positions = []
    for n in nodes:
        if n.op == "call_module":
            k = [m for m in nodes if m.op == "call_module" and m.target == n.target].index(n)
            cands = [n.target if k == 0 else f"{n.target}_{k}", n.name]
        else:
            k = [m for m in tensor_calls if _base(m.name) == _base(n.name)].index(n)
            cands = [n.name, _base(n.name) if k == 0 else f"{_base(n.name)}_{k}"]
        hit = [c for c in cands if c in rfs and keys.index(c) not in positions]
        if not hit and n.op != "call_module":
            # eager capture also numbers ops on buffers that fx folds into constants (Swin's relative position
            # index): accept the next unused entry of the same base name after the previous one
            after = positions[-1] if positions else -1
            hit = [k for i, k in enumerate(keys) if i > after and _base(k) == _base(n.name)][:1]
        assert hit, f"no entry for fx node {n.name} ({n.op} {n.target}); tried {cands}; keys {keys}"
        positions.append(keys.index(hit[0]))
    assert positions == sorted(positions), "entries are not in execution order"


PER_NODE_CASES = ["act_called_twice", "shared_conv_two_inputs", "pixel_unshuffle_stem", "focus_stem"]
PER_NODE_SLOW = ["resnet_basic_features", "shufflenet_v2_features", "unet_transpose_nearest", "deeplab_aspp_no_pooling"]


@pytest.mark.parametrize("name", PER_NODE_CASES + [pytest.param(n, marks=pytest.mark.slow) for n in PER_NODE_SLOW])
def test_every_node_matches_bruteforce(name):
    """The field at every NCHW node of ``receptive_fields`` equals the oracle at that fx node."""
    case = R.CASES_BY_NAME[name]
    model = case.factory()
    shape = SHAPES(case)
    gm, nodes = _fx_tensor_nodes(case.factory(), shape)
    rank = case.ndim + 2
    checked = 0
    for key, rf in atrous.receptive_fields(model, shape).items():
        try:
            node = bf.find_node(gm, key)
        except KeyError:
            continue
        tm = node.meta.get("tensor_meta")
        if not isinstance(tm, fx.passes.shape_prop.TensorMetadata) or len(tm.shape) != rank:
            continue
        sub = bf.node_output(model, key)
        out_sp = tuple(tm.shape[2:])
        try:
            bf.assert_field_matches(sub, shape, [tuple(n // 2 for n in out_sp), (0,) * len(out_sp)], rf=rf)
        except AssertionError as e:
            raise AssertionError(f"node {key!r}: {e}") from None
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("case,at,target", [pytest.param(c, a, t, id=f"{c.name}@{a}")
                                            for c in FIELD_CASES for a, t in c.at])
def test_at_submodule_or_output(case, at, target):
    rf = _analysed(case, at=at)
    model = case.factory()
    if isinstance(target, int):           # the field of the model's target-th output
        bf.assert_field_matches(model, SHAPES(case), rf=rf, output=target)
    else:
        bf.assert_field_matches(bf.SubmoduleOutput(model, target), SHAPES(case), rf=rf)


def test_at_node_name_equals_receptive_fields_entry():
    case = R.CASES_BY_NAME["resnet_basic_features"]
    rfs = atrous.receptive_fields(case.factory(), case.input_shape)
    adds = [k for k in rfs if re.fullmatch(r"(add|iadd)(_\d+)?", k)]
    assert len(adds) >= 3, list(rfs)
    for name in adds[:3]:
        rf = atrous.receptive_field(case.factory(), case.input_shape, at=name)
        assert (rf.size, rf.jump, rf.start) == (rfs[name].size, rfs[name].jump, rfs[name].start)


def test_at_resolves_before_unrelated_parts_fail():
    """at= a node before a GRU: the field there is analysed even though the GRU would be refused."""
    rf = atrous.receptive_field(R.RecurrentHead("gru"), (1, 4, 32), at="conv")
    assert rf.size == (3,)


def test_at_missing_lists_close_names():
    with pytest.raises(ValueError, match=r"layer1"):
        atrous.receptive_field(R.ResNet(R.BasicBlock, [2, 2]), (1, 3, 64, 64), at="layer_1")


# ----------------------------------------------------------------------------------------------
# inputs: meta device, several inputs, example tensors, huge shapes
# ----------------------------------------------------------------------------------------------

def test_meta_model_equals_cpu_model():
    shape = (1, 3, 32, 32)
    a = atrous.receptive_field(R.meta_net("meta"), shape)
    b = atrous.receptive_field(R.meta_net(), shape)
    assert (a.size, a.jump, a.start) == (b.size, b.jump, b.start)


def test_example_tensors_as_input():
    x = torch.randn(1, 3, 32, 32)
    a = atrous.receptive_field(R.TwoInputs("cat"), [x, x.clone()])
    b = atrous.receptive_field(R.TwoInputs("cat"), [(1, 3, 32, 32), (1, 3, 32, 32)])
    assert (a.size, a.jump, a.start) == (b.size, b.jump, b.start) == ((7, 7), (1, 1), (0, 0))


def _slots(model):
    """Every (module, name) -> tensor slot of a model's parameters and buffers."""
    return {(id(m), n): t for m in model.modules() for d in (m._parameters, m._buffers)
            for n, t in d.items() if t is not None}


def _assert_untouched(model, before, values):
    after = _slots(model)
    assert after.keys() == before.keys()
    for k, t in before.items():
        assert after[k] is t, f"slot {k[1]} now holds a different object ({type(after[k]).__name__} on "\
                              f"{after[k].device})"
        assert torch.equal(t, values[k]), f"slot {k[1]} changed value"


@pytest.mark.parametrize("case", _params([c for c in R.CASES if not c.meta]))
def test_analysis_leaves_the_model_untouched(case):
    """The analysis swaps parameters for meta tensors while it records; every slot gets back the very
    object it held (a module reached under two names, tied weights, parametrisations)."""
    model = case.factory()
    before = _slots(model)
    values = {k: t.detach().clone() for k, t in before.items()}
    try:
        atrous.receptive_field(model, SHAPES(case))
    except ValueError:
        pass
    _assert_untouched(model, before, values)


def test_shared_module_and_tied_weights_restored():
    """A module called from two places and registered under two names (``Sequential(conv, act, conv)``)
    and a weight tied between two modules: same objects and same outputs after every analysis call."""
    conv = nn.Conv2d(2, 2, 3, padding=1)
    a, b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    b.weight = a.weight
    model = nn.Sequential(conv, nn.ReLU(), conv, a, b)
    x = torch.randn(1, 2, 8, 8)
    y0 = model(x)
    before = _slots(model)
    values = {k: t.detach().clone() for k, t in before.items()}
    rf = atrous.receptive_field(model, (1, 2, 8, 8))
    assert rf.size == (9, 9)                      # four 3x3 convs: 1 + 4 * 2
    atrous.receptive_fields(model, (1, 2, 8, 8))
    atrous.cost(model, (1, 2, 8, 8))
    _assert_untouched(model, before, values)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.device.type == "cpu"
    assert torch.equal(model(x), y0)


@pytest.mark.slow                        # a subprocess importing torch: ~2-8 s
def test_huge_input_costs_nothing():
    """Shapes travel on meta tensors: a 100000 x 100000 input must not be allocated (run under a 3 GiB
    address-space limit in a subprocess, so a regression fails instead of exhausting the machine)."""
    code = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        import torch.nn as nn, atrous
        net = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=d, dilation=d) for d in (1, 2, 4)], nn.MaxPool2d(2))
        rf = atrous.receptive_field(net, (1, 2, 100000, 100000))
        print(rf.size, rf.jump)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(16, 16) (2, 2)"


# ----------------------------------------------------------------------------------------------
# randomized local stacks (hypothesis): conv / avg pool / transposed conv / nearest upsampling / pad
# ----------------------------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_layer = st.one_of(
    st.tuples(st.just("conv"), st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(0, 3)),
    st.tuples(st.just("avgpool"), st.integers(2, 3), st.integers(1, 2), st.just(1), st.integers(0, 1)),
    st.tuples(st.just("tconv"), st.integers(2, 4), st.integers(1, 2), st.integers(1, 2), st.integers(0, 1)),
    st.tuples(st.just("up"), st.just(2), st.just(1), st.just(1), st.just(0)),
    st.tuples(st.just("pad"), st.integers(0, 3), st.integers(0, 3), st.just(1), st.just(0)),
)


def _stack(spec, dim):
    Conv, Pool, TConv = (nn.Conv1d, nn.AvgPool1d, nn.ConvTranspose1d) if dim == 1 else \
        (nn.Conv2d, nn.AvgPool2d, nn.ConvTranspose2d)
    layers = []
    for kind, k, s, d, p in spec:
        if kind == "conv":
            layers.append(Conv(3, 3, k, stride=s, dilation=d, padding=min(p, (d * (k - 1)) // 2 + 1)))
        elif kind == "avgpool":
            layers.append(Pool(k, stride=s, padding=min(p, k // 2)))
        elif kind == "tconv":
            layers.append(TConv(3, 3, k, stride=s, dilation=d, padding=min(p, d * (k - 1))))
        elif kind == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers.append(nn.ConstantPad1d((k, s), 0.0) if dim == 1 else nn.ConstantPad2d((k, s, s, k), 0.0))
        layers.append(nn.Tanh())
    return nn.Sequential(nn.Conv1d(1, 3, 1) if dim == 1 else nn.Conv2d(1, 3, 1), *layers)


@hsettings(max_examples=10)
@given(spec=st.lists(_layer, min_size=1, max_size=4), dim=st.sampled_from([1, 2]), data=st.data())
def test_random_local_stacks_match_bruteforce(spec, dim, data):
    _check_random_stack(spec, dim, data)


@pytest.mark.slow
@hsettings(max_examples=150)
@given(spec=st.lists(_layer, min_size=1, max_size=6), dim=st.sampled_from([1, 2]), data=st.data())
def test_random_local_stacks_match_bruteforce_many(spec, dim, data):
    _check_random_stack(spec, dim, data)


def _check_random_stack(spec, dim, data):
    net = _stack(spec, dim)
    shape = (1, 1) + (40,) * dim
    try:
        out_sp = bf.output_spatial_shape(net, shape)
    except RuntimeError:
        return                                      # the stack does not fit the input: nothing to check
    if min(out_sp) < 1:
        return
    idx = [tuple(data.draw(st.integers(0, n - 1)) for n in out_sp) for _ in range(2)]
    rf = atrous.receptive_field(net, shape)
    bf.assert_field_matches(net, shape, idx, rf=rf)


@hsettings(max_examples=10)
@given(spec=st.lists(_layer, min_size=1, max_size=4), dim=st.sampled_from([1, 2]), size=st.integers(9, 41))
def test_random_stacks_then_global_pool_match_bruteforce(spec, dim, size):
    _check_random_global(spec, dim, size)


@pytest.mark.slow
@hsettings(max_examples=150)
@given(spec=st.lists(_layer, min_size=1, max_size=6), dim=st.sampled_from([1, 2]), size=st.integers(9, 41))
def test_random_stacks_then_global_pool_match_bruteforce_many(spec, dim, size):
    _check_random_global(spec, dim, size)


def _check_random_global(spec, dim, size):
    """A global average pool over a random stack at any input size: the field is the interval the
    stack's outputs really read (strides that drop the last rows, padding read at the border),
    exactly the brute-force support -- whole only when every input position is read."""
    net = _stack(spec, dim)
    shape = (1, 1) + (size,) * dim
    try:
        out_sp = bf.output_spatial_shape(net, shape)
    except RuntimeError:
        return
    if min(out_sp) < 1:
        return
    net = nn.Sequential(*net, nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1))
    rf = atrous.receptive_field(net, shape)
    got = bf.bruteforce_span(net, shape, (0,) * dim)
    assert rf.span(0) == got, (rf.span(0), got)
    assert rf.whole_input == tuple(g == (0, size - 1) for g in got)


def test_unreplayed_hull_is_noted_only_where_it_happens():
    """A global op whose input cannot be replayed position by position says so in the notes; the
    models whose builds replay (ViTs with a class token: the concatenation bounds each axis from
    the patches' own build) carry no such note."""
    for name in ("vit_mha_cls", "vit_sdpa_cls", "vit_seg_drop_cls", "valid_stem_global_pool"):
        case = R.CASES_BY_NAME[name]
        rf = atrous.receptive_field(case.factory(), case.input_shape)
        assert not any("not replayed one by one" in n for n in rf.notes), (name, rf.notes)


def test_reach_limit_is_stated_in_notes(monkeypatch):
    """Above REACH_LIMIT positions the border is not replayed one by one, and the notes say so."""
    from atrous.analysis import values as V
    case = R.CASES_BY_NAME["valid_stem_global_pool"]
    rf = atrous.receptive_field(case.factory(), case.input_shape)
    assert rf.size == (19, 19) and not any("replayed" in n for n in rf.notes)
    monkeypatch.setattr(V, "REACH_LIMIT", 16)
    rf = atrous.receptive_field(case.factory(), case.input_shape)
    assert rf.size == (20, 20) and sum("not replayed one by one" in n for n in rf.notes) == 2
