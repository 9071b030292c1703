"""What a run is: resuming takes the run's recorded settings (options given again override them, on one line)."""
import argparse

import pytest

from common.cli import HelpFormatter, adopt_recorded_args, explicit_options


def parser():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("data")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1)
    p.add_argument("--schedule", nargs="*", type=int, default=[60, 80])
    p.add_argument("--cos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mlp", action="store_true")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--symmetric", dest="symmetric", action="store_true", default=True)
    g.add_argument("--asymmetric", dest="symmetric", action="store_false")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--resume", default="")
    return p


def test_explicit_options_are_what_was_written_even_when_equal_to_the_default():
    assert explicit_options(parser(), ["d"]) == {"data"}
    assert explicit_options(parser(), ["d", "--learning-rate", "0.1", "--no-cos", "--asymmetric"]) == \
        {"data", "lr", "cos", "symmetric"}
    assert explicit_options(parser(), ["d", "--schedule", "--mlp", "--batch_size=256"]) == \
        {"data", "schedule", "mlp", "batch_size"}


def test_recorded_settings_are_adopted_and_overrides_named_on_one_line(capsys):
    recorded = {"data": "d", "lr": 0.03, "schedule": [], "cos": False, "mlp": True, "symmetric": False,
                "batch_size": 8, "workers": 0, "resume": "", "results_dir": "elsewhere", "rank": 3}
    p = parser()
    argv = ["d", "--resume", "x.pth", "--batch_size", "16", "--lr", "0.03", "--workers", "2"]
    args = p.parse_args(argv)
    over = adopt_recorded_args(args, recorded, p, argv, session={"workers", "resume"})
    # recorded where not given, the command line where given, session options never from the record,
    # and keys that are no option of this parser (results_dir, rank) ignored
    assert vars(args) == {"data": "d", "lr": 0.03, "schedule": [], "cos": False, "mlp": True, "symmetric": False,
                          "batch_size": 16, "workers": 2, "resume": "x.pth"}
    assert over == {"batch_size": (16, 8)}  # --lr was given again but equals the record: no override
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["=> resuming with the settings recorded in the checkpoint; overridden on the command line: "
                   "--batch_size 16 (recorded: 8)"]
    # nothing overridden; and a checkpoint without recorded settings (upstream's) changes nothing
    args = p.parse_args(["d"])
    assert adopt_recorded_args(args, recorded, p, ["d"]) == {}
    assert "none overridden" in capsys.readouterr().out
    args = p.parse_args(["d"])
    assert adopt_recorded_args(args, None, p, ["d"]) is None and args.lr == 0.1


# ---------------------------------------------------------------------------------------------------------------
# One checkpoint per run: kill -9 right after the checkpoint is written (UNMIX_TEST_KILL_AFTER, common/runstate.py),
# before the files derived from it; --resume then ends bit-identical to the uninterrupted run, derived files
# included. The runs use a relative output folder from their own working directory, so that the plots, whose
# title is the folder, can be compared byte for byte.

import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from conftest import ROOT, assert_clean_error, run_script, script_env  # noqa: E402
from common.guard import NonFiniteError  # noqa: E402
from fakedata import make_cifar  # noqa: E402
from common.dist import free_port  # noqa: E402
from common.runstate import remove_partial_files  # noqa: E402

KILLED = script_env(UNMIX_TEST_KILL_AFTER="checkpoint")


@pytest.fixture(scope="module")
def cifar16(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("c10_16"), "cifar10", n_train=16, n_test=8)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def same_bytes(a, b, *names):
    for n in names:
        assert hashlib.sha256((a / n).read_bytes()).digest() == hashlib.sha256((b / n).read_bytes()).digest(), n


def digests(folder, pattern="*"):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob(pattern)
            if p.is_file()}


def same_tensors(x, y, what=""):
    if torch.is_tensor(x):
        assert torch.equal(x, y), what
    elif isinstance(x, dict):
        assert list(x) == list(y), what
        for k in x:
            same_tensors(x[k], y[k], f"{what}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), what
        for i, (u, v) in enumerate(zip(x, y)):
            same_tensors(u, v, f"{what}.{i}")
    else:
        assert x == y or (x != x and y != y), (what, x, y)  # NaN == NaN here (a kNN left out)


def killed_then_resumed(tmp_path, cmd, resume_cmd, env_full=None, run=run_script):
    """Runs ``cmd`` straight (in full/) and killed after its checkpoint (in part/), then ``resume_cmd`` in part/."""
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    run(cmd, cwd=full, env=env_full)
    p = run(cmd, cwd=part, env=KILLED, check=False)
    assert p.returncode != 0, "the test hook did not kill the run"
    (part / "run" / ".tmp-abcd1234.pth").write_bytes(b"a partial write")  # as a kill inside save_atomic leaves
    run(resume_cmd, cwd=part)
    assert not list((part / "run").glob(".tmp-*")), "partial files were not removed"
    return full / "run", part / "run"


def test_remove_partial_files_only_takes_temporaries(tmp_path):
    for n in (".tmp-x.pth", "log.csv.tmp", "curves.png.tmp.png", "log.csv", "model_last.pth", "tmp.txt"):
        (tmp_path / n).write_text("x")
    assert sorted(p.name for p in remove_partial_files(tmp_path, tmp_path / "missing")) == \
        [".tmp-x.pth", "curves.png.tmp.png", "log.csv.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "model_last.pth", "tmp.txt"]


def test_moco_cifar_kill_between_checkpoint_and_log(cifar16, tmp_path):
    c10 = ROOT / "UnMix_MoCo/for_CIFAR/unmix_c10.py"
    cmd = [c10, "--data", cifar16, "--results-dir", "run", "--epochs", "1", "--batch-size", "8", "--bn-splits", "2",
           "--moco-k", "16", "--image-size", "16", "--workers", "0", "--seed", "0", "--knn-k", "4"]
    full, part = tmp_path / "full" / "run", tmp_path / "part" / "run"
    # the kill leaves the last epoch's checkpoint without its log; the resume has nothing left to train
    resume = [c10, "--resume", "run/model_last.pth", "--results-dir", "run", "--workers", "0"]
    killed_then_resumed(tmp_path, cmd, resume)
    same_bytes(full, part, "log.csv", "curves.png")
    same_tensors(load(full / "model_last.pth")["state_dict"], load(part / "model_last.pth")["state_dict"])

    # NaN guard (common/guard.py): continued with an absurd lr (epochs 4: the cosine lr of epoch 2 is not 0), every
    # other setting from the checkpoint, the run stops with one line and leaves its files as they were
    before = digests(part)
    p = run_script([c10, "--resume", "run/model_last.pth", "--results-dir", "run", "--epochs", "4", "--lr", "1e30"],
                   cwd=part.parent, check=False)
    assert "overridden on the command line: --lr 1e+30 (recorded: 0.06), --epochs 4 (recorded: 1)" in p.stdout
    assert_clean_error(p, "non-finite loss", "epoch 2, step", "lower the learning rate")
    assert p.returncode == 2 and len([ln for ln in p.stderr.splitlines() if "error:" in ln]) == 1
    after = digests(part)
    assert {k: after[k] for k in before if k.name != "args.json"} == {k: v for k, v in before.items()
                                                                     if k.name != "args.json"}


def two_processes(cmd, cwd, env=None, check=True):
    """``python <cmd>`` as ranks 0 and 1 of one gloo group, started with the variables torchrun gives its workers
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) but without its agent process (a torch import less per
    run; test_samix_moco.py runs the demo under torchrun itself). As under torchrun, rank 0's end (the test hook's
    kill -9) ends rank 1. Returns rank 0's CompletedProcess."""
    env, port = env or script_env(), str(free_port())
    procs = [subprocess.Popen([sys.executable, *map(str, cmd)], cwd=cwd, text=True, stdout=subprocess.PIPE if r == 0
                              else subprocess.DEVNULL, stderr=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=300)
        if procs[0].returncode:
            procs[1].kill()
        procs[1].wait(timeout=60)
    finally:  # a timeout leaves no process behind
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    p = subprocess.CompletedProcess(cmd, procs[0].returncode or procs[1].returncode, out, err)
    assert not check or p.returncode == 0, f"{cmd} exited {p.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return p


def test_moco_cifar_two_processes_kill_after_epoch_1_resumes_bit_exactly(cifar16, tmp_path):
    """2 gloo processes: every process continues from its own RNG state (augmentations, the shuffle-BN
    permutation and the Un-Mix draws differ per process), so the resumed run ends as the uninterrupted one."""
    c10 = ROOT / "UnMix_MoCo/for_CIFAR/unmix_c10.py"
    cmd = [c10, "--data", cifar16, "--results-dir", "run", "--epochs", "2", "--no-cos", "--seed", "0",
           "--batch-size", "8", "--bn-splits", "2", "--moco-k", "16", "--image-size", "16", "--workers", "0",
           "--knn-k", "4"]  # --no-cos: a constant lr, epoch 2 really trains (the cosine's lr would be 0)
    resume = [c10, "--resume", "run/model_last.pth", "--results-dir", "run"]
    full, part = killed_then_resumed(tmp_path, cmd, resume, run=two_processes)
    same_bytes(full, part, "log.csv", "curves.png")
    a, b = load(full / "model_last.pth"), load(part / "model_last.pth")
    assert a["epoch"] == b["epoch"] == 2 and len(a["rng_states"]) == 2
    for k in ("state_dict", "optimizer", "log", "rng_states"):
        same_tensors(a[k], b[k], k)


def test_simclr_kill_before_the_snapshot_and_log(cifar16, tmp_path):
    main = ROOT / "UnMix_SimCLR_BYOL/main_unmix.py"
    cmd = [main, "--data", cifar16, "--results-dir", "run", "--epochs", "1", "--batch-size", "8", "--crop-size", "8",
           "--warmup-iters", "0", "--emb", "8", "--head-size", "16", "--probe-epochs", "0", "--workers", "0",
           "--seed", "0", "--drop", "--save-every", "1"]
    full, part = killed_then_resumed(tmp_path, cmd, [main, "--resume", "run/model_last.pth", "--results-dir", "run"])
    # htdt's snapshot of the last epoch (lost by the kill) is back, byte for byte, and so are the log and plot
    same_bytes(full, part, "contrastive_cifar10_0.pt", "log.csv", "curves.png")
    same_tensors(load(full / "model_last.pth")["state_dict"], load(part / "model_last.pth")["state_dict"])

    # NaN guard: the checkpoint and snapshots stay as they were, no new snapshot
    from UnMix_SimCLR_BYOL import main_unmix
    before = digests(part, "*.pt*")
    with pytest.raises(NonFiniteError, match="non-finite loss .* at epoch 2"):
        main_unmix.main(["--epochs", "3", "--lr", "1e30", "--resume", str(part / "model_last.pth")])
    assert digests(part, "*.pt*") == before and len(before) == 2


def test_swav_cifar_kill_between_checkpoint_and_queue(cifar16, tmp_path):
    """The queue lives in the checkpoint: a kill before queue0.pth is written resumes with the right queue."""
    main = ROOT / "UnMix_SwAV/for_CIFAR/main_swav_unmix.py"
    cmd = [main, "--data_path", cifar16, "--dump_path", "run", "--epochs", "2", "--batch_size", "8", "--size_crops",
           "16", "--hidden_mlp", "16", "--feat_dim", "8", "--nmb_prototypes", "10", "--workers", "0",
           "--warmup_epochs", "1", "--freeze_prototypes_niters", "2", "--queue_length", "16",
           "--epoch_queue_starts", "0", "--checkpoint_freq", "1"]
    # killed after epoch 0's checkpoint (its queue is full and used in epoch 1), before ckp-0.pth and queue0.pth
    full, part = killed_then_resumed(tmp_path, cmd, [main, "--dump_path", "run", "--resume"])
    a, b = load(full / "checkpoint.pth.tar"), load(part / "checkpoint.pth.tar")
    assert a["epoch"] == b["epoch"] == 2 and a["queues"][0].shape == (2, 16, 8) and a["queues"][0].abs().sum() > 0
    for k in ("state_dict", "optimizer", "stats", "queues", "rng_states"):
        same_tensors(a[k], b[k], k)
    same_bytes(full, part, "queue0.pth", "stats0.pkl")
    for n in ("ckp-0.pth", "ckp-1.pth"):
        same_tensors(load(full / "checkpoints" / n)["state_dict"], load(part / "checkpoints" / n)["state_dict"], n)

    # NaN guard: a constant lr of 1e30 (LARC-scaled SGD) stops the run; checkpoints and queue stay as they were
    from UnMix_SwAV.swav import train
    before = digests(part, "*.pth*")
    with pytest.raises(NonFiniteError, match="non-finite"):
        train.main("cifar", ["--epochs", "4", "--base_lr", "1e30", "--final_lr", "1e30", "--resume",
                             "--dump_path", str(part)])
    assert digests(part, "*.pth*") == before and len(before) == 4  # checkpoint.pth.tar, ckp-0/1, queue0


def test_moco_imagenet_two_processes_kill_between_checkpoint_and_log(imagefolder_root, tmp_path):
    main = ROOT / "UnMix_MoCo/for_ImageNet/main_moco_unmix.py"
    spawn = ["--multiprocessing-distributed", "--nproc", "2", "--world-size", "1", "--rank", "0"]
    cmd = [main, imagefolder_root, "-a", "resnet18", "-j", "0", "--crop-size", "16", "-b", "8", "--moco-k", "16",
           "--moco-dim", "8", "--epochs", "1", "--seed", "0", "--output-dir", "run", *spawn,
           "--dist-url", f"tcp://127.0.0.1:{free_port()}"]
    resume = [main, imagefolder_root, "--resume", "run/checkpoint_0000.pth.tar", "--output-dir", "run", "-j", "0",
              *spawn, "--dist-url", f"tcp://127.0.0.1:{free_port()}"]
    full, part = killed_then_resumed(tmp_path, cmd, resume)
    same_bytes(full, part, "log.csv", "curves.png")
    a, b = load(full / "checkpoint_0000.pth.tar"), load(part / "checkpoint_0000.pth.tar")
    for k in ("state_dict", "optimizer", "log", "rng_states"):
        same_tensors(a[k], b[k], k)
    assert len(pd.read_csv(part / "log.csv")) == 1

    # NaN guard, continued by a single process (the settings recorded, the launcher's not): the checkpoint stays
    from UnMix_MoCo.for_ImageNet import main_moco_unmix
    before = digests(part, "checkpoint_*")
    with pytest.warns(UserWarning, match="RNG states"), pytest.raises(NonFiniteError, match="non-finite"):
        main_moco_unmix.main([str(imagefolder_root), "--epochs", "3", "--lr", "1e30", "--output-dir", str(part),
                              "--resume", str(part / "checkpoint_0000.pth.tar")])
    assert digests(part, "checkpoint_*") == before and len(before) == 1
