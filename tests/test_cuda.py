"""Every training entry point for two steps on CUDA: with and without mixed precision, with --aug device, SwAV
under torchrun with SyncBatchNorm on a one-process NCCL group. Skipped without a GPU; bench/gpu_check.sh runs
them together with the benchmarks and prints one table."""
import os

import pytest
import torch

from conftest import ROOT, run_script, script_env
from common.dist import free_port
from fakedata import make_cifar, make_image_folder

# UNMIX_CUDA_TESTS_ON_CPU=1 runs these commands on the CPU (a dry run of the test code; NCCL checks skipped)
DRY = os.environ.get("UNMIX_CUDA_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="needs a CUDA GPU")]

BATCH = 8  # 16 training images: two steps per epoch


def cuda_env():
    return script_env(CUDA_VISIBLE_DEVICES="" if DRY else os.environ.get("UNMIX_TEST_GPU", "0"))


def run(args):
    return run_script(args, env=cuda_env(), timeout=300)


def load(path):
    return torch.load(path, weights_only=False)  # CUDA tensors stay on CUDA: the run used the GPU


def on_cuda(state_dict):
    return DRY or all(t.is_cuda for t in state_dict.values() if torch.is_tensor(t))


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cuda_c10"), "cifar10", n_train=2 * BATCH, n_test=BATCH)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cuda_folder"), classes=2, per_class=BATCH)


@pytest.mark.parametrize("extra", [[], ["--amp"], ["--aug", "device"], ["--amp", "--aug", "device"]],
                         ids=["fp32", "amp", "device", "amp-device"])
def test_moco_cifar_demo(c10, tmp_path, extra):
    run(["UnMix_MoCo/for_CIFAR/unmix_c10.py", "--data", c10, "--results-dir", tmp_path / "r", "--epochs", "1",
         "--batch-size", BATCH, "--bn-splits", "2", "--moco-k", "16", "--workers", "2", "--seed", "0",
         "--knn-k", "4", *extra])
    ckpt = load(tmp_path / "r" / "model_last.pth")
    assert on_cuda(ckpt["state_dict"]) and ckpt["log"][0]["train_loss"] == ckpt["log"][0]["train_loss"]
    if "--amp" in extra and not DRY:  # the fp16 GradScaler really ran
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0


@pytest.mark.parametrize("extra", [[], ["--amp"]], ids=["fp32", "amp"])
def test_moco_imagenet(folder, tmp_path, extra):
    run(["UnMix_MoCo/for_ImageNet/main_moco_unmix.py", folder, "-a", "resnet18", "-j", "2", "--crop-size", "32",
         "-b", BATCH, "--epochs", "1", "--moco-k", "16", "--moco-dim", "8", "--mlp", "--aug-plus", "--cos",
         "--output-dir", tmp_path / "r", "--seed", "0", *extra])
    ckpt = load(tmp_path / "r" / "checkpoint_0000.pth.tar")
    assert on_cuda(ckpt["state_dict"])
    if extra and not DRY:
        assert ckpt["scaler"]["scale"] > 0


SWAV = ["UnMix_SwAV/for_CIFAR/main_swav_unmix.py", "--batch_size", str(BATCH), "--hidden_mlp", "16", "--feat_dim",
        "8", "--nmb_prototypes", "10", "--workers", "2", "--warmup_epochs", "0", "--epochs", "1",
        "--size_crops", "32", "--freeze_prototypes_niters", "1"]


@pytest.mark.parametrize("fp16,aug", [("true", "pil"), ("false", "pil"), ("true", "device")])
def test_swav_cifar(c10, tmp_path, fp16, aug):
    run([*SWAV, "--data_path", c10, "--dump_path", tmp_path / "r", "--use_fp16", fp16, "--aug", aug])
    ckpt = load(tmp_path / "r" / "checkpoint.pth.tar")
    assert on_cuda(ckpt["state_dict"]) and ckpt["epoch"] == 1
    assert ("amp" in ckpt) == (fp16 == "true" and not DRY)


@pytest.mark.skipif(DRY, reason="NCCL needs CUDA")
def test_swav_cifar_torchrun_nccl_syncbn(c10, tmp_path):
    """The script under torchrun (a world of one: no process group), then SyncBatchNorm + DDP on a one-process
    NCCL group for two fp16 steps of the SwAV CIFAR model (with one process SyncBN normalises like BatchNorm;
    the cross-GPU reduction needs two GPUs)."""
    run(["-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}", *SWAV, "--data_path", c10,
         "--dump_path", tmp_path / "r", "--sync_bn", "pytorch"])
    assert load(tmp_path / "r" / "checkpoint.pth.tar")["epoch"] == 1
    p = run(["-c", SYNCBN_CHECK])
    assert "syncbn ok" in p.stdout, p.stdout


SYNCBN_CHECK = r"""
import copy, os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.distributed as dist, torch.nn as nn
from common.dist import free_port
from UnMix_SwAV.swav.resnet import build
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
torch.manual_seed(0)
plain = build("resnet18", normalize=True, hidden_mlp=16, output_dim=8, nmb_prototypes=10, cifar_stem=True).cuda()
sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain)).cuda()
assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
ddp = nn.parallel.DistributedDataParallel(sync, device_ids=[0], find_unused_parameters=True)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
scaler = torch.amp.GradScaler("cuda")
for step in range(2):
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        emb, out = ddp([x[:4], x[4:]])
        loss = out.float().logsumexp(dim=1).mean()
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss)
plain.train(); sync.train()
x = torch.randn(8, 3, 32, 32, device="cuda")
ref = build("resnet18", normalize=True, hidden_mlp=16, output_dim=8, nmb_prototypes=10, cifar_stem=True).cuda()
ref.load_state_dict(sync.state_dict())  # the same keys: SyncBN checkpoints load into plain BN
with torch.no_grad():
    a, b = ref(x)[0], sync(x)[0]
assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
dist.destroy_process_group()
print("syncbn ok")
"""


@pytest.mark.parametrize("method,extra", [("simclr", []), ("simclr", ["--amp", "--aug", "device"]),
                                          ("byol", ["--amp"]), ("byol", ["--aug", "device"])],
                         ids=["simclr-fp32", "simclr-amp-device", "byol-amp", "byol-device"])
def test_simclr_byol(c10, tmp_path, method, extra):
    run(["UnMix_SimCLR_BYOL/main_unmix.py", "--method", method, "--data", c10, "--results-dir", tmp_path / "r",
         "--epochs", "1", "--batch-size", BATCH, "--crop-size", "32", "--warmup-iters", "1", "--emb", "16",
         "--head-size", "32", "--probe-epochs", "2", "--workers", "2", "--seed", "0", *extra])
    ckpt = load(tmp_path / "r" / "model_last.pth")
    assert on_cuda(ckpt["state_dict"]) and ckpt["epoch"] == 1
    if "--amp" in extra and not DRY:
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0


SAMIX = ROOT / "SAMix" / "main_samix.py"


@pytest.mark.skipif(not SAMIX.is_file(), reason="SAMix/main_samix.py not in this checkout")
@pytest.mark.parametrize("extra", [[], ["--amp"]], ids=["fp32", "amp"])
def test_samix(c10, tmp_path, extra):
    run([SAMIX, "--dataset", "cifar10", "--data", c10, "--output-dir", tmp_path / "r", "--epochs", "1",
             "-a", "resnet_tiny", "-b", BATCH, "-j", "2", "--mix", "samix", "--seed", "0", *extra])
    ckpt = load(tmp_path / "r" / "latest.pth")
    assert on_cuda(ckpt["state_dict"]) and ckpt["epoch"] == 1
    if "--amp" in extra and not DRY:
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0
