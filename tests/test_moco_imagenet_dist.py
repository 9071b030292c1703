"""MoCo + Un-Mix ImageNet pretraining across 2 CPU processes (gloo): the shuffle-BN / queue collectives,
and the real entry point under torchrun, torch.distributed.launch (--local-rank) and mp.spawn, which
must agree bit for bit, including across a resume."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision.models as models

from common.dist import concat_all_gather, free_port
from conftest import run_script
from UnMix_MoCo.for_ImageNet.moco.builder import MoCo

PRETRAIN = "UnMix_MoCo/for_ImageNet/main_moco_unmix.py"
TINY = ["-a", "resnet18", "-j", "0", "--crop-size", "32", "-p", "100", "-b", "8", "--moco-k", "16",
        "--moco-dim", "8", "--mlp", "--aug-plus", "--cos", "--unmix_prob", "0.5", "--seed", "0"]


def _shuffle_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same model on both processes
    net = MoCo(models.resnet18, dim=8, K=16, m=0.99, T=0.2, mlp=True)
    im_k = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(100 + rank))  # differs per rank
    all_k = concat_all_gather(im_k)

    # 1. the permutation comes from rank 0's CPU generator (ranks draw differently) and is applied globally
    torch.manual_seed(1234 + rank)
    x_shuf, idx_unshuffle = net._batch_shuffle_ddp(im_k)
    perm0 = torch.randperm(8, generator=torch.Generator().manual_seed(1234))
    assert not torch.equal(perm0, torch.arange(8))
    assert torch.equal(x_shuf, all_k[perm0.view(2, -1)[rank]])
    assert torch.equal(all_k[perm0][idx_unshuffle], all_k)

    # 2. eval-mode BN: shuffled keys == the plain per-sample computation, in the original order
    net.encoder_k.eval()
    torch.manual_seed(99)
    k = net._keys(im_k)  # includes the momentum update
    with torch.no_grad():
        ref = F.normalize(net.encoder_k(im_k), dim=1)
    assert torch.allclose(k, ref, atol=1e-6), (k - ref).abs().max()

    # 3. train-mode BN: each key was computed in the shuffled sub-batch it landed in (shuffle BN)
    net.encoder_k.train()
    torch.manual_seed(7)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))
    k = net._keys(im_k)
    with torch.no_grad():
        ref_all = torch.empty(8, 8)
        for r in range(2):
            idx = perm.view(2, -1)[r]
            ref_all[idx] = F.normalize(net.encoder_k(all_k[idx]), dim=1)
    assert torch.allclose(k, ref_all[4 * rank:4 * rank + 4], atol=1e-5)

    # 4. the queue takes the gathered keys of both processes, in rank order, at the pointer
    before = net.queue.clone()
    net._dequeue_and_enqueue(k)
    gathered = concat_all_gather(k)
    assert torch.equal(net.queue[:, :8], gathered.t()) and torch.equal(net.queue[:, 8:], before[:, 8:])
    assert int(net.queue_ptr) == 8
    torch.save(net.queue, f"{out_dir}/queue{rank}.pt")
    dist.destroy_process_group()


def test_batch_shuffle_restores_order_and_queue_takes_gathered_keys(tmp_path):
    mp.spawn(_shuffle_worker, nprocs=2, args=(free_port(), str(tmp_path)))
    assert torch.equal(torch.load(tmp_path / "queue0.pt"), torch.load(tmp_path / "queue1.pt"))


def _load(path):
    return torch.load(path, weights_only=False)


def _assert_same_checkpoint(a, b):
    assert a["epoch"] == b["epoch"] and a["log"] == b["log"]
    assert list(a["state_dict"]) == list(b["state_dict"])
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]), i


def test_two_process_launchers_agree_and_resume_exactly(tmp_path, imagefolder_root):
    # torchrun, 1 epoch
    a = tmp_path / "torchrun"
    p = run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                    PRETRAIN, imagefolder_root, *TINY, "--epochs", "1", "--output-dir", a])
    assert "launcher: 2 process(es), batch 4 each" in p.stdout
    ck = _load(a / "checkpoint_0000.pth.tar")
    assert set(ck) >= {"epoch", "arch", "state_dict", "optimizer"} and ck["epoch"] == 1
    assert all(k.startswith("module.") for k in ck["state_dict"])
    # 24 images / (2 x 4) = 3 steps of 8 gathered keys into a queue of 16
    assert int(ck["state_dict"]["module.queue_ptr"]) == 3 * 8 % 16
    assert len(ck["rng_states"]) == 2
    assert sorted(x.name for x in a.glob("checkpoint_*")) == ["checkpoint_0000.pth.tar"]

    # python -m torch.distributed.launch (which passes --local-rank=N, hyphenated) resumes to epoch 2 ...
    p = run_script(["-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port", free_port(),
                    PRETRAIN, imagefolder_root, *TINY, "--epochs", "2", "--output-dir", a,
                    "--resume", a / "checkpoint_0000.pth.tar"])
    assert "=> loaded checkpoint" in p.stdout and "launcher: 2 process(es)" in p.stdout
    resumed = _load(a / "checkpoint_0001.pth.tar")
    assert resumed["epoch"] == 2 and len(resumed["log"]) == 2

    # ... exactly as an uninterrupted 2-epoch run started the upstream way (mp.spawn, CPU processes)
    c = tmp_path / "spawn"
    p = run_script([PRETRAIN, imagefolder_root, *TINY, "--epochs", "2", "--output-dir", c,
                    "--multiprocessing-distributed", "--nproc", "2", "--world-size", "1", "--rank", "0",
                    "--dist-url", f"tcp://127.0.0.1:{free_port()}"])
    assert "spawn: 2 process(es), batch 4 each" in p.stdout
    _assert_same_checkpoint(_load(c / "checkpoint_0000.pth.tar"), _load(a / "checkpoint_0000.pth.tar"))
    _assert_same_checkpoint(_load(c / "checkpoint_0001.pth.tar"), resumed)
