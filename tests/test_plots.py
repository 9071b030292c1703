"""Every plot a command writes has axis labels in words, integer epoch ticks and a grid layout (the figures are
inspected before saving): the training scripts' curves.png (common.logs), plot_figure2.py, tools/plot_curves.py."""
import numpy as np
import pandas as pd
import pytest

from common import logs
from tools import plot_curves as pc
from UnMix_SimCLR_BYOL import plot_figure2


def labels(fig):
    axes = [ax for ax in fig.axes if ax.get_visible()]
    return [ax.get_ylabel() for ax in axes], {ax.get_xlabel() for ax in axes}, axes


def assert_integer_epoch_ticks(axes):
    for ax in axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def fig_px(fig):
    w, h = fig.get_size_inches() * 100  # the scripts save at dpi 100
    return w, h


def test_moco_cifar_curves(tmp_path):
    # the rows unmix_cifar.py writes: epoch, train_loss, test_acc@1 (kNN monitor); 5 epochs
    rows = [{"epoch": e, "train_loss": 9.0 - e, "test_acc@1": 20.0 + e} for e in range(1, 6)]
    logs.write_csv(rows, tmp_path / "log.csv")
    fig = logs.runs_figure([(None, pd.read_csv(tmp_path / "log.csv"))])
    ylabels, xlabels, axes = labels(fig)
    assert ylabels == ["training loss", "kNN top-1 (%)"] and xlabels == {"epoch"}
    assert_integer_epoch_ticks(axes)


def test_moco_imagenet_curves_are_a_grid_not_a_strip():
    # the columns main_moco_unmix.py logs per epoch
    ep = np.arange(1, 4)
    df = pd.DataFrame({"epoch": ep, "lr": 0.03, "loss": 9.0 - ep, "loss_cl": 8.0 - ep, "loss_mix": 9.5 - ep,
                       "loss_mix_flip": 9.6 - ep, "acc1": 10.0 * ep, "acc5": 20.0 * ep})
    fig = logs.runs_figure([(None, df)])
    ylabels, xlabels, axes = labels(fig)
    assert ylabels == ["training loss", "pretext accuracy (%)", "learning rate"] and xlabels == {"epoch"}
    assert [line.get_label() for line in axes[0].lines] == ["total", "clean", "mixture", "reverse mixture"]
    assert [line.get_label() for line in axes[1].lines] == ["top-1", "top-5"]
    assert list(axes[1].lines[0].get_ydata()) == [10.0, 20.0, 30.0]  # acc1 drawn as top-1
    assert fig_px(fig)[0] <= 1400  # was 2940 px wide: one strip of 7 panels
    assert_integer_epoch_ticks(axes)


def test_many_panels_wrap_into_rows():
    df = pd.DataFrame({"epoch": [1, 2], **{f"c{i}": [1.0, 2.0] for i in range(7)}})
    fig = logs.runs_figure([(None, df)])
    _, _, axes = labels(fig)
    assert len(axes) == 7
    w, h = fig_px(fig)
    assert w <= 1400 and h >= 3 * 300  # three rows of three


def test_simclr_byol_curves_and_figure2_cli(tmp_path, monkeypatch):
    rows = [{"epoch": e, "train_loss": 3.0 - 0.1 * e, "base_loss": 2.0, "lr": 0.003,
             "linear_acc@1": 50.0 + e if e % 2 == 0 else None, "knn5_acc@1": 40.0 + e if e % 2 == 0 else None,
             "knn200w_acc@1": 41.0 + e if e % 2 == 0 else None} for e in range(1, 7)]
    for name in ("base", "unmix"):
        (tmp_path / name).mkdir()
        pd.DataFrame(rows).to_csv(tmp_path / name / "log.csv", index=False)
    saved = []
    monkeypatch.setattr(plot_figure2, "save_figure", lambda fig, path: saved.append((fig, path)))
    plot_figure2.main(["--baseline", str(tmp_path / "base"), "--unmix", str(tmp_path / "unmix"),
                       "--out", str(tmp_path / "f.png")])
    (fig, path), = saved
    ylabels, xlabels, axes = labels(fig)
    assert ylabels == ["training loss", "linear-probe top-1 (%)", "5-NN top-1 (%)", "200-NN weighted top-1 (%)"]
    assert xlabels == {"epoch"}
    w, h = fig_px(fig)
    assert w <= 1000 and h >= 600  # 2 x 2
    assert [line.get_label() for line in axes[1].lines] == ["baseline", "+ Un-Mix"]
    assert_integer_epoch_ticks(axes)


def test_plot_curves_tells_knn_and_linear_probe_apart(tmp_path, monkeypatch):
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.0], "test_acc@1": [20.0, 30.0, 40.0]}) \
        .to_csv(tmp_path / "moco.csv", index=False)
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.0], "linear_acc@1": [0.5, 0.6, 0.7]}) \
        .to_csv(tmp_path / "simclr.csv", index=False)
    made = []
    real = pc.figure
    monkeypatch.setattr(pc, "figure", lambda runs, title=None: made.append(real(runs, title)) or made[-1])
    pc.main(["--out", str(tmp_path / "a.png"), "--run", f"P:MoCo={tmp_path / 'moco.csv'}",
             "--run", f"P:SimCLR+Un-Mix={tmp_path / 'simclr.csv'}",
             "--run", f"Q:SimCLR={tmp_path / 'simclr.csv'}"])
    assert (tmp_path / "a.png").stat().st_size > 0
    fig, = made
    loss_p, loss_q, acc_p, acc_q = fig.axes
    assert loss_p.get_ylabel() == "training loss" and acc_p.get_xlabel() == "epoch" == loss_p.get_xlabel()
    assert acc_p.get_ylabel() == "kNN top-1 (%) / linear-probe top-1 (%)"
    assert [line.get_label() for line in acc_p.lines] == ["MoCo (kNN)", "SimCLR+Un-Mix (linear probe)"]
    assert acc_p.lines[0].get_marker() != acc_p.lines[1].get_marker()
    assert acc_q.get_ylabel() == "linear-probe top-1 (%)"
    assert list(acc_q.lines[0].get_ydata()) == pytest.approx([50.0, 60.0, 70.0])
    assert_integer_epoch_ticks(fig.axes)


def test_save_figure_format_follows_the_extension_else_png(tmp_path):
    """``--out figure2`` or ``--out fig.txt`` write a PNG (matplotlib alone would write ``figure2.png`` and leave
    the target empty), ``.pdf`` a PDF; nothing but the targets is left in the folder."""
    import matplotlib.pyplot as plt
    magic = {"figure2": b"\x89PNG", "fig.txt": b"\x89PNG", "curves.png": b"\x89PNG", "f.pdf": b"%PDF"}
    for name in magic:
        fig = plt.figure()
        fig.add_subplot().plot([0, 1])
        logs.save_figure(fig, tmp_path / name)
        assert not plt.fignum_exists(fig.number)  # closed
    assert {p.name: p.read_bytes()[:4] for p in tmp_path.iterdir()} == magic
