"""``atrous compare``: train the six strategies at equal receptive field and report.

Heavy imports (torch, matplotlib, tqdm, mnist1d) happen inside the handler.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time

EXAMPLES = """\
examples:
  atrous compare                                   # MNIST-1D, all six strategies, 3 seeds (~2 min)
  atrous compare --quick --out /tmp/smoke          # < 30 s smoke run (2 epochs, tiny data)
  atrous compare --strategies plain,dilated,gridded --seeds 5 --epochs 20
  atrous compare --target-rf 21 --out results-rf21 # a smaller common field
  atrous compare --task fashion-mnist              # 28x28 classification (IDX files)
  atrous compare --task fashion-seg --data-dir ~/fashion   # 64x64 per-pixel labels, mIoU
  torchrun --nproc_per_node=2 -m atrous compare    # split the runs over 2 processes

Fashion-MNIST comes from 'apt-get install dataset-fashion-mnist' (/usr/share/datasets/fashion-mnist)
or --data-dir holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte (gz or not). Re-running with the same --out resumes: finished runs are
skipped (keyed by a hash of their configuration); --force re-runs them.
"""


def _positive(value, name):
    """``None`` or an int >= 1 parsed from the command line (else ValueError naming the option)."""
    if value is None:
        return None
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return v


_INT_OPTIONS = ("seeds", "epochs", "target_rf", "depth", "width", "threads")


def register(sub) -> None:
    """Add the ``compare`` subcommand to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        "compare", help="pooling vs stride vs large kernel vs dilation at equal field, trained",
        description="Train pooling, strided, large-kernel, dilated and gridded networks that reach "
                    "the same receptive field (plus a small-field d=1 baseline) and measure field, "
                    "coverage, parameters, MACs, resolution, speed and test accuracy/mIoU. Writes "
                    "results.jsonl, report.md and PNG plots to --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mnist1d",
                   help="mnist1d (default), fashion-mnist or fashion-seg")
    p.add_argument("--strategies", default=None,
                   help="comma-separated subset of plain,pool,stride,large,dilated,gridded (default: all)")
    p.add_argument("--seeds", default=None,
                   help="number of seeds per strategy, 0..N-1 (default 3; 1 with --quick)")
    p.add_argument("--epochs", default=None,
                   help="training epochs (default: per task, 12 for mnist1d)")
    p.add_argument("--target-rf", default=None,
                   help="receptive field every strategy must reach, per axis (default: the whole input)")
    p.add_argument("--depth", default=None, help="conv layers (default 5; 6 for fashion-seg)")
    p.add_argument("--width", default=None, help="channels per layer (default 32 for mnist1d, 16 for the 2-D tasks)")
    p.add_argument("--threads", default=None,
                   help="torch threads per run (default 1: results independent of process layout)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST-1D cache / Fashion-MNIST IDX directory (default: ~/.cache/atrous, "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default="atrous-results", help="output directory (default ./atrous-results)")
    p.add_argument("--quick", action="store_true", help="a < 30 s smoke run: 2 epochs, tiny data and width, 1 seed")
    p.add_argument("--force", action="store_true", help="re-run runs already in results.jsonl")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run)


def _command(args) -> str:
    """The command line that reproduces this study (options that were given)."""
    parts = ["atrous", "compare"]
    for opt in ("task", "strategies", "seeds", "epochs", "target_rf", "depth", "width", "threads",
                "data_dir", "out"):
        v = getattr(args, opt)
        if v is not None and not (opt == "task" and v == "mnist1d"):
            parts += ["--" + opt.replace("_", "-"), shlex.quote(str(v))]
    parts += [f"--{f}" for f in ("quick", "force") if getattr(args, f)]
    return " ".join(parts)


def run(args) -> int:
    from ..cli import CLIError
    from . import strategies as S
    from .data import check_task
    from .runner import Study, run_study
    from .report import table_text, write_report

    t0 = time.perf_counter()
    try:
        for opt in _INT_OPTIONS:
            setattr(args, opt, _positive(getattr(args, opt), "--" + opt.replace("_", "-")))
        check_task(args.task)
        names = S.check_strategies(args.strategies) if args.strategies is not None else S.STRATEGIES
        study = Study.for_task(args.task, quick=args.quick, strategies=names, seeds=args.seeds,
                               epochs=args.epochs, target_rf=args.target_rf, depth=args.depth,
                               width=args.width, threads=args.threads).validate()
        study.data_dir = args.data_dir
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out must be a directory, got the file {args.out!r}")
        records = run_study(study, args.out, force=args.force, quiet=args.quiet)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise CLIError(str(e)) from None
    if not records:  # a non-zero rank under torchrun
        return 0
    write_report(records, args.out, command=_command(args), figures=not args.no_plots)
    from .report import summarize
    print(table_text(summarize(records)))
    print(f"wrote {os.path.join(args.out, 'report.md')} ({len(records)} runs, "
          f"{time.perf_counter() - t0:.0f} s)")
    return 0
