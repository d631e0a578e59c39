"""Running a study: one run per (strategy, seed), resumable, optionally split across
``torch.distributed`` ranks.

* Every run is keyed by a hash of its configuration (:func:`run_key`); a run whose key is already
  in ``results.jsonl`` is skipped unless ``force``.
* ``results.jsonl`` holds one JSON record per run. It is only ever replaced atomically (written to a
  temporary file in the same directory, fsync'd, ``os.replace``d), so Ctrl-C or a crash leaves either
  the old or the new file, never a partial record.
* Under ``torchrun`` (``WORLD_SIZE > 1``) rank 0 reads ``results.jsonl`` and broadcasts the pending
  runs, which are dealt round-robin to the ranks (gloo backend, CPU); after each round rank 0
  gathers the records and appends them; rank 0 writes the report. Only rank 0 touches ``--out``. Runs use a
  fixed torch thread count (``threads``, default 1) and their own seed, so a run's numbers do not depend
  on which process ran it.

>>> cfg = dict(task="mnist1d", strategy="dilated", seed=0, epochs=1)
>>> run_key(cfg) == run_key(dict(reversed(list(cfg.items()))))
True
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .._io import atomic_write
from .._optional import require
from . import strategies as S
from .data import Dataset, check_task, load_task

__all__ = ["Study", "TASK_DEFAULTS", "QUICK", "run_key", "read_records", "append_records",
           "atomic_write", "run_study", "plan_runs"]

RECORD_VERSION = 1

# Per-task defaults: chosen so the default MNIST-1D study fits 5 minutes on 2 CPU cores.
TASK_DEFAULTS = {
    "mnist1d": dict(epochs=12, width=32, depth=5, batch_size=128, lr=1e-2, n_train=None, n_test=None),
    "fashion-mnist": dict(epochs=4, width=16, depth=5, batch_size=128, lr=1e-2, n_train=5000,
                          n_test=1000),
    "fashion-seg": dict(epochs=8, width=16, depth=6, batch_size=32, lr=1e-2, n_train=1000,
                        n_test=200),
}
# --quick: a smoke run (< 30 s for all six strategies, one seed)
QUICK = dict(epochs=2, width=8, n_train=512, n_test=256, seeds=1, batch_size=64)
QUICK_SEG = dict(n_train=32, n_test=16, width=4, batch_size=16)


@dataclass
class Study:
    """What to run: one run per strategy x seed (seeds ``0 .. seeds-1``)."""

    task: str = "mnist1d"
    strategies: tuple = S.STRATEGIES
    seeds: int = 3
    epochs: int = 12
    target_rf: int | None = None          # None: the whole input
    depth: int = 5
    width: int = 32
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-2
    n_train: int | None = None
    n_test: int | None = None
    threads: int = 1
    data_dir: str | None = field(default=None, compare=False)

    @classmethod
    def for_task(cls, task: str = "mnist1d", quick: bool = False, **overrides) -> Study:
        """The defaults of ``task`` (``QUICK`` ones if ``quick``), then ``overrides`` not None."""
        check_task(task)
        kw = dict(TASK_DEFAULTS[task])
        if quick:
            kw.update(QUICK)
            if task != "mnist1d":
                kw.update(QUICK_SEG if task == "fashion-seg" else {})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(task=task, **kw)

    def validate(self) -> Study:
        check_task(self.task)
        self.strategies = S.check_strategies(self.strategies)
        for name in ("seeds", "epochs", "depth", "width", "batch_size", "threads"):
            S._check_int(getattr(self, name), name)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                S._check_int(getattr(self, name), name)
        if self.target_rf is not None:
            S._check_int(self.target_rf, "target_rf")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        return self


def run_key(config: dict) -> str:
    """Hash (16 hex digits) of a run's configuration, independent of key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_runs(study: Study, ds: Dataset) -> list[dict]:
    """The run configurations of ``study`` on ``ds`` (target field resolved to the input size)."""
    target = study.target_rf or max(ds.spatial)
    out = []
    for seed in range(study.seeds):
        for strategy in study.strategies:
            out.append(dict(version=RECORD_VERSION, task=study.task, strategy=strategy, seed=seed,
                            epochs=study.epochs, target_rf=target, depth=study.depth,
                            width=study.width, batch_size=study.batch_size, lr=study.lr,
                            weight_decay=study.weight_decay, n_train=len(ds.x_train),
                            n_test=len(ds.x_test), threads=study.threads))
    return out


# ------------------------------------------------------------------------------ results file

def read_records(path) -> list[dict]:
    """The records of a ``results.jsonl`` (``[]`` if missing). A line that is not a JSON object
    raises ``ValueError`` naming the file and line."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError(f"{path} line {i} is not a run record; move the file away or pick "
                                 "another --out")
            out.append(rec)
    return out


def append_records(path, records: list[dict], replace_keys: bool = True) -> None:
    """Append ``records`` to ``results.jsonl`` atomically (old records with the same key are
    dropped when ``replace_keys``)."""
    if not records:
        return
    new = {r["key"] for r in records}
    old = [r for r in read_records(path) if not (replace_keys and r["key"] in new)]
    with atomic_write(path) as f:
        for r in old + list(records):
            f.write(json.dumps(r, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ one run

def _measure(model, ds: Dataset, cfg: dict) -> dict:
    """Field, coverage, cost and final resolution of the built model (before training)."""
    from ..analysis.cost import cost
    from ..analysis.coverage import coverage
    torch = require("torch")
    shape = (1, ds.in_channels, *ds.spatial)
    rf = S.verify_field(model, shape)
    cov = coverage(model.body, input_shape=shape)
    c = cost(model, shape)
    with torch.no_grad():
        feat = model.body(torch.zeros(shape, device=next(model.parameters()).device))
    n_params = sum(p.numel() for p in model.parameters())
    if int(c.params) != n_params:
        raise RuntimeError(f"atrous.cost counts {c.params} parameters, the model has {n_params}")
    return {
        "field": [int(v) for v in rf.size],
        "jump": [int(v) for v in rf.jump],
        "coverage": _plain(cov.to_dict()),
        "params": n_params,
        "macs": int(c.macs),
        "resolution": [int(v) for v in feat.shape[2:]],
    }


def _plain(v):
    """JSON-friendly copy of a number, per-axis tuple or dict of them."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    return v.item() if hasattr(v, "item") else v


def run_one(cfg: dict, ds: Dataset, bar=None) -> dict:
    """Build, verify, measure and train one run; return its record. Uses ``cfg["threads"]`` torch
    threads (restored afterwards)."""
    torch = require("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        return _run_one(cfg, ds, bar, torch)
    finally:
        torch.set_num_threads(threads)


def _run_one(cfg, ds, bar, torch) -> dict:
    from .train import train_run
    torch.manual_seed(cfg["seed"])
    model = S.build(cfg["strategy"], ds.in_channels, ds.num_classes, cfg["target_rf"],
                    dims=len(ds.spatial), depth=cfg["depth"], width=cfg["width"], dense=ds.dense,
                    in_size=min(ds.spatial))
    rec = {"key": run_key(cfg), "config": cfg, "plan": model.plan.as_dict()}
    rec.update(_measure(model, ds, cfg))
    t0 = time.perf_counter()
    rec.update(train_run(model, ds, epochs=cfg["epochs"], seed=cfg["seed"],
                         batch_size=cfg["batch_size"], lr=cfg["lr"],
                         weight_decay=cfg["weight_decay"], bar=bar))
    rec["train_time"] = time.perf_counter() - t0
    rec["metric_name"] = "mIoU" if ds.dense else "accuracy"
    return rec


# ------------------------------------------------------------------------------ the study

class _NoBar:
    def __init__(self, *a, **k):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def set_description(self, *a, **k):
        pass

    def reset(self, total=None):
        pass

    def close(self):
        pass


def _bars(quiet: bool):
    if quiet:
        return _NoBar
    return require("tqdm").tqdm


def _dist():
    """(rank, world, torch.distributed or None, whether we initialised it); gloo under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None, False
    dist = require("torch.distributed", "torch")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dist, owned


def run_study(study: Study, out: str, *, force: bool = False, quiet: bool = False,
              ds: Dataset | None = None, runner=None) -> list[dict]:
    """Run the pending runs of ``study`` into ``out/results.jsonl``; return the study's records
    (on rank 0; other ranks return ``[]``). ``runner`` is the function training one run."""
    study.validate()
    runner = runner or run_one
    rank, world, dist, owned = _dist()
    if ds is None:
        ds = load_task(study.task, study.data_dir, study.n_train, study.n_test)
    path = os.path.join(out, "results.jsonl")
    configs = plan_runs(study, ds)
    for c in configs:  # every plan must be buildable before any training starts
        S.plan(c["strategy"], c["target_rf"], c["depth"], min(ds.spatial))
    pending = None
    if rank == 0:  # only rank 0 reads/writes --out: other machines need not share the directory
        done = {r["key"] for r in read_records(path)} if not force else set()
        pending = [c for c in configs if run_key(c) not in done]
    if dist is not None:
        box = [pending]
        dist.broadcast_object_list(box, src=0)
        pending = box[0]
    Bar = _bars(quiet or rank != 0)
    runs = Bar(total=len(pending), desc=f"runs ({len(configs) - len(pending)} done before)",
               unit="run", position=0)
    epochs = Bar(total=study.epochs, desc="epochs", unit="ep", position=1, leave=False)
    try:
        for r0 in range(0, len(pending), world):
            mine = pending[r0 + rank] if r0 + rank < len(pending) else None
            rec = None
            if mine is not None:
                runs.set_description(f"{mine['strategy']} seed {mine['seed']}")
                epochs.reset(total=mine["epochs"])
                rec = runner(mine, ds, bar=epochs)
                rec["rank"] = rank
            if dist is not None:
                got = [None] * world
                dist.all_gather_object(got, rec)
                recs = [g for g in got if g is not None]
            else:
                recs = [rec]
            if rank == 0:
                append_records(path, recs)
            runs.update(len(recs))
    finally:
        epochs.close()
        runs.close()
    if dist is not None:
        dist.barrier()
        if owned:
            dist.destroy_process_group()
    if rank != 0:
        return []
    keys = {run_key(c) for c in configs}
    return [r for r in read_records(path) if r["key"] in keys]
