"""``atrous rf``, ``atrous design``, ``atrous show``: receptive fields, dilation design, pictures.

Layer specs (``--layers``) are comma-separated; each layer is letters followed by values:
``k`` kernel, ``s`` stride, ``d`` dilation, ``p`` padding (an int, or same/valid/causal/full);
per-axis values are joined by ``x``. Examples: ``k3d2``, ``k3s2p1``, ``k3x5d1x2``, ``k3d4psame``.
Defaults: ``k3 s1 p0 d1``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys

from .._errors import CLIError

EXAMPLES_RF = """\
examples:
  atrous rf --layers k3d1,k3d2,k3d4,k3d8
  atrous rf --layers k3x5d1x2,k2s2 --json
  atrous rf --model mypkg.models:make_net --input-shape 1,3,224,224 --at layer3
"""
EXAMPLES_DESIGN = """\
examples:
  atrous design --rf 65 --kernel 3
  atrous design --rf 65 --kernel 3 --max-field 67 --limit 5 --json
"""
EXAMPLES_SHOW = """\
examples:
  atrous show --layers k3d1,k3d2,k3d4 --out fig.png          # also writes fig.json (the data)
  atrous show --layers k3x3d2x2,k3x3d4x4 --out grid.png
  atrous show --model mypkg.models:make_net --input-shape 1,1,64 --out net.png
"""

_TOKEN = re.compile(r"([a-z])(same|valid|causal|full|\d+(?:x\d+)*)")
_LETTERS = {"k": "kernel", "s": "stride", "d": "dilation", "p": "padding"}


def parse_layers(text: str):
    """Parse ``--layers`` into a list of :class:`atrous.Layer` (``ValueError`` with a one-line reason).

    >>> [(L.kernel, L.dilation) for L in parse_layers("k3d1,k3x5d1x2")]
    [(3, 1), ((3, 5), (1, 2))]
    >>> parse_layers("k3q2")
    Traceback (most recent call last):
    ...
    ValueError: bad layer spec 'k3q2' in --layers: unknown letter 'q' (expected k, s, d, p, e.g. 'k3s2p1d2')
    """
    from .receptive_field import Layer

    layers = []
    for spec in [t.strip() for t in text.split(",")]:
        if not spec:
            raise ValueError(f"empty layer spec in --layers {text!r}")
        pos, args = 0, {}
        for m in _TOKEN.finditer(spec.lower()):
            if m.start() != pos:
                break
            letter, val = m.groups()
            if letter not in _LETTERS:
                raise ValueError(f"bad layer spec {spec!r} in --layers: unknown letter {letter!r} "
                                 "(expected k, s, d, p, e.g. 'k3s2p1d2')")
            name = _LETTERS[letter]
            if name in args:
                raise ValueError(f"bad layer spec {spec!r} in --layers: {name} given twice")
            if val.isalpha():
                if name != "padding":
                    raise ValueError(f"bad layer spec {spec!r} in --layers: {name} must be a number")
                args[name] = val
            else:
                nums = tuple(int(v) for v in val.split("x"))
                args[name] = nums[0] if len(nums) == 1 else nums
            pos = m.end()
        if pos != len(spec) or not args:
            rest = spec[pos:]
            hint = ""
            if rest[:1].isalpha() and rest[:1].lower() not in _LETTERS:
                hint = f": unknown letter {rest[0]!r} (expected k, s, d, p, e.g. 'k3s2p1d2')"
            elif rest[:1].lower() == "p":
                word = re.match(r"p([a-z]*)", rest.lower()).group(1)
                close = difflib.get_close_matches(word, ["same", "valid", "causal", "full"], n=1)
                hint = f": padding {word!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            else:
                hint = f": cannot read {rest!r} (e.g. 'k3s2p1d2', per-axis 'k3x5')"
            raise ValueError(f"bad layer spec {spec!r} in --layers{hint}")
        try:
            layers.append(Layer(**args))
        except (ValueError, TypeError) as e:
            raise ValueError(f"bad layer spec {spec!r} in --layers: {e}") from None
    return layers


def parse_shape(text: str) -> tuple:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``.

    >>> parse_shape("1, 3, 32")
    (1, 3, 32)
    """
    try:
        shape = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated ints like 1,3,224,224, got {text!r}") from None
    if len(shape) < 3 or any(v < 1 for v in shape):
        raise ValueError(f"--input-shape must be N,C,*spatial with positive sizes, got {text!r}")
    return shape


def load_model(spec: str):
    """Import ``package.module:Name`` and return the torch model it names: a module instance, or a
    class or factory called with no arguments. This imports and runs that code.

    The current directory is searched after the installed packages (moved to the end of ``sys.path``
    for the import only), so a local file named like an installed package (``torchvision.py``) cannot
    shadow it.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"--model must look like package.module:Name (a class, a factory or a model), got {spec!r}")
    modname, attr = spec.split(":")
    cwd = os.getcwd()
    saved = list(sys.path)                 # `python -m` puts the current directory first: move it last
    sys.path[:] = [p for p in saved if p not in ("", ".", cwd)] + [cwd]
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise ValueError(f"--model: cannot import {modname!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- the user's module failed while importing: one line, named
        raise ValueError(f"--model: importing {modname!r} raised {type(e).__name__}: {e}") from None
    finally:
        sys.path[:] = saved
    if not hasattr(mod, attr):
        close = difflib.get_close_matches(attr, [n for n in dir(mod) if not n.startswith("_")], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--model: module {modname!r} has no {attr!r}{hint}")
    import torch
    obj = getattr(mod, attr)
    model = obj
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ValueError(f"--model: {spec} is a {type(obj).__name__}, not a torch.nn.Module, a class or a "
                             "factory")
        try:
            model = obj()                               # a class or a factory, called with no arguments
        except Exception as e:  # noqa: BLE001 -- user code: report it on one line, naming the call
            raise ValueError(f"--model: calling {spec}() raised {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (tuple, list)):
        return "x".join(_fmt(u) for u in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _source(args):
    """(spec, input_shape) from --layers / --model."""
    if bool(args.layers) == bool(args.model):
        raise ValueError("give exactly one of --layers or --model")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    if args.layers:
        return parse_layers(args.layers), shape
    if shape is None:
        raise ValueError("--model needs --input-shape N,C,*spatial")
    return load_model(args.model), shape


def field_table(spec, input_shape=None) -> list[dict]:
    """One record per call: name, type, kernel, stride, dilation, size, jump, start, covered, extent.

    >>> [(r["size"], r["covered"]) for r in field_table(parse_layers("k3d2,k3d4"))]
    [([5], [3]), ([13], [7])]
    """
    from .coverage import all_marginals
    from .receptive_field import analyse, field_of

    g, vals, _ = analyse(spec, input_shape, every=True)
    cov = all_marginals(g, vals)
    rows = []
    for n in g.nodes:
        if n.kind == "input" or not n.outs or n.outs[0] not in vals or not vals[n.outs[0]].dependent:
            continue
        rf = field_of(g, vals, n.outs[0])
        c = cov.get(n.name)
        geo_ = _geometry(n, g)
        rows.append({"name": n.name, "type": _type_name(n), **geo_, "size": list(rf.size),
                     "jump": [float(j) if not isinstance(j, int) else j for j in rf.jump],
                     "start": list(rf.start), "whole": list(rf.whole_input), "global_at": list(rf.global_at),
                     "local": list(rf.local.size) if rf.local is not None else None,
                     "covered": list(c[0]) if c else None, "extent": list(c[1]) if c else None,
                     "notes": list(rf.notes)})
    return rows


def _type_name(n) -> str:
    if n.kind == "layer":
        return "Layer"
    if n.module is not None:
        return type(n.module).__name__
    return n.op


def _geometry(n, g) -> dict:
    """Kernel, stride and dilation of a convolution or pooling call (``None`` for other ops)."""
    out = {"kernel": None, "stride": None, "dilation": None}
    if n.kind == "layer":
        kw = n.kwargs
        return {"kernel": kw["kernel"], "stride": kw["stride"], "dilation": kw["dilation"]}
    m = n.module
    if m is not None and all(hasattr(m, a) for a in ("kernel_size", "stride")):
        def tup(v):
            return tuple(v) if isinstance(v, (list, tuple)) else v
        out = {"kernel": tup(m.kernel_size), "stride": tup(m.stride if m.stride is not None else m.kernel_size),
               "dilation": tup(getattr(m, "dilation", 1))}
    elif n.op in ("conv1d", "conv2d", "conv3d"):
        w = g.tensors[n.args[1].index].shape if len(n.args) > 1 and hasattr(n.args[1], "index") else None
        if w is not None:
            s = n.args[3] if len(n.args) > 3 else n.kwargs.get("stride", 1)
            d = n.args[5] if len(n.args) > 5 else n.kwargs.get("dilation", 1)
            out = {"kernel": tuple(w[2:]), "stride": tuple(s) if isinstance(s, (list, tuple)) else s,
                   "dilation": tuple(d) if isinstance(d, (list, tuple)) else d}
    return out


def _rf(args) -> int:
    from .receptive_field import receptive_field
    try:
        spec, shape = _source(args)
        rows = field_table(spec, shape)
        rf = receptive_field(spec, shape, at=args.at)
    except (ValueError, TypeError, ImportError) as e:
        raise CLIError(str(e)) from None
    if args.at:
        keep = [r for r in rows if r["name"] == rf.name]
        idx = rows.index(keep[0]) if keep else len(rows) - 1
        rows = rows[:idx + 1]
    if args.json:
        print(json.dumps({"layers": rows, "receptive_field": rf.to_dict()}, indent=1))
        return 0
    cols = ("layer", "type", "kernel", "stride", "dilation", "size", "jump", "start", "local", "coverage")
    table = []
    for r in rows:
        covtxt = "-" if r["covered"] is None else f"{_fmt(r['covered'])}/{_fmt(r['extent'])}"
        size = "x".join(f"{s}*" if w else str(s) for s, w in zip(r["size"], r["whole"]))
        jump = "x".join("-" if w else _fmt(j) for j, w in zip(r["jump"], r["whole"]))
        table.append((r["name"], r["type"], _fmt(r["kernel"]), _fmt(r["stride"]), _fmt(r["dilation"]),
                      size, jump, _fmt(r["start"]), _fmt(r["local"]) if r["local"] != r["size"] else "=", covtxt))
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    if any(any(r["whole"]) for r in rows):
        print("(* = the whole input along that axis; local = the field of the local paths alone, '=' when "
              "the same, '-' when none)")
    print(rf)
    return 0


def _design(args) -> int:
    from ..design import design_dilations
    try:
        res = design_dilations(args.rf, kernel=args.kernel, max_layers=args.max_layers, axes=args.axes,
                               limit=args.limit, max_field=args.max_field)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps([s.to_dict() for s in res], indent=1))
        return 0
    print(f"hole-free schedules of {res[0].depth} layers (kernel {args.kernel}) reaching >= {args.rf}, "
          "most uniform first:")
    print(f"{'rank':>4}  {'dilations':<28} {'field':>6} {'covered':>8} {'cv':>7} {'weights/ch^2':>12}")
    for i, s in enumerate(res, 1):
        print(f"{i:>4}  {','.join(map(str, s.dilations)):<28} {s.field:>6} {s.covered:>8} {s.cv:>7.3f} "
              f"{s.params_factor:>12}")
    return 0


def show_data(spec, input_shape=None) -> dict:
    """The data behind ``atrous show``: field growth per layer and the path-count map of the output."""
    from .coverage import coverage
    rows = field_table(spec, input_shape)
    cov = coverage(spec, input_shape=input_shape)
    data = {"layers": [{"name": r["name"], "size": r["size"], "covered": r["covered"]} for r in rows],
            "coverage": cov.to_dict()}
    if len(cov.extent) == 2 and cov.extent[0] * cov.extent[1] <= 4_000_000:
        data["path_counts_2d"] = cov.path_counts_nd.tolist()
    return data


def _show(args) -> int:
    if not args.out.lower().endswith((".png", ".pdf", ".svg")):
        raise CLIError(f"--out must end in .png, .pdf or .svg, got {args.out!r}")
    try:
        spec, shape = _source(args)
        data = show_data(spec, shape)
    except (ValueError, TypeError, ImportError) as e:
        raise CLIError(str(e)) from None
    json_path = os.path.splitext(args.out)[0] + ".json"
    from .._io import write_json
    write_json(json_path, data)
    from .. import plot
    with open(json_path) as f:                       # the figure is drawn from the saved data
        plot.analysis_field(json.load(f), args.out)
    if args.json:
        print(json.dumps({"figure": args.out, "data": json_path}))
    else:
        print(f"wrote {args.out} and {json_path}")
    return 0


def register(sub) -> None:
    """Add ``rf``, ``design`` and ``show`` to an argparse ``subparsers`` object."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("rf", help="receptive field per layer (size, jump, start, coverage)",
                       description="Receptive field per layer and per axis of a layer list or a PyTorch "
                                   "model.\n\n" + (__doc__.split("\n\n", 1)[1]),
                       epilog=EXAMPLES_RF, formatter_class=fmt)
    _source_args(p)
    p.add_argument("--at", default=None, help="stop at this node or submodule (e.g. layer3)")
    p.set_defaults(func=_rf)

    p = sub.add_parser("design", help="dilation schedules reaching a field with no holes",
                       description="Smallest-depth dilation schedules whose field reaches --rf with no "
                                   "holes, the most uniform (lowest path-count cv) first.",
                       epilog=EXAMPLES_DESIGN, formatter_class=fmt)
    p.add_argument("--rf", type=int, required=True, help="target receptive field (samples per axis)")
    p.add_argument("--kernel", type=int, default=3, help="taps per layer (default 3)")
    p.add_argument("--max-layers", type=int, default=None, help="fail if more layers would be needed")
    p.add_argument("--max-field", type=int, default=None, help="only schedules with field <= this")
    p.add_argument("--axes", type=int, default=1, help="1 for 1-D stacks, 2 for kxk kernels (default 1)")
    p.add_argument("--limit", type=int, default=10, help="show the best N (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_design)

    p = sub.add_parser("show", help="draw the coverage/path-count map and the field growth",
                       description="Draw the path-count map of the output's field (holes in red) and the "
                                   "field size per layer; the data is written next to the figure as JSON.",
                       epilog=EXAMPLES_SHOW, formatter_class=fmt)
    _source_args(p)
    p.add_argument("--out", required=True, help="figure path (.png/.pdf/.svg)")
    p.set_defaults(func=_show)


def _source_args(p):
    p.add_argument("--layers", default=None, help="layer specs, e.g. k3d1,k3d2,k3s2p1 (see above)")
    p.add_argument("--model", default=None,
                   help="package.module:Name, a torch.nn.Module class (built with no arguments), a factory or a "
                        "model instance; this imports and runs that code (the current directory is searched "
                        "after installed packages)")
    p.add_argument("--input-shape", default=None, help="N,C,*spatial, e.g. 1,3,224,224 (needed with --model)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
