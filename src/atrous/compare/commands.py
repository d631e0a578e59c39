"""``atrous compare``: train the six strategies at equal receptive field, or one backbone at several
output strides, and report.

Heavy imports (torch, matplotlib, tqdm, mnist1d) happen inside the handler.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings

from .._errors import CLIError

EXAMPLES = """\
examples:
  atrous compare                                   # MNIST-1D, all six strategies, 3 seeds (~2 min)
  atrous compare --quick --out /tmp/smoke          # < 30 s smoke run (2 epochs, tiny data)
  atrous compare --strategies plain,dilated,gridded --seeds 5 --epochs 20
  atrous compare --target-rf 21 --out results-rf21 # a smaller common field
  atrous compare --task fashion-mnist              # 28x28 classification (IDX files)
  atrous compare --task fashion-seg                # 64x64 per-pixel labels, mIoU, trained to a plateau
  torchrun --nproc_per_node=2 -m atrous compare    # split the runs over 2 processes

  # the output-stride study (DeepLabv3's "going deeper with atrous convolution", at CPU scale):
  # one ResNet-style backbone converted to output strides 32, 16, 8, 4 x 3 seeds on fashion-seg
  # (2000/500 canvases), each trained to a plateau. Budget: 12 runs, ~30 min of CPU time, i.e.
  # ~15 min on 2 free cores with 2 processes (measured: 41 min on 2 cores shared at load 6):
  torchrun --nproc_per_node=2 -m atrous compare --study output-stride
  atrous compare --study output-stride --output-strides 32,8 --seeds 2

Fashion-MNIST comes from 'apt-get install dataset-fashion-mnist' (/usr/share/datasets/fashion-mnist)
or --data-dir holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte (gz or not). Results go to atrous-results/<task> (the output-stride study:
atrous-results/<task>-output-stride) unless --out is given. Re-running with the same --out resumes:
finished runs are skipped (keyed by a hash of their configuration and of the data); --force re-runs
them.

The plateau rule (--patience K): the last n_val training examples are held out; the learning rate is
divided by 5 after ceil(K/2) epochs without a validation gain, training stops after K epochs without
one or at --epochs (the cap, reported as "no plateau"), and the best validation epoch's weights are
tested.
"""


def _positive(value, name):
    """``None`` or an int parsed from the command line (else ValueError naming the option)."""
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
                    "coverage, parameters, MACs, resolution, speed and test accuracy/mIoU; or "
                    "(--study output-stride) one residual backbone converted to several output "
                    "strides by atrous.nn.convert_to_dilated, scored by mIoU and accuracy near "
                    "boundaries. Writes results.jsonl, report.md and PNG plots to --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="strategies",
                   help="strategies (default: the six ways to grow the field) or output-stride")
    p.add_argument("--task", default=None,
                   help="mnist1d (default), fashion-mnist or fashion-seg (the output-stride study: "
                        "fashion-seg)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated subset of plain,pool,stride,large,dilated,gridded (default: all)")
    p.add_argument("--output-strides", default=None,
                   help="output-stride study: comma-separated subset of 32,16,8,4,2,1 (default 32,16,8,4)")
    p.add_argument("--seeds", default=None,
                   help="number of seeds per strategy, 0..N-1, at most 100 (default 3; 1 with --quick)")
    p.add_argument("--epochs", default=None,
                   help="training epochs, or the cap with the plateau rule (default: per task, 12 for "
                        "mnist1d, 40 for fashion-seg and the output-stride study)")
    p.add_argument("--patience", default=None,
                   help="plateau rule: stop after this many epochs without a validation gain (default "
                        "5 for fashion-seg and the output-stride study); 0: fixed --epochs with a "
                        "one-cycle schedule (the default for mnist1d and fashion-mnist)")
    p.add_argument("--target-rf", default=None,
                   help="receptive field every strategy must reach, per axis (default: the whole input)")
    p.add_argument("--depth", default=None, help="conv layers, at most 64 (default 5; 6 for fashion-seg)")
    p.add_argument("--width", default=None,
                   help="channels per layer (default 32 for mnist1d, 16 for the 2-D tasks; the "
                        "output-stride backbone's stages have width x 1, 2, 4, 8)")
    p.add_argument("--threads", default=None,
                   help="torch threads per run, at most the cores (default 1: results independent of "
                        "process layout)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST-1D cache / Fashion-MNIST IDX directory (default: ~/.cache/atrous, "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=None,
                   help="output directory (default ./atrous-results/<task>, or "
                        "./atrous-results/<task>-output-stride)")
    p.add_argument("--quick", action="store_true", help="a < 30 s smoke run: 2 epochs, tiny data and width, 1 seed")
    p.add_argument("--force", action="store_true", help="re-run runs already in results.jsonl")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run)


def _command(args) -> str:
    """The command line that reproduces this study (options that were given)."""
    parts = ["atrous", "compare"]
    for opt in ("study", "task", "strategies", "output_strides", "seeds", "epochs", "patience",
                "target_rf", "depth", "width", "threads", "data_dir", "out"):
        v = getattr(args, opt)
        if v is not None and not (opt == "study" and v == "strategies"):
            parts += ["--" + opt.replace("_", "-"), shlex.quote(str(v))]
    parts += [f"--{f}" for f in ("quick", "force") if getattr(args, f)]
    return " ".join(parts)


def run(args) -> int:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = _run(args, t0)
        finally:
            for w in caught:
                if issubclass(w.category, UserWarning):
                    print(f"atrous compare: warning: {w.message}", file=sys.stderr)
    return out


def _run(args, t0) -> int:
    from . import strategies as S
    from .output_stride import check_output_strides
    from .data import check_task
    from .runner import LIMITS, Study, check_bound, default_out, run_study
    from .report import table_text, write_report, summarize

    try:
        for opt in _INT_OPTIONS:
            v = _positive(getattr(args, opt), "--" + opt.replace("_", "-"))
            if v is not None and opt in LIMITS:
                check_bound(v, opt, "--" + opt.replace("_", "-"))
            setattr(args, opt, v)
        patience = args.patience
        if patience is not None:
            try:
                patience = int(patience)
            except ValueError:
                raise ValueError(f"--patience must be an int >= 0 (0: fixed --epochs), "
                                 f"got {args.patience!r}") from None
            if patience < 0:
                raise ValueError(f"--patience must be an int >= 0 (0: fixed --epochs), got {args.patience!r}")
            check_bound(max(patience, 1), "patience", "--patience")
        task = args.task or ("fashion-seg" if args.study == "output-stride" else "mnist1d")
        check_task(task)
        names = S.check_strategies(args.strategies) if args.strategies is not None else S.STRATEGIES
        if args.output_strides is not None and args.study != "output-stride":
            raise ValueError("--output-strides belongs to --study output-stride")
        strides = check_output_strides(args.output_strides) if args.output_strides is not None else None
        study = Study.for_task(task, quick=args.quick, study=args.study, strategies=names, seeds=args.seeds,
                               epochs=args.epochs, target_rf=args.target_rf, depth=args.depth,
                               width=args.width, threads=args.threads,
                               patience=patience or None, output_strides=strides)
        if patience == 0:          # fixed epochs, overriding a task's plateau default
            study.patience = None
        study.validate()
        study.data_dir = args.data_dir
        out = args.out or default_out(study)
        records = run_study(study, out, force=args.force, quiet=args.quiet)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise CLIError(str(e)) from None
    if not records:  # a non-zero rank under torchrun
        return 0
    write_report(records, out, command=_command(args), figures=not args.no_plots)
    print(table_text(summarize(records)))
    print(f"wrote {os.path.join(out, 'report.md')} ({len(records)} runs, "
          f"{time.perf_counter() - t0:.0f} s)")
    return 0
