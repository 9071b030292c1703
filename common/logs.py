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


def plot_curves(csv_path, png_path, x="epoch", title=None):
    """One panel per numeric column of ``csv_path`` against ``x``, saved to ``png_path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(csv_path)
    cols = [c for c in df.columns if c != x and pd.api.types.is_numeric_dtype(df[c])]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.5 * max(1, len(cols)), 3.5), squeeze=False)
    for ax, c in zip(axes[0], cols):
        ax.plot(df[x], df[c], marker="o" if len(df) < 30 else None)
        ax.set_xlabel(x)
        ax.set_ylabel(c)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{png_path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
