"""Training and measuring one network: AdamW + one-cycle schedule, per-epoch test metric (learning
curves), epoch time and inference throughput.

The metric is test accuracy for classification and mean intersection-over-union (mIoU, over the
classes present in labels or predictions) for dense labelling.

>>> import numpy as np
>>> miou(np.array([[2, 0], [1, 3]]))      # IoU per class: 2/3, 3/4
0.7083333333333333
"""

from __future__ import annotations

import time

import numpy as np

from .._optional import require

__all__ = ["train_run", "evaluate", "miou", "confusion"]


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


def _device(model):
    """The device of the model's parameters (batches follow it)."""
    p = next(model.parameters(), None)
    return None if p is None else p.device


def evaluate(model, x: np.ndarray, y: np.ndarray, num_classes: int, dense: bool,
             batch_size: int = 256) -> float:
    """Test metric of ``model`` on ``x`` ``(N, C, *S)``: accuracy, or mIoU when ``dense``. Batches
    run on the model's device."""
    torch = require("torch")
    model.eval()
    device = _device(model)
    conf = np.zeros((num_classes, num_classes), np.int64)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            pred = model(torch.from_numpy(x[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
            conf += confusion(pred, y[i:i + batch_size], num_classes)
    return miou(conf) if dense else float(np.trace(conf) / max(conf.sum(), 1))


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
              weight_decay: float = 1e-2, bar=None) -> dict:
    """Train ``model`` on ``ds`` (an :class:`atrous.compare.data.Dataset`) and measure it.

    Batches run on the model's device. Deterministic on the CPU given ``seed`` and the torch thread
    count (the runner fixes both). ``bar`` is an optional tqdm-like object updated once per epoch.
    Returns ``{"metric", "curve" (test metric per epoch), "loss" (train loss per epoch),
    "epoch_time" (s, mean), "throughput" (samples/s)}``.
    """
    torch = require("torch")
    F = torch.nn.functional
    g = torch.Generator().manual_seed(seed)
    device = _device(model)
    x = torch.from_numpy(ds.x_train).to(device)
    y = torch.from_numpy(ds.y_train).to(device)
    steps = epochs * (-(-len(x) // batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    curve, losses, times = [], [], []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        total, perm = 0.0, torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])      # logits (B, classes[, *S])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        times.append(time.perf_counter() - t0)
        losses.append(total / len(x))
        curve.append(evaluate(model, ds.x_test, ds.y_test, ds.num_classes, ds.dense))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", test=f"{curve[-1]:.3f}")
            bar.update(1)
    return {"metric": curve[-1], "curve": curve, "loss": losses,
            "epoch_time": float(np.mean(times)), "throughput": throughput(model, ds.x_test)}
