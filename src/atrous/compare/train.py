"""Training and measuring one network: AdamW, per-epoch test metric (learning curves), epoch time
and inference throughput, with one of two stopping rules:

* fixed budget (``patience=None``): ``epochs`` epochs under a one-cycle learning-rate schedule;
* plateau (``patience=k``): the last ``n_val`` training examples are held out for validation; the
  learning rate is divided by 5 after ``ceil(k/2)`` epochs without a validation improvement (more
  than ``MIN_DELTA``), training stops after ``k`` epochs without one (the plateau) or at ``epochs``
  (the cap; the record then says the plateau was not reached), and the weights of the best
  validation epoch are restored before the final test.

A loss that becomes NaN or infinite stops the run: the result says so (``status='diverged'``, with
the epoch and step) instead of reporting the metric of a broken network.

The metric is test accuracy for classification and mean intersection-over-union (mIoU, over the
classes present in labels or predictions) for dense labelling. Dense runs also score pixel accuracy
inside thin bands around label boundaries (:func:`boundary_band`, the "trimap" of DeepLab), where
resolution matters most.

>>> import numpy as np
>>> miou(np.array([[2, 0], [1, 3]]))      # IoU per class: 2/3, 3/4
0.7083333333333333
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np

from .._optional import require

__all__ = ["train_run", "evaluate", "scores", "miou", "confusion", "boundary_band", "chance_score",
           "PlateauRule", "BAND_WIDTHS", "MIN_DELTA"]

BAND_WIDTHS = (1, 2, 4)     # trimap half-widths (pixels) scored on dense tasks
MIN_DELTA = 1e-3            # a validation gain smaller than this is no improvement (plateau rule)


class PlateauRule:
    """The plateau rule, fed one validation score per epoch.

    ``update(score)`` returns ``(improved, drop_lr, stop)``: *improved* when the score beats the best
    so far by more than ``min_delta``; *drop_lr* after ``ceil(patience/2)`` epochs without
    improvement (counted again from each drop); *stop* after ``patience`` epochs without improvement.

    >>> rule = PlateauRule(patience=2)
    >>> [rule.update(v) for v in (0.5, 0.6, 0.6, 0.6)]
    [(True, False, False), (True, False, False), (False, True, False), (False, True, True)]
    >>> rule.best, rule.best_epoch
    (0.6, 2)
    """

    def __init__(self, patience: int, min_delta: float = MIN_DELTA):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        self.patience, self.min_delta = patience, min_delta
        self.drop_after = math.ceil(patience / 2)
        self.best, self.best_epoch, self.epoch, self.since, self.since_drop = -math.inf, 0, 0, 0, 0

    def update(self, score: float) -> tuple[bool, bool, bool]:
        self.epoch += 1
        if score > self.best + self.min_delta:
            self.best, self.best_epoch, self.since, self.since_drop = score, self.epoch, 0, 0
            return True, False, False
        self.since += 1
        self.since_drop += 1
        drop = self.since_drop >= self.drop_after
        if drop:
            self.since_drop = 0
        return False, drop, self.since >= self.patience


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, row = true class, column = predicted class.

    >>> confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    array([[1, 1],
           [0, 1]])
    """
    idx = target.reshape(-1).astype(np.int64) * num_classes + pred.reshape(-1).astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> float:
    """Mean IoU ``tp / (tp + fp + fn)`` over the classes that occur (true or predicted)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    seen = union > 0
    return float((tp[seen] / union[seen]).mean()) if seen.any() else 0.0


def boundary_band(y: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (Chebyshev distance) of a pixel of another label: the (2w+1)-square
    window around the pixel, clipped at the image border, holds more than one label.

    ``y`` ``(N, H, W)`` int labels -> ``(N, H, W)`` bool.

    >>> y = np.zeros((1, 1, 6), np.int64); y[0, 0, 3:] = 1
    >>> boundary_band(y, 1)[0, 0].astype(int).tolist()
    [0, 0, 1, 1, 0, 0]
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width!r}")
    y = np.asarray(y)
    pad = [(0, 0)] + [(width, width)] * (y.ndim - 1)
    p = np.pad(y, pad, mode="edge")        # edge padding = the window clipped at the border
    lo, hi = p, p
    for ax in range(1, y.ndim):            # separable min/max filters over the window
        n = y.shape[ax]
        sl = [np.take(lo, np.arange(s, s + n), axis=ax) for s in range(2 * width + 1)]
        lo = np.minimum.reduce(sl)
        sh = [np.take(hi, np.arange(s, s + n), axis=ax) for s in range(2 * width + 1)]
        hi = np.maximum.reduce(sh)
    return lo != hi


def chance_score(y_train: np.ndarray, y_test: np.ndarray, num_classes: int, dense: bool) -> float:
    """The test metric of the constant prediction of the most frequent training label: the
    floor a trained network must clear (accuracy, or mIoU when ``dense``).

    >>> chance_score(np.array([1, 1, 0]), np.array([1, 0, 0, 1]), 2, dense=False)
    0.5
    """
    top = int(np.bincount(y_train.reshape(-1), minlength=num_classes).argmax())
    conf = confusion(np.full(y_test.shape, top), y_test, num_classes)
    return miou(conf) if dense else float(np.trace(conf) / max(conf.sum(), 1))


def _device(model):
    """The device of the model's parameters (batches follow it)."""
    p = next(model.parameters(), None)
    return None if p is None else p.device


def scores(model, x: np.ndarray, y: np.ndarray, num_classes: int, dense: bool, batch_size: int = 256,
           band_widths=()) -> dict:
    """Test scores of ``model`` on ``x`` ``(N, C, *S)``: ``{"metric": accuracy or mIoU,
    "band_acc": {str(w): pixel accuracy inside boundary_band(y, w)}}`` (bands only when ``dense``)."""
    torch = require("torch")
    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    bands = {w: boundary_band(y, w) for w in band_widths} if dense else {}
    hit = {w: 0 for w in bands}
    device = _device(model)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            pred = model(torch.from_numpy(x[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
            yb = y[i:i + batch_size]
            conf += confusion(pred, yb, num_classes)
            for w, band in bands.items():
                hit[w] += int(((pred == yb) & band[i:i + batch_size]).sum())
    metric = miou(conf) if dense else float(np.trace(conf) / max(conf.sum(), 1))
    return {"metric": metric,
            "band_acc": {str(w): hit[w] / max(int(bands[w].sum()), 1) for w in bands}}


def evaluate(model, x: np.ndarray, y: np.ndarray, num_classes: int, dense: bool,
             batch_size: int = 256) -> float:
    """Test metric of ``model`` on ``x`` ``(N, C, *S)``: accuracy, or mIoU when ``dense``."""
    return scores(model, x, y, num_classes, dense, batch_size)["metric"]


def throughput(model, x: np.ndarray, batch_size: int = 256, min_time: float = 0.2) -> float:
    """Inference samples per second (eval mode, no grad), after one warm-up batch."""
    torch = require("torch")
    model.eval()
    xb = torch.from_numpy(x[:batch_size]).to(_device(model))
    with torch.no_grad():
        model(xb)
        n, t0 = 0, time.perf_counter()
        while True:
            model(xb)
            n += len(xb)
            dt = time.perf_counter() - t0
            if dt >= min_time:
                return n / dt


def train_run(model, ds, *, epochs: int, seed: int, batch_size: int = 128, lr: float = 1e-2,
              weight_decay: float = 1e-2, bar=None, patience: int | None = None, n_val: int = 0,
              band_widths=()) -> dict:
    """Train ``model`` on ``ds`` (an :class:`atrous.compare.data.Dataset`) and measure it.

    Deterministic given ``seed`` and the torch thread count (the runner fixes both). ``bar`` is an
    optional tqdm-like object updated once per epoch. ``patience`` selects the plateau rule (module
    docstring; needs ``n_val >= 1`` held-out training examples), else ``epochs`` fixed epochs.

    Returns ``{"status": "ok", "metric", "curve" (test metric per epoch), "val_curve", "loss"
    (train loss per epoch), "epochs_run", "best_epoch", "plateau" (stopped by the rule),
    "band_acc", "epoch_time" (s, mean), "throughput" (samples/s)}``; or, if the loss became
    NaN/inf, ``{"status": "diverged", "error": ..., "metric": None, ...}`` with the curves so far.
    """
    torch = require("torch")
    F = torch.nn.functional
    g = torch.Generator().manual_seed(seed)
    plateau_rule = patience is not None
    if plateau_rule and not 1 <= n_val < len(ds.x_train):
        raise ValueError(f"n_val must be in 1..{len(ds.x_train) - 1} for the plateau rule, got {n_val!r}")
    n_fit = len(ds.x_train) - (n_val if plateau_rule else 0)
    device = _device(model)
    x = torch.from_numpy(ds.x_train[:n_fit]).to(device)
    y = torch.from_numpy(ds.y_train[:n_fit]).to(device)
    x_val, y_val = ds.x_train[n_fit:], ds.y_train[n_fit:]
    steps_per_epoch = -(-n_fit // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if plateau_rule:
        sched, rule = None, PlateauRule(patience)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    curve, val_curve, losses, times = [], [], [], []
    best_state, stopped = None, False
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, perm = 0.0, torch.randperm(n_fit, generator=g).to(device)
        for step, i in enumerate(range(0, n_fit, batch_size), 1):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])      # logits (B, classes[, *S])
            v = float(loss.detach())
            if not math.isfinite(v):
                return {"status": "diverged", "metric": None,
                        "error": f"training loss became {v} at epoch {epoch}, step {step} of "
                                 f"{steps_per_epoch}; the run was stopped (lower --lr?)",
                        "curve": curve, "val_curve": val_curve, "loss": losses,
                        "epochs_run": epoch - 1, "best_epoch": rule.best_epoch if plateau_rule else None,
                        "plateau": False,
                        "band_acc": {}, "epoch_time": float(np.mean(times)) if times else None,
                        "throughput": None}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += v * len(idx)
        times.append(time.perf_counter() - t0)
        losses.append(total / n_fit)
        curve.append(evaluate(model, ds.x_test, ds.y_test, ds.num_classes, ds.dense))
        if plateau_rule:
            val_curve.append(evaluate(model, x_val, y_val, ds.num_classes, ds.dense))
            improved, drop, stopped = rule.update(val_curve[-1])
            if improved:
                best_state = copy.deepcopy(model.state_dict())
            if drop:
                for group in opt.param_groups:
                    group["lr"] /= 5
        if bar is not None:
            post = {"loss": f"{losses[-1]:.3f}", "test": f"{curve[-1]:.3f}"}
            if plateau_rule:
                post["val"] = f"{val_curve[-1]:.3f}"
            bar.set_postfix(**post)
            bar.update(1)
        if stopped:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    final = scores(model, ds.x_test, ds.y_test, ds.num_classes, ds.dense, band_widths=band_widths)
    return {"status": "ok", "metric": final["metric"], "curve": curve, "val_curve": val_curve,
            "loss": losses, "epochs_run": len(curve),
            "best_epoch": rule.best_epoch if plateau_rule else len(curve),
            "plateau": stopped, "band_acc": final["band_acc"],
            "epoch_time": float(np.mean(times)), "throughput": throughput(model, ds.x_test)}
