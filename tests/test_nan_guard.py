"""The NaN guard (common/guard.py): a diverging run stops with one error line and a non-zero exit at the first
non-finite loss, and the checkpoint it resumed from is left byte for byte as it was (the training scripts: in
test_run_state.py, from the checkpoints of their kill -9 tests)."""
import math

import pytest
import torch

from fakedata import make_cifar
from test_swav_eval import imagenet_like  # noqa: F401  (a fixture)
from common.guard import NonFiniteError, NonFiniteFlag, check_finite_state, check_loss


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
# MoCo CIFAR, SimCLR, SwAV pretraining and MoCo ImageNet pretraining are driven to divergence from the checkpoints
# of their kill -9 tests in test_run_state.py (one training run fewer each); here the two evaluation loops, from
# scratch: no checkpoint is written at all.


def test_moco_linear_classification_writes_no_checkpoint(imagefolder_root, tmp_path):
    from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls
    lin = tmp_path / "lin"
    # a linear head needs a larger lr to overflow (1e30 leaves its logits large but finite)
    with pytest.raises(NonFiniteError, match="non-finite"):
        lincls.main([str(imagefolder_root), "-a", "resnet18", "-j", "0", "--crop-size", "16", "-p", "100", "-b", "8",
                     "--seed", "0", "--epochs", "2", "--lr", "1e38", "--output-dir", str(lin)])
    assert not (lin / "checkpoint.pth.tar").exists() and not (lin / "model_best.pth.tar").exists()


def test_swav_linear_evaluation_writes_no_checkpoint(cifar16, tmp_path):
    from UnMix_SwAV.swav import linear
    lin = tmp_path / "lin"
    with pytest.raises(NonFiniteError, match="non-finite .*epoch 0.*lower --lr"):
        linear.main("cifar", ["--data_path", str(cifar16), "--workers", "0", "--batch_size", "8", "--dump_path",
                              str(lin), "--epochs", "2", "--lr", "1e30", "--final_lr", "1e30"])
    assert not (lin / "checkpoint.pth.tar").exists()


def test_byol_from_scratch_writes_no_checkpoint(cifar16, tmp_path):
    from UnMix_SimCLR_BYOL import main_unmix
    run = tmp_path / "byol"
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* at epoch 1, step .*\(--lr\)"):
        main_unmix.main(["--method", "byol", "--data", str(cifar16), "--results-dir", str(run), "--epochs", "2",
                         "--batch-size", "8", "--crop-size", "16", "--warmup-iters", "0", "--emb", "8",
                         "--head-size", "16", "--probe-epochs", "0", "--workers", "0", "--seed", "0", "--lr", "1e30"])
    assert not list(run.glob("*.pt*"))  # neither model_last.pth nor a snapshot


def test_swav_semisup_fine_tuning_writes_no_checkpoint(imagenet_like, tmp_path):  # noqa: F811
    from UnMix_SwAV.swav import semisup
    semi = tmp_path / "semi"
    with pytest.raises(NonFiniteError, match="non-finite loss .*lower --lr"):
        semisup.main(["--data_path", str(imagenet_like), "--labels_perc", "1", "--arch", "resnet18", "--crop_size",
                      "32", "--val_resize", "36", "--pretrained", "", "--dump_path", str(semi), "--epochs", "2",
                      "--workers", "0", "--batch_size", "3", "--lr", "1e30", "--lr_last_layer", "1e30"])
    assert not (semi / "checkpoint.pth.tar").exists()
