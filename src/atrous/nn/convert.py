"""Turn the last strided stages of a backbone into dilated ones (Chen et al. 2015/2017, DeepLab v1
"hole algorithm" and DeepLabV3 Sec. 3.2 "Going deeper with atrous convolution"; Yu, Koltun &
Funkhouser 2017, "Dilated Residual Networks").

A layer whose input has cumulative stride ``r`` (per axis) and stride ``s`` reaches output stride
``r * s``. To cap the output stride at ``OS``: a layer with ``r * s > OS`` gets stride 1, and its
dilation and padding are multiplied by ``m = r / min(r, OS)`` -- its input grid is ``m`` times
finer than before. Then the converted network's feature map, subsampled by ``old_OS / OS``, is
exactly the original's: each output reads the same input samples with the same weights, and the
padding (zeros, or ``-inf`` for max pooling) falls on the same positions.

Converted: ``nn.Conv2d`` and its subclasses (:class:`atrous.nn.Conv2d` included) by setting
``stride``/``dilation``/``padding`` (a plain ``nn.Conv2d`` that needs asymmetric padding becomes an
:class:`atrous.nn.Conv2d` with the same weights); ``nn.MaxPool2d`` through its ``dilation``;
``nn.AvgPool2d`` becomes :class:`atrous.nn.AvgPool2d` (average pooling with dilation).

The strides are read from the layers themselves, along one forward pass on zeros: a
``TorchFunctionMode`` follows every tensor from the input and multiplies its stride by the stride
of each layer or functional call it goes through. Functional calls (``F.max_pool2d(x, 2)``,
``F.conv2d(..., stride=2)``, ``F.interpolate``, spatial reductions, ...) cannot be rewritten: where
the conversion would have to change one, it is refused by name.
"""

from __future__ import annotations

import copy
import fractions
import numbers
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .. import geometry
from .conv import Conv2d, _ConvNd
from .pool import AvgPool2d

__all__ = ["convert_to_dilated", "output_stride_of"]

Frac = fractions.Fraction
_Stride = Optional[Tuple[Frac, Frac]]          # per-axis cumulative stride of a tensor (None: unknown)

# functional calls with a stride argument: name -> (position of stride, position of kernel_size)
_STRIDED_CALLS = {"conv2d": (3, None), "max_pool2d": (2, 1), "avg_pool2d": (2, 1), "lp_pool2d": (3, 2),
                  "max_pool2d_with_indices": (2, 1)}
# functional calls that mix neighbouring positions without changing the grid (a different function
# once the grid is finer); matched by name
_SPATIAL_WORDS = ("conv", "pool", "pad", "interpolate", "upsample", "grid_sample", "fold", "shuffle",
                  "group_norm", "instance_norm", "layer_norm", "local_response_norm", "roll", "flip",
                  "rot90", "cum", "softmax", "sort", "topk")


def _handled(m: nn.Module) -> bool:
    """Layers the conversion rewrites (their inner calls are theirs, not the model's)."""
    return isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))


def _layer_stride(m: nn.Module) -> Tuple[int, int]:
    s = m.stride if m.stride not in (None, ()) else m.kernel_size
    return geometry.normalize_tuple(tuple(s) if isinstance(s, (list, tuple)) else s, 2, "stride")


def _call_name(func) -> str:
    mod = getattr(func, "__module__", None) or ""
    prefix = "F." if mod.startswith(("torch.nn.functional", "torch._C._nn")) else "torch." if mod.startswith(
        "torch") else "Tensor."
    return prefix + getattr(func, "__name__", repr(func))


def _show(r) -> str:
    return "unknown" if r is None else "x".join(str(v) for v in r) if r[0] != r[1] else str(r[0])


class _Scan(TorchFunctionMode):
    """One forward pass: the cumulative stride of every tensor, the conv/pool layers in call order
    with the stride of their input, and the functional calls made outside those layers."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.strides: Dict[int, Tuple[Any, _Stride]] = {}    # id(tensor) -> (weakref, stride)
        self.layers: List[Tuple[str, nn.Module, _Stride, Tuple[int, int]]] = []   # name, m, r, in_hw
        self.calls: List[dict] = []                          # functional calls outside conv/pool layers
        self.reused: List[str] = []
        self.stack: List[nn.Module] = []
        self.inside = 0                                      # depth inside conv/pool layers
        self.out: _Stride = None                             # stride of the model's output
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def tag(self, t, r: _Stride) -> None:
        if isinstance(t, torch.Tensor):
            self.strides[id(t)] = (weakref.ref(t), r)

    def stride_of(self, t) -> Tuple[bool, _Stride]:
        """(known tensor?, its stride)."""
        entry = self.strides.get(id(t)) if isinstance(t, torch.Tensor) else None
        if entry is None or entry[0]() is not t:
            return False, None
        return True, entry[1]

    def where(self) -> str:
        for m in reversed(self.stack):
            if not _handled(m):
                name = self.names.get(m, "?")
                return f"the forward of {name!r} ({type(m).__name__})" if name else \
                    f"the model's forward ({type(m).__name__})"
        return "the model's forward"

    def _pre(self, m, args):
        self.stack.append(m)
        if not _handled(m):
            return
        if self.inside == 0:
            x = args[0] if args else None
            _, r = self.stride_of(x)
            if any(mm is m for _, mm, _, _ in self.layers):
                self.reused.append(self.names[m])
            hw = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) else (0, 0)
            self.layers.append((self.names[m], m, r, hw))
        self.inside += 1

    def _post(self, m, args, out):
        self.stack.pop()
        if not _handled(m):
            return
        self.inside -= 1
        if self.inside == 0:
            r = next(lr for n, mm, lr, _ in reversed(self.layers) if mm is m)
            s = _layer_stride(m)
            self.tag(out if not isinstance(out, tuple) else out[0],
                     None if r is None else (r[0] * s[0], r[1] * s[1]))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        src, r = None, None
        for t in ins:
            known, tr = self.stride_of(t)
            if known:
                src, r = t, tr
                break
        if src is None:
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        name = getattr(func, "__name__", "")
        call = {"name": _call_name(func), "where": self.where(), "r": r, "stride": None, "kind": None}
        r_out: _Stride = r
        if r is not None and name in _STRIDED_CALLS and src.dim() == 4:
            s = self._parse_stride(name, args, kwargs)
            call.update(kind="strided", stride=s)
            r_out = None if s is None else (r[0] * s[0], r[1] * s[1])
        elif r is not None and name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
            y = outs[0] if outs else None
            ok = isinstance(y, torch.Tensor) and y.dim() == 4 and src.dim() == 4
            s = (Frac(src.shape[-2], y.shape[-2]), Frac(src.shape[-1], y.shape[-1])) if ok else None
            call.update(kind="strided", stride=s)
            r_out = None if s is None else (r[0] * s[0], r[1] * s[1])
        else:
            same = all(t.dim() == 4 and src.dim() == 4 and t.shape[-2:] == src.shape[-2:] for t in outs)
            if not same:
                call["kind"] = "resample"
                r_out = None
            elif any(w in name for w in _SPATIAL_WORDS) or (name == "batch_norm" and self._training_bn(args, kwargs)):
                call["kind"] = "spatial"
        if call["kind"] is not None:
            call["r_out"] = r_out
            self.calls.append(call)
        for t in outs:
            self.tag(t, r_out)
        return out

    @staticmethod
    def _training_bn(args, kwargs) -> bool:
        return bool(kwargs.get("training", args[5] if len(args) > 5 else False))

    @staticmethod
    def _parse_stride(name, args, kwargs) -> Optional[Tuple[int, int]]:
        pos, kpos = _STRIDED_CALLS[name]
        s = kwargs.get("stride", args[pos] if len(args) > pos else None)
        if s in (None, ()) and kpos is not None:
            s = kwargs.get("kernel_size", args[kpos] if len(args) > kpos else None)
        if s in (None, ()):
            s = 1
        try:
            return geometry.normalize_tuple(tuple(s) if isinstance(s, (list, tuple)) else s, 2, "stride")
        except (TypeError, ValueError):
            return None


def _scan(model: nn.Module, input_size) -> _Scan:
    """Run ``model`` on zeros ``(1, C, H, W)`` under a :class:`_Scan`; every module keeps its own
    train/eval flag (the pass itself runs in eval mode, without gradients)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("convert_to_dilated: the model has no Conv2d layer")
    h, w = _check_input_size(input_size)
    p = next(model.parameters())
    x = torch.zeros(1, first.in_channels, h, w, dtype=p.dtype, device=p.device)
    flags = [(m, m.training) for m in model.modules()]
    scan = _Scan(model)
    scan.tag(x, (Frac(1), Frac(1)))
    try:
        model.eval()
        with torch.no_grad(), scan:
            y = model(x)
    except (RuntimeError, ValueError, IndexError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"convert_to_dilated: the model failed on a zero input of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {first_line[:200]}); pass a larger input_size") from None
    finally:
        scan.remove()
        for m, flag in flags:
            m.training = flag
    if scan.reused:
        raise ValueError(f"convert_to_dilated: layer {scan.reused[0]!r} is called more than once in forward; "
                         "each conv/pool must be used once to be converted")
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        raise ValueError("convert_to_dilated: the model must map (N, C, H, W) to a feature map (N, C', H', W')")
    known, scan.out = scan.stride_of(y)
    if not known:
        scan.out = None
    return scan


def _check_input_size(input_size) -> Tuple[int, int]:
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        return geometry.normalize_tuple(tuple(input_size) if isinstance(input_size, (list, tuple)) else input_size,
                                        2, "input_size")
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be an int >= 1 or an (H, W) pair, got {input_size!r}") from None


def _integral(r: _Stride) -> bool:
    return r is not None and all(v.denominator == 1 for v in r)


def _lost(scan: _Scan) -> str:
    """Why strides are unknown: the first call that left the integer grid."""
    for c in scan.calls:
        if c["r"] is not None and not _integral(c["r_out"]):
            how = "by an unknown factor" if c["r_out"] is None else f"to stride {_show(c['r_out'])}"
            return f"{c['name']} in {c['where']} changes the grid {how}"
    return "a functional call changes the grid by an unknown factor"


def _final_stride(scan: _Scan) -> Tuple[int, int]:
    if not _integral(scan.out):
        raise ValueError(f"output stride is not defined: {_lost(scan)}")
    return int(scan.out[0]), int(scan.out[1])


def output_stride_of(model: nn.Module, input_size: Union[int, Tuple[int, int]] = 256) -> Tuple[int, int]:
    """Output stride (per axis) of a backbone: the product of the strides along the way, read from
    the layers (and strided functional calls) met by one forward pass on a zero input of
    ``input_size`` (any size the model accepts; it does not enter the result).

    >>> import torch.nn as nn
    >>> output_stride_of(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2)))
    (4, 4)
    >>> output_stride_of(nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.Conv2d(8, 8, 5, stride=2)), 64)
    (4, 4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return _final_stride(_scan(model, input_size))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _plan(scan: _Scan, os_: int) -> List[Tuple[str, nn.Module, Tuple[int, int], Tuple[int, int], Tuple[int, int]]]:
    """Per conv/pool layer to change: ``(name, module, input stride, multiplier, new stride)``;
    raises for anything that cannot be converted exactly."""
    total = _final_stride(scan)
    if any(t < os_ for t in total):
        raise ValueError(f"output_stride {os_} is not reachable: the model's output stride is "
                         f"{_show(total)} (conversion only removes strides)")
    reach = sorted({int(v) for _, _, r, _ in scan.layers if _integral(r) for v in r} | set(total))
    if os_ not in reach:
        raise ValueError(f"output_stride {os_} is not reachable: the strides along the model are "
                         f"{', '.join(map(str, reach))}")
    for c in scan.calls:                                     # functional calls: never rewritten
        r = c["r"]
        if r is None:
            continue
        dense = any(v > os_ for v in r)
        if c["kind"] == "strided":
            s = c["stride"]
            if s is None or dense or any(v * sv > os_ and sv > 1 for v, sv in zip(r, s)):
                what = "would need its stride removed" if not dense else "sees a finer grid after conversion"
                raise ValueError(f"convert_to_dilated: functional call {c['name']} in {c['where']} at input "
                                 f"stride {_show(r)} {what}; functional calls cannot be converted -- use the "
                                 f"nn module (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d) or output_stride >= "
                                 f"{int(max(r) * max(s or (1, 1)))}")
        elif dense:
            raise ValueError(f"convert_to_dilated: functional call {c['name']} in {c['where']} at input stride "
                             f"{_show(r)} mixes positions of the grid the conversion makes {int(max(r)) // os_}x "
                             f"finer, so it would compute a different function; output_stride {os_} is not "
                             f"reachable for this model by conversion (try output_stride >= {int(max(r))})")
    plan = []
    for name, m, r, _ in scan.layers:
        if not _integral(r):
            raise ValueError(f"convert_to_dilated: the input stride of layer {name!r} is unknown: {_lost(scan)}")
        s = _layer_stride(m)
        mult, new_stride = [], []
        for ra, sa in zip((int(r[0]), int(r[1])), s):
            if ra < os_ < ra * sa:
                raise ValueError(f"output_stride {os_} is not reachable: layer {name!r} takes the stride "
                                 f"from {ra} to {ra * sa} in one step")
            if ra > os_ and ra % os_:
                raise ValueError(f"output_stride {os_} is not reachable: layer {name!r} sees "
                                 f"input stride {ra}, not a multiple of {os_}")
            mult.append(ra // min(ra, os_))
            new_stride.append(1 if ra * sa > os_ else sa)
        if mult != [1, 1] or list(s) != new_stride:
            plan.append((name, m, (int(r[0]), int(r[1])), tuple(mult), tuple(new_stride)))
    return plan


def _convert_conv(root: nn.Module, name: str, m: nn.Conv2d, in_hw, mult, new_stride) -> None:
    if m.padding_mode != "zeros" and mult != (1, 1):
        raise ValueError(f"convert_to_dilated: layer {name!r} pads with {m.padding_mode!r}, which does not "
                         "commute with dilation (only zero padding does); output_stride not reachable")
    if isinstance(m, _ConvNd):
        if not m.static_padding:
            raise ValueError(f"convert_to_dilated: layer {name!r} has size-dependent padding {m.padding!r} at "
                             "stride > 1; give it explicit padding to convert it")
        pairs = m.pads(in_hw)
    elif isinstance(m.padding, str):
        pairs = geometry.resolve_padding(m.padding, in_hw, m.kernel_size, m.stride, m.dilation)
    else:
        pairs = tuple((p, p) for p in m.padding)
    pairs = tuple((lo * k, hi * k) for (lo, hi), k in zip(pairs, mult))
    dil = tuple(d * k for d, k in zip(m.dilation, mult))
    if isinstance(m, _ConvNd):               # setting its attributes re-resolves its padding
        m.stride, m.dilation = new_stride, dil
        if m.pads(in_hw) != pairs:          # the spec (e.g. "same" with an even kernel) no longer fits
            m.padding = pairs
        return
    if all(lo == hi for lo, hi in pairs):
        m.stride, m.dilation, m.padding = new_stride, dil, tuple(lo for lo, _ in pairs)
        m._reversed_padding_repeated_twice = [p for lo, _ in reversed(pairs) for p in (lo, lo)]
        return
    if type(m) is not nn.Conv2d:
        raise ValueError(f"convert_to_dilated: layer {name!r} ({type(m).__name__}) needs asymmetric padding "
                         f"{pairs} after conversion, which it cannot express; build it as atrous.nn.Conv2d")
    conv = Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=new_stride, padding=pairs,
                  dilation=dil, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                  device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(m.weight)
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    conv.train(m.training)
    _set_module(root, name, conv)


def _convert_pool(root: nn.Module, name: str, m: nn.Module, mult, new_stride) -> None:
    kind = type(m).__name__
    if getattr(m, "ceil_mode", False):
        raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) uses ceil_mode=True, whose "
                         "extra border window has no exact counterpart after conversion; output_stride not "
                         "reachable (use ceil_mode=False)")
    k = geometry.normalize_tuple(m.kernel_size, 2, "kernel_size")
    pad = tuple(p * f for p, f in zip(geometry.normalize_tuple(m.padding, 2, "padding", minimum=0), mult))
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) returns indices, which "
                             "change meaning on the finer grid; output_stride not reachable")
        dil = tuple(d * f for d, f in zip(geometry.normalize_tuple(m.dilation, 2, "dilation"), mult))
        if all(2 * p <= d * (kk - 1) + 1 for p, d, kk in zip(pad, dil, k)):   # nn.MaxPool2d's limit
            m.stride, m.padding, m.dilation = new_stride, pad, dil
            return
        new = nn.Sequential(nn.ConstantPad2d((pad[1], pad[1], pad[0], pad[0]), float("-inf")),
                            nn.MaxPool2d(k, new_stride, 0, dil))   # -inf: max pooling's own padding value
    elif isinstance(m, nn.AvgPool2d):
        if type(m) not in (nn.AvgPool2d, AvgPool2d):
            raise ValueError(f"convert_to_dilated: pooling layer {name!r} ({kind}) is a custom average pool; "
                             "output_stride not reachable")
        dil = tuple(d * f for d, f in zip(getattr(m, "dilation", (1, 1)), mult))
        new = AvgPool2d(k, new_stride, pad, False, m.count_include_pad, m.divisor_override, dilation=dil)
    else:   # pragma: no cover -- _handled() lists the layer types
        raise ValueError(f"convert_to_dilated: cannot convert layer {name!r} ({kind})")
    new.train(m.training)
    _set_module(root, name, new)


def convert_to_dilated(model: nn.Module, output_stride: int = 16, *,
                       input_size: Union[int, Tuple[int, int]] = 256) -> nn.Module:
    """Return a copy of ``model`` whose output stride is ``output_stride``: the strides of the last
    convs and pooling layers become 1 and what follows is dilated. The original is untouched; the
    copy has the same weights and every submodule keeps its own train/eval flag.

    ``model`` maps ``(N, C, H, W)`` to a feature map ``(N, C', H', W')`` (ResNet-style with
    downsampling shortcuts, VGG-style stacks with pooling: DeepLab-v1 on VGG-16 turns pool4/pool5 to
    stride 1). Then ``converted(x)[..., ::f, ::f] == model(x)`` with
    ``f = output_stride_of(model) / output_stride`` (exact up to float summation order; in training
    mode a batch norm normalises over the finer grid, so the identity is an eval-mode one).
    ``input_size`` is the size of the zero input of the one forward pass that reads the strides.

    Raises ``ValueError`` (one line, naming the layer or call) when ``output_stride`` is not an
    output stride the model passes through (0, 3 in a net of stride-2 layers, larger than the
    model's), or when the converted model could not compute the same function: a functional call
    (``F.max_pool2d(x, 2)``, ``F.conv2d(..., stride=2)``, ``F.interpolate``, a spatial mean...)
    where strides change, ``ceil_mode`` pooling, non-zero padding modes, layers called twice.

    >>> import torch, torch.nn as nn, atrous.nn as ann
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    >>> net4 = ann.convert_to_dilated(net, output_stride=4)
    >>> net4[3].stride, net4[4].dilation, net4[4].padding
    ((1, 1), (2, 2), (2, 2))
    >>> x = torch.randn(1, 3, 32, 32)
    >>> torch.allclose(net4(x)[..., ::2, ::2], net(x), atol=1e-6)
    True
    >>> ann.convert_to_dilated(net, output_stride=3)
    Traceback (most recent call last):
    ...
    ValueError: output_stride 3 is not reachable: the strides along the model are 1, 2, 4, 8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(output_stride, numbers.Integral) or isinstance(output_stride, bool):
        raise TypeError(f"output_stride must be an int, got {output_stride!r}")
    if output_stride < 1:
        raise ValueError(f"output_stride must be >= 1, got {output_stride!r}")
    os_ = int(output_stride)
    new = copy.deepcopy(model)
    scan = _scan(new, input_size)
    for name, m, _, mult, new_stride in _plan(scan, os_):
        if isinstance(m, nn.Conv2d):
            hw = next(hw for n, _, _, hw in scan.layers if n == name)
            _convert_conv(new, name, m, hw, mult, new_stride)
        else:
            _convert_pool(new, name, m, mult, new_stride)
    return new
