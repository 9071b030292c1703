"""The NaN guard (common/guard.py): a diverging run stops with one error line and a non-zero exit at the first
non-finite loss, and the checkpoint it resumed from is left byte for byte as it was.

Each training loop is driven to divergence with a learning rate of 1e30 from a good 1-epoch checkpoint.
The subprocess run checks the user-visible behaviour (one line, exit status); the others call the same
``main`` in-process (``run_main`` turns the error into that line for every script alike).
"""
import hashlib
import math

import pytest
import torch

from conftest import assert_clean_error, run_script
from fakedata import make_cifar
from common.guard import NonFiniteError, NonFiniteFlag, check_finite_state, check_loss


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cifar16(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("c10_16"), "cifar10", n_train=16, n_test=8)


# ------------------------------------------------------------------------------------------------ units

def test_check_loss_accepts_finite_and_names_epoch_step_and_hint():
    check_loss(0.0, 1, 0)
    check_loss(1e38, 1, 0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NonFiniteError, match=r"non-finite loss (nan|inf|-inf) at epoch 3, step 7.*lower the lea"):
            check_loss(bad, 3, 7)


def test_check_finite_state_walks_nested_checkpoints_and_names_the_entry():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    ckpt = {"epoch": 1, "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(), "log": [{"epoch": 1, "acc": math.nan}]}  # a NaN in the log is no weight
    check_finite_state(ckpt, 1, "x.pth")
    check_finite_state(net, 1, "x.pth")
    opt.state_dict()["state"][1]["momentum_buffer"][0] = math.inf  # the optimizer state counts too
    with pytest.raises(NonFiniteError, match=r"optimizer\.state\.1\.momentum_buffer after epoch 1.*x\.pth was left"):
        check_finite_state({"state_dict": net.state_dict(), "optimizer": opt.state_dict()}, 1, "x.pth")
    with torch.no_grad():
        net.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="weight"):
        check_finite_state(net, 2, "x.pth")


def test_flag_accumulates_on_the_device_and_is_checked_once():
    flag = NonFiniteFlag()
    flag.check("nothing seen")
    flag.update(torch.tensor(1.0))
    flag.check("finite")
    flag.update(torch.tensor(math.nan))
    flag.update(torch.tensor(2.0))  # a later finite value does not clear it
    with pytest.raises(NonFiniteError, match="probe"):
        flag.check("the probe")


# ------------------------------------------------------------------------------------- every training loop

MOCO_C10 = "UnMix_MoCo/for_CIFAR/unmix_c10.py"
MOCO_TINY = ["--batch-size", "8", "--bn-splits", "2", "--moco-k", "16", "--image-size", "16", "--workers", "0",
             "--seed", "0", "--knn-k", "4"]


def test_moco_cifar_exits_with_one_line_and_keeps_its_checkpoint(cifar16, tmp_path):
    out = tmp_path / "run"
    run_script([MOCO_C10, "--data", cifar16, "--results-dir", out, "--epochs", "1", *MOCO_TINY])
    before = {f: digest(out / f) for f in ("model_last.pth", "log.csv")}
    # resume with an absurd lr (epochs 4: the cosine schedule of epoch 2 is not 0); every other setting comes
    # from the checkpoint (the defaults, batch 512 and 4096 keys, would be refused on 16 images)
    p = run_script([MOCO_C10, "--resume", out / "model_last.pth", "--epochs", "4", "--lr", "1e30", "--workers", "0"],
                   check=False)
    assert "overridden on the command line: --lr 1e+30 (recorded: 0.06), --epochs 4 (recorded: 1)" in p.stdout
    assert_clean_error(p, "non-finite loss", "epoch 2, step", "lower the learning rate")
    assert p.returncode == 2 and len([ln for ln in p.stderr.splitlines() if "error:" in ln]) == 1
    assert {f: digest(out / f) for f in before} == before


def test_simclr_stops_and_keeps_its_checkpoint(cifar16, tmp_path):
    from UnMix_SimCLR_BYOL import main_unmix
    for method in ("simclr",):  # BYOL runs the same loop
        out = tmp_path / method
        common = ["--method", method, "--data", str(cifar16), "--batch-size", "8", "--crop-size", "8",
                  "--warmup-iters", "0", "--emb", "8", "--head-size", "16", "--probe-epochs", "0",
                  "--workers", "0", "--seed", "0", "--drop", "--eval-every", "100", "--save-every", "1"]
        main_unmix.main(common + ["--epochs", "1", "--results-dir", str(out)])
        saved = lambda: {f.name: digest(f) for f in out.iterdir() if f.suffix == ".pth" or f.suffix == ".pt"}  # noqa
        before = saved()
        with pytest.raises(NonFiniteError, match="non-finite loss .* at epoch 2"):
            main_unmix.main(["--epochs", "3", "--lr", "1e30", "--resume", str(out / "model_last.pth")])
        assert saved() == before and len(before) == 2  # model_last.pth and the epoch-0 snapshot; no new one


def test_moco_imagenet_pretraining_and_linear_classification(imagefolder_root, tmp_path):
    from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls
    from UnMix_MoCo.for_ImageNet import main_moco_unmix as pretrain
    tiny = [str(imagefolder_root), "-a", "resnet18", "-j", "0", "--crop-size", "16", "-p", "100", "-b", "8",
            "--seed", "0"]
    out = tmp_path / "pre"
    pretrain.main(tiny + ["--moco-k", "16", "--moco-dim", "8", "--epochs", "1", "--output-dir", str(out)])
    ck = out / "checkpoint_0000.pth.tar"
    before = digest(ck)
    with pytest.raises(NonFiniteError, match="non-finite"):
        pretrain.main([str(imagefolder_root), "--epochs", "3", "--lr", "1e30", "-j", "0", "--output-dir", str(out),
                       "--resume", str(ck)])
    assert digest(ck) == before and sorted(p.name for p in out.glob("checkpoint_*")) == [ck.name]

    # a linear head needs a larger lr to overflow (1e30 leaves its logits large but finite)
    lin = tmp_path / "lin"
    lincls.main(tiny + ["--epochs", "1", "--lr", "0.1", "--output-dir", str(lin)])
    before = digest(lin / "checkpoint.pth.tar")
    with pytest.raises(NonFiniteError, match="non-finite"):
        lincls.main([str(imagefolder_root), "--epochs", "3", "--lr", "1e38", "--schedule", "--output-dir", str(lin),
                     "-j", "0", "--resume", str(lin / "checkpoint.pth.tar")])
    assert digest(lin / "checkpoint.pth.tar") == before


def test_swav_pretraining_and_linear_evaluation(cifar16, tmp_path):
    from UnMix_SwAV.swav import linear, train
    tiny = ["--data_path", str(cifar16), "--batch_size", "8", "--hidden_mlp", "16", "--feat_dim", "8",
            "--nmb_prototypes", "10", "--workers", "0", "--warmup_epochs", "0", "--size_crops", "16",
            "--freeze_prototypes_niters", "0"]
    dump = tmp_path / "swav"
    train.main("cifar", tiny + ["--epochs", "1", "--dump_path", str(dump)])
    before = {f.name: digest(f) for f in [dump / "checkpoint.pth.tar", *(dump / "checkpoints").iterdir()]}
    with pytest.raises(NonFiniteError, match="non-finite"):
        train.main("cifar", ["--epochs", "3", "--base_lr", "1e30", "--final_lr", "1e30", "--resume",
                             "--dump_path", str(dump), "--workers", "0"])
    assert {f.name: digest(f) for f in [dump / "checkpoint.pth.tar", *(dump / "checkpoints").iterdir()]} == before

    # linear evaluation (its resumed lr comes from the saved scheduler, so a fresh run): no checkpoint at all
    lin = tmp_path / "lin"
    with pytest.raises(NonFiniteError, match="non-finite .*epoch 0.*lower --lr"):
        linear.main("cifar", ["--data_path", str(cifar16), "--workers", "0", "--batch_size", "8", "--dump_path",
                              str(lin), "--epochs", "2", "--lr", "1e30", "--final_lr", "1e30"])
    assert not (lin / "checkpoint.pth.tar").exists()
