"""What tests/test_cuda.py's two-step runs cannot see, on CUDA: every training script killed (SIGKILL, right after
its first checkpoint) and resumed; a resume from a checkpoint saved under another number of visible GPUs; the
evaluations (MoCo lincls, SwAV linear and semi-supervised); MoCo CIFAR ``--mix samix --amp``; two processes:
NCCL + SyncBatchNorm across 2 GPUs (skipped with its reason on fewer), and, on one GPU, two processes sharing it
over gloo (NCCL refuses two processes on one device).

A resumed run is compared with the same run uninterrupted: on the CPU (the dry run) and for the scripts that run
cuDNN deterministically under ``--seed`` (MoCo ImageNet pretraining and lincls) bit for bit; the others (cuDNN's
default algorithm choice, atomics in some CUDA kernels) within RESUME_TOL. Each comparison prints whether it was
bit-exact. Skipped without a GPU unless UNMIX_CUDA_TESTS_ON_CPU=1 (bench/gpu_check.sh's dry run)."""
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from common.dist import free_port
from fakedata import make_cifar, make_image_folder
from test_cuda import BATCH, DRY, SWAV, cuda_env, load, run
from test_swav_eval import imagenet_like, pretraining_checkpoint  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() or DRY), reason="needs a CUDA GPU")]

WORKERS = "0" if DRY else "2"  # on the GPU the pinned-memory DataLoader path with worker processes
RESUME_TOL = dict(rtol=1e-3, atol=1e-5)  # per tensor, after two epochs of two steps (float32 runs)
MOCO_IN = ["UnMix_MoCo/for_ImageNet/main_moco_unmix.py", "-a", "resnet18", "-j", WORKERS, "--crop-size", "32",
           "--moco-k", "16", "--moco-dim", "8", "--mlp", "--seed", "0", "-p", "1"]
LINCLS = ["UnMix_MoCo/for_ImageNet/main_lincls_unmix.py", "-a", "resnet18", "-j", WORKERS, "--crop-size", "32",
          "--lr", "0.1", "--seed", "0", "-p", "1"]


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cuda_c10"), "cifar10", n_train=2 * BATCH, n_test=BATCH)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # 2 classes x 8 images: 2 steps of 8, or 2 processes x 1 step of 8 per epoch
    return make_image_folder(tmp_path_factory.mktemp("cuda_folder"), classes=2, per_class=BATCH)


def killed(args):
    """``python args`` on the GPU, killed (SIGKILL) right after its first checkpoint is written."""
    env = cuda_env()
    env["UNMIX_TEST_KILL_AFTER"] = "checkpoint:1"
    p = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, f"not killed after its checkpoint: exit {p.returncode}\n{p.stderr[-3000:]}"


def assert_resumed_as_uninterrupted(full, resumed, what, exact_on_cuda=False):
    """The final weights of the uninterrupted and the killed + resumed run (see the module docstring)."""
    assert full.keys() == resumed.keys()
    exact = all(torch.equal(full[k].cpu(), resumed[k].cpu()) for k in full)
    print(f"\n{str(what).replace(str(ROOT) + '/', '')}: the resumed run is {'bit-exact' if exact else 'NOT bit-exact'}")
    if DRY or exact_on_cuda:
        assert exact, what
    for k in full:
        assert torch.allclose(full[k].cpu().double(), resumed[k].cpu().double(), **RESUME_TOL), k


def kill_resume(tmp_path, args, out_flag, checkpoint, resume, final=None, exact_on_cuda=False):
    """``args`` for 2 epochs into ``full``, and killed after epoch 1 in ``part`` then resumed with
    ``resume(part_dir, checkpoint_path)`` (extra arguments); compares ``final`` (default: ``checkpoint``)."""
    full, part = tmp_path / "full", tmp_path / "part"
    run([*args, out_flag, full])
    killed([*args, out_flag, part])
    assert load(part / checkpoint)["epoch"] == 1
    run([*args, out_flag, part, *resume(part, part / checkpoint)])
    final = final or checkpoint
    a, b = load(full / final), load(part / final)
    assert a["epoch"] == b["epoch"] == 2
    assert_resumed_as_uninterrupted(a["state_dict"], b["state_dict"], args[0], exact_on_cuda)
    return full


def test_moco_cifar_kill_resume(c10, tmp_path):
    kill_resume(tmp_path, ["UnMix_MoCo/for_CIFAR/unmix_c10.py", "--data", c10, "--epochs", "2", "--batch-size",
                           BATCH, "--bn-splits", "2", "--moco-k", "16", "--workers", WORKERS, "--seed", "0",
                           "--knn-k", "4"],
                "--results-dir", "model_last.pth", lambda d, ck: ["--resume", ck])


@pytest.fixture(scope="module")
def moco_imagenet_run(folder, tmp_path_factory):
    """MoCo ImageNet pretraining, 2 epochs uninterrupted and killed + resumed (the resume loads the checkpoint
    that held CUDA RNG tensors when loaded to cuda:N)."""
    tmp = tmp_path_factory.mktemp("moco_in")
    return kill_resume(tmp, [*MOCO_IN, folder, "-b", BATCH, "--epochs", "2"], "--output-dir",
                       "checkpoint_0000.pth.tar", lambda d, ck: ["--resume", ck], final="checkpoint_0001.pth.tar",
                       exact_on_cuda=True)


def test_moco_imagenet_kill_resume(moco_imagenet_run):
    assert (moco_imagenet_run / "checkpoint_0001.pth.tar").is_file()


def test_moco_imagenet_resume_of_a_checkpoint_saved_with_more_visible_gpus(moco_imagenet_run, folder, tmp_path):
    """A checkpoint written before with one CUDA RNG state per visible GPU (4 here), resumed where fewer are
    visible (set_rng_state_all raised IndexError); with 2 GPUs also a run saved under 2 visible, resumed under 1."""
    ck = torch.load(moco_imagenet_run / "checkpoint_0000.pth.tar", weights_only=False, map_location="cpu")
    for s in ck["rng_states"]:
        s["cuda"] = [torch.cuda.get_rng_state() if not DRY else torch.zeros(16, dtype=torch.uint8)] * 4
    out = tmp_path / "four"
    out.mkdir()
    torch.save(ck, out / "checkpoint_0000.pth.tar")
    run([*MOCO_IN, folder, "-b", BATCH, "--epochs", "2", "--output-dir", out, "--resume",
         out / "checkpoint_0000.pth.tar"])
    assert load(out / "checkpoint_0001.pth.tar")["epoch"] == 2
    if not DRY and torch.cuda.device_count() >= 2:
        two = tmp_path / "two"
        env = cuda_env()
        env["CUDA_VISIBLE_DEVICES"] = "0,1"
        args = [*MOCO_IN, folder, "-b", BATCH, "--output-dir", two]
        subprocess.run([sys.executable, *map(str, args), "--epochs", "1"], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=300)
        run([*args, "--epochs", "2", "--resume", two / "checkpoint_0000.pth.tar"])  # one GPU visible
        assert load(two / "checkpoint_0001.pth.tar")["epoch"] == 2


def test_lincls_kill_resume(moco_imagenet_run, folder, tmp_path):
    """MoCo's linear classification on the pretraining run's weights, killed and resumed."""
    kill_resume(tmp_path, [*LINCLS, folder, "-b", BATCH, "--epochs", "2", "--pretrained",
                           moco_imagenet_run / "checkpoint_0001.pth.tar"],
                "--output-dir", "checkpoint.pth.tar", lambda d, ck: ["--resume", ck], exact_on_cuda=True)


def test_byol_kill_resume(c10, tmp_path):
    kill_resume(tmp_path, ["UnMix_SimCLR_BYOL/main_unmix.py", "--method", "byol", "--data", c10, "--epochs", "2",
                           "--batch-size", BATCH, "--crop-size", "32", "--warmup-iters", "1", "--emb", "16",
                           "--head-size", "32", "--probe-epochs", "2", "--workers", WORKERS, "--seed", "0"],
                "--results-dir", "model_last.pth", lambda d, ck: ["--resume", ck])


def test_swav_pretraining_kill_resume(c10, tmp_path):
    args = [*SWAV, "--data_path", c10, "--use_fp16", "false", "--workers", WORKERS]
    args[args.index("--epochs") + 1] = "2"
    kill_resume(tmp_path, args, "--dump_path", "checkpoint.pth.tar", lambda d, ck: ["--resume", "true"])


SAMIX = ROOT / "SAMix" / "main_samix.py"


@pytest.mark.skipif(not SAMIX.is_file(), reason="SAMix/main_samix.py not in this checkout")
def test_samix_kill_resume(c10, tmp_path):
    kill_resume(tmp_path, [SAMIX, "--dataset", "cifar10", "--data", c10, "--epochs", "2", "-a", "resnet_tiny",
                           "-b", BATCH, "-j", WORKERS, "--mix", "samix", "--seed", "0"],
                "--output-dir", "latest.pth", lambda d, ck: ["--resume", ck])


def test_moco_cifar_samix_amp(c10, tmp_path):
    """MoCo CIFAR with the SAMix Mixer under --amp: fp16 autocast + GradScaler, the Mixer in float32."""
    run(["UnMix_MoCo/for_CIFAR/unmix_c10.py", "--data", c10, "--results-dir", tmp_path / "r", "--epochs", "1",
         "--batch-size", BATCH, "--bn-splits", "2", "--moco-k", "16", "--workers", WORKERS, "--seed", "0",
         "--knn-k", "4", "--mix", "samix", "--amp"])
    ck = load(tmp_path / "r" / "model_last.pth")
    assert any(k.startswith("mixer.") for k in ck["state_dict"])
    assert all(torch.isfinite(t).all() for t in ck["state_dict"].values() if t.is_floating_point())
    if not DRY:
        assert ck["scaler"]["scale"] > 0 and all(t.is_cuda for t in ck["state_dict"].values())


def test_swav_linear_evaluation(c10, tmp_path):
    ck = pretraining_checkpoint(tmp_path / "pre.pth.tar")
    p = run(["UnMix_SwAV/for_CIFAR/eval_linear.py", "--data_path", c10, "--pretrained", ck, "--dump_path",
             tmp_path / "lin", "--epochs", "1", "--workers", WORKERS, "--batch_size", BATCH])
    out = load(tmp_path / "lin" / "checkpoint.pth.tar")
    assert out["epoch"] == 1 and "Test" in p.stdout + p.stderr
    assert DRY or all(t.is_cuda for t in out["state_dict"].values())


def test_swav_semisupervised_evaluation(imagenet_like, tmp_path):  # noqa: F811 (the fixture)
    ck = pretraining_checkpoint(tmp_path / "in.pth.tar", cifar_stem=False)
    p = run(["UnMix_SwAV/for_ImageNet/eval_semisup.py", "--data_path", imagenet_like, "--labels_perc", "1",
             "--arch", "resnet18", "--crop_size", "32", "--val_resize", "36", "--pretrained", ck, "--dump_path",
             tmp_path / "semi", "--epochs", "1", "--workers", WORKERS, "--batch_size", "3"])
    assert "Test accuracies: top-1" in p.stdout
    out = load(tmp_path / "semi" / "checkpoint.pth.tar")
    assert out["epoch"] == 1 and (DRY or all(t.is_cuda for t in out["state_dict"].values()))


def test_two_processes_sharing_one_gpu_over_gloo(folder, tmp_path):
    """Where one GPU is all there is: MoCo ImageNet with 2 processes on it (torchrun), gloo carrying DDP's
    all-reduce and the shuffle-BN all-gather of CUDA tensors (NCCL refuses two processes on one GPU); resumed
    from its checkpoint for a second epoch."""
    env = cuda_env()
    if not DRY:
        env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"].split(",")[0]
    args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), *MOCO_IN,
            folder, "-b", 2 * BATCH, "--dist-backend", "gloo", "--output-dir", tmp_path / "r"]
    for epochs, extra in (("1", []), ("2", ["--resume", tmp_path / "r" / "checkpoint_0000.pth.tar"])):
        p = subprocess.run([sys.executable, *map(str, args), "--epochs", epochs, *map(str, extra)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-4000:]
    ck = load(tmp_path / "r" / "checkpoint_0001.pth.tar")
    assert ck["epoch"] == 2 and len(ck["rng_states"]) == 2


@pytest.mark.skipif(DRY or torch.cuda.device_count() < 2,
                    reason="needs 2 GPUs: NCCL runs one process per GPU, so SyncBatchNorm's cross-process "
                           "reduction cannot run on one (test_two_processes_sharing_one_gpu_over_gloo covers the "
                           "2-process collectives there)")
def test_syncbn_across_two_gpus_over_nccl(c10, tmp_path):
    """SyncBatchNorm's reduction over 2 processes on 2 GPUs equals BatchNorm over both batches together
    (forward and input gradients), then SwAV CIFAR under torchrun with --sync_bn pytorch."""
    p = run(["-c", SYNCBN_2GPU])
    assert "syncbn 2 ok" in p.stdout, p.stdout + p.stderr
    run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *SWAV,
         "--data_path", c10, "--dump_path", tmp_path / "r", "--sync_bn", "pytorch"])
    assert load(tmp_path / "r" / "checkpoint.pth.tar")["epoch"] == 1


SYNCBN_2GPU = r"""
import os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp, torch.nn as nn
sys.path.insert(0, os.getcwd())
from common.dist import free_port

def worker(rank, port):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 5, 5, generator=g) * 3 + 1  # both processes' batches
    bn = nn.BatchNorm2d(6).cuda()
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(6))).cuda()
    mine = x[rank].cuda().requires_grad_()
    out = sync(mine)
    out.pow(2).sum().backward()
    both = x.reshape(16, 6, 5, 5).cuda().requires_grad_()
    ref = bn(both)
    ref.pow(2).sum().backward()
    assert torch.allclose(out, ref[8 * rank:8 * rank + 8], atol=1e-5), (out - ref[8 * rank:8 * rank + 8]).abs().max()
    assert torch.allclose(mine.grad, both.grad[8 * rank:8 * rank + 8], atol=1e-4)
    assert torch.allclose(sync[0].running_mean, bn.running_mean, atol=1e-6)
    dist.destroy_process_group()

mp.spawn(worker, nprocs=2, args=(free_port(),))
print("syncbn 2 ok")
"""
