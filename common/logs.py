"""Run logs: a CSV whose history lives in the checkpoint (so it survives resume exactly), and curves."""
import os

import pandas as pd


def write_csv(rows, path, index="epoch"):
    """Writes ``rows`` (a list of dicts with an ``index`` column) as CSV, atomically."""
    df = pd.DataFrame(rows)
    if index in df.columns:
        df = df.set_index(index)
    tmp = f"{path}.tmp"
    df.to_csv(tmp, index_label=index)
    os.replace(tmp, path)
    return df


def plot_runs(runs, png_path, title=None, columns=None, names=None, x="epoch"):
    """One panel per column, each run's curve drawn through its non-empty points, saved atomically.

    ``runs`` = [(label, DataFrame)]; ``columns`` default to every numeric column but ``x`` that some run
    fills; ``names`` maps a column to its axis label.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if columns is None:
        columns = list(dict.fromkeys(c for _, df in runs for c in df.columns
                                     if c != x and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()))
    names = names or {}
    n = max(1, len(columns))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, col in zip(axes[0], columns):
        for label, df in runs:
            if col in df:
                d = df[[x, col]].dropna()
                ax.plot(d[x], d[col], marker="o" if len(d) < 30 else None, label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(names.get(col, col))
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{png_path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def plot_curves(csv_path, png_path, x="epoch", title=None):
    """One panel per numeric column of the log ``csv_path`` against ``x``, saved to ``png_path``."""
    plot_runs([(None, pd.read_csv(csv_path))], png_path, title=title, x=x)
