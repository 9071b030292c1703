"""--aug device in the training scripts: the MoCo demo resumed after kill -9 ends bit-identical to an
uninterrupted run; BYOL and SwAV CIFAR train on the device path; each DDP process augments its own shard."""
import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import kill_9_after, run_script
from common.data import TwoCrops, cifar
from common.device_aug import DeviceLoader
from fakedata import make_cifar
from test_device_aug import moco_transform
from test_moco_cifar_cli import C10, TINY, state, train

DEVICE = ["--aug", "device"]
USED = "=> --aug device:"  # DeviceLoader's line: the device path really feeds the training


@pytest.fixture(scope="module")
def small_c10(tmp_path_factory):  # 32 training images: 4 steps of 8 per epoch
    return make_cifar(tmp_path_factory.mktemp("c10_small"), "cifar10", n_train=32, n_test=16)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_moco_device_aug_kill_9_then_resume_is_bit_identical(small_c10, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert USED in train(C10, small_c10, full, *DEVICE, epochs=2).stdout
    ck = part / "model_last.pth"
    kill_9_after("checkpoint", [C10, "--data", small_c10, "--results-dir", part, "--epochs", 2, *TINY, *DEVICE])
    assert state(ck)["epoch"] == 1, "the run was not interrupted after its first epoch"
    run_script([C10, "--data", small_c10, "--resume", ck, "--epochs", 2, *TINY, *DEVICE])
    a, b = state(full / "model_last.pth"), state(ck)
    assert a["args"]["aug"] == "device" and b["epoch"] == 2
    assert_same_state(a["state_dict"], b["state_dict"])
    assert (full / "log.csv").read_text() == (part / "log.csv").read_text()


def test_byol_device_aug_stop_and_resume(small_c10, tmp_path):
    """BYOL with --aug device, stopped after epoch 1; `--resume` alone continues on the device path (the
    setting comes from the checkpoint). Bit-exactness of a resume: the MoCo test above."""
    from test_simclr_byol_scripts import MAIN
    from test_simclr_byol_scripts import train as train_sb
    run = tmp_path / "split"
    p = train_sb("byol", "cifar10", small_c10, run, "--epochs", "2", "--eval-every", "2", "--save-every", "0",
                 "--batch-size", "16", "--stop-after", "1", *DEVICE)
    assert USED in p.stdout
    p = run_script([MAIN, "--resume", run / "model_last.pth", "--data", small_c10, "--workers", "0"])
    assert USED in p.stdout
    b = state(run / "model_last.pth")
    assert b["args"]["aug"] == "device" and b["epoch"] == 2 and len(b["log"]) == 2


def test_swav_cifar_device_aug_runs(small_c10, tmp_path, capsys):
    """One epoch of SwAV CIFAR with --aug device (its resume restores every rank's RNG state, tested with the
    PIL path in test_swav_train.py; the device path's epoch depends only on that state: test_device_aug.py)."""
    import pandas as pd
    from test_swav_train import TINY as SWAV_TINY
    from UnMix_SwAV.swav.train import main
    argv = [str(x) for x in ["--data_path", small_c10, "--epochs", "1", "--size_crops", "8",
                             "--dump_path", tmp_path / "a", *SWAV_TINY, *DEVICE]]
    main("cifar", argv)
    assert USED in capsys.readouterr().out
    stats = pd.read_pickle(tmp_path / "a" / "stats0.pkl")
    assert len(stats) == 1 and 0 < stats["loss"].iloc[0] < 100


def test_ddp_shards_are_disjoint_and_augmented_per_process(cifar10_root):
    """Each process (DistributedSampler rank) gets its own images, and its own augmentation stream."""
    ds = cifar("cifar10", cifar10_root, True, TwoCrops(moco_transform(16)))
    seen, first = [], []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DeviceLoader(ds, ds.transform, 8, "cpu", sampler=sampler, rank=rank)
        torch.manual_seed(0)  # the same global seed on every rank, as SwAV seeds them
        batches = list(loader)
        seen.append(torch.cat([lab for _, lab in batches]))
        first.append(batches[0][0][0])
    idx = [set(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    assert not idx[0] & idx[1] and len(idx[0] | idx[1]) == len(ds)
    assert len(seen[0]) == len(seen[1]) == len(ds) // 2 // 8 * 8
    assert not torch.equal(first[0], first[1])
