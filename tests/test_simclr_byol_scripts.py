"""UnMix_SimCLR_BYOL entry points run as a user would, on tiny on-disk data (8-px crops, batch 40, 1-2 epochs).

Each method runs with and without Un-Mix; an interrupted BYOL + Un-Mix run resumed with --resume ends
bit-identical to an uninterrupted one; eval.py reads both our checkpoint and htdt's bare state_dict and
reproduces the kNN numbers logged during training; the Figure-2 plot is drawn from two runs' log.csv.
"""
import json

import pandas as pd
import pytest
import torch

from conftest import assert_clean_error, assert_epoch_lines, run_script
from common.cli import CLIError

MAIN = "UnMix_SimCLR_BYOL/main_unmix.py"
EVAL = "UnMix_SimCLR_BYOL/eval.py"
TINY = ["--batch-size", "40", "--crop-size", "8", "--warmup-iters", "2", "--emb", "16", "--head-size", "32",
        "--probe-epochs", "5", "--workers", "0", "--seed", "0"]


def train(method, dataset, root, out, *extra):
    return run_script([MAIN, "--method", method, "--dataset", dataset, "--data", root, "--results-dir", out,
                       *TINY, *extra])


@pytest.fixture(scope="module")
def byol_runs(cifar10_root, tmp_path_factory):
    """BYOL + Un-Mix for 2 epochs straight, and the same run stopped after epoch 1 then resumed."""
    tmp = tmp_path_factory.mktemp("byol")
    common = ["--epochs", "2", "--eval-every", "1", "--save-every", "1"]
    train("byol", "cifar10", cifar10_root, tmp / "straight", *common)
    train("byol", "cifar10", cifar10_root, tmp / "split", *common, "--stop-after", "1")
    first = torch.load(tmp / "split" / "model_last.pth", weights_only=False)
    # only the data location and session options: every training setting comes from the checkpoint
    run_script([MAIN, "--resume", tmp / "split" / "model_last.pth", "--data", cifar10_root, "--workers", "0"])
    return tmp, first


def test_byol_unmix_run_writes_checkpoint_csv_plot(byol_runs):
    tmp, first = byol_runs
    out = tmp / "straight"
    for name in ("model_last.pth", "log.csv", "curves.png", "args.json", "byol_cifar10_0.pt", "byol_cifar10_1.pt"):
        assert (out / name).is_file(), name
    assert first["epoch"] == 1 and len(first["log"]) == 1
    log = pd.read_csv(out / "log.csv")
    assert log["epoch"].tolist() == [1, 2]
    assert log["target_tau"].tolist() == pytest.approx([0.99, 0.995])  # 1 - 0.01 (cos(pi ep/2) + 1) / 2
    assert (log["train_loss"] > log["base_loss"]).all()  # the mixture terms are added
    for col in ("linear_acc@1", "linear_acc@5", "knn5_acc@1", "knn200w_acc@1"):
        assert log[col].between(0, 100).all(), col
    ckpt = torch.load(out / "model_last.pth", weights_only=False)
    assert {"epoch", "state_dict", "optimizer", "rng", "log", "args"} <= set(ckpt)
    assert "model_t.module.conv1.weight" in ckpt["state_dict"] and "pred.3.weight" in ckpt["state_dict"]
    assert json.loads((out / "args.json").read_text())["method"] == "byol"
    # htdt's snapshot: a bare state_dict, equal to the model of that epoch
    htdt = torch.load(out / "byol_cifar10_1.pt", weights_only=True)
    assert htdt.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(htdt[k], ckpt["state_dict"][k]) for k in htdt)


def test_resume_continues_exactly(byol_runs):
    tmp, _ = byol_runs
    a = torch.load(tmp / "straight" / "model_last.pth", weights_only=False)
    b = torch.load(tmp / "split" / "model_last.pth", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert (a["rng"]["numpy"][1] == b["rng"]["numpy"][1]).all()  # the Un-Mix draws
    assert a["log"] == b["log"]
    assert (tmp / "straight" / "log.csv").read_text() == (tmp / "split" / "log.csv").read_text()


def test_eval_reads_checkpoint_and_reproduces_logged_knn(byol_runs, cifar10_root, tmp_path):
    tmp, _ = byol_runs
    out = tmp_path / "eval.json"
    run_script([EVAL, tmp / "straight" / "model_last.pth", "--data", cifar10_root, "--probe-epochs", "5",
                "--workers", "0", "--out", out])
    res = json.loads(out.read_text())
    logged = pd.read_csv(tmp / "straight" / "log.csv").iloc[-1]
    assert res["dataset"] == "cifar10"  # taken from the checkpoint
    # kNN is deterministic: the same encoder gives the numbers logged at the end of training
    assert res["knn5_acc@1"] == pytest.approx(logged["knn5_acc@1"])
    assert res["knn200w_acc@1"] == pytest.approx(logged["knn200w_acc@1"])
    # htdt's bare state_dict of the same epoch (in-process; it records no dataset) gives the same numbers
    from UnMix_SimCLR_BYOL import eval as ev
    res_htdt = ev.main([str(tmp / "straight" / "byol_cifar10_1.pt"), "--dataset", "cifar10", "--crop-size", "8",
                        "--data", str(cifar10_root), "--probe-epochs", "0", "--workers", "0"])
    assert res_htdt["knn5_acc@1"] == pytest.approx(res["knn5_acc@1"])
    with pytest.raises(CLIError, match="does not record its dataset"):
        ev.main([str(tmp / "straight" / "byol_cifar10_1.pt"), "--data", str(cifar10_root)])


def test_baselines_other_datasets_and_figure2(byol_runs, cifar10_root, cifar100_root, imagefolder_root, tmp_path):
    tmp, _ = byol_runs
    p = train("byol", "cifar10", cifar10_root, tmp_path / "byol_base", "--epochs", "1", "--no-unmix")
    assert_epoch_lines(p.stdout, [1], 1, "linear-probe top-1")
    from UnMix_SimCLR_BYOL import main_unmix  # in-process (same code as the subprocess runs, no import cost)
    main_unmix.main(["--method", "simclr", "--dataset", "cifar100", "--data", str(cifar100_root), "--results-dir",
                     str(tmp_path / "simclr_base"), *TINY, "--epochs", "1", "--no-unmix", "--probe-epochs", "0"])
    train("simclr", "imagefolder", imagefolder_root, tmp_path / "simclr_unmix", "--epochs", "1",
          "--batch-size", "8", "--separate-passes", "--amp",  # torch.amp: bfloat16 autocast on CPU
          "--crop-size", "16")  # at 8 px layer4 is 1x1 and bf16 BatchNorm over 8 values overflows Adam's state:
    # the NaN guard (rightly) refuses to save that run, so the --amp run uses the smallest non-degenerate crop
    for run, method in (("byol_base", "byol"), ("simclr_base", "simclr"), ("simclr_unmix", "simclr")):
        log = pd.read_csv(tmp_path / run / "log.csv")
        assert (tmp_path / run / "curves.png").stat().st_size > 0
        ckpt = torch.load(tmp_path / run / "model_last.pth", weights_only=False)
        assert ckpt["args"]["method"] == method
        if run.endswith("base"):  # no mixture terms
            assert log["train_loss"].tolist() == pytest.approx(log["base_loss"].tolist())
        else:
            assert (log["train_loss"] > log["base_loss"]).all()
    assert pd.read_csv(tmp_path / "simclr_unmix" / "log.csv")["train_loss"].notna().all()
    sd = torch.load(tmp_path / "simclr_unmix" / "model_last.pth", weights_only=False)["state_dict"]
    assert "bn_last.running_mean" in sd and not any(k.startswith("pred.") for k in sd)
    assert "linear_acc@1" not in pd.read_csv(tmp_path / "simclr_base" / "log.csv")  # --probe-epochs 0
    # Figure 2: baseline vs Un-Mix from the two runs' folders
    from UnMix_SimCLR_BYOL import plot_figure2
    png = tmp_path / "fig2.png"
    plot_figure2.main(["--baseline", str(tmp_path / "byol_base"), "--unmix", str(tmp / "straight"),
                       "--out", str(png), "--title", "BYOL CIFAR-10"])
    assert png.stat().st_size > 0
    with pytest.raises(CLIError, match="does not exist"):
        plot_figure2.main(["--baseline", str(tmp_path / "nope"), "--unmix", str(tmp / "straight")])


def test_user_errors_are_one_clear_line(byol_runs, cifar10_root, tmp_path):
    tmp, _ = byol_runs
    from UnMix_SimCLR_BYOL import eval as ev
    from UnMix_SimCLR_BYOL import main_unmix
    # as a subprocess (the lightest entry point): one clear line, exit 2, no traceback
    p = run_script(["UnMix_SimCLR_BYOL/plot_figure2.py", "--baseline", tmp_path / "missing",
                    "--unmix", tmp / "straight"], check=False)
    assert_clean_error(p, "does not exist")
    assert p.returncode == 2
    # in-process: every entry point raises CLIError, which run_main turns into that one line
    with pytest.raises(CLIError, match="does not exist"):  # a missing ImageFolder tree
        main_unmix.main(["--dataset", "imagefolder", "--data", str(tmp_path / "missing"), *TINY])
    with pytest.raises(CLIError, match="already holds a run"):
        main_unmix.main(["--method", "byol", "--data", str(cifar10_root), "--results-dir", str(tmp / "straight"),
                         *TINY])
    with pytest.raises(CLIError, match="fewer than one batch"):
        main_unmix.main(["--data", str(cifar10_root), "--results-dir", str(tmp_path / "x"), *TINY,
                         "--batch-size", "512"])
    with pytest.raises(CLIError, match="does not match the model"):  # resuming BYOL as SimCLR (explicit)
        main_unmix.main(["--method", "simclr", "--resume", str(tmp / "straight" / "model_last.pth"),
                         "--results-dir", str(tmp_path / "y"), "--data", str(cifar10_root), "--workers", "0"])
    with pytest.raises(CLIError, match="--crop-size"):
        main_unmix.main(["--crop-size", "2"])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CLIError, match="cannot read checkpoint"):
        ev.main([str(bad), "--dataset", "cifar10"])
    with pytest.raises(CLIError, match="does not match"):  # a ResNet-18 checkpoint read as ResNet-34
        ev.main([str(tmp / "straight" / "model_last.pth"), "--arch", "resnet34", "--data", str(cifar10_root)])
    torch.save({"state_dict": {"encoder_q.net.0.weight": torch.zeros(1)}}, tmp_path / "moco.pth")
    with pytest.raises(CLIError, match="no SimCLR/BYOL encoder"):
        ev.main([str(tmp_path / "moco.pth"), "--dataset", "cifar10"])


def test_help_shows_protocol_defaults():
    from UnMix_SimCLR_BYOL import eval as ev
    from UnMix_SimCLR_BYOL import main_unmix
    text = " ".join(main_unmix.build_parser().format_help().split())
    for frag in ("--epochs EPOCHS training epochs (default: 1000)", "(default: 512)", "(default: 0.003)", "(default: [50, 25])",
                 "(default: 0.2)", "--tau TAU SimCLR NT-Xent temperature (default: 0.5)", "(default: 0.99)",
                 "(default: online)", "(default: 500)"):
        assert frag in text, frag
    text = " ".join(ev.build_parser().format_help().split())
    assert "(default: 5)" in text and "(default: 200)" in text and "(default: 500)" in text


def test_resume_alone_finds_the_runs_data(imagefolder_root, tmp_path, monkeypatch):
    """`--resume model_last.pth` alone (the README's command) continues on the run's own --data, not ./data."""
    from UnMix_SimCLR_BYOL import main_unmix
    monkeypatch.chdir(tmp_path)  # no ./data here
    run = tmp_path / "run"
    main_unmix.main(["--method", "simclr", "--dataset", "imagefolder", "--data", str(imagefolder_root),
                     "--results-dir", str(run), *TINY, "--batch-size", "8", "--epochs", "2", "--stop-after", "1",
                     "--probe-epochs", "0"])
    main_unmix.main(["--resume", str(run / "model_last.pth"), "--workers", "0"])
    ckpt = torch.load(run / "model_last.pth", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["args"]["data"] == str(imagefolder_root)
