"""tools/plot_curves.py: Figure-2 panels from log.csv (MoCo / SimCLR / BYOL) and SwAV stats pickles."""
import numpy as np
import pandas as pd
import pytest

from conftest import assert_clean_error, run_script

from common.cli import CLIError
from tools import plot_curves as pc

SCRIPT = "tools/plot_curves.py"


def _moco_log(path, start_loss, acc_end):
    """A log.csv exactly as the MoCo demo writes it: epoch,train_loss,test_acc@1."""
    ep = np.arange(1, 21)
    df = pd.DataFrame({"epoch": ep, "train_loss": start_loss - 0.2 * ep,
                       "test_acc@1": np.linspace(20.0, acc_end, 20)})
    df.to_csv(path, index=False)
    return df


def _simclr_log(path):
    """SimCLR/BYOL log.csv: accuracies only on evaluation epochs (empty cells), as htdt fractions here."""
    rows = [{"epoch": e, "train_loss": 3.0 - 0.1 * e,
             "linear_acc@1": (0.5 + 0.01 * e) if e % 5 == 0 else None,
             "knn5_acc@1": (0.4 + 0.01 * e) if e % 5 == 0 else None} for e in range(1, 21)]
    pd.DataFrame(rows).to_csv(path, index=False)


def _swav_stats(folder, linear=False):
    """SwAV's PD_Stats pickles: stats0.pkl of pretraining (epoch, loss) or of eval_linear (… prec1_val …)."""
    folder.mkdir(parents=True, exist_ok=True)
    if linear:
        df = pd.DataFrame({"epoch": range(10), "loss": np.linspace(2, 1, 10), "prec1": np.linspace(30, 60, 10),
                           "prec5": 90.0, "loss_val": np.linspace(2.2, 1.2, 10),
                           "prec1_val": np.linspace(35, 65, 10), "prec5_val": 95.0})
    else:
        df = pd.DataFrame({"epoch": range(10), "loss": np.linspace(8, 5, 10)})
    df.to_pickle(folder / "stats0.pkl")
    return df


def test_load_run_reads_every_format(tmp_path):
    base = _moco_log(tmp_path / "moco.csv", 10.0, 80.0)
    run = pc.load_run(tmp_path / "moco.csv")
    assert run["loss"].tolist() == pytest.approx(base["train_loss"].tolist())
    assert run["acc"].tolist() == pytest.approx(base["test_acc@1"].tolist())

    _simclr_log(tmp_path / "simclr.csv")
    run = pc.load_run(tmp_path / "simclr.csv")
    acc = run.dropna(subset=["acc"])
    assert acc["epoch"].tolist() == [5, 10, 15, 20]
    assert acc["acc"].tolist() == pytest.approx([55.0, 60.0, 65.0, 70.0])  # linear probe, fractions -> %

    _swav_stats(tmp_path / "swav_run")
    run = pc.load_run(tmp_path / "swav_run")  # a run folder
    assert run["loss"].iloc[-1] == pytest.approx(5.0) and run["acc"].isna().all()
    assert run["epoch"].tolist() == list(range(1, 11))  # PD_Stats' 0-based epochs -> finished epochs
    _swav_stats(tmp_path / "swav_run_linear_eval", linear=True)
    run = pc.load_run(tmp_path / "swav_run_linear_eval" / "stats0.pkl")
    assert run["acc"].iloc[-1] == pytest.approx(65.0)  # prec1_val, not the training prec1
    assert run["loss"].iloc[0] == pytest.approx(2.0)  # the training loss, not loss_val

    # MoCo ImageNet main_lincls_unmix.py log.csv: the validation accuracy, not the training one before it
    pd.DataFrame({"epoch": [1, 2], "lr": 30.0, "train_loss": [3.0, 2.0], "train_acc1": [10.0, 20.0],
                  "train_acc5": 50.0, "val_loss": [3.5, 2.5], "val_acc1": [15.0, 25.0],
                  "val_acc5": 60.0}).to_csv(tmp_path / "lincls.csv", index=False)
    run = pc.load_run(tmp_path / "lincls.csv")
    assert run["acc"].tolist() == [15.0, 25.0] and run["loss"].tolist() == [3.0, 2.0]

    assert pc.parse_run("MoCo C10:+Un-Mix=a/b.csv") == ("MoCo C10", "+Un-Mix", pc.Path("a/b.csv"))
    assert pc.parse_run("MoCo=a/b.csv") == ("", "MoCo", pc.Path("a/b.csv"))
    (tmp_path / "noepoch.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(CLIError, match="no 'epoch' column"):
        pc.load_run(tmp_path / "noepoch.csv")


def test_figure_draws_the_data_baseline_dashed_unmix_solid(tmp_path):
    base = _moco_log(tmp_path / "moco.csv", 10.0, 80.0)
    mix = _moco_log(tmp_path / "unmix.csv", 20.0, 85.0)
    _swav_stats(tmp_path / "s")
    runs = [("MoCo C10", "MoCo", pc.load_run(tmp_path / "moco.csv")),
            ("MoCo C10", "+Un-Mix", pc.load_run(tmp_path / "unmix.csv")),
            ("SwAV C10", "SwAV", pc.load_run(tmp_path / "s"))]
    fig = pc.figure(runs)
    axes = fig.axes
    assert len(axes) == 4  # 2 panels x (loss, accuracy)
    loss_ax, acc_ax = axes[0], axes[2]  # first column: rows are loss, accuracy
    assert [line.get_label() for line in loss_ax.lines] == ["MoCo", "+Un-Mix"]
    assert list(loss_ax.lines[1].get_ydata()) == pytest.approx(mix["train_loss"].tolist())
    assert list(acc_ax.lines[0].get_ydata()) == pytest.approx(base["test_acc@1"].tolist())
    assert loss_ax.lines[0].get_linestyle() == "--" and loss_ax.lines[1].get_linestyle() == "-"
    assert len(axes[1].lines) == 1 and len(axes[3].lines) == 0  # SwAV pretraining: loss only


def test_cli_writes_a_nontrivial_png_from_both_formats(tmp_path):
    _moco_log(tmp_path / "moco.csv", 10.0, 80.0)
    _moco_log(tmp_path / "unmix.csv", 20.0, 85.0)
    _swav_stats(tmp_path / "swav")
    _swav_stats(tmp_path / "unmix_swav_linear_eval", linear=True)
    out = tmp_path / "fig2.png"
    run_script([SCRIPT, "--out", out, "--title", "Figure 2",
                "--run", f"MoCo CIFAR-10:MoCo={tmp_path / 'moco.csv'}",
                "--run", f"MoCo CIFAR-10:+Un-Mix={tmp_path / 'unmix.csv'}",
                "--run", f"SwAV CIFAR-10:SwAV={tmp_path / 'swav' / 'stats0.pkl'}",
                "--run", f"SwAV CIFAR-10:Un-Mix linear eval={tmp_path / 'unmix_swav_linear_eval'}"])
    assert out.stat().st_size > 10_000
    import matplotlib.image as mpimg
    img = mpimg.imread(out)
    assert img.shape[0] >= 400 and img.shape[1] >= 600
    rgb = img[..., :3].reshape(-1, 3)
    colours = np.unique((rgb * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50  # lines in several colours, text, grid: not a blank canvas
    assert (rgb.sum(1) < 2.9).mean() > 0.01  # a visible share of non-white pixels
    # existing output is kept; a missing file is one clear error line
    assert_clean_error(run_script([SCRIPT, "--out", out, "--run", str(tmp_path / "moco.csv")], check=False),
                       "exists")
    assert_clean_error(run_script([SCRIPT, "--out", tmp_path / "x.png", "--run", f"a={tmp_path / 'nope.csv'}"],
                                  check=False), "does not exist")
