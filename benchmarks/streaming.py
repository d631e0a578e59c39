"""Per-step latency of exact streaming inference, measured side by side in one run.

    python benchmarks/streaming.py [--steps 200] [--repeat 5] [--threads 1]

Model: a TCN (Bai et al. 2018) of 64 channels, kernel 3, dilations 1, 2, ..., 512 (10 residual blocks,
20 causal convs, receptive field 4093), float32, eval mode, one new sample per step (T = 1).

Rows, at batch 1 and 64:
  atrous stream (eager)        atrous.nn.stream(tcn): ring buffers, in place
  atrous stream (TorchScript)  the same program under torch.jit.script (stream(..., script=True))
  recompute window             run the offline TCN on the last 4093 samples, keep the last output
  pytorch-tcn 1.2.3 streaming  pytorch_tcn.TCN(..., use_norm=None).inference(x) with the same weights
                               (its streaming mode accepts batch 1 only)
Outputs are checked equal (atol 1e-4) before timing. Time per step is the best of --repeat runs of
--steps steps, alternating the contenders so that load from other processes hits all of them.
Ratios are what count: "x vs pytorch-tcn" = pytorch-tcn time / ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import atrous.nn as ann

CHANNELS, KERNEL, DILATIONS = 64, 3, [2 ** i for i in range(10)]


def build():
    torch.manual_seed(0)
    tcn = ann.TCN(CHANNELS, [CHANNELS] * len(DILATIONS), kernel_size=KERNEL, dilations=DILATIONS).eval()
    return tcn


def build_pytorch_tcn(tcn):
    """pytorch-tcn's TCN with the same weights (no weight norm, no skip connections), or None."""
    try:
        from pytorch_tcn import TCN
    except ImportError:
        return None
    ref = TCN(CHANNELS, [CHANNELS] * len(DILATIONS), kernel_size=KERNEL, dilations=DILATIONS,
              causal=True, use_norm=None, use_skip_connections=False, dropout=0.0).eval()
    with torch.no_grad():
        for ours, theirs in zip(tcn.blocks, ref.network):
            for a, b in ((ours.conv1, theirs.conv1), (ours.conv2, theirs.conv2)):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
    return ref


def per_step(fn, xs, steps):
    t0 = time.perf_counter()
    for i in range(steps):
        fn(xs[i])
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    tcn = build()
    rf = tcn.receptive_field
    eager = ann.stream(tcn)
    scripted = ann.stream(tcn, script=True)
    ptcn = build_pytorch_tcn(tcn)
    print(f"TCN {CHANNELS} ch, kernel {KERNEL}, dilations 1..{DILATIONS[-1]}, receptive field {rf}, "
          f"float32, torch {torch.__version__}, threads {args.threads}")
    print(f"{'batch':>5}  {'contender':<30} {'us/step':>10}  {'x vs recompute':>14}  {'x vs pytorch-tcn':>16}")
    results = {}
    with torch.no_grad():
        for batch in (1, 64):
            steps = args.steps if batch == 1 else max(args.steps // 4, 20)
            xs = torch.randn(steps + rf, batch, CHANNELS, 1)
            # --- correctness on a short prefix: every contender equals the offline model
            n_check = 40
            seq = torch.cat(list(xs[:n_check]), 2)                 # (N, C, n_check)
            want = tcn(seq)
            st_e, st_s = eager.init_state(batch), scripted.init_state(batch)
            got_e = torch.cat([eager.step(xs[i], st_e)[0] for i in range(n_check)], 2)
            got_s = torch.cat([scripted.step(xs[i], st_s)[0] for i in range(n_check)], 2)
            torch.testing.assert_close(got_e, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got_s, want, atol=1e-4, rtol=1e-4)
            contenders = {}
            st_e, st_s = eager.init_state(batch), scripted.init_state(batch)
            contenders["atrous stream (eager)"] = lambda x: eager.step(x, st_e)
            contenders["atrous stream (TorchScript)"] = lambda x: scripted.step(x, st_s)
            window = torch.zeros(batch, CHANNELS, rf)

            def recompute(x, window=window):
                window[:, :, :-1] = window[:, :, 1:].clone()
                window[:, :, -1:] = x
                return tcn(window)[:, :, -1:]
            contenders["recompute window"] = recompute
            if ptcn is not None and batch == 1:
                ptcn.reset_buffers()
                got_p = torch.cat([ptcn.inference(xs[i]) for i in range(n_check)], 2)
                torch.testing.assert_close(got_p, want, atol=1e-4, rtol=1e-4)
                ptcn.reset_buffers()
                contenders["pytorch-tcn 1.2.3 streaming"] = lambda x: ptcn.inference(x)
            best = {k: float("inf") for k in contenders}
            for rep in range(args.repeat):
                for name, fn in contenders.items():
                    if name == "recompute window":          # ~10 ms (batch 1) to seconds (batch 64)
                        if batch > 1 and rep > 0:
                            continue
                        n = 10 if batch == 1 else 2
                    else:
                        n = steps
                    best[name] = min(best[name], per_step(fn, xs, n))
            for name, t in best.items():
                vs_rec = best["recompute window"] / t
                vs_p = f"{best['pytorch-tcn 1.2.3 streaming'] / t:16.1f}" if "pytorch-tcn 1.2.3 streaming" in best \
                    else f"{'n/a (batch 1 only)':>16}"
                print(f"{batch:>5}  {name:<30} {t * 1e6:>10.1f}  {vs_rec:>14.1f}  {vs_p}")
            results[batch] = best
    return results


if __name__ == "__main__":
    main()
