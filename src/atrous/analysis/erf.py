"""Effective receptive field (Luo et al. 2016, "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks"): how strongly each input actually influences one output.

Measured as the gradient of the centre output position (summed over output channels) with respect
to the input, averaged (absolute values by default) over random inputs and optionally over random
re-initialisations. A Gaussian is fitted by moments: per axis, the mean and standard deviation of the
map's marginal taken as a distribution -- the maximum-likelihood Gaussian.

For a stack of *linear* convolutions with uniform (box) kernels the map is exactly the convolution of
the layers' tap distributions, so its variance per axis is
``sum_l (j_{l-1} d_l)**2 * (k_l**2 - 1) / 12`` (:func:`linear_stack_sigma`); ``n`` uniform 3x3
layers give ``sigma = sqrt(2n/3)`` -- it grows like ``sqrt(n)`` while the field grows like ``n``.

>>> import torch.nn as nn, atrous
>>> net = nn.Sequential(*[nn.Conv2d(1, 1, 3, bias=False) for _ in range(6)])
>>> for c in net: _ = nn.init.constant_(c.weight, 1 / 9)
>>> e = atrous.effective_receptive_field(net, (1, 1, 17, 17), n_samples=1)
>>> [round(s ** 2, 6) for s in e.sigma]             # 2n/3 with n = 6
[4.0, 4.0]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ERF", "effective_receptive_field", "linear_stack_sigma"]


@dataclass(frozen=True)
class ERF:
    """``map``: mean gradient magnitude per input position, shape ``input_shape[2:]``;
    ``output_index``: the output position differentiated (the centre); ``mean``/``sigma``: the
    fitted Gaussian per axis (input coordinates); ``rf``: the theoretical receptive field (or None if
    it could not be computed); ``n_samples``, ``n_inits``."""

    map: np.ndarray
    output_index: tuple
    mean: tuple
    sigma: tuple
    rf: object = None
    n_samples: int = 1
    n_inits: int = 1
    notes: list = field(default_factory=list)

    def fraction_within(self, n_sigma: float = 2.0) -> float:
        """Share of the map's mass inside the box ``mean +- n_sigma * sigma``."""
        m = self.map
        sl = tuple(slice(max(0, int(np.ceil(mu - n_sigma * s))), int(np.floor(mu + n_sigma * s)) + 1)
                   for mu, s in zip(self.mean, self.sigma))
        return float(m[sl].sum() / m.sum())

    def to_dict(self) -> dict:
        return {"output_index": list(self.output_index), "mean": list(self.mean), "sigma": list(self.sigma),
                "n_samples": self.n_samples, "n_inits": self.n_inits, "notes": list(self.notes),
                "rf_size": list(self.rf.size) if self.rf is not None else None,
                "map": self.map.tolist()}


def linear_stack_sigma(layers) -> tuple:
    """Per-axis ERF standard deviation of a linear stack of uniform-kernel layers (closed form).

    ``sigma**2 = sum_l (j_{l-1} d_l)**2 (k_l**2 - 1) / 12`` with ``j_{l-1}`` the jump before layer l.

    >>> from atrous import Layer
    >>> round(linear_stack_sigma([Layer(3)] * 6)[0] ** 2, 12)
    4.0
    >>> linear_stack_sigma([Layer((3, 5), dilation=(2, 1))])
    (1.632993161855452, 1.4142135623730951)
    """
    from .receptive_field import receptive_fields

    layers = list(layers)
    rfs = list(receptive_fields(layers).values())
    ndim = rfs[0].ndim
    var = [0.0] * ndim
    for i, L in enumerate(layers):
        k, _, d, _ = L.resolve(ndim)
        jprev = rfs[i - 1].jump if i else (1,) * ndim
        for ax in range(ndim):
            var[ax] += (jprev[ax] * d[ax]) ** 2 * (k[ax] ** 2 - 1) / 12
    return tuple(float(np.sqrt(v)) for v in var)


def _fit(m: np.ndarray):
    mean, sigma = [], []
    total = m.sum()
    for ax in range(m.ndim):
        marg = m.sum(axis=tuple(a for a in range(m.ndim) if a != ax))
        x = np.arange(marg.size, dtype=np.float64)
        mu = float((marg * x).sum() / total)
        mean.append(mu)
        sigma.append(float(np.sqrt((marg * (x - mu) ** 2).sum() / total)))
    return tuple(mean), tuple(sigma)


def effective_receptive_field(model, input_shape, n_samples: int = 16, n_inits: int = 1, at: str | None = None,
                              absolute: bool = True, seed: int = 0) -> ERF:
    """Measure the effective receptive field of the centre output of ``model`` (or of node/submodule ``at``).

    ``input_shape=(N, C, *spatial)``: ``C`` and the spatial sizes are used; the inputs are
    ``n_samples`` standard-normal samples (one batch). ``n_inits > 1`` also averages over random
    re-initialisations (``reset_parameters`` on a copy; the model itself is untouched). ``absolute``:
    average ``|grad|`` (default) rather than the signed gradient. Runs in eval mode (BatchNorm uses its
    running statistics, dropout is off) so samples do not interact.

    Returns an :class:`ERF`; ``sigma`` is per spatial axis in input samples.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, dilation=2), nn.ReLU(), nn.Conv1d(4, 1, 3, dilation=4))
    >>> e = effective_receptive_field(net, (1, 1, 40), n_samples=4)
    >>> e.map.shape, e.output_index, e.rf.size, 0 < e.sigma[0] < 13 / 2
    ((40,), (14,), (13,), True)
    """
    from .._optional import require
    torch = require("torch")
    from . import graph as G
    from .receptive_field import receptive_field

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_shape = G.check_shape(input_shape)
    for name, v in (("n_samples", n_samples), ("n_inits", n_inits)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if at is not None and not isinstance(at, str):
        raise TypeError(f"at must be a node or module name (str), got {type(at).__name__}")
    ndim = len(input_shape) - 2
    gen = torch.Generator().manual_seed(seed)
    p0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = p0.dtype if p0 is not None else torch.float32
    device = p0.device if p0 is not None else torch.device("cpu")
    if device.type == "meta":
        raise ValueError("the effective receptive field needs real weights; the model is on the meta device")
    acc = None
    out_index = None
    for init in range(n_inits):
        net = model
        if n_inits > 1:
            net = copy.deepcopy(model)
            torch.manual_seed(seed + init)
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        x = torch.randn((n_samples,) + input_shape[1:], generator=gen, dtype=dtype).to(device).requires_grad_(True)
        g = G.record(net, [x], meta=False, keep_tensors=True)       # one real run; node outputs kept
        y = g.values.get(g.target(at))
        if not torch.is_tensor(y) or y.dim() != ndim + 2:
            raise ValueError(f"the {'output of ' + repr(at) if at else 'model output'} has shape "
                             f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}, not (N, C, *spatial) "
                             f"with {ndim} spatial axes; pass at=<a spatial node or submodule>")
        out_index = tuple(n // 2 for n in y.shape[2:])
        y[(slice(None), slice(None)) + out_index].sum().backward()
        gx = x.grad.detach()
        gx = gx.abs() if absolute else gx
        gx = gx.sum(dim=1).mean(dim=0).double().cpu().numpy()        # (*spatial): sum channels, mean samples
        acc = gx if acc is None else acc + gx
    emap = acc / n_inits
    notes = []
    if not np.any(emap):
        raise ValueError("the gradient of the centre output is zero everywhere (dead network?)")
    mean, sigma = _fit(np.abs(emap))
    try:
        rf = receptive_field(model, input_shape, at=at)
    except (ValueError, TypeError) as e:
        rf = None
        notes.append(f"theoretical receptive field not computed: {e}")
    return ERF(emap, out_index, mean, sigma, rf, n_samples, n_inits, notes)
