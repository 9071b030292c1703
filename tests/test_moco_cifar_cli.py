"""The MoCo CIFAR demo run as a user would: outputs, exact resume after kill -9, evaluation, bad input."""
import os
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, assert_clean_error, assert_epoch_lines, kill_9_after, run_script

C10 = "UnMix_MoCo/for_CIFAR/unmix_c10.py"
C100 = "UnMix_MoCo/for_CIFAR/unmix_c100.py"
EVAL = "UnMix_MoCo/for_CIFAR/eval_knn.py"
TINY = ["--batch-size", "8", "--bn-splits", "2", "--moco-k", "16", "--image-size", "16", "--workers", "0",
        "--seed", "0", "--knn-k", "20"]


def train(script, data, out, *extra, epochs=1, check=True):
    return run_script([script, "--data", data, "--results-dir", out, "--epochs", epochs, *TINY, *extra], check=check)


@pytest.fixture(scope="module")
def c10_run(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("c10") / "run"
    p = train(C10, cifar10_root, out, epochs=2)
    return out, p


def test_c10_run_writes_upstream_outputs(c10_run):
    out, p = c10_run
    assert {"args.json", "log.csv", "model_last.pth", "curves.png"} <= set(os.listdir(out))
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "test_acc@1"] and list(log.epoch) == [1, 2]
    assert log["test_acc@1"].between(0, 100).all() and log.train_loss.gt(0).all()
    ckpt = torch.load(out / "model_last.pth", weights_only=True)  # loadable by torch's safe default
    assert ckpt["epoch"] == 2 and {"state_dict", "optimizer"} <= set(ckpt)
    assert ckpt["state_dict"]["queue"].shape == (128, 16)
    assert "Train Epoch: [2/2]" in p.stderr and "Acc@1" in p.stdout
    assert_epoch_lines(p.stdout, [1, 2], 2, "kNN top-1")
    assert (out / "curves.png").stat().st_size > 5000


def test_eval_reads_checkpoint(c10_run, tmp_path):
    out, _ = c10_run
    res = tmp_path / "new_folder" / "eval.json"  # a folder that does not exist yet
    p = run_script([EVAL, out / "model_last.pth", "--linear-epochs", "3", "--workers", "0", "--output", res])
    assert "kNN" in p.stdout and "linear probe" in p.stdout
    import json
    r = json.loads(res.read_text())
    assert 0 <= r["knn_top1"] <= 100 and 0 <= r["linear_top1"] <= 100 and r["epoch"] == 2


def test_eval_refuses_other_architecture(c10_run):
    out, _ = c10_run
    p = run_script([EVAL, out / "model_last.pth", "-a", "resnet34"], check=False)
    assert_clean_error(p, "does not match")


def test_c100_and_imagefolder_runs(cifar100_root, imagefolder_root, tmp_path):
    train(C100, cifar100_root, tmp_path / "c100", "--asymmetric", "--no-unmix", "--moco-k", "8", "--amp")
    ckpt = torch.load(tmp_path / "c100" / "model_last.pth", weights_only=False)
    assert ckpt["args"]["dataset"] == "cifar100" and ckpt["args"]["symmetric"] is False and ckpt["args"]["amp"]
    train(C10, imagefolder_root, tmp_path / "imf", "--dataset", "imagefolder", "--two-pass")
    log = pd.read_csv(tmp_path / "imf" / "log.csv")
    assert len(log) == 1


def state(path):
    return torch.load(path, weights_only=False)


def test_kill_9_then_resume_matches_uninterrupted_run(cifar10_root, tmp_path):
    epochs = 2
    full = tmp_path / "full"
    train(C10, cifar10_root, full, epochs=epochs)
    # interrupted run: SIGKILL right after epoch 1's checkpoint is written
    part = tmp_path / "part"
    kill_9_after("checkpoint", [C10, "--data", cifar10_root, "--results-dir", part, "--epochs", epochs, *TINY])
    killed_at = state(part / "model_last.pth")["epoch"]
    assert killed_at < epochs, "run finished before it could be killed"
    # resuming without --resume is refused; with it the run continues exactly
    assert_clean_error(train(C10, cifar10_root, part, epochs=epochs, check=False), "--resume")
    run_script([C10, "--data", cifar10_root, "--resume", part / "model_last.pth", "--epochs", epochs, *TINY])
    a, b = state(full / "model_last.pth"), state(part / "model_last.pth")
    assert b["epoch"] == epochs
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (full / "log.csv").read_text() == (part / "log.csv").read_text()


@pytest.mark.parametrize("args,fragment", [
    (["--batch-size", "12", "--moco-k", "16"], "must be a multiple"),
    (["--batch-size", "9", "--bn-splits", "2"], "divisible by --bn-splits"),
    (["--batch-size", "128", "--moco-k", "256"], "fewer than one batch"),
])
def test_bad_sizes_are_refused(cifar10_root, tmp_path, args, fragment):
    p = run_script([C10, "--data", cifar10_root, "--results-dir", tmp_path / "r", *TINY, *args], check=False)
    assert_clean_error(p, fragment)
    assert not (tmp_path / "r" / "model_last.pth").exists()


def test_missing_and_malformed_datasets(tmp_path, imagefolder_root):
    p = run_script([C10, "--dataset", "imagefolder", "--data", tmp_path / "nowhere", *TINY], check=False)
    assert_clean_error(p, "does not exist")
    flat = tmp_path / "flat" / "train"
    flat.mkdir(parents=True)
    (flat / "x.png").write_bytes(b"")
    p = run_script([C10, "--dataset", "imagefolder", "--data", tmp_path / "flat", *TINY], check=False)
    assert_clean_error(p, "class sub-folders")
    bad = tmp_path / "badcifar" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (bad / name).write_bytes(b"not a pickle")
    p = run_script([C10, "--data", tmp_path / "badcifar", *TINY], check=False)
    assert_clean_error(p, "cifar10")


def test_corrupt_and_foreign_checkpoints(c10_run, cifar10_root, tmp_path):
    out, _ = c10_run
    good = (out / "model_last.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "page.pth").write_bytes(b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    torch.save({"epoch": 1, "state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pth")
    for name, frag in [("trunc.pth", "cannot read"), ("page.pth", "HTML"), ("foreign.pth", "does not match")]:
        p = run_script([C10, "--data", cifar10_root, "--resume", tmp_path / name, "--results-dir", tmp_path / name[:-4],
                        *TINY], check=False)
        assert_clean_error(p, frag)
        p = run_script([EVAL, tmp_path / name], check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr
    # the right weights but nothing to resume from (no epoch, no optimizer state)
    sd = torch.load(out / "model_last.pth", weights_only=False)["state_dict"]
    torch.save({"state_dict": sd}, tmp_path / "weights_only.pth")
    p = run_script([C10, "--data", cifar10_root, "--resume", tmp_path / "weights_only.pth", "--results-dir",
                    tmp_path / "weights_only", *TINY], check=False)
    assert_clean_error(p, "optimizer")


def test_help_shows_defaults():
    p = run_script([C10, "--help"])
    assert "default: 1000" in p.stdout and "default: 0.06" in p.stdout and "--no-unmix" in p.stdout


@pytest.mark.parametrize("bad", [["--batch-size", "0"], ["--knn-k", "0"], ["--knn-t", "0"]])
def test_eval_nonsense_options_are_one_clear_error(tmp_path, bad):
    p = run_script([EVAL, tmp_path / "any.pth", *bad], check=False)
    assert_clean_error(p, "at least 1")


def test_bench_refuses_batch_not_divisible_by_bn_splits():
    p = run_script(["bench/bench_moco_cifar.py", "--batch-size", "12", "--bn-splits", "8"], check=False)
    assert_clean_error(p, "divisible")


def test_resume_with_amp_of_a_run_started_without_it(cifar10_root, tmp_path, monkeypatch):
    """A run saved with a disabled GradScaler ({} state) resumed with --amp on CUDA: the empty scaler state is
    skipped (GradScaler.load_state_dict refuses it). CUDA's enabled scaler is stood in for by a CPU one."""
    sys.path.insert(0, str(ROOT / "UnMix_MoCo" / "for_CIFAR"))
    import unmix_cifar
    out = tmp_path / "run"
    argv = ["--data", str(cifar10_root), "--results-dir", str(out), *TINY]
    unmix_cifar.main("cifar10", argv + ["--epochs", "1"])
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: real("cpu", enabled=True))
    unmix_cifar.main("cifar10", ["--resume", str(out / "model_last.pth"), "--epochs", "2", "--amp"] + argv)
    assert torch.load(out / "model_last.pth", weights_only=True)["epoch"] == 2
