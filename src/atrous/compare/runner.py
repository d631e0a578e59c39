"""Running a study: one run per (strategy or output stride, seed), resumable, optionally split
across ``torch.distributed`` ranks.

* Every run is keyed by a hash of its configuration (:func:`run_key`), which includes the data's
  fingerprint (a hash of the arrays) and ``--data-dir``: a run whose key is already in
  ``results.jsonl`` is skipped unless ``force``, and a resume never mixes datasets.
* ``results.jsonl`` holds one JSON record per run. Records with the same key (two result files
  concatenated, two processes that ran the same run) are read as one, the last kept, with a
  :class:`RecordWarning`.
* The file is only ever replaced atomically (written to a temporary file in the same directory,
  fsync'd, ``os.replace``d), so Ctrl-C or a crash leaves either the old or the new file, never a
  partial record; and every read-modify-write holds an exclusive lock (``fcntl.flock`` on the
  ``--out`` directory), so two ``atrous compare`` processes writing the same ``--out`` keep
  every record.
* Under ``torchrun`` (``WORLD_SIZE > 1``) rank 0 reads ``results.jsonl`` and broadcasts the pending
  runs (or its error), which are dealt round-robin to the ranks (gloo backend, CPU); after each round
  rank 0 gathers the records and appends them; rank 0 writes the report. Only rank 0 touches
  ``--out``. Runs use a fixed torch thread count (``threads``, default 1) and their own seed, so a
  run's numbers do not depend on which process ran it.

>>> cfg = dict(task="mnist1d", strategy="dilated", seed=0, epochs=1)
>>> run_key(cfg) == run_key(dict(reversed(list(cfg.items()))))
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._io import atomic_write
from .._optional import require
from . import output_stride as OS
from . import strategies as S
from .data import Dataset, check_task, load_task
from .train import BAND_WIDTHS

__all__ = ["Study", "STUDIES", "TASK_DEFAULTS", "OS_DEFAULTS", "QUICK", "LIMITS", "RecordWarning",
           "run_key", "read_records", "append_records", "atomic_write", "check_out", "run_study",
           "plan_runs", "run_one", "default_out"]

RECORD_VERSION = 2
STUDIES = ("strategies", "output-stride")

# Per-task defaults of the strategies study: chosen so the default MNIST-1D study fits 5 minutes on 2
# CPU cores. fashion-seg trains to a plateau (--epochs is then the cap).
TASK_DEFAULTS = {
    "mnist1d": dict(epochs=12, width=32, depth=5, batch_size=128, lr=1e-2, n_train=None, n_test=None),
    "fashion-mnist": dict(epochs=4, width=16, depth=5, batch_size=128, lr=1e-2, n_train=5000,
                          n_test=1000),
    "fashion-seg": dict(epochs=40, width=16, depth=6, batch_size=32, lr=1e-2, n_train=1000,
                        n_test=200, patience=5, n_val=100),
}
# The output-stride study (fashion-seg): 4 strides x 3 seeds, budget under 30 minutes on 2 cores with
# torchrun --nproc_per_node=2 (see the README for the measured wall-clock).
OS_DEFAULTS = dict(epochs=40, width=16, batch_size=32, lr=3e-3, weight_decay=1e-4, n_train=2000,
                   n_test=500, patience=5, n_val=200)
# --quick: a smoke run (< 30 s for all six strategies, one seed)
QUICK = dict(epochs=2, width=8, n_train=512, n_test=256, seeds=1, batch_size=64)
QUICK_SEG = dict(n_train=32, n_test=16, width=4, batch_size=16, patience=None, n_val=None)
QUICK_OS = dict(epochs=2, width=2, n_train=32, n_test=16, seeds=1, batch_size=16, patience=None,
                n_val=None)

# Bounds of the integer options, checked before anything is allocated or loaded.
LIMITS = {"seeds": (1, 100), "epochs": (1, 1000), "depth": (1, 64), "width": (1, 1024),
          "threads": (1, os.cpu_count() or 1), "target_rf": (1, 100_000), "batch_size": (1, 100_000),
          "patience": (1, 100), "n_train": (1, 10_000_000), "n_test": (1, 10_000_000),
          "n_val": (0, 10_000_000)}


class RecordWarning(UserWarning):
    """Something in ``results.jsonl`` was fixed up on load (e.g. duplicated records)."""


def check_bound(value, name: str, option: str | None = None) -> int:
    """``value`` as an int within ``LIMITS[name]``, else ``ValueError``/``TypeError`` naming
    ``option`` (default ``name``).

    >>> check_bound(100000000, "seeds", "--seeds")
    Traceback (most recent call last):
    ...
    ValueError: --seeds must be an int in 1..100, got 100000000
    """
    lo, hi = LIMITS[name]
    option = option or name
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{option} must be an int in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{option} must be an int in {lo}..{hi}, got {value!r}")
    return int(value)


@dataclass
class Study:
    """What to run: one run per strategy (or output stride) x seed (seeds ``0 .. seeds-1``).

    ``study`` is ``'strategies'`` (pooling vs stride vs large kernel vs dilation, :mod:`strategies`)
    or ``'output-stride'`` (one backbone converted to each of ``output_strides``,
    :mod:`output_stride`). ``patience`` selects the plateau rule (``epochs`` is then the cap) with
    ``n_val`` training examples held out; ``None`` trains ``epochs`` fixed epochs."""

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
    patience: int | None = None
    n_val: int | None = None              # None: 10% of the training set (with the plateau rule)
    study: str = "strategies"
    output_strides: tuple = OS.OUTPUT_STRIDES
    data_dir: str | None = field(default=None, compare=False)

    @classmethod
    def for_task(cls, task: str = "mnist1d", quick: bool = False, study: str = "strategies",
                 **overrides) -> Study:
        """The defaults of ``task`` and ``study`` (``QUICK`` ones if ``quick``), then ``overrides``
        not None."""
        check_task(task)
        _check_study(study, task)
        if study == "output-stride":
            kw = dict(OS_DEFAULTS)
            if quick:
                kw.update(QUICK_OS)
        else:
            kw = dict(TASK_DEFAULTS[task])
            if quick:
                kw.update(QUICK)
                kw.update(QUICK_SEG if task == "fashion-seg" else {})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(task=task, study=study, **kw)

    def validate(self) -> Study:
        check_task(self.task)
        _check_study(self.study, self.task)
        self.strategies = S.check_strategies(self.strategies)
        self.output_strides = OS.check_output_strides(self.output_strides)
        for name in ("seeds", "epochs", "depth", "width", "batch_size", "threads"):
            check_bound(getattr(self, name), name)
        for name in ("n_train", "n_test", "target_rf", "patience"):
            if getattr(self, name) is not None:
                check_bound(getattr(self, name), name)
        if self.n_val is not None:
            check_bound(self.n_val, "n_val")
        if self.patience is not None and self.n_val is not None and self.n_val < 1:
            raise ValueError(f"the plateau rule (patience {self.patience}) needs n_val >= 1 held-out "
                             f"training examples, got {self.n_val}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0) or (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} "
                                 f"number, got {v!r}")
        return self

    @property
    def names(self) -> tuple:
        """What the study compares: strategy names, or ``os32, os16, ...``."""
        if self.study == "output-stride":
            return tuple(OS.variant_name(s) for s in self.output_strides)
        return self.strategies


def _check_study(study: str, task: str) -> None:
    if study not in STUDIES:
        import difflib
        close = difflib.get_close_matches(str(study), STUDIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"study must be one of {', '.join(map(repr, STUDIES))}; got {study!r}{hint}")
    if study == "output-stride" and task != "fashion-seg":
        raise ValueError(f"the output-stride study is dense 2-D labelling: task must be 'fashion-seg', "
                         f"got {task!r}")


def default_out(study: Study, base: str = "atrous-results") -> str:
    """Each task and study has its own directory by default, so a second study does not overwrite
    the first one's report: ``atrous-results/<task>`` or ``atrous-results/<task>-output-stride``.

    >>> default_out(Study(task="fashion-seg", study="output-stride"))
    'atrous-results/fashion-seg-output-stride'
    """
    return os.path.join(base, study.task + ("-output-stride" if study.study == "output-stride" else ""))


def run_key(config: dict) -> str:
    """Hash (16 hex digits) of a run's configuration, independent of key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _n_val(study: Study, ds: Dataset) -> int:
    if study.patience is None:
        return 0
    n = study.n_val if study.n_val is not None else max(1, len(ds.x_train) // 10)
    if n >= len(ds.x_train):
        raise ValueError(f"n_val {n} leaves no training example (the training set has {len(ds.x_train)})")
    return n


def plan_runs(study: Study, ds: Dataset) -> list[dict]:
    """The run configurations of ``study`` on ``ds`` (target field resolved to the input size)."""
    common = dict(version=RECORD_VERSION, study=study.study, task=study.task, epochs=study.epochs,
                  width=study.width, batch_size=study.batch_size, lr=study.lr,
                  weight_decay=study.weight_decay, n_train=len(ds.x_train), n_test=len(ds.x_test),
                  threads=study.threads, patience=study.patience,
                  n_val=_n_val(study, ds),
                  data_dir=os.path.abspath(study.data_dir) if study.data_dir else None,
                  data_sha256=ds.fingerprint())
    bands = list(BAND_WIDTHS) if ds.dense else []
    out = []
    for seed in range(study.seeds):
        if study.study == "output-stride":
            for s in study.output_strides:
                out.append(dict(common, variant=OS.variant_name(s), output_stride=s, seed=seed,
                                band_widths=bands))
        else:
            target = study.target_rf or max(ds.spatial)
            for strategy in study.strategies:
                out.append(dict(common, strategy=strategy, seed=seed, target_rf=target, depth=study.depth,
                                band_widths=bands))
    return out


def check_plans(configs: list[dict], ds: Dataset) -> None:
    """Every network of the study must be buildable (and, for the output-stride study, exactly
    converted with an equal field) before any training starts."""
    strides = sorted({c["output_stride"] for c in configs if c["study"] == "output-stride"}, reverse=True)
    if strides:
        if not ds.dense or len(ds.spatial) != 2:
            raise ValueError(f"the output-stride study needs dense 2-D labels, task {ds.name!r} has none")
        OS.verify_variants(strides, ds.in_channels, input_size=min(ds.spatial))
    for c in configs:
        if c["study"] == "strategies":
            S.plan(c["strategy"], c["target_rf"], c["depth"], min(ds.spatial))


def name_of(rec_or_cfg: dict) -> str:
    """The compared thing of a record or config: its strategy, or ``os<stride>``."""
    cfg = rec_or_cfg.get("config", rec_or_cfg)
    return cfg.get("variant") or cfg["strategy"]


# ------------------------------------------------------------------------------ results file

def read_records(path) -> list[dict]:
    """The records of a ``results.jsonl`` (``[]`` if missing), one per run key: a key seen on
    several lines is counted once (the last line kept) with a :class:`RecordWarning`. A line that is
    not a JSON object with a ``key`` raises ``ValueError`` naming the file and line."""
    if not os.path.exists(path):
        return []
    by_key, dups = {}, 0
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
            if rec["key"] in by_key:
                dups += 1
                del by_key[rec["key"]]           # keep the last one, at its position
            by_key[rec["key"]] = rec
    if dups:
        warnings.warn(f"{path}: {dups} duplicate record(s) of runs already in the file (same run key) "
                      "counted once, the last one kept", RecordWarning, stacklevel=2)
    return list(by_key.values())


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock (``fcntl.flock``, released when the process dies) on the directory
    of ``path``: ``path`` itself is replaced, not rewritten in place, so it cannot carry the lock,
    and locking the directory leaves no lock file behind."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no inter-process lock available
        warnings.warn("no fcntl on this platform: concurrent writers of the same --out may lose records",
                      RecordWarning, stacklevel=3)
        yield
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_records(path, records: list[dict], replace_keys: bool = True) -> None:
    """Append ``records`` to ``results.jsonl`` atomically, under the file's lock (old records with
    the same key are dropped when ``replace_keys``)."""
    if not records:
        return
    new = {r["key"] for r in records}
    with locked(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordWarning)     # the rewrite below fixes duplicates
            old = [r for r in read_records(path) if not (replace_keys and r["key"] in new)]
        with atomic_write(path) as f:
            for r in old + list(records):
                f.write(json.dumps(r, sort_keys=True) + "\n")


def check_out(out: str) -> None:
    """Fail fast, before any data is loaded or trained, when ``out`` cannot hold the results: it is
    a file, a path through a file, or not writable. Creates the directory."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out must be a directory, got the file {out!r}")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test")
        os.close(fd)
        os.unlink(probe)
        path = os.path.join(out, "results.jsonl")
        if os.path.exists(path) and not os.access(path, os.R_OK):
            raise PermissionError(13, "results.jsonl is not readable")
    except OSError as e:
        raise ValueError(f"--out {out!r} cannot be written: {e.strerror or e}") from None


# ------------------------------------------------------------------------------ one run

def _plain(v):
    """JSON-friendly copy of a number, per-axis tuple or dict of them."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    return v.item() if hasattr(v, "item") else v


def _measure_strategy(model, ds: Dataset) -> dict:
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


def _measure_variant(model, ds: Dataset) -> dict:
    """Field (of the backbone: what conversion keeps), cost, output stride and feature-map size."""
    import atrous
    from ..nn import output_stride_of
    torch = require("torch")
    shape = (1, ds.in_channels, *ds.spatial)
    rf = atrous.receptive_field(model.backbone, shape)
    c = atrous.cost(model, shape)
    with torch.no_grad():
        feat = model.backbone(torch.zeros(shape))
    n_params = sum(p.numel() for p in model.parameters())
    if int(c.params) != n_params:
        raise RuntimeError(f"atrous.cost counts {c.params} parameters, the model has {n_params}")
    return {"field": [int(v) for v in rf.size], "jump": [int(v) for v in rf.jump], "params": n_params,
            "macs": int(c.macs), "resolution": [int(v) for v in feat.shape[2:]],
            "output_stride": [int(v) for v in output_stride_of(model.backbone, min(ds.spatial))]}


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
    from .train import chance_score, train_run
    torch.manual_seed(cfg["seed"])
    rec = {"key": run_key(cfg), "config": cfg, "data_source": ds.source}
    if cfg.get("study") == "output-stride":
        model = OS.build_variant(cfg["output_stride"], ds.in_channels, ds.num_classes, cfg["width"],
                                 input_size=min(ds.spatial))
        rec.update(_measure_variant(model, ds))
    else:
        model = S.build(cfg["strategy"], ds.in_channels, ds.num_classes, cfg["target_rf"],
                        dims=len(ds.spatial), depth=cfg["depth"], width=cfg["width"], dense=ds.dense,
                        in_size=min(ds.spatial))
        rec["plan"] = model.plan.as_dict()
        rec.update(_measure_strategy(model, ds))
    t0 = time.perf_counter()
    rec.update(train_run(model, ds, epochs=cfg["epochs"], seed=cfg["seed"],
                         batch_size=cfg["batch_size"], lr=cfg["lr"],
                         weight_decay=cfg["weight_decay"], bar=bar, patience=cfg.get("patience"),
                         n_val=cfg.get("n_val", 0), band_widths=cfg.get("band_widths", ())))
    rec["train_time"] = time.perf_counter() - t0
    rec["metric_name"] = "mIoU" if ds.dense else "accuracy"
    n_fit = len(ds.y_train) - cfg.get("n_val", 0)
    rec["chance"] = chance_score(ds.y_train[:n_fit], ds.y_test, ds.num_classes, ds.dense)
    return rec


# ------------------------------------------------------------------------------ progress

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


def run_line(rec: dict, i: int, total: int) -> str:
    """One plain line per finished run (for logs: no control characters).

    >>> run_line({"config": {"strategy": "dilated", "seed": 1}, "status": "ok", "metric": .9512,
    ...           "metric_name": "accuracy", "epochs_run": 12, "plateau": False, "train_time": 30.2}, 2, 18)
    '[2/18] dilated seed 1: accuracy 95.12%, 12 epochs, 30 s'
    """
    head = f"[{i}/{total}] {name_of(rec)} seed {rec['config']['seed']}: "
    if rec.get("status") == "diverged":
        return head + "diverged: " + rec.get("error", "")
    stop = ""
    if rec["config"].get("patience") is not None:
        stop = " (plateau)" if rec.get("plateau") else " (cap reached, no plateau)"
    return (head + f"{rec.get('metric_name', 'metric')} {100 * rec['metric']:.2f}%, "
            f"{rec.get('epochs_run', len(rec.get('curve', [])))} epochs{stop}, {rec.get('train_time', 0):.0f} s")


class _Progress:
    """tqdm bars on a terminal; otherwise (a log, ``--quiet`` off) one line per finished run on
    stderr; nothing when quiet or on ranks other than 0."""

    def __init__(self, total: int, done_before: int, epochs: int, quiet: bool, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.i = total, 0
        self.tty = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lines = not quiet and not self.tty
        if self.tty and total:
            tqdm = require("tqdm").tqdm
            self.runs = tqdm(total=total, desc=f"runs ({done_before} done before)", unit="run",
                             position=0, file=self.stream)
            self.epochs = tqdm(total=epochs, desc="epochs", unit="ep", position=1, leave=False,
                               file=self.stream)
        else:
            self.runs = self.epochs = _NoBar()

    def start(self, cfg):
        self.runs.set_description(f"{name_of(cfg)} seed {cfg['seed']}")
        self.epochs.reset(total=cfg["epochs"])

    def finished(self, recs):
        for r in recs:
            self.i += 1
            if self.lines:
                print(run_line(r, self.i, self.total), file=self.stream, flush=True)
        self.runs.update(len(recs))

    def close(self):
        self.epochs.close()
        self.runs.close()


# ------------------------------------------------------------------------------ the study

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


def _work_store(rank: int, world: int, dist):
    """A ``torch.distributed.TCPStore`` shared by the ranks (rank 0 hosts it on a free port and
    broadcasts the port): an atomic counter hands out the runs, and the other ranks leave their
    records in it for rank 0."""
    import datetime
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    timeout = datetime.timedelta(days=7)           # a run may take long; a dead rank ends torchrun anyway
    store, port = None, [None]
    if rank == 0:
        store = dist.TCPStore(host, 0, world, True, timeout=timeout, wait_for_workers=False)
        port = [store.port]
    dist.broadcast_object_list(port, src=0)
    if rank != 0:
        store = dist.TCPStore(host, port[0], world, False, timeout=timeout)
    return store


def _run_shared(pending, ds, runner, rank, world, dist, path, prog):
    """Under torchrun: each rank claims the next pending run from a shared counter as soon as it is
    free (runs of very different cost do not wait for each other); rank 0 appends every record to
    ``path`` as it arrives (its own at once, the others' after each of its runs and at the end)."""
    store = _work_store(rank, world, dist)
    written = set()                      # rank 0: indices whose record is in results.jsonl

    def write(i, rec):
        append_records(path, [rec])
        prog.finished([rec])
        written.add(i)

    def collect(upto, block):
        for j in range(upto):
            if j not in written and (block or store.check([f"rec/{j}"])):
                write(j, json.loads(store.get(f"rec/{j}")))

    while True:
        i = store.add("next", 1) - 1
        if i >= len(pending):
            break
        cfg = pending[i]
        prog.start(cfg)
        rec = runner(cfg, ds, bar=prog.epochs)
        rec["rank"] = rank
        if rank == 0:
            write(i, rec)
            collect(min(store.add("next", 0), len(pending)), block=False)
        else:
            store.set(f"rec/{i}", json.dumps(rec, sort_keys=True))
    dist.barrier()                       # every run is finished and its record stored
    if rank == 0:
        collect(len(pending), block=True)


def run_study(study: Study, out: str, *, force: bool = False, quiet: bool = False,
              ds: Dataset | None = None, runner=None, stream=None) -> list[dict]:
    """Run the pending runs of ``study`` into ``out/results.jsonl``; return the study's records
    (on rank 0; other ranks return ``[]``). ``runner`` is the function training one run (default
    :func:`run_one`). ``--out`` is checked (writable) before any data is loaded."""
    study.validate()
    rank, world, dist, owned = _dist()
    try:
        return _run_study(study, out, force, quiet, ds, runner, stream, rank, world, dist)
    finally:
        if dist is not None and owned:
            dist.destroy_process_group()


def _run_study(study, out, force, quiet, ds, runner, stream, rank, world, dist):
    path = os.path.join(out, "results.jsonl")
    error = None
    if rank == 0:  # only rank 0 reads/writes --out: other machines need not share the directory
        try:
            check_out(out)
        except ValueError as e:
            error = str(e)
    if dist is not None:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ValueError(error)
    if ds is None:
        ds = load_task(study.task, study.data_dir, study.n_train, study.n_test)
    configs = plan_runs(study, ds)
    pending = None
    if rank == 0:
        try:
            check_plans(configs, ds)      # every network must be buildable before any training starts
            done = {r["key"] for r in read_records(path)} if not force else set()
            pending = [c for c in configs if run_key(c) not in done]
            # longest first (a finer output stride costs more), so no long run is left for the end
            pending.sort(key=lambda c: c.get("output_stride") or 0)
        except (ValueError, RuntimeError) as e:
            error = str(e)
    if dist is not None:
        box = [pending, error]
        dist.broadcast_object_list(box, src=0)
        pending, error = box
    if error:
        raise ValueError(error)
    runner = runner or run_one
    prog = _Progress(len(pending), len(configs) - len(pending), study.epochs, quiet or rank != 0, stream)
    if rank == 0 and not pending and not quiet:
        print(f"nothing to run: all {len(configs)} runs are in {path} (--force re-runs them)",
              file=prog.stream)
    try:
        if dist is None:
            for cfg in pending:
                prog.start(cfg)
                rec = runner(cfg, ds, bar=prog.epochs)
                rec["rank"] = 0
                append_records(path, [rec])
                prog.finished([rec])
        else:
            _run_shared(pending, ds, runner, rank, world, dist, path, prog)
    finally:
        prog.close()
    if dist is not None:
        dist.barrier()
    if rank != 0:
        return []
    keys = {run_key(c) for c in configs}
    return [r for r in read_records(path) if r["key"] in keys]
