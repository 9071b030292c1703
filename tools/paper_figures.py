"""The paper's Figures 3, 4 and 5 from any two runs, baseline vs Un-Mix (Figure 2: tools/plot_curves.py).

    python tools/paper_figures.py figure3 --baseline LOG --unmix LOG --out figure3.png
    python tools/paper_figures.py figure4 --baseline CKPT --unmix CKPT --data DIR --dataset cifar10 --out figure4.png
    python tools/paper_figures.py figure5 --baseline CKPT --unmix CKPT --out figure5.png

* Figure 3: linear-classification top-1 and top-5 per epoch, one panel each, from two linear-classification
  logs (``main_lincls_unmix.py``'s ``log.csv``: ``val_acc1``/``val_acc5``; SwAV ``eval_linear.py``'s
  ``stats.csv``: ``prec1_val``/``prec5_val``) or their run folders.
* Figure 4: a 2-D t-SNE embedding (scikit-learn) of the test set's backbone features, coloured by class, the two
  checkpoints side by side. Any pretraining checkpoint tools/convert_to_torchvision.py reads (MoCo CIFAR demo,
  MoCo ImageNet, SwAV, SimCLR/BYOL); CIFAR test set or the ``val`` folder of an ImageFolder tree.
* Figure 5: the distributions of the weights of the 1st, 10th, 20th, 30th, 40th and 50th convolution (counted
  in the network's order, the shortcut convolutions included) of two ResNet-50 checkpoints, overlaid per panel.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.cli import CLIError, HelpFormatter, add_unsafe_load_arg, run_main  # noqa: E402
from common.logs import read_csv_log, save_figure  # noqa: E402
from tools import check_output  # noqa: E402

CONVS = (1, 10, 20, 30, 40, 50)
STYLE = ({"color": "C0", "linestyle": "--"}, {"color": "C3", "linestyle": "-"})  # baseline dashed, Un-Mix solid


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- Figure 3 -----------------------------------------------------------------------------------------------
TOPK_COLUMNS = (("val_acc1", "val_acc5", 1), ("prec1_val", "prec5_val", 0))  # (top-1, top-5, first epoch)


def read_topk(path):
    """``epoch``, ``top1``, ``top5`` of a linear-classification log (or its run folder)."""
    df = read_csv_log(path, ("log.csv", "stats.csv"), "a linear classification's log.csv / stats.csv or its folder")
    for top1, top5, first in TOPK_COLUMNS:
        if top1 in df and top5 in df and "epoch" in df:
            return pd.DataFrame({"epoch": pd.to_numeric(df["epoch"]) + (1 - first),
                                 "top1": pd.to_numeric(df[top1], errors="coerce"),
                                 "top5": pd.to_numeric(df[top5], errors="coerce")})
    raise CLIError(f"{path} has no top-1/top-5 columns of a linear classification "
                   f"({', '.join(f'{a}/{b}' for a, b, _ in TOPK_COLUMNS)}); columns: {', '.join(df.columns)}")


def figure3(baseline, unmix, labels=("MoCo v2", "MoCo v2 + Un-Mix")):
    """Two panels, top-1 and top-5 against epochs, baseline (dashed) and Un-Mix (solid)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    runs = [read_topk(baseline), read_topk(unmix)]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for ax, col, name in zip(axes, ("top1", "top5"), ("top-1", "top-5")):
        for df, label, style in zip(runs, labels, STYLE):
            d = df.dropna(subset=[col])
            ax.plot(d["epoch"], d[col], marker="o" if len(d) < 30 else None, label=label, **style)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(f"linear classification {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 3: linear classification accuracy per epoch")
    fig.tight_layout()
    return fig


# --- backbones of checkpoints -------------------------------------------------------------------------------
def torchvision_backbone(path, unsafe=False):
    """``(model, kind)``: the torchvision ResNet of a pretraining checkpoint, classifier removed, eval mode."""
    import torch.nn as nn

    from common.checkpoint import load_checkpoint
    from tools import layouts
    from tools.convert_to_torchvision import build_torchvision, convert_state_dict, simclr_byol_maxpool
    obj = load_checkpoint(path, unsafe=unsafe)
    sd = layouts.state_dict_of(obj)
    if sd is None:
        raise CLIError(f"{path} holds no model state_dict")
    try:
        tv, kind, variant = convert_state_dict(sd)
    except CLIError as e:
        raise CLIError(f"{path}: {e}") from None
    model = build_torchvision(kind, variant, maxpool=bool(kind == "simclr_byol" and simclr_byol_maxpool(obj)))
    missing, unexpected = model.load_state_dict(tv, strict=False)
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        raise CLIError(f"{path}: its weights do not fit a torchvision {kind} backbone")
    model.fc = nn.Identity()
    return model.eval(), kind


def conv_weights(path, unsafe=False):
    """The weight tensors of every convolution of a checkpoint's backbone, in the network's order."""
    import torch.nn as nn
    model, _ = torchvision_backbone(path, unsafe)
    return [(name, m.weight.detach()) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


# --- Figure 4 -----------------------------------------------------------------------------------------------
def test_set(data, dataset, size=None):
    """The test split of CIFAR-10/100 (``data`` holds its python batches) or the ``val`` folder of an
    ImageFolder tree, normalised as the training scripts do."""
    import torchvision.transforms as T

    from common import data as D
    if dataset in ("cifar10", "cifar100"):
        mean, std = (D.CIFAR10_MEAN, D.CIFAR10_STD)
        tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        return D.cifar(dataset, data, train=False, transform=tf, download=False)
    size = size or 224
    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(D.IMAGENET_MEAN, D.IMAGENET_STD)])
    return D.image_folder(D.split_dir(data, "val"), tf)


def features(model, dataset, n, seed=0, batch_size=256):
    """Backbone features and labels of ``n`` test images (a fixed random subset; all when fewer)."""
    import torch
    from torch.utils.data import DataLoader, Subset
    idx = np.random.RandomState(seed).permutation(len(dataset))[:n]
    feats, labels = [], []
    with torch.no_grad():
        for x, y in DataLoader(Subset(dataset, sorted(idx.tolist())), batch_size=batch_size):
            feats.append(model(x).flatten(1))
            labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def tsne(x, seed=0, perplexity=30.0):
    """scikit-learn's t-SNE to 2-D (perplexity capped below the number of points)."""
    from sklearn.manifold import TSNE
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def figure4(baseline, unmix, data, dataset, labels=("baseline", "Un-Mix"), n=2000, seed=0, size=None,
            unsafe=False):
    """Two panels: the t-SNE of each checkpoint's test-set features, points coloured by class."""
    plt = _plt()
    ds = test_set(data, dataset, size)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    classes = getattr(ds, "classes", None)
    for ax, path, label in zip(axes, (baseline, unmix), labels):
        model, _ = torchvision_backbone(path, unsafe)
        x, y = features(model, ds, n, seed)
        emb = tsne(x, seed)
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10" if y.max() < 10 else "tab20", s=6)
        ax.set_title(f"{label}: {len(y)} test images")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    if classes is not None and len(classes) <= 10:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=sc.cmap(sc.norm(i)), label=str(c))
                   for i, c in enumerate(classes)]
        axes[1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class")
    fig.suptitle("Figure 4: t-SNE of test-set features, coloured by class")
    fig.tight_layout()
    return fig


# --- Figure 5 -----------------------------------------------------------------------------------------------
def figure5(baseline, unmix, labels=("baseline", "Un-Mix"), convs=CONVS, bins=80, unsafe=False):
    """One panel per convolution in ``convs`` (1-based, in the network's order): the histogram of its
    weights in each checkpoint, on a shared range."""
    plt = _plt()
    nets = [conv_weights(p, unsafe) for p in (baseline, unmix)]
    for path, ws in zip((baseline, unmix), nets):
        if len(ws) < max(convs):
            raise CLIError(f"{path} has {len(ws)} convolutions; figure 5 needs {max(convs)} (a ResNet-50)")
    cols = 3 if len(convs) > 4 else len(convs)
    rows = -(-len(convs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, k in zip(axes.ravel(), convs):
        ws = [net[k - 1][1].flatten().numpy() for net in nets]
        lo, hi = min(w.min() for w in ws), max(w.max() for w in ws)
        for w, label, style in zip(ws, labels, STYLE):
            ax.hist(w, bins=bins, range=(lo, hi), density=True, histtype="step", label=label, color=style["color"],
                    linestyle=style["linestyle"])
        ax.set_title(f"conv {k} ({nets[0][k - 1][0]})", fontsize=9)
        ax.set_xlabel("weight")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(convs):]:
        ax.set_visible(False)
    fig.suptitle("Figure 5: distributions of convolution weights")
    fig.tight_layout()
    return fig


# --- CLI ----------------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)

    def pair(s, what):
        s.add_argument("--baseline", required=True, help=f"the baseline's {what}")
        s.add_argument("--unmix", required=True, help=f"the Un-Mix run's {what}")
        s.add_argument("--labels", nargs=2, default=("baseline", "Un-Mix"), metavar=("BASELINE", "UNMIX"),
                       help="legend names")
        s.add_argument("--out", required=True, help="image to write (format from the extension, else PNG)")
        s.add_argument("--force", action="store_true", help="overwrite --out")

    s = sub.add_parser("figure3", help="linear classification top-1/top-5 per epoch", formatter_class=HelpFormatter,
                       description="Figure 3: linear classification top-1/top-5 per epoch of two runs' logs")
    pair(s, "linear-classification log.csv / stats.csv (or run folder)")
    s = sub.add_parser("figure4", help="t-SNE of test-set features", formatter_class=HelpFormatter,
                       description="Figure 4: 2-D t-SNE (scikit-learn) of two checkpoints' test-set features, "
                                   "coloured by class")
    pair(s, "pretraining checkpoint")
    s.add_argument("--data", required=True, help="CIFAR root (python batches) or ImageFolder root with val/")
    s.add_argument("--dataset", required=True, choices=["cifar10", "cifar100", "imagefolder"])
    s.add_argument("--n", type=int, default=2000, help="test images embedded (a fixed random subset)")
    s.add_argument("--image-size", type=int, default=224, help="imagefolder: centre crop size")
    s.add_argument("--seed", type=int, default=0)
    add_unsafe_load_arg(s)
    s = sub.add_parser("figure5", help="weight distributions of ResNet-50 convolutions", formatter_class=HelpFormatter,
                       description="Figure 5: distributions of the weights of the 1st, 10th, 20th, 30th, 40th "
                                   "and 50th convolution of two ResNet-50 checkpoints")
    pair(s, "pretraining checkpoint")
    s.add_argument("--convs", type=int, nargs="+", default=list(CONVS), help="1-based convolution numbers")
    add_unsafe_load_arg(s)
    args = p.parse_args(argv)
    check_output(args.out, args.force)
    labels = tuple(args.labels)
    if args.figure == "figure3":
        fig = figure3(args.baseline, args.unmix, labels)
    elif args.figure == "figure4":
        if args.n < 2:
            raise CLIError("--n must be at least 2")
        fig = figure4(args.baseline, args.unmix, args.data, args.dataset, labels, args.n, args.seed,
                      args.image_size, args.unsafe_load)
    else:
        if min(args.convs) < 1:
            raise CLIError("--convs counts from 1")
        fig = figure5(args.baseline, args.unmix, labels, tuple(args.convs), unsafe=args.unsafe_load)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
