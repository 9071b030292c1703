"""The two SwAV + Un-Mix pretraining entry points, run as a user would on tiny data: upstream's dump layout
and checkpoint format (upstream's), 1- and 2-process (gloo) runs under
torch.distributed.launch and a simulated srun, an exact --resume, frozen + normalised prototypes, and
one clear error line for bad input."""
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_clean_error, assert_epoch_lines, run_script, script_env
from fakedata import make_cifar
from common.cli import CLIError
from common.dist import free_port
from UnMix_SwAV.swav.train import build_parser, main

CIFAR = "UnMix_SwAV/for_CIFAR/main_swav_unmix.py"
IMAGENET = "UnMix_SwAV/for_ImageNet/main_swav_unmix.py"
TINY = ["--batch_size", "8", "--hidden_mlp", "16", "--feat_dim", "8", "--nmb_prototypes", "10",
        "--workers", "0", "--warmup_epochs", "1", "--checkpoint_freq", "1"]


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("swav_c10"), "cifar10", n_train=16, n_test=8)


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_layout(dump, world, queue):
    names = {p.name for p in dump.iterdir()}
    expected = {"checkpoint.pth.tar", "checkpoints", "params.pkl", "train.log"}
    expected |= {f"stats{r}.pkl" for r in range(world)} | {f"train.log-{r}" for r in range(1, world)}
    if queue:
        expected |= {f"queue{r}.pth" for r in range(world)}
    assert expected <= names, names
    assert not any(n.startswith(".tmp") or n.endswith(".tmp") for n in names), names  # atomic writes
    # loadable by tools that read upstream checkpoints with PyTorch >= 2.6's weights_only default
    ckpt = torch.load(dump / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert {"epoch", "state_dict", "optimizer"} <= set(ckpt)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    assert set(ckpt["optimizer"]) == {"state", "param_groups"}  # the inner SGD's state_dict, as LARC's
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert len(ckpt["rng_states"]) == world
    stats = pd.read_pickle(dump / "stats0.pkl")
    assert list(stats.columns) == ["epoch", "loss"] and len(stats) == ckpt["epoch"]
    for r in range(world):  # every process's stats rows, for an exact resume
        assert ckpt["stats"][r] == list(pd.read_pickle(dump / f"stats{r}.pkl").itertuples(index=False, name=None))
    with open(dump / "params.pkl", "rb") as f:
        params = pickle.load(f)
    assert params.world_size == world and params.dump_path == str(dump)
    return ckpt


def test_cifar_one_process_layout_keys_and_exact_resume(tiny_cifar, tmp_path):
    args = [CIFAR, "--data_path", tiny_cifar, "--epochs", "2", "--size_crops", "16", "--queue_length", "16",
            "--epoch_queue_starts", "1", "--freeze_prototypes_niters", "2", *TINY]
    a = tmp_path / "a"
    p = run_script(args + ["--dump_path", a])
    assert_epoch_lines(p.stderr, [1, 2], 2, None)  # console: stderr, as upstream's pretraining
    assert "Bottleneck" in (a / "train.log").read_text() and "Bottleneck" not in p.stdout + p.stderr  # model
    ckpt = _assert_layout(a, 1, queue=True)
    sd = ckpt["state_dict"]
    # upstream: 184 entries for resnet18-Bottleneck + head, CIFAR stem, module. prefix
    assert len(sd) == 184
    assert sd["module.conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["module.layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert sd["module.projection_head.0.weight"].shape == (16, 2048)
    assert sd["module.projection_head.3.weight"].shape == (8, 16)
    assert sd["module.prototypes.weight"].shape == (10, 8)
    assert ckpt["epoch"] == 2
    assert _ckpt(a / "checkpoints" / "ckp-0.pth")["epoch"] == 1
    assert _ckpt(a / "checkpoints" / "ckp-1.pth")["epoch"] == 2
    assert _ckpt(a / "queue0.pth")["queue"].shape == (2, 16, 8)
    assert "Epoch: [1][0]" in (a / "train.log").read_text()

    # a crash after epoch 0: the epoch-0 checkpoint (the queue only starts at epoch 1) and the stats
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(a / "checkpoints" / "ckp-0.pth", b / "checkpoint.pth.tar")
    shutil.copy(a / "stats0.pkl", b / "stats0.pkl")  # holds 2 rows: the later one is dropped on resume
    run_script(args + ["--dump_path", b, "--resume"])
    resumed = _ckpt(b / "checkpoint.pth.tar")
    assert resumed["epoch"] == 2
    for k, t in sd.items():
        assert torch.equal(resumed["state_dict"][k], t), k  # bit-exact continuation
    for i, st in ckpt["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert torch.equal(_ckpt(b / "queue0.pth")["queue"], _ckpt(a / "queue0.pth")["queue"])
    pd.testing.assert_frame_equal(pd.read_pickle(b / "stats0.pkl"), pd.read_pickle(a / "stats0.pkl"))

    # the same from a checkpoint of the earlier format: no "stats" rows (the history comes from the stats
    # file, written as upstream's PD_Stats did: float epochs) and NumPy's RNG key as an array
    old = _ckpt(a / "checkpoints" / "ckp-0.pth")
    del old["stats"]
    kind, keys, *rest = old["rng_states"][0]["numpy"]
    old["rng_states"][0]["numpy"] = (kind, keys.numpy().astype(np.uint32), *rest)
    o = tmp_path / "old"
    o.mkdir()
    torch.save(old, o / "checkpoint.pth.tar")
    old_stats = pd.DataFrame(columns=["epoch", "loss"])
    for row in pd.read_pickle(a / "stats0.pkl").itertuples(index=False):
        old_stats.loc[len(old_stats)] = list(row)
    old_stats.to_pickle(o / "stats0.pkl")
    run_script(args + ["--dump_path", o, "--resume"])
    for k, t in sd.items():
        assert torch.equal(_ckpt(o / "checkpoint.pth.tar")["state_dict"][k], t), k
    pd.testing.assert_frame_equal(pd.read_pickle(o / "stats0.pkl"), pd.read_pickle(a / "stats0.pkl"))

    # in-process (the same main(); the one-line exit is checked in test_bad_input_gives_one_clear_error)
    argv = [str(x) for x in args[1:]]
    # resuming with another architecture: the checkpoint is refused with a clear message
    with pytest.raises(CLIError, match="does not match the model.*projection_head"):
        main("cifar", argv + ["--dump_path", str(a), "--resume", "--hidden_mlp", "32"])
    # an existing run is never overwritten without --resume
    with pytest.raises(CLIError, match="already holds a run"):
        main("cifar", argv + ["--dump_path", str(a)])
    c = tmp_path / "c"
    c.mkdir()
    (c / "checkpoint.pth.tar").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CLIError, match="cannot read checkpoint"):
        main("cifar", argv + ["--dump_path", str(c), "--resume"])


def test_cifar_two_processes_torch_distributed_launch(tiny_cifar, tmp_path):
    # python -m torch.distributed.launch passes --local-rank=N (PyTorch >= 2): accepted
    d = tmp_path / "run"
    run_script(["-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}",
                   CIFAR, "--data_path", tiny_cifar, "--dataset", "cifar10", "--epochs", "1",
                   "--size_crops", "16", "--batch_size", "4", "--queue_length", "16", "--epoch_queue_starts",
                   "0", "--dump_path", d, *TINY[2:]])
    ckpt = _assert_layout(d, 2, queue=True)
    assert ckpt["epoch"] == 1
    assert _ckpt(d / "queue1.pth")["queue"].shape == (2, 8, 8)  # queue_length // world per process
    # 32 images, 2 processes x batch 4: 4 iterations each, both ranks logged their epoch
    assert len(pd.read_pickle(d / "stats1.pkl")) == 1


def test_imagenet_one_process_swav_baseline_freezes_normalised_prototypes(imagefolder_root, tmp_path):
    from UnMix_SwAV.swav.resnet import build

    d = tmp_path / "run"
    run_script([IMAGENET, "--data_path", imagefolder_root / "train", "--arch", "resnet18", "--epochs", "1",
                "--nmb_crops", "2", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.3", "0.1",
                "--max_scale_crops", "1", "0.3", "--run_swav", "true", "--batch_size", "4",
                "--freeze_prototypes_niters", "1000", "--dump_path", d, *TINY[2:]])
    ckpt = _assert_layout(d, 1, queue=False)
    # the model is built right after seeding with 31; the prototypes never moved (frozen) but were
    # L2-normalised before every iteration
    torch.manual_seed(31)
    init = build("resnet18", normalize=True, hidden_mlp=16, output_dim=8, nmb_prototypes=10)
    w = ckpt["state_dict"]["module.prototypes.weight"]
    assert torch.allclose(w, F.normalize(init.prototypes.weight.detach(), dim=1), atol=1e-6)
    assert not torch.allclose(w, init.prototypes.weight.detach())
    assert ckpt["state_dict"]["module.conv1.weight"].shape == (64, 3, 7, 7)  # ImageNet stem


def test_imagenet_two_processes_under_srun_environment(imagefolder_root, tmp_path):
    # what srun sets for 2 tasks on one node; the dist_url is tcp:// as in the sbatch scripts
    d, port = tmp_path / "run", free_port()
    cmd = [sys.executable, str(ROOT / IMAGENET), "--data_path", str(imagefolder_root / "train"), "--arch",
           "resnet18", "--epochs", "1", "--nmb_crops", "2", "2", "--size_crops", "32", "16",
           "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3", "--batch_size", "4",
           "--dist_url", f"tcp://127.0.0.1:{port}", "--dump_path", str(d), *TINY[2:]]
    procs = []
    for r in range(2):
        env = script_env(SLURM_JOB_ID="1", SLURM_PROCID=r, SLURM_LOCALID=r, SLURM_NTASKS=2, SLURM_NNODES=1,
                         SLURM_TASKS_PER_NODE="2")
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(k, None)
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    _assert_layout(d, 2, queue=False)


def test_bad_input_gives_one_clear_error(tmp_path, imagefolder_root):
    p = run_script([CIFAR, "--data_path", tmp_path / "nowhere", "--dump_path", tmp_path / "x"], check=False)
    assert_clean_error(p, "neither 'cifar10'/'cifar100' nor an existing directory")
    # the same main() in-process (a subprocess per case would only repeat the interpreter start-up)
    cases = [
        ("cifar", ["--data_path", str(tmp_path)], "pass --dataset"),
        ("cifar", ["--nmb_crops", "2", "2"], "same number of values"),
        ("cifar", ["--crops_for_assign", "0", "2"], "crops_for_assign"),
        ("cifar", ["--batch_size", "0"], "--batch_size must be positive"),
        ("imagenet", ["--data_path", str(imagefolder_root), "--nmb_crops", "2", "1", "--size_crops", "32", "16",
                      "--min_scale_crops", "0.1", "0.1", "--max_scale_crops", "1", "1"], "must be even"),
        ("imagenet", ["--data_path", str(imagefolder_root / "train" / "class_0")], "no class sub-folders"),
        ("imagenet", ["--data_path", str(imagefolder_root / "train"), "--batch_size", "64"],
         "fewer than one batch"),
        ("imagenet", ["--data_path", str(imagefolder_root / "train"), "--dump_path", str(tmp_path / "{nope}")],
         "cannot fill in"),
    ]
    for variant, argv, msg in cases:
        with pytest.raises(CLIError, match=msg):
            main(variant, argv + ([] if "--dump_path" in argv else ["--dump_path", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()


def test_help_shows_the_published_defaults():
    c = " ".join(build_parser("cifar").format_help().split())
    for frag in ("--epochs EPOCHS training epochs (default: 400)", "default: 128", "(default: 0.6)",
                 "default: 5005", "default: 120", "default: resnet18", "default: cifar10", "default: 0.5",
                 "default: [32]", "default: 100)"):
        assert frag in c, frag
    i = " ".join(build_parser("imagenet").format_help().split())
    for frag in ("default: 800", "default: 4.8", "default: 313", "default: 3000", "default: [224, 96]",
                 "default: [2, 6]", "default: resnet50", "(default: 0.0)", "default: apex"):
        assert frag in i, frag
    assert "--local-rank" in c  # torch.distributed.launch's spelling on PyTorch >= 2
    for spelling in (["--local_rank", "3"], ["--local-rank=3"]):
        assert build_parser("cifar").parse_args(spelling).local_rank == 3
