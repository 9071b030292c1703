"""MoCo v1/v2 + Un-Mix on ImageNet (UnMix_MoCo/for_ImageNet): model layout, training step, schedules,
linear classification and the detectron2 converter. Single-process; the 2-process runs are in
test_moco_imagenet_dist.py."""
import copy
import math
import os
import pickle
import runpy
import subprocess
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as models

from common.cli import CLIError
from conftest import ROOT, assert_clean_error, assert_epoch_lines, run_script
from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls
from UnMix_MoCo.for_ImageNet import main_moco_unmix as pretrain
from UnMix_MoCo.for_ImageNet.moco.builder import MoCo
from UnMix_MoCo.for_ImageNet.moco.train_utils import adjust_learning_rate, module_state_dict

HERE = "UnMix_MoCo/for_ImageNet"
PRETRAIN, LINCLS = f"{HERE}/main_moco_unmix.py", f"{HERE}/main_lincls_unmix.py"
CONVERT = str(Path(__file__).resolve().parents[1] / HERE / "detection" / "convert-pretrain-to-detectron2.py")
TINY = ["-a", "resnet18", "-j", "0", "--crop-size", "32", "-p", "1"]


def released_checkpoint(path, arch="resnet18", mlp=True, dim=16, K=32, seed=0):
    """A pretraining checkpoint in the released layout, from a freshly initialised model."""
    torch.manual_seed(seed)
    net = MoCo(models.__dict__[arch], dim=dim, K=K, mlp=mlp)
    opt = torch.optim.SGD(net.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 200, "arch": arch, "state_dict": module_state_dict(net), "optimizer": opt.state_dict()},
               path)
    return net


# ---------------------------------------------------------------- model layout (upstream's, docs/faithfulness.md)

def test_state_dict_layout_resnet50_mlp_matches_upstream_table():
    torch.manual_seed(0)
    net = MoCo(models.resnet50, dim=128, K=65536, mlp=True)
    sd = module_state_dict(net)
    keys = list(sd)
    assert keys[:2] == ["module.queue", "module.queue_ptr"]  # own buffers first, then encoder_q, encoder_k
    assert sd["module.queue"].shape == (128, 65536) and sd["module.queue"].dtype == torch.float32
    assert sd["module.queue_ptr"].shape == (1,) and sd["module.queue_ptr"].dtype == torch.int64
    assert torch.allclose(sd["module.queue"].norm(dim=0), torch.ones(65536), atol=1e-5)  # unit columns
    assert sd["module.encoder_q.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["module.encoder_q.bn1.num_batches_tracked"].shape == ()
    assert sd["module.encoder_q.fc.0.weight"].shape == (2048, 2048)
    assert sd["module.encoder_q.fc.2.weight"].shape == (128, 2048)
    assert sd["module.encoder_q.fc.2.bias"].shape == (128,)
    assert "module.encoder_q.layer4.2.downsample.0.weight" not in sd  # only block 0 has a shortcut
    assert sd["module.encoder_q.layer4.0.downsample.1.running_var"].shape == (2048,)
    q = [k[len("module.encoder_q."):] for k in keys if k.startswith("module.encoder_q.")]
    k_ = [k[len("module.encoder_k."):] for k in keys if k.startswith("module.encoder_k.")]
    assert q == k_ and len(keys) == 2 + 2 * len(q)
    assert keys.index("module.encoder_k.conv1.weight") > keys.index("module.encoder_q.fc.2.bias")
    # the optimizer sees every q and k tensor, in order: 163 + 163 for ResNet-50 + MLP (upstream's order)
    params = list(net.parameters())
    assert len(params) == 326 and sum(p.requires_grad for p in params) == 163
    for pq, pk in zip(net.encoder_q.parameters(), net.encoder_k.parameters()):
        assert torch.equal(pq, pk)  # key encoder starts as a copy
    plain = MoCo(models.resnet50, dim=128, K=256)
    assert plain.state_dict()["encoder_q.fc.weight"].shape == (128, 2048)


# ---------------------------------------------------------------- mixing RNG (draws recorded from upstream)

class Recorder(nn.Module):
    """Stands in for the model: records what the training step feeds it."""

    def forward(self, im_q, im_k, im_qm=None, im_qm_flip=None, lam=None):
        self.im_qm, self.lam = im_qm, lam
        n = im_q.shape[0]
        logits = torch.zeros(n, 3, requires_grad=True)
        labels = torch.zeros(n, dtype=torch.long)
        return logits, labels, (logits if im_qm is not None else None), (logits if im_qm is not None else None)


def test_training_step_mixing_reproduces_reference_rng_vectors():
    """MoCo-style vectors: np.random.seed(0), one 224 batch, unmix_prob 0.5 (upstream's recorded draws)."""
    x = torch.stack([torch.zeros(3, 224, 224), torch.ones(3, 224, 224)])  # sample 0 = 0, its reverse = 1
    args = Namespace(no_unmix=False, unmix_prob=0.5, beta=1.0)
    expected = [("region", 0.791733, (0, 0, 95, 110)), ("global", 0.172187, None),
                ("global", 0.342337, None), ("global", 0.877496, None)]
    np.random.seed(0)
    model = Recorder()
    for mode, lam, box in expected:
        pretrain.unmix_step(model, x, x.clone(), nn.CrossEntropyLoss(), args)
        assert model.lam == pytest.approx(lam, abs=1e-6)
        mixed0 = model.im_qm[0]
        if mode == "region":  # the reversed batch's pixels (value 1) fill exactly the box
            x1, y1, x2, y2 = box
            want = torch.zeros(3, 224, 224)
            want[:, x1:x2, y1:y2] = 1
            assert torch.equal(mixed0, want)
            assert lam == pytest.approx(1 - (x2 - x1) * (y2 - y1) / 224 ** 2, abs=1e-6)
        else:  # lam * 0 + (1 - lam) * 1 everywhere
            assert torch.allclose(mixed0, torch.full_like(mixed0, 1 - lam), atol=1e-6)
        # sample 1 (ones) receives sample 0 (zeros) in the same box / with the same weights
        assert torch.allclose(model.im_qm[1], 1 - mixed0, atol=1e-6)


def test_plain_moco_switch_draws_nothing_and_uses_clean_loss_only():
    x = torch.randn(4, 3, 8, 8)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    model = Recorder()
    loss, parts, _, _ = pretrain.unmix_step(model, x, x, nn.CrossEntropyLoss(),
                                            Namespace(no_unmix=True, unmix_prob=0.5, beta=1.0))
    assert model.im_qm is None and set(parts) == {"loss_cl"}
    assert np.array_equal(np.random.get_state()[1], before)
    assert loss.item() == pytest.approx(math.log(3))  # zero logits over 3 classes


# ---------------------------------------------------------------- the Un-Mix loss (upstream's step)

def _straightforward_loss(ref, im_q, im_k, mixed, lam, m, T):
    """The objective written out plainly: the reverse mixture is *encoded* (not a flip of features),
    logits by matrix products, CE as -log_softmax of column 0."""
    q = F.normalize(ref.encoder_q(im_q), dim=1)
    qm = F.normalize(ref.encoder_q(mixed), dim=1)
    qmf = F.normalize(ref.encoder_q(mixed.flip(0)), dim=1)
    with torch.no_grad():
        for pq, pk in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            pk.copy_(m * pk + (1 - m) * pq)
        k = F.normalize(ref.encoder_k(im_k), dim=1)  # one process: the shuffle cannot change BN statistics
    queue = ref.queue.clone()

    def ce(z):
        logits = torch.cat([(z * k).sum(1, keepdim=True), z @ queue], dim=1) / T
        return -F.log_softmax(logits, dim=1)[:, 0].mean()

    return ce(q) + lam * ce(qm) + (1 - lam) * ce(qmf), k


@pytest.mark.parametrize("seed,mode", [(0, "region"), (1, "global")])
def test_unmix_loss_and_gradients_equal_straightforward_formula(seed, mode):
    torch.manual_seed(0)
    net = MoCo(models.resnet18, dim=8, K=16, m=0.99, T=0.2, mlp=True)
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    im_q, im_k = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    # the mixture drawn independently of common.mix, from the same NumPy stream
    np.random.seed(seed)
    r, lam = np.random.rand(1)[0], np.random.beta(1.0, 1.0)
    assert (r < 0.5) == (mode == "global")
    if mode == "global":
        mixed = lam * im_q + (1 - lam) * im_q.flip(0)
    else:
        cut = int(16 * math.sqrt(1 - lam))
        cx, cy = np.random.randint(16), np.random.randint(16)
        x1, x2 = max(cx - cut // 2, 0), min(cx + cut // 2, 16)
        y1, y2 = max(cy - cut // 2, 0), min(cy + cut // 2, 16)
        mixed = im_q.clone()
        mixed[:, :, x1:x2, y1:y2] = im_q.flip(0)[:, :, x1:x2, y1:y2]
        lam = 1 - (x2 - x1) * (y2 - y1) / 256
    expected, k = _straightforward_loss(ref, im_q, im_k, mixed, lam, 0.99, 0.2)

    np.random.seed(seed)
    args = Namespace(no_unmix=False, unmix_prob=0.5, beta=1.0)
    loss, parts, _, _ = pretrain.unmix_step(net, im_q, im_k, nn.CrossEntropyLoss(), args)
    assert parts["lam"] == pytest.approx(lam, abs=1e-12)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    expected.backward()
    for (name, a), b in zip(net.encoder_q.named_parameters(), ref.encoder_q.parameters()):
        # BatchNorm over 4 samples amplifies float rounding: compare relative to the gradient's norm
        assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, name
    # only the clean keys enter the queue, at the old pointer; the pointer advances by the batch
    assert torch.allclose(net.queue[:, :4], k.t(), atol=1e-5)
    assert torch.equal(net.queue[:, 4:], ref.queue[:, 4:]) and int(net.queue_ptr) == 4


# ---------------------------------------------------------------- schedules

def test_learning_rate_schedules_match_hand_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = Namespace(lr=0.03, cos=True, epochs=200, schedule=[120, 160])
    assert adjust_learning_rate(opt, 0, cos) == pytest.approx(0.03)
    assert adjust_learning_rate(opt, 100, cos) == pytest.approx(0.015)
    assert adjust_learning_rate(opt, 199, cos) == pytest.approx(0.03 * 0.5 * (1 - 0.9998766324816606))
    assert opt.param_groups[0]["lr"] == pytest.approx(1.8505e-6, rel=1e-3)
    step = Namespace(lr=30.0, epochs=100, schedule=[60, 80])  # lincls: no cos attribute
    assert [adjust_learning_rate(opt, e, step) for e in (0, 59, 60, 79, 80, 99)] == \
        pytest.approx([30, 30, 3, 3, 0.3, 0.3])


# ---------------------------------------------------------------- linear classification (upstream main_lincls.py)

def test_lincls_loading_requires_exactly_fc_missing(tmp_path):
    net = released_checkpoint(tmp_path / "moco.pth.tar")
    model = lincls.build_model("resnet18")
    lincls.load_pretrained(model, tmp_path / "moco.pth.tar")
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, net.encoder_q.state_dict()[k]), k
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert torch.count_nonzero(model.fc.bias) == 0 and 0.005 < model.fc.weight.std() < 0.015
    # one more backbone tensor missing -> refused, naming it
    ckpt = torch.load(tmp_path / "moco.pth.tar", weights_only=False)
    del ckpt["state_dict"]["module.encoder_q.layer1.0.conv1.weight"]
    torch.save(ckpt, tmp_path / "broken.pth.tar")
    with pytest.raises(CLIError, match="layer1.0.conv1.weight"):
        lincls.load_pretrained(lincls.build_model("resnet18"), tmp_path / "broken.pth.tar")
    # saved without DDP's module. prefix: nothing matches
    ckpt["state_dict"] = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "noprefix.pth.tar")
    with pytest.raises(CLIError, match="module.encoder_q"):
        lincls.load_pretrained(lincls.build_model("resnet18"), tmp_path / "noprefix.pth.tar")


def test_lincls_trains_from_released_layout_and_passes_sanity_check(tmp_path, imagefolder_root):
    net = released_checkpoint(tmp_path / "moco.pth.tar")
    out = tmp_path / "lin"
    p = run_script([LINCLS, imagefolder_root, *TINY, "-b", "8", "--epochs", "1", "--lr", "0.1",
                    "--pretrained", tmp_path / "moco.pth.tar", "--output-dir", out])
    assert "=> sanity check passed." in p.stdout
    assert " * Acc@1 " in p.stdout
    assert_epoch_lines(p.stdout, [1], 1, "linear-probe top-1")
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=False)
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18"
    sd = ckpt["state_dict"]
    assert sd["module.fc.weight"].shape == (1000, 512) and sd["module.fc.bias"].shape == (1000,)
    assert torch.count_nonzero(sd["module.fc.bias"]) > 0  # fc was trained (bias starts at 0)
    backbone = net.encoder_q.state_dict()
    for k, v in sd.items():  # frozen, BN statistics included (eval mode throughout)
        if not k.startswith("module.fc."):
            assert torch.equal(v, backbone[k[len("module."):]]), k
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == 2
    assert (out / "model_best.pth.tar").is_file() and (out / "log.csv").is_file()
    # a second run into the same directory refuses to overwrite it
    with pytest.raises(CLIError, match="--resume"):
        lincls.main([str(imagefolder_root), *TINY, "--pretrained", str(tmp_path / "moco.pth.tar"),
                     "--output-dir", str(out)])


def test_lincls_rejects_checkpoint_of_another_architecture(tmp_path, imagefolder_root):
    released_checkpoint(tmp_path / "r18.pth.tar", arch="resnet18")
    p = run_script([LINCLS, imagefolder_root, "-a", "resnet34", "-j", "0", "--pretrained", tmp_path / "r18.pth.tar",
                    "--output-dir", tmp_path / "lin"], check=False)
    assert_clean_error(p, "does not match", "missing")
    assert not (tmp_path / "lin" / "checkpoint.pth.tar").exists()


# ---------------------------------------------------------------- pretraining script, single process

def test_pretrain_single_process_writes_upstream_checkpoint(tmp_path, imagefolder_root):
    """The real entry point, no launcher: a world of 1 (upstream raised NotImplementedError)."""
    out = tmp_path / "run"
    p = run_script([PRETRAIN, imagefolder_root, *TINY, "-b", "8", "--epochs", "1", "--moco-k", "16",
                    "--moco-dim", "8", "--mlp", "--aug-plus", "--cos", "--output-dir", out, "--seed", "0"])
    assert "single: 1 process" in p.stdout
    assert_epoch_lines(p.stdout, [1], 1, "pretext top-1")
    ckpt = torch.load(out / "checkpoint_0000.pth.tar", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18"
    assert "scaler" not in ckpt  # without --amp: upstream's keys (plus rng_states, log)
    torch.manual_seed(0)
    fresh = MoCo(models.resnet18, dim=8, K=16, mlp=True)
    want = module_state_dict(fresh)
    sd = ckpt["state_dict"]
    assert list(sd) == list(want) and all(sd[k].shape == want[k].shape for k in want)
    assert int(sd["module.queue_ptr"]) == 8 * 3 % 16  # 3 steps of 8 keys each into a queue of 16
    opt = ckpt["optimizer"]
    assert len(opt["param_groups"][0]["params"]) == len(list(fresh.parameters()))  # q and k tensors
    assert len(opt["state"]) == len(list(fresh.encoder_q.parameters()))  # only q tensors get momentum
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].split(",")[:4] == ["epoch", "lr", "loss", "loss_cl"] and len(log) == 2


def test_pretrain_resume_is_bit_exact_in_process(tmp_path, imagefolder_root):
    """2 epochs straight == 1 epoch + --resume for 1 more (weights, queue, momentum, log), world of 1."""
    common = [str(imagefolder_root), *TINY, "-b", "8", "--moco-k", "16", "--moco-dim", "8", "--mlp",
              "--unmix_prob", "0.5", "--seed", "3"]
    pretrain.main(common + ["--epochs", "2", "--output-dir", str(tmp_path / "a")])
    pretrain.main(common + ["--epochs", "1", "--output-dir", str(tmp_path / "b")])
    pretrain.main(common + ["--epochs", "2", "--output-dir", str(tmp_path / "b"),
                            "--resume", str(tmp_path / "b" / "checkpoint_0000.pth.tar")])
    a = torch.load(tmp_path / "a" / "checkpoint_0001.pth.tar", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint_0001.pth.tar", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["log"] == b["log"] and len(a["log"]) == 2
    assert (tmp_path / "b" / "log.csv").read_text() == (tmp_path / "a" / "log.csv").read_text()
    # the finished run refuses a fresh start in its directory; another architecture cannot resume it
    with pytest.raises(CLIError, match="--resume"):
        pretrain.main(common + ["--epochs", "1", "--output-dir", str(tmp_path / "a")])
    with pytest.raises(CLIError, match="does not match"):
        pretrain.main([*common[:1], "-a", "resnet34", *common[3:], "--epochs", "3", "--output-dir",
                       str(tmp_path / "a"), "--resume", str(tmp_path / "a" / "checkpoint_0001.pth.tar")])


@pytest.mark.parametrize("case", ["no_data", "flat_folder", "queue", "corrupt", "html", "batch"])
def test_pretrain_user_errors_are_caught_before_starting(tmp_path, imagefolder_root, case):
    args = [str(imagefolder_root), *TINY, "-b", "8", "--moco-k", "16", "--output-dir", str(tmp_path / "o")]
    if case == "no_data":
        args[0], frag = str(tmp_path / "nowhere"), "does not exist"
    elif case == "flat_folder":
        (tmp_path / "flat" / "train").mkdir(parents=True)
        (tmp_path / "flat" / "train" / "x.png").write_bytes(b"")
        args[0], frag = str(tmp_path / "flat"), "no class sub-folders"
    elif case == "queue":
        args += ["--moco-k", "20"]
        frag = "multiple of the global batch"
    elif case == "batch":
        args += ["-b", "64", "--moco-k", "64"]
        frag = "fewer than one batch"
    else:
        bad = tmp_path / "bad.pth.tar"
        bad.write_bytes(b"PK\x03\x04 truncated" if case == "corrupt" else b"<!DOCTYPE html><html>quota</html>")
        args += ["--resume", str(bad)]
        frag = "cannot read checkpoint" if case == "corrupt" else "HTML page"
    with pytest.raises(CLIError, match=frag):
        pretrain.main(args)
    assert not list((tmp_path / "o").glob("checkpoint_*"))


def test_help_shows_upstream_defaults():
    out = " ".join(pretrain.get_parser().format_help().split())
    for frag in ["run.sh passes 0.5 (default: 0.0)", "(default: 65536)", "(default: 0.999)", "(default: 0.07)",
                 "(default: 224)", "(default: [120, 160])", "(default: resnet50)", "(default: 0.03)",
                 "(default: 256)", "(default: 200)", "(default: tcp://localhost:10002)"]:
        assert frag in out, frag
    for flag in ("--local-rank=1", "--local_rank=1"):  # torch.distributed.launch >= 2.0 passes the first
        assert pretrain.get_parser().parse_args(["data", flag]).local_rank == 1
    out = " ".join(lincls.get_parser().format_help().split())
    for frag in ["(default: 30.0)", "(default: [60, 80])", "(default: 100)", "(default: 0.0)",
                 "(default: tcp://localhost:10002)"]:
        assert frag in out, frag


def test_slurm_and_torchrun_environments_are_planned_per_process(monkeypatch):
    from common.dist import per_process, plan_launch
    args = pretrain.get_parser().parse_args(["data"])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert plan_launch(args).mode == "single"
    # srun: 2 nodes x 16 tasks ("16(x2)"); upstream's SwAV parser read only the first character
    setenv = lambda **kv: [monkeypatch.setenv(k, v) for k, v in kv.items()]  # noqa: E731
    setenv(SLURM_JOB_ID="1", SLURM_PROCID="17", SLURM_NTASKS="32", SLURM_LOCALID="1", SLURM_TASKS_PER_NODE="16(x2)")
    plan = plan_launch(args)
    assert (plan.mode, plan.world, plan.procs_per_node, plan.dist_url) == ("launcher", 32, 16, "tcp://localhost:10002")
    assert per_process(256, plan) == 16  # -b stays the per-node total
    # srun with one task per node + --multiprocessing-distributed: Slurm tasks count nodes (upstream's env://)
    setenv(SLURM_PROCID="1", SLURM_NTASKS="2")
    args_mp = pretrain.get_parser().parse_args(["data", "--multiprocessing-distributed", "--nproc", "3"])
    plan = plan_launch(args_mp)
    assert (plan.mode, plan.world, plan.procs_per_node, plan.node_rank) == ("spawn", 6, 3, 1)
    # torchrun wins over Slurm variables and rendezvous through env://
    setenv(RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1234")
    plan = plan_launch(args)
    assert (plan.mode, plan.world, plan.procs_per_node, plan.dist_url) == ("launcher", 4, 2, "env://")


# ---------------------------------------------------------------- detection converter (upstream's key renaming)

def detectron2_r50_c4_shapes():
    """detectron2's ResNet-50 parameter names and shapes, from its architecture (stem + res2..res5 of
    3/4/6/3 bottlenecks; the first block of a stage has a projection shortcut)."""
    def conv(name, out_c, in_c, k):
        return {f"{name}.weight": (out_c, in_c, k, k),
                **{f"{name}.norm.{s}": (out_c,) for s in ("weight", "bias", "running_mean", "running_var")}}

    shapes = conv("stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, (n, b) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        out_c = 4 * b
        for j in range(n):
            c = in_c if j == 0 else out_c
            shapes.update(conv(f"res{stage}.{j}.conv1", b, c, 1))
            shapes.update(conv(f"res{stage}.{j}.conv2", b, b, 3))
            shapes.update(conv(f"res{stage}.{j}.conv3", out_c, b, 1))
            if j == 0:
                shapes.update(conv(f"res{stage}.{j}.shortcut", out_c, c, 1))
        in_c = out_c
    return shapes


def test_detectron2_converter_names_and_shapes_for_r50_c4(tmp_path, capsys):
    torch.manual_seed(0)
    net = MoCo(models.resnet50, dim=128, K=256, mlp=True)
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": module_state_dict(net)}, tmp_path / "in.pth.tar")
    convert = runpy.run_path(CONVERT)  # the script's file name has hyphens: load it by path
    convert["main"]([str(tmp_path / "in.pth.tar"), str(tmp_path / "out.pkl")])
    assert "layer3.2.bn2.bias -> res4.2.conv2.norm.bias" in capsys.readouterr().out
    with open(tmp_path / "out.pkl", "rb") as f:
        obj = pickle.load(f)
    assert obj["__author__"] == "MOCO" and obj["matching_heuristics"] is True
    model = obj["model"]
    want = detectron2_r50_c4_shapes()
    body = {k: v for k, v in model.items() if not k.endswith("num_batches_tracked") and not k.startswith("stem.fc.")}
    assert set(body) == set(want)
    for k, shape in want.items():
        assert isinstance(body[k], np.ndarray) and body[k].shape == shape, k
    assert {k for k in model if k.startswith("stem.fc.")} == {"stem.fc.0.weight", "stem.fc.0.bias",
                                                              "stem.fc.2.weight", "stem.fc.2.bias"}
    q = net.encoder_q.state_dict()
    assert np.array_equal(model["res2.0.shortcut.norm.weight"], q["layer1.0.downsample.1.weight"].numpy())
    assert np.array_equal(model["stem.conv1.norm.running_var"], q["bn1.running_var"].numpy())
    # no encoder_k, queue or foreign keys
    assert not any("encoder_k" in k or "queue" in k for k in model)
    with pytest.raises(CLIError, match="--force"):
        convert["main"]([str(tmp_path / "in.pth.tar"), str(tmp_path / "out.pkl")])
    # a checkpoint without module.encoder_q.* (e.g. a linear classifier's) is refused
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, tmp_path / "lin.pth.tar")
    with pytest.raises(CLIError, match="module.encoder_q"):
        convert["main"]([str(tmp_path / "lin.pth.tar"), str(tmp_path / "lin.pkl")])


def test_run_sh_resolves_relative_data_and_out_from_the_callers_directory(tmp_path):
    """run.sh changes into its own folder: DATA and OUT given relative to the caller, or OUT absolute
    (detection used to prefix it with ../), must reach the scripts as the caller's paths."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$PWD|$*" >> {log}\n')
    fake.chmod(0o755)
    (tmp_path / "imnet").mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DATA="imnet", OUT="out")
    script = str(ROOT / HERE / "run.sh")
    for what in ("pretrain", "lincls", "detection"):
        subprocess.run(["bash", script, what], cwd=tmp_path, env=env, check=True)
    env["OUT"] = str(tmp_path / "abs_out")
    subprocess.run(["bash", script, "detection"], cwd=tmp_path, env=env, check=True)
    calls = [line.split("|", 1)[1].split() for line in log.read_text().splitlines()]
    assert calls[0][-1] == str(tmp_path / "imnet")
    assert calls[0][calls[0].index("--output-dir") + 1] == str(tmp_path / "out")
    assert calls[1][calls[1].index("--pretrained") + 1] == str(tmp_path / "out" / "checkpoint_0199.pth.tar")
    assert calls[1][-1] == str(tmp_path / "imnet")
    for argv, out in ((calls[3], tmp_path / "out"), (calls[6], tmp_path / "abs_out")):
        assert argv[argv.index("MODEL.WEIGHTS") + 1] == str(out / "detectron2.pkl")


def test_pretrain_amp_runs_and_saves_the_scaler_state(tmp_path, imagefolder_root):
    """--amp (the shared addition; upstream MoCo had none): autocast bfloat16 on the CPU, finite loss, the
    GradScaler state in the checkpoint (a default run's has upstream's keys only: the single-process test)."""
    common = [str(imagefolder_root), *TINY, "-b", "8", "--moco-k", "16", "--moco-dim", "8", "--epochs", "1",
              "--unmix_prob", "0.5", "--seed", "0"]
    pretrain.main(common + ["--amp", "--output-dir", str(tmp_path / "amp")])
    ckpt = torch.load(tmp_path / "amp" / "checkpoint_0000.pth.tar", weights_only=False)
    assert "scaler" in ckpt and math.isfinite(ckpt["log"][0]["loss"])
