"""Figure-2-style curves: training loss and accuracy against epochs, baseline vs Un-Mix, for several runs.

    python tools/plot_curves.py --run "MoCo CIFAR-10:MoCo=runs/moco_c10/log.csv" \
        --run "MoCo CIFAR-10:+Un-Mix=runs/unmix_c10/log.csv" \
        --run "SwAV CIFAR-10:SwAV=exp/swav/stats0.pkl" --out figure2.png

``--run [PANEL:]LABEL=PATH`` (or just ``PATH``). Runs sharing a PANEL are drawn in one column: loss on top,
accuracy below. PATH is
* a ``log.csv`` as written by the MoCo / SimCLR / BYOL scripts (``epoch,train_loss,test_acc@1,...``; the
  first column containing "loss" and the first containing "acc" are used, the validation accuracy
  ``val_acc1`` of ``main_lincls_unmix.py`` before its ``train_acc1``),
* a SwAV ``stats*.csv`` or ``stats*.pkl`` (pretraining ``epoch,loss``; linear eval ``epoch,loss,prec1,...,
  prec1_val``, whose ``prec1_val`` is the accuracy; its 0-based epochs are shifted to count finished epochs
  like the CSV logs). A pickle is read without running code from it: only the pandas/NumPy globals of a
  DataFrame are allowed, anything else is refused,
* or a run folder holding one of those (``log.csv`` first, then ``stats0.csv``, then ``stats0.pkl``).
Accuracies stored as fractions (all values <= 1, as htdt's ``acc``) are shown in percent; the accuracy axis
says which it is, kNN top-1 (the MoCo demo's monitor) or linear-probe top-1, and a panel mixing both marks
each run's curve. Labels containing
"mix" are drawn solid and the others dashed, so baseline vs Un-Mix reads as in the paper's Figure 2.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from common.cli import CLIError, HelpFormatter, run_main  # noqa: E402
from common.logs import save_figure  # noqa: E402
from common.safepickle import read_pandas_pickle  # noqa: E402
from tools import check_output  # noqa: E402

ACC_PREFERENCE = ("test_acc@1", "linear_acc@1", "prec1_val", "val_acc1", "knn_acc", "linear_acc", "test_acc",
                  "acc")
# what each accuracy column measures: the kNN monitor (MoCo CIFAR demo) or a linear probe / classifier on
# frozen features (SimCLR/BYOL's and htdt's `acc`, SwAV eval_linear's prec1_val, MoCo lincls' val_acc1)
ACC_KIND = {"test_acc@1": "kNN", "knn_acc": "kNN", "linear_acc@1": "linear probe", "linear_acc": "linear probe",
            "prec1_val": "linear probe", "val_acc1": "linear probe", "acc": "linear probe"}


def parse_run(spec):
    """``[PANEL:]LABEL=PATH`` -> ``(panel, label, path)``."""
    if "=" in spec:
        head, path = spec.rsplit("=", 1)
        panel, _, label = head.rpartition(":")
    else:
        path = spec
        p = Path(spec)
        panel, label = "", (p.parent.name if p.is_file() else p.name) or spec
    return panel, label, Path(path)


def _numeric(df, col):
    return pd.to_numeric(df[col], errors="coerce")


def load_run(path):
    """A DataFrame with ``epoch``, ``loss`` and ``acc`` (NaN when the run has no accuracy)."""
    path = Path(path)
    if path.is_dir():
        cands = ([path / "log.csv", path / "stats0.csv", path / "stats0.pkl"] + sorted(path.glob("stats*.csv"))
                 + sorted(path.glob("stats*.pkl")))
        found = [c for c in cands if c.is_file()]
        if not found:
            raise CLIError(f"{path} holds no log.csv, stats*.csv or stats*.pkl")
        path = found[0]
    if not path.is_file():
        raise CLIError(f"{path} does not exist")
    if path.suffix == ".pkl":
        df = read_pandas_pickle(path, what="SwAV stats file")  # one CLIError for a refused/broken pickle
    else:
        df = None
    try:
        if df is None:
            df = pd.read_csv(path)
        if path.name.startswith("stats") and "epoch" in df.columns:
            # SwAV's PD_Stats count epochs from 0; the CSV logs count finished epochs (from 1)
            df = df.assign(epoch=pd.to_numeric(df["epoch"], errors="coerce") + 1)
    except Exception as e:  # pandas raises many types for foreign/truncated files
        raise CLIError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
            from None
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise CLIError(f"{path} holds no table of epochs")
    cols = list(df.columns)
    if "epoch" not in cols:
        raise CLIError(f"{path} has no 'epoch' column (columns: {', '.join(map(str, cols))})")
    loss_cols = [c for c in cols if "loss" in str(c) and not str(c).endswith("_val")]
    acc_cols = [c for c in ACC_PREFERENCE if c in cols] + [c for c in cols if "acc" in str(c)]
    if not loss_cols and not acc_cols:
        raise CLIError(f"{path} has neither a loss nor an accuracy column (columns: {', '.join(map(str, cols))})")
    out = pd.DataFrame({"epoch": _numeric(df, "epoch")})
    out["loss"] = _numeric(df, loss_cols[0]) if loss_cols else float("nan")
    out["acc"] = _numeric(df, acc_cols[0]) if acc_cols else float("nan")
    acc = out["acc"].dropna()
    if len(acc) and acc.max() <= 1.0:
        out["acc"] = out["acc"] * 100.0
    out = out.dropna(subset=["epoch"]).sort_values("epoch")
    out.attrs["acc_kind"] = ACC_KIND.get(acc_cols[0], "test") if acc_cols else None
    return out


def figure(runs, title=None):
    """Draws ``runs`` (list of ``(panel, label, DataFrame)``) and returns the matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    panels = list(dict.fromkeys(p for p, _, _ in runs))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.0), squeeze=False)
    for col, panel in enumerate(panels):
        ax_loss, ax_acc = axes[0][col], axes[1][col]
        members = [r for r in runs if r[0] == panel]
        kinds = list(dict.fromkeys(df.attrs.get("acc_kind") for _, _, df in members
                                   if df["acc"].notna().any()))
        for i, (p, label, df) in enumerate(members):
            style = dict(color=f"C{i}", linestyle="-" if "mix" in label.lower() else "--", label=label)
            if df["loss"].notna().any():
                d = df.dropna(subset=["loss"])
                ax_loss.plot(d["epoch"], d["loss"], marker="o" if len(d) < 30 else None, **style)
            if df["acc"].notna().any():
                d = df.dropna(subset=["acc"])
                if len(kinds) > 1:  # kNN and linear-probe runs in one panel: say which is which
                    style = dict(style, label=f"{label} ({df.attrs.get('acc_kind')})",
                                 marker="s" if df.attrs.get("acc_kind") == "kNN" else "o")
                ax_acc.plot(d["epoch"], d["acc"], **{"marker": "o" if len(d) < 30 else None, **style})
        ax_loss.set_title(panel or "")
        ax_loss.set_ylabel("training loss")
        ax_acc.set_ylabel(" / ".join(f"{k.replace(' ', '-')} top-1 (%)" for k in kinds) if kinds
                          else "top-1 accuracy (%)")
        ax_loss.set_xlabel("epoch")
        ax_acc.set_xlabel("epoch")
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not in these logs", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description="Loss and accuracy curves of several runs (paper Figure 2 style)",
                                formatter_class=HelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="[PANEL:]LABEL=PATH",
                   help="a run's log.csv, stats*.pkl or folder; repeat for every run")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.add_argument("--title", default=None)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    check_output(args.out, args.force)
    runs = []
    for spec in args.run:
        panel, label, path = parse_run(spec)
        runs.append((panel, label, load_run(path)))
    fig = figure(runs, args.title)
    save_figure(fig, args.out)
    print(f"wrote {args.out} ({len(runs)} runs, {len(set(r[0] for r in runs))} panels)")


if __name__ == "__main__":
    run_main(main)
