"""Complete type annotations on the public API (every parameter and the return) of atrous.nn,
atrous.geometry, atrous.design and atrous.conv: the package ships py.typed, so these signatures are
what type checkers show users."""

import importlib
import inspect

import pytest

MODULES = ["atrous.geometry", "atrous.design", "atrous.conv", "atrous.nn"]


def _public_callables(mod):
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            members = {n: getattr(obj, n) for n in dir(obj)
                       if (not n.startswith("_") or n == "__init__") and n in {k for c in obj.__mro__
                                                                             if c.__module__.startswith("atrous")
                                                                             for k in vars(c)}}
            for n, m in members.items():
                raw = inspect.getattr_static(obj, n)
                if isinstance(raw, property):
                    yield f"{name}.{n}", raw.fget
                elif inspect.isfunction(m) or inspect.ismethod(m):
                    yield f"{name}.{n}", m
        elif inspect.isfunction(obj):
            yield name, obj


@pytest.mark.parametrize("modname", MODULES)
def test_public_signatures_are_annotated(modname):
    if modname == "atrous.nn":
        pytest.importorskip("torch")
    mod = importlib.import_module(modname)
    missing = []
    for name, fn in _public_callables(mod):
        sig = inspect.signature(fn)
        params = [p for p, v in sig.parameters.items() if p not in ("self", "cls") and v.annotation is inspect._empty]
        if params or sig.return_annotation is inspect._empty:
            missing.append(f"{name}({', '.join(params)}){' -> ?' if sig.return_annotation is inspect._empty else ''}")
    assert not missing, f"{modname}: unannotated: {missing}"
