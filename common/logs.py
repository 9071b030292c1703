"""Run logs: a CSV whose history lives in the checkpoint (so it survives resume exactly), curves, and the
one console line every training script prints per epoch."""
import math
import os
import time
import warnings

import pandas as pd

from .cli import atomic_write


def write_csv(rows, path, index="epoch"):
    """Writes ``rows`` (a list of dicts with an ``index`` column) as CSV, atomically."""
    df = pd.DataFrame(rows)
    if index in df.columns:
        df = df.set_index(index)
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index_label=index)
    return df


def read_csv_log(path, names=("log.csv",), what="a run folder or its log.csv"):
    """The log ``path`` (or the first of ``names`` in the run folder ``path``) as a DataFrame; a missing or
    unreadable file is one CLIError naming it and ``what`` was expected."""
    from .cli import CLIError
    path = os.fspath(path)
    if os.path.isdir(path):
        path = next((os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))),
                    os.path.join(path, names[0]))
    if not os.path.isfile(path):
        raise CLIError(f"{path} does not exist (expected {what})")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


# Axis labels in words for every column the training scripts log (a column not listed keeps its name).
COLUMN_NAMES = {
    "train_loss": "training loss", "loss": "training loss", "base_loss": "loss without the mixture terms",
    "loss_cl": "loss of the clean views", "loss_mix": "loss of the mixture",
    "loss_mix_flip": "loss of the reverse mixture",
    "test_acc@1": "kNN top-1 (%)",  # the MoCo CIFAR demo's monitor
    "acc1": "pretext accuracy top-1 (%)", "acc5": "pretext accuracy top-5 (%)",  # MoCo: positive key found
    "linear_acc@1": "linear-probe top-1 (%)", "linear_acc@5": "linear-probe top-5 (%)",
    "knn5_acc@1": "5-NN top-1 (%)", "knn200w_acc@1": "200-NN weighted top-1 (%)",
    "train_acc1": "linear classifier, training top-1 (%)", "val_acc1": "linear-probe top-1 (%)",
    "val_loss": "validation loss", "prec1_val": "linear-probe top-1 (%)",
    "lr": "learning rate", "target_tau": "BYOL target momentum", "lam": "λ",
    "mask_weight": "mask-loss weight", "acc1_one_q": "validation top-1 (%)",
}
# Columns drawn on one axis (the first name is the axis label; each column is one line, named in the legend)
COLUMN_GROUPS = (
    ("training loss", {"loss": "total", "loss_cl": "clean", "loss_mix": "mixture",
                       "loss_mix_flip": "reverse mixture"}),
    ("pretext accuracy (%)", {"acc1": "top-1", "acc5": "top-5"}),
    # SAMix / AutoMix (SAMix/main_samix.py): the losses of one iteration and the four heads' validation top-1
    ("SAMix losses", {"loss_one_q": "clean CE (q)", "loss_mix_q": "mixup CE (q)", "loss_mix_k": "Mixer CE (k)",
                      "loss_mask": "mask loss"}),
    ("validation top-1 (%)", {"acc1_one_q": "one-hot head, q", "acc1_mix_q": "mixup head, q",
                              "acc1_one_k": "one-hot head, EMA k", "acc1_mix_k": "mixup head, EMA k"}),
)


def panels_of(columns):
    """``columns`` as panels: ``[(axis label, {column: legend name or None})]``, grouped by COLUMN_GROUPS."""
    panels, placed = [], set()
    for col in columns:
        if col in placed:
            continue
        group = next(((label, members) for label, members in COLUMN_GROUPS if col in members), None)
        present = [c for c in group[1] if c in columns] if group else []
        if len(present) > 1:
            panels.append((group[0], {c: group[1][c] for c in present}))
            placed.update(present)
        else:
            panels.append((COLUMN_NAMES.get(col, col), {col: None}))
            placed.add(col)
    last = {"lr", "target_tau", "lam"}  # the schedules after what is learnt
    return [p for p in panels if not set(p[1]) <= last] + [p for p in panels if set(p[1]) <= last]


def runs_figure(runs, title=None, columns=None, names=None, x="epoch"):
    """The figure of :func:`plot_runs` (returned, not saved: tests read its labels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if columns is None:
        columns = list(dict.fromkeys(c for _, df in runs for c in df.columns
                                     if c != x and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()))
    panels = panels_of(columns)
    for i, (label, members) in enumerate(panels):  # names given by the caller win
        if len(members) == 1 and names and next(iter(members)) in names:
            panels[i] = (names[next(iter(members))], members)
    n = max(1, len(panels))
    ncols = 2 if n == 4 else min(3, n)  # a grid, not one long strip
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax, (ylabel, members) in zip(flat, panels):
        for i, (label, df) in enumerate(runs):
            for j, (col, short) in enumerate(members.items()):
                if col not in df:
                    continue
                d = df[[x, col]].dropna()
                name = " – ".join(str(t) for t in (label, short) if t) or None
                ax.plot(d[x], d[col], marker="o" if len(d) < 30 else None, label=name,
                        color=f"C{i if len(runs) > 1 else j}", linestyle=("-", "--", ":", "-.")[j % 4])
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines) and \
                (len(runs) > 1 or len(members) > 1):
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path, dpi=100):
    """Saves ``fig`` atomically and closes it: in the format its name's extension names when matplotlib knows
    it, else as PNG (a name without one, e.g. ``--out figure2``, included)."""
    import matplotlib.pyplot as plt
    ext = os.path.splitext(os.fspath(path))[1][1:].lower()
    try:
        with atomic_write(path) as tmp:  # the format given: matplotlib would add ".png" to a bare temp name
            fig.savefig(tmp, dpi=dpi, format=ext if ext in fig.canvas.get_supported_filetypes() else "png")
    finally:
        plt.close(fig)


def plot_runs(runs, png_path, title=None, columns=None, names=None, x="epoch"):
    """One panel per column (loss terms and top-1/top-5 share a panel), in a grid of at most three columns,
    each run's curve drawn through its non-empty points, saved atomically.

    ``runs`` = [(label, DataFrame)]; ``columns`` default to every numeric column but ``x`` that some run
    fills; axis labels come from COLUMN_NAMES, ``names`` (column -> axis label) overrides them.
    """
    save_figure(runs_figure(runs, title, columns, names, x), png_path)


def plot_curves(csv_path, png_path, x="epoch", title=None):
    """One panel per numeric column of the log ``csv_path`` against ``x``, saved to ``png_path``."""
    plot_runs([(None, pd.read_csv(csv_path))], png_path, title=title, x=x)


class EpochLine:
    """The one console line every training script prints at the end of an epoch, in the same shape::

        epoch 3/200 | loss 6.1234 | lr 0.0599 | kNN top-1 45.20% | 12.3 s | ETA 0:40:12

    ``monitor`` names the script's monitored accuracy (``kNN top-1``, ``linear-probe top-1``, ``pretext
    top-1``, ...; ``None`` for a script without one, e.g. SwAV pretraining). Create it just before the epoch
    loop; each call times the epoch since the previous call and estimates the rest from the mean so far.
    """

    def __init__(self, epochs, monitor=None):
        self.epochs, self.monitor = epochs, monitor
        self.start = self.last = time.time()
        self.calls = 0

    def __call__(self, epoch, loss, lr, acc=None):
        """``epoch``: the number of epochs finished (1-based); ``acc`` in percent, or None / NaN when the
        monitor did not run this epoch."""
        now = time.time()
        seconds, self.last = now - self.last, now
        self.calls += 1
        eta = (now - self.start) / self.calls * max(0, self.epochs - epoch)
        if self.monitor is None:
            acc_text = "no accuracy monitor"
        elif acc is None or (isinstance(acc, float) and math.isnan(acc)):
            acc_text = f"{self.monitor} -"
        else:
            acc_text = f"{self.monitor} {acc:.2f}%"
        h, rest = divmod(int(round(eta)), 3600)
        return (f"epoch {epoch}/{self.epochs} | loss {loss:.4f} | lr {lr:.4g} | {acc_text} | {seconds:.1f} s | "
                f"ETA {h}:{rest // 60:02d}:{rest % 60:02d}")


def warn_zero_lr_epochs(lrs, what="--epochs"):
    """Warns once when a short run spends a noticeable share of its epochs at lr 0.

    ``lrs``: the lr each epoch trains with, any iterable (a generator keeps the memory independent of the
    epoch count). Upstream's per-epoch cosine (the MoCo CIFAR demo) reaches lr 0 in the last epoch; over the
    published 1000 epochs that is nothing, but ``--epochs 1`` trains not at all and ``--epochs 2`` wastes half
    the run. Warned when at least a tenth of the epochs train at lr 0 (the first ten of them are named).
    """
    n, zeros, zero = 0, 0, []
    for n, lr in enumerate(lrs, 1):
        if lr == 0:
            zeros += 1
            if len(zero) < 10:
                zero.append(n)
    if zeros and zeros * 10 >= n:
        named = ", ".join(map(str, zero)) + (f" and {zeros - len(zero)} more" if zeros > len(zero) else "")
        warnings.warn(f"with {what} {n} the schedule trains epoch{'s' if zeros > 1 else ''} "
                      f"{named} of {n} at lr 0 (upstream's per-epoch cosine reaches 0 "
                      f"in the last epoch): those epochs do not change the weights; use more epochs",
                      stacklevel=2)
        return True
    return False
