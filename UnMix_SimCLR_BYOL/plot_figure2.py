"""Figure 2 panels: training loss and test accuracy of a baseline run against an Un-Mix run.

    python UnMix_SimCLR_BYOL/plot_figure2.py --baseline results/byol_cifar10_baseline \\
        --unmix results/byol_cifar10_unmix --out figure2_byol_c10.png

Each run is a results folder or its ``log.csv``. Accuracy columns are only filled on evaluation epochs, so
every curve is drawn through its own non-empty points. ``main_unmix.py`` uses the same function for the
per-run ``curves.png``.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from common.cli import CLIError, HelpFormatter, run_main  # noqa: E402
from common.logs import read_csv_log, runs_figure, save_figure  # noqa: E402

NAMES = {"train_loss": "training loss", "linear_acc@1": "linear-probe top-1 (%)", "knn5_acc@1": "5-NN top-1 (%)",
         "knn200w_acc@1": "200-NN weighted top-1 (%)"}


def panel_columns(runs):
    """train_loss, then every top-1 column (linear, kNN) that some run has filled."""
    cols = ["train_loss"] + [c for _, df in runs for c in df.columns if c.endswith("_acc@1")]
    cols = list(dict.fromkeys(cols))  # keep order, drop repeats
    return [c for c in cols if any(c in df and df[c].notna().any() for _, df in runs)]


def read_log(path):
    """``log.csv`` of a run (or of the run folder ``path``)."""
    df = read_csv_log(path, what="a run folder of main_unmix.py or its log.csv")
    csv = Path(path) / "log.csv" if Path(path).is_dir() else path
    if "epoch" not in df.columns or "train_loss" not in df.columns:
        raise CLIError(f"{csv} has no epoch/train_loss columns: not a log of main_unmix.py")
    return df


def figure(runs, title=None):
    """The figure of :func:`plot_runs` (not saved)."""
    return runs_figure(runs, title=title, columns=panel_columns(runs), names=NAMES)


def plot_runs(runs, png_path, title=None):
    """``runs`` = [(label, DataFrame)]; one panel per column of panel_columns (a 2x2 grid), saved atomically."""
    save_figure(figure(runs, title), png_path)


def main(argv=None):
    p = argparse.ArgumentParser(description="Figure 2: baseline vs Un-Mix curves", formatter_class=HelpFormatter)
    p.add_argument("--baseline", required=True, help="baseline run folder or its log.csv")
    p.add_argument("--unmix", required=True, help="Un-Mix run folder or its log.csv")
    p.add_argument("--labels", nargs=2, default=["baseline", "+ Un-Mix"], metavar=("BASE", "UNMIX"))
    p.add_argument("--title", default=None)
    p.add_argument("--out", default="figure2.png", help="PNG to write")
    args = p.parse_args(argv)
    runs = [(args.labels[0], read_log(args.baseline)), (args.labels[1], read_log(args.unmix))]
    plot_runs(runs, args.out, args.title)
    for label, df in runs:
        last = {c: df[c].dropna().iloc[-1] for c in panel_columns([(label, df)])}
        print(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(f"=> wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
