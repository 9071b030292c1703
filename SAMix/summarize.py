#!/usr/bin/env python
"""Reports a main_samix.py run's accuracy in two ways from its log.csv.

    python SAMix/summarize.py work_dirs/imagenet_resnet18_samix/log.csv --last 5

- **Deployment model** (what you would ship): the EMA network k with its one-hot head (``acc1_one_k``) at the
  last epoch; for the baselines, the only head (``acc1_one_q``).
- **OpenMixup's protocol** (how OpenMixup's tables are made): for each head the median top-1 over the last N
  epochs (N = 5 for 100-epoch and 10 for 300-epoch ImageNet runs), then the maximum over the four heads;
  OpenMixup's summary tool also tries N-1 and N+1 and keeps the best, which ``--search-window`` reproduces.
  It picks the best of several numbers after the fact, so it reads higher than the deployment model.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from common.cli import CLIError, HelpFormatter, run_main  # noqa: E402


def openmixup_median(df, last, search_window=False):
    """``(value, head, N)``: max over the heads of the median top-1 of the last ``N`` epochs."""
    heads = [c for c in df.columns if c.startswith("acc1_")]
    windows = [n for n in ((last - 1, last, last + 1) if search_window else (last,)) if 1 <= n <= len(df)]
    if not heads or not windows:
        raise CLIError("the log has no acc1_* columns or fewer epochs than --last")
    return max((float(df[h].iloc[-n:].median()), h[len("acc1_"):], n) for h in heads for n in windows)


def deployment(df):
    """``(top-1, top-5, head)`` of the deployment model at the last epoch."""
    head = "one_k" if "acc1_one_k" in df else "one_q"
    return float(df[f"acc1_{head}"].iloc[-1]), float(df[f"acc5_{head}"].iloc[-1]), head


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("log", help="log.csv of a main_samix.py run")
    p.add_argument("--last", type=int, default=5, help="N, the epochs the median is taken over")
    p.add_argument("--search-window", action="store_true",
                   help="as OpenMixup's tool: also try N-1 and N+1 epochs and keep the best")
    args = p.parse_args(argv)
    if not Path(args.log).is_file():
        raise CLIError(f"{args.log} does not exist")
    if args.last < 1:
        raise CLIError("--last must be at least 1")
    try:
        df = pd.read_csv(args.log)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {args.log}: {e}") from None
    if "acc1_one_q" not in df:
        raise CLIError(f"{args.log} is not a log.csv of main_samix.py (no acc1_one_q column)")
    top1, top5, head = deployment(df)
    value, best_head, n = openmixup_median(df, args.last, args.search_window)
    print(f"deployment model ({head}, epoch {int(df['epoch'].iloc[-1])}): top-1 {top1:.2f}  top-5 {top5:.2f}")
    print(f"OpenMixup's protocol (max over heads of the median of the last {n} epochs): {value:.2f} ({best_head})")


if __name__ == "__main__":
    run_main(main)
