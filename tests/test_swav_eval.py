"""SwAV linear / semi-supervised evaluation entry points, run as a user would (subprocesses, tiny data).

Independent facts: upstream's dump layout and checkpoint keys (upstream's
`eval_linear.py` / `eval_semisup.py`), the eval normalisation constants written out here, and a plain
re-computation of the validation loss / top-1 from the files the run wrote.
"""
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, assert_clean_error, assert_epoch_lines, run_script, script_env
from fakedata import make_cifar
from common.dist import free_port
from common.cli import CLIError
from UnMix_SwAV.swav import linear, semisup
from UnMix_SwAV.swav.resnet import resnet18, resnet50

CIFAR_EVAL = "UnMix_SwAV/for_CIFAR/eval_linear.py"
IMAGENET_EVAL = "UnMix_SwAV/for_ImageNet/eval_linear.py"
SEMISUP = "UnMix_SwAV/for_ImageNet/eval_semisup.py"
FAST = ["--workers", "0", "--batch_size", "8"]


def pretraining_checkpoint(path, cifar_stem=True, arch=resnet18, seed=123):
    """A SwAV+Un-Mix pretraining checkpoint as upstream writes it: DDP ``module.`` keys with the
    projection head and prototypes, plus an optimizer state; BN running statistics set from data."""
    torch.manual_seed(seed)
    m = arch(normalize=True, hidden_mlp=512, output_dim=128, nmb_prototypes=100, cifar_stem=cifar_stem)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = 1.0  # running stats := the statistics of one batch
    m.train()
    with torch.no_grad():
        m(torch.randn(16, 3, 32, 32))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 2, "state_dict": {"module." + k: t for k, t in m.state_dict().items()},
                "optimizer": opt.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return pretraining_checkpoint(tmp_path_factory.mktemp("pre") / "checkpoint.pth.tar")


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("c10small"), "cifar10", n_train=32, n_test=16)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """root/{train,val}/<wnid>/<wnid>_<n>.JPEG (SimCLR subset names) + root/1percent.txt."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.RandomState(0)
    listed = []
    for split in ("train", "val"):
        for c in range(3):
            wnid = f"n0000000{c}"
            (root / split / wnid).mkdir(parents=True)
            for j in range(4):
                img = (rng.rand(36, 36, 3) * 255).astype("uint8")
                img[..., c] = 255  # a class-dependent colour, so there is something to learn
                Image.fromarray(img).save(root / split / wnid / f"{wnid}_{j}.JPEG", format="JPEG")
                if split == "train" and j < 2:
                    listed.append(f"{wnid}_{j}.JPEG")
    (root / "1percent.txt").write_text("\n".join(listed) + "\n")
    return root


def final_accuracy(stdout, label="Top-1 test accuracy: "):
    line = [ln for ln in stdout.splitlines() if label in ln]
    assert line, stdout[-2000:]
    return float(line[-1].split(label)[1].split(",")[0])


@pytest.fixture(scope="module")
def full_run(ckpt, small_cifar, tmp_path_factory):
    """A 2-epoch CIFAR linear evaluation of the pretraining checkpoint: (dump folder, stdout)."""
    dump = tmp_path_factory.mktemp("lin") / "full"
    p = run_script([CIFAR_EVAL, "--data_path", small_cifar, "--pretrained", ckpt, "--dump_path", dump,
                    "--epochs", "2", *FAST])
    return dump, p.stdout


def test_cifar_linear_eval_loads_pretraining_checkpoint_and_writes_upstream_layout(full_run, ckpt, small_cifar):
    dump, stdout = full_run
    reported = final_accuracy(stdout)
    assert "Loaded 174 backbone tensors" in stdout  # 184 keys minus the 10 head/prototype entries

    # upstream layout
    for f in ("checkpoint.pth.tar", "params.pkl", "stats0.pkl", "train.log"):
        assert (dump / f).is_file(), f
    assert (dump / "checkpoints").is_dir()
    with open(dump / "params.pkl", "rb") as f:
        assert pickle.load(f).pretrained == str(ckpt)
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert {"epoch", "state_dict", "optimizer", "scheduler", "best_acc"} <= set(out)
    assert out["epoch"] == 2
    assert {k: tuple(t.shape) for k, t in out["state_dict"].items()} == {
        "module.linear.weight": (10, 2048), "module.linear.bias": (10,)}
    stats = pd.read_pickle(dump / "stats0.pkl")
    assert list(stats.columns) == ["epoch", "loss", "prec1", "prec5", "loss_val", "prec1_val", "prec5_val"]
    assert list(stats["epoch"]) == [0, 1] and out["best_acc"] == pytest.approx(stats["prec1_val"].max())
    assert f"{reported:.1f}" == f"{stats['prec1_val'].max():.1f}"
    assert "Top-1 test accuracy" in (dump / "train.log").read_text()

    # recompute the validation numbers from the files: the pretrained backbone (strict load), the
    # saved linear layer, upstream's eval normalisation, the full 32x32 test images
    backbone = resnet18(output_dim=0, eval_mode=True, cifar_stem=True).eval()
    sd = torch.load(ckpt, weights_only=False)["state_dict"]
    backbone.load_state_dict({k[7:]: t for k, t in sd.items()
                              if not k.startswith(("module.projection_head", "module.prototypes"))})
    with open(os.path.join(small_cifar, "cifar-10-batches-py", "test_batch"), "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    x = torch.tensor(batch["data"], dtype=torch.float32).view(-1, 3, 32, 32) / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    y = torch.tensor(batch["labels"])
    with torch.no_grad():
        feats = backbone((x - mean) / std).mean(dim=(2, 3))
    logits = feats @ out["state_dict"]["module.linear.weight"].t() + out["state_dict"]["module.linear.bias"]
    top1 = (logits.argmax(1) == y).float().mean().item() * 100
    assert stats["prec1_val"].iloc[-1] == pytest.approx(top1, abs=1e-4)
    # the per-batch average of upstream's validate equals the global mean here (equal batch weights)
    assert stats["loss_val"].iloc[-1] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)


def test_resume_continues_exactly_and_runs_are_not_overwritten(full_run, ckpt, small_cifar, tmp_path):
    common = [CIFAR_EVAL, "--data_path", small_cifar, "--pretrained", ckpt, "--epochs", "2", *FAST]
    # the same run, killed (SIGKILL) as soon as its first checkpoint exists, then resumed
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, *map(str, common), "--dump_path", str(part)], cwd=ROOT,
                            env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (part / "checkpoint.pth.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    killed_at = torch.load(part / "checkpoint.pth.tar", weights_only=False)["epoch"]
    assert killed_at < 2, "the run finished before it could be interrupted"
    with pytest.raises(CLIError, match="already holds a run.*--resume"):
        linear.main("cifar", [str(a) for a in common[1:]] + ["--dump_path", str(part)])
    # a copy in the earlier checkpoint format: rank 0's "stats" rows and "rng" state only
    old = tmp_path / "old"
    shutil.copytree(part, old)
    ck = torch.load(old / "checkpoint.pth.tar", weights_only=False)
    ck["stats"], ck["rng"] = ck["stats"][0], ck.pop("rng_states")[0]
    torch.save(ck, old / "checkpoint.pth.tar")
    p = run_script(common + ["--dump_path", part, "--resume", "true"])
    assert f"resuming from epoch {killed_at}" in p.stdout
    run_script(common + ["--dump_path", old, "--resume", "true"])
    pd.testing.assert_frame_equal(pd.read_pickle(old / "stats0.pkl"), pd.read_pickle(full_run[0] / "stats0.pkl"))
    assert torch.equal(torch.load(old / "checkpoint.pth.tar", weights_only=False)["state_dict"]["module.linear.weight"],
                       torch.load(full_run[0] / "checkpoint.pth.tar", weights_only=False)["state_dict"]["module.linear.weight"])
    full = pd.read_pickle(full_run[0] / "stats0.pkl")
    resumed = pd.read_pickle(part / "stats0.pkl")
    pd.testing.assert_frame_equal(full, resumed)
    a = torch.load(full_run[0] / "checkpoint.pth.tar", weights_only=False)
    b = torch.load(part / "checkpoint.pth.tar", weights_only=False)
    assert torch.equal(a["state_dict"]["module.linear.weight"], b["state_dict"]["module.linear.weight"])
    assert a["best_acc"] == b["best_acc"] and a["scheduler"] == b["scheduler"]


def test_resume_alone_continues_with_the_recorded_settings(full_run, ckpt, small_cifar, tmp_path, capsys):
    """``--resume true`` with no other option continues the run as it was started (the defaults would be
    ./cifar10, random weights, batch 32, 20 workers): data, backbone, batch size and workers come from the
    checkpoint's recorded settings; --epochs given again overrides its record, named on one line."""
    dump = shutil.copytree(full_run[0], tmp_path / "run")
    capsys.readouterr()
    linear.main("cifar", ["--dump_path", str(dump), "--resume", "true", "--epochs", "3"])
    assert (f"=> resuming with the settings recorded in {dump / 'checkpoint.pth.tar'}; overridden on the command "
            "line: --epochs 3 (recorded: 2)") in capsys.readouterr().out
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert out["epoch"] == 3
    assert {k: out["args"][k] for k in ("data_path", "pretrained", "batch_size", "workers", "epochs")} == \
        {"data_path": str(small_cifar), "pretrained": str(ckpt), "batch_size": 8, "workers": 0, "epochs": 3}
    log = (dump / "train.log").read_text()
    assert "Epoch[2] - Iter: [0/4]" in log  # the epoch after resume: 32 images in batches of 8
    assert log.count("Loaded 174 backbone tensors") == 2  # the pretrained backbone again, not random weights


def _moco_checkpoint(path):
    m = resnet18(output_dim=0, cifar_stem=True)
    torch.save({"state_dict": {"module.encoder_q." + k: t for k, t in m.state_dict().items()}}, path)


def _imagenet_stem_checkpoint(path):
    pretraining_checkpoint(path, cifar_stem=False)


def _resnet50_checkpoint(path):
    torch.save({"state_dict": {"module." + k: t for k, t in resnet50(output_dim=0, cifar_stem=True).state_dict().items()}},
               path)


def _truncated(path):
    m = resnet18(output_dim=0, cifar_stem=True)
    torch.save({"state_dict": m.state_dict()}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def _no_tensors(path):
    torch.save({"state_dict": {"conv1.weight": "not a tensor"}}, path)


@pytest.mark.parametrize("make,fragments", [
    (_moco_checkpoint, ["does not match", "missing keys", "unexpected keys"]),
    (_imagenet_stem_checkpoint, ["does not match", "conv1.weight"]),
    (_resnet50_checkpoint, ["does not match", "unexpected keys"]),
    (_truncated, ["cannot read checkpoint"]),
    (_no_tensors, ["holds no state_dict"]),
], ids=["moco-keys", "imagenet-stem", "resnet50-as-resnet18", "truncated", "no-tensors"])
def test_foreign_or_broken_checkpoint_is_refused(make, fragments, small_cifar, tmp_path):
    bad = tmp_path / "bad.pth.tar"
    make(bad)
    dump = tmp_path / "dump"
    with pytest.raises(CLIError) as e:
        linear.main("cifar", ["--data_path", str(small_cifar), "--pretrained", str(bad), "--dump_path", str(dump),
                              "--epochs", "1", *FAST])
    for frag in fragments:
        assert frag in str(e.value)
    assert not dump.exists()  # refused before anything was written


def test_refusal_is_one_clean_line_from_the_entry_point(small_cifar, tmp_path):
    bad = tmp_path / "moco.pth.tar"
    _moco_checkpoint(bad)
    p = run_script([CIFAR_EVAL, "--data_path", small_cifar, "--pretrained", bad, "--dump_path", tmp_path / "d"],
                   check=False)
    assert_clean_error(p, "eval_linear.py: error: pretrained weights", "encoder_q")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,fragment", [
    (["--pretrained", "/nonexistent/ckpt.pth"], "does not exist"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--global_pooling", "false"], "--global_pooling false"),
    (["--data_path", "/nonexistent/cifar"], "neither"),
    (["--num_labels", "5"], "smaller than the 10 classes"),
], ids=["missing-checkpoint", "zero-epochs", "no-global-pool-on-cifar", "missing-data", "too-few-labels"])
def test_bad_arguments_give_one_clean_error(args, fragment, small_cifar, tmp_path):
    base = {"--data_path": str(small_cifar), "--dump_path": str(tmp_path / "d")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    with pytest.raises(CLIError, match=re.escape(fragment)):
        linear.main("cifar", [x for kv in base.items() for x in kv] + FAST)
    assert not (tmp_path / "d").exists()


def test_two_process_gloo_linear_eval(ckpt, small_cifar, tmp_path):
    dump = tmp_path / "ddp"
    p = run_script(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_port", str(free_port()), CIFAR_EVAL, "--data_path", small_cifar,
                    "--pretrained", ckpt, "--dump_path", dump, "--epochs", "1", *FAST], timeout=300)
    assert 0 <= final_accuracy(p.stdout) <= 100
    assert (dump / "train.log").is_file() and (dump / "train.log-1").is_file()
    assert (dump / "stats0.pkl").is_file() and (dump / "stats1.pkl").is_file()
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert set(out["state_dict"]) == {"module.linear.weight", "module.linear.bias"}
    # each rank trained on its half of the 32 images (DistributedSampler), validated on all 16
    log = (dump / "train.log").read_text()
    assert "Iter: [0/2]" in log  # 16 images per rank, batches of 8


STOP_AFTER_FIRST_CHECKPOINT = """
import os, sys
sys.path.insert(0, {root!r})
from UnMix_SwAV.swav import linear
save = linear.save_atomic
def save_and_die(obj, path):  # rank 0 is killed right after writing its first checkpoint
    save(obj, path)
    os._exit(3)
linear.save_atomic = save_and_die
linear.main("cifar", sys.argv[1:])
"""


def test_two_process_resume_keeps_every_process_history(ckpt, small_cifar, tmp_path):
    """Each process resumes with its own stats rows (stats1.pkl is not seeded with rank 0's) and RNG state."""
    def torchrun(script, dump, *extra, check=True):
        return run_script(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), script, "--data_path", small_cifar,
                           "--pretrained", ckpt, "--dump_path", dump, "--epochs", "2", *FAST, *extra],
                          timeout=300, check=check)

    full, part = tmp_path / "full", tmp_path / "part"
    torchrun(CIFAR_EVAL, full)
    out = torch.load(full / "checkpoint.pth.tar", weights_only=True)
    for r in range(2):
        assert out["stats"][r] == list(pd.read_pickle(full / f"stats{r}.pkl").itertuples(index=False, name=None))
    assert len(out["rng_states"]) == 2
    a, b = (pd.read_pickle(full / f"stats{r}.pkl") for r in range(2))
    assert not a["loss"].equals(b["loss"])  # each process trains on its own half: the histories differ

    stop = tmp_path / "stop.py"
    stop.write_text(STOP_AFTER_FIRST_CHECKPOINT.format(root=str(ROOT)))
    assert torchrun(stop, part, check=False).returncode != 0
    assert torch.load(part / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    torchrun(CIFAR_EVAL, part, "--resume", "true")
    for r in range(2):
        pd.testing.assert_frame_equal(pd.read_pickle(part / f"stats{r}.pkl"), pd.read_pickle(full / f"stats{r}.pkl"))
    res = torch.load(part / "checkpoint.pth.tar", weights_only=True)
    assert torch.equal(res["state_dict"]["module.linear.weight"], out["state_dict"]["module.linear.weight"])
    assert res["stats"] == out["stats"] and res["best_acc"] == out["best_acc"]


def test_imagenet_linear_eval_on_an_image_folder(imagenet_like, tmp_path):
    ck = pretraining_checkpoint(tmp_path / "in.pth.tar", cifar_stem=False)
    dump = tmp_path / "lin"
    p = run_script([IMAGENET_EVAL, "--data_path", imagenet_like, "--arch", "resnet18", "--crop_size", "32",
                    "--val_resize", "36", "--pretrained", ck, "--dump_path", dump, "--epochs", "1",
                    "--workers", "0", "--batch_size", "4"])
    assert 0 <= final_accuracy(p.stdout) <= 100
    assert_epoch_lines(p.stdout, [1], 1, "linear-probe top-1")
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert out["state_dict"]["module.linear.weight"].shape == (3, 2048)  # classes from the folder
    # a CIFAR-stem checkpoint does not fit the ImageNet stem
    bad = pretraining_checkpoint(tmp_path / "cifar.pth.tar", cifar_stem=True)
    with pytest.raises(CLIError, match="conv1.weight"):
        linear.main("imagenet", ["--data_path", str(imagenet_like), "--arch", "resnet18", "--pretrained", str(bad),
                                 "--dump_path", str(tmp_path / "x")])
    with pytest.raises(CLIError, match="does not exist"):
        linear.main("imagenet", ["--data_path", str(tmp_path / "nothing"), "--arch", "resnet18",
                                 "--dump_path", str(tmp_path / "y")])
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    with pytest.raises(CLIError, match="no val/ folder"):
        linear.main("imagenet", ["--data_path", str(tmp_path / "noval"), "--arch", "resnet18",
                                 "--dump_path", str(tmp_path / "z")])


def test_semisup_fine_tunes_on_the_local_subset(imagenet_like, tmp_path):
    ck = pretraining_checkpoint(tmp_path / "in.pth.tar", cifar_stem=False)
    dump = tmp_path / "semi"
    p = run_script([SEMISUP, "--data_path", imagenet_like, "--labels_perc", "1", "--arch", "resnet18",
                    "--crop_size", "32", "--val_resize", "36", "--pretrained", ck, "--dump_path", dump,
                    "--epochs", "1", "--workers", "0", "--batch_size", "3"])
    assert "Test accuracies: top-1" in p.stdout
    assert_epoch_lines(p.stdout, [1], 1, "fine-tuned top-1")
    assert "with 6 labelled images (1%)" in p.stdout  # exactly the listed files
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert {"epoch", "state_dict", "optimizer", "scheduler", "best_acc"} <= set(out)
    assert out["state_dict"]["module.projection_head.weight"].shape == (3, 2048)
    assert [g["lr"] for g in out["optimizer"]["param_groups"]] == [0.01, 0.2]  # trunk, head
    assert len(out["best_acc"]) == 2

    # no network: a missing list is a clean error pointing to where to get it
    with pytest.raises(CLIError, match="10percent.txt.*google-research/simclr"):
        semisup.main(["--data_path", str(imagenet_like), "--labels_perc", "10", "--dump_path", str(tmp_path / "a")])
    lst = tmp_path / "bad.txt"
    lst.write_text("n00000000_0.JPEG\nn00000000_99.JPEG\n")
    with pytest.raises(CLIError, match="1 images of the subset list are missing.*n00000000_99.JPEG"):
        semisup.main(["--data_path", str(imagenet_like), "--subset_file", str(lst), "--arch", "resnet18",
                      "--dump_path", str(tmp_path / "b")])
    lst.write_text("n99999999_0.JPEG\n")
    with pytest.raises(CLIError, match="not folders"):
        semisup.main(["--data_path", str(imagenet_like), "--subset_file", str(lst), "--arch", "resnet18",
                      "--dump_path", str(tmp_path / "c")])
    assert not any((tmp_path / d).exists() for d in "abc")

    # --resume true alone continues the run with its recorded settings (the defaults would be /path/to/imagenet,
    # 10%, resnet50, 224 px, batch 32, random weights); --epochs given again overrides its record
    semisup.main(["--dump_path", str(dump), "--resume", "true", "--epochs", "2"])
    out = torch.load(dump / "checkpoint.pth.tar", weights_only=False)
    assert out["epoch"] == 2 and {k: out["args"][k] for k in ("labels_perc", "arch", "crop_size", "batch_size",
                                                               "pretrained", "epochs")} == \
        {"labels_perc": "1", "arch": "resnet18", "crop_size": 32, "batch_size": 3, "pretrained": str(ck), "epochs": 2}
    assert "Epoch[1] - Iter: [0/2]" in (dump / "train.log").read_text()  # 6 labelled images in batches of 3


@pytest.mark.parametrize("parser,defaults", [
    (lambda: linear.build_parser("cifar"), ["(default: 0.3)", "(default: 32)", "(default: resnet18)",
                                            "(default: cifar10)"]),
    (lambda: linear.build_parser("imagenet"), ["(default: 0.3)", "(default: 224)", "(default: resnet50)",
                                               "(default: 256)"]),
    (semisup.build_parser, ["(default: 0.01)", "(default: 0.2)", "(default: [12, 16])", "(default: 20)"]),
], ids=["cifar-linear", "imagenet-linear", "semisup"])
def test_help_shows_defaults(parser, defaults):
    out = " ".join(parser().format_help().split())
    for d in defaults:
        assert d in out, d


def test_load_backbone_accepts_the_released_formats(tmp_path):
    """Raw ``module.`` state_dicts (Facebook's swav_*_pretrain.pth.tar), unprefixed ones, and a torchvision
    ResNet-50 (its ``fc`` dropped, like the prototypes) all load into the ImageNet-stem backbone."""
    import torchvision
    torch.manual_seed(0)
    src = resnet50(normalize=True, hidden_mlp=2048, output_dim=128, nmb_prototypes=3000)
    tv = torchvision.models.resnet50(weights=None)
    files = {"raw_module": {"module." + k: t for k, t in src.state_dict().items()},
             "plain": {"state_dict": src.state_dict()},
             "torchvision": tv.state_dict()}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        target = resnet50(output_dim=0, eval_mode=True)
        msg = linear.load_backbone(target, tmp_path / name)
        ref = tv if name == "torchvision" else src
        assert torch.equal(target.layer4[2].conv3.weight, ref.layer4[2].conv3.weight), name
        assert torch.equal(target.bn1.running_var, ref.bn1.running_var), name
        # ResNet-50: 53 convs (stem + 16 blocks x 3 + 4 downsample) and 53 BNs x 5 entries = 318 tensors
        assert "Loaded 318 backbone tensors" in msg, msg


def test_torch_distributed_launch_passes_local_rank(ckpt, small_cifar, tmp_path):
    """upstream's single-node line: ``python -m torch.distributed.launch --nproc_per_node=1`` (PyTorch >= 2
    passes ``--local-rank=0``, which upstream's parser rejected)."""
    p = run_script(["-m", "torch.distributed.launch", "--nproc_per_node=1", "--master_port", str(free_port()),
                    CIFAR_EVAL, "--data_path", small_cifar, "--pretrained", ckpt, "--dump_path", tmp_path / "l",
                    "--epochs", "1", *FAST], timeout=300)
    assert "Top-1 test accuracy:" in p.stdout


@pytest.mark.parametrize("extra,lr", [([], None), (["--lr", "0.5"], 0.5)], ids=["epochs", "epochs-and-lr"])
def test_resume_with_other_schedule_settings_follows_the_command_line(full_run, tmp_path, capsys, extra, lr):
    """A 2-epoch run resumed to 4 epochs trains epochs 3 and 4 on the cosine of a 4-epoch run (lr0 * (1 + cos(pi
    t / 4)) / 2 at t = 2, 3), not on the restored 2-epoch schedule (lr 0 at t = 2, then rising again); a --lr given
    again is that cosine's lr0 (the restored scheduler kept the recorded one)."""
    dump = shutil.copytree(full_run[0], tmp_path / "run")
    lr0 = lr or torch.load(dump / "checkpoint.pth.tar", weights_only=False)["args"]["lr"]
    capsys.readouterr()
    linear.main("cifar", ["--dump_path", str(dump), "--resume", "true", "--epochs", "4", *extra])
    log = (dump / "train.log").read_text() + capsys.readouterr().out
    lrs = {int(e): float(lr) for e, lr in re.findall(r"epoch (\d+)/4 \| loss \S+ \| lr (\S+) \|", log)}
    assert set(lrs) == {3, 4}, log[-2000:]
    for epoch, t in ((3, 2), (4, 3)):
        assert lrs[epoch] == pytest.approx(lr0 * (1 + math.cos(math.pi * t / 4)) / 2, rel=1e-3)
    assert "the schedule follows the command line" in log


def test_keep_command_line_schedule_on_a_step_schedule_and_no_change_is_a_no_op():
    """Semi-supervised fine-tuning's MultiStepLR, two groups (trunk, head): resumed after 3 epochs of milestones
    [5] with milestones [1, 2] and gamma 0.5, both groups are at base * 0.5 ** 2 and step on from there; the same
    settings leave the restored state untouched (the exact resume)."""
    import logging
    log = logging.getLogger("test")

    def sgd():
        return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                                {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.2}], lr=0.01)
    opt = sgd()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [5], gamma=0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    saved = opt.state_dict(), sched.state_dict()
    for milestones, gamma, expected in (([5], 0.1, [0.01, 0.2]), ([1, 2], 0.5, [0.0025, 0.05])):
        opt = sgd()
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=gamma)
        built = sched.state_dict()
        opt.load_state_dict(saved[0])
        sched.load_state_dict(saved[1])
        linear.keep_command_line_schedule(sched, built, log)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected)
    opt.step()
    sched.step()  # epoch 4: past both milestones, no new one
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0025, 0.05])
