"""SAMix/main_samix.py run as a user would on tiny on-disk data: every --mix mode, outputs, exact resume
after kill -9, a 2-process gloo run, and one error line for bad input."""
import pandas as pd
import pytest
import torch

from conftest import ROOT, assert_clean_error, assert_epoch_lines, kill_9_after, run_script
from common.cli import CLIError
from common.dist import free_port

SCRIPT = ROOT / "SAMix" / "main_samix.py"
TINY = ["-a", "resnet_tiny", "-b", "8", "-j", "0", "--plot-every", "1"]


def state(path):
    return torch.load(path, weights_only=False)


def train(data, out, *extra, epochs=2, check=True):
    return run_script([SCRIPT, "--dataset", "cifar10", "--data", data, "--output-dir", out, "--epochs", epochs,
                       *TINY, *extra], check=check)


def test_samix_outputs_and_kill_9_resume_is_exact(cifar10_root, tmp_path):
    full = tmp_path / "full"
    train(cifar10_root, full)
    for name in ("latest.pth", "log.csv", "curves.png", "args.json", "masks_epoch0001.png", "masks_epoch0002.png"):
        assert (full / name).is_file(), name
    log = pd.read_csv(full / "log.csv")
    assert list(log["epoch"]) == [1, 2]
    for head in ("one_q", "mix_q", "one_k", "mix_k"):
        assert log[f"acc1_{head}"].between(0, 100).all() and (log[f"acc5_{head}"] >= log[f"acc1_{head}"]).all()
    assert (log["mask_weight"] - 0.1).abs().max() < 1e-9  # CIFAR: constant
    ckpt = torch.load(full / "latest.pth", weights_only=True)  # plain tensors, numbers and strings only
    assert any(k.startswith("mixer.") for k in ckpt["state_dict"]) and ckpt["args"]["eta"] == 0.5

    # the same run killed (SIGKILL) right after its first checkpoint is written, then resumed
    part = tmp_path / "part"
    kill_9_after("checkpoint", [SCRIPT, "--dataset", "cifar10", "--data", cifar10_root, "--output-dir", part,
                                "--epochs", 2, *TINY])
    assert state(part / "latest.pth")["epoch"] < 2, "the run finished before it could be killed"
    assert_clean_error(train(cifar10_root, part, check=False), "--resume")
    # the settings come from the checkpoint: --resume alone continues the run
    run_script([SCRIPT, "--resume", part / "latest.pth", "-j", "0"])
    a, b = state(full / "latest.pth"), state(part / "latest.pth")
    assert b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (full / "log.csv").read_text() == (part / "log.csv").read_text()


@pytest.mark.parametrize("mix,dataset,extra", [
    ("none", "cifar10", []),
    ("mixup", "tiny", ["--image-size", "32"]),
    ("cutmix", "imagenet", ["--image-size", "80", "--amp"]),
    ("automix", "imagenet", ["--image-size", "80"]),
    ("samix", "tiny", ["--image-size", "32", "--mixer-loss", "bce", "--eta", "0.1",
                       "--mask-weight-schedule", "compound"]),
])
def test_each_mode_runs(mix, dataset, extra, cifar10_root, imagefolder_root, tmp_path):
    data = cifar10_root if dataset == "cifar10" else imagefolder_root
    out = tmp_path / mix
    p = run_script([SCRIPT, "--dataset", dataset, "--data", data, "--output-dir", out, "--epochs", 1, "--mix", mix,
                    *TINY, *extra])
    assert_epoch_lines(p.stdout, [1], 1, "val top-1")
    log = pd.read_csv(out / "log.csv")
    heads = ["one_q"] if mix in ("none", "mixup", "cutmix") else ["one_q", "mix_q", "one_k", "mix_k"]
    assert [c for c in log if c.startswith("acc1_")] == [f"acc1_{h}" for h in heads]
    assert (out / "latest.pth").is_file() and (out / "curves.png").is_file()
    assert (out / "masks_epoch0001.png").is_file() == (mix in ("automix", "samix"))


def test_two_process_gloo_run(cifar10_root, tmp_path):
    out = tmp_path / "ddp"
    run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), SCRIPT,
                "--dataset", "cifar10", "--data", cifar10_root, "--output-dir", out, "--epochs", 1, *TINY,
                "-b", "4"])
    ckpt = state(out / "latest.pth")
    assert ckpt["epoch"] == 1 and len(ckpt["rng_states"]) == 2
    assert len(pd.read_csv(out / "log.csv")) == 1


def test_bad_input_is_one_error_line(tmp_path):
    p = run_script([SCRIPT, "--dataset", "imagenet", "--data", tmp_path / "nowhere", *TINY], check=False)
    assert_clean_error(p, "does not exist")


def test_resume_refuses_code_in_a_checkpoint_unless_unsafe_load(tmp_path, capsys):
    from SAMix.main_samix import build_parser, main
    from test_safety import assert_refused, evil_checkpoint
    assert "--unsafe-load" in build_parser().format_help()
    marker, out = tmp_path / "marker", tmp_path / "run"
    f = evil_checkpoint(tmp_path / "latest.pth", marker)
    assert_refused(capsys, marker, f, main, ["--resume", str(f), "--output-dir", str(out)])
    assert not out.exists()
    # --unsafe-load opens it with plain pickle (the payload runs), then finds no main_samix.py run in it
    with pytest.raises(CLIError, match="is not a latest.pth of main_samix.py"):
        main(["--resume", str(f), "--output-dir", str(out), "--unsafe-load"])
    assert marker.exists() and not out.exists()


def test_images_are_checked_once_per_job_before_the_processes_start(imagefolder_root, tmp_path, monkeypatch):
    """mp.spawn sets no $RANK: the parent checks as the first process's rank, the spawned processes never."""
    import shutil
    import SAMix.main_samix as ms
    root = shutil.copytree(imagefolder_root, tmp_path / "imgs")
    bad = sorted((root / "train").rglob("*.*"))[0]
    bad.write_bytes(b"not an image")
    launched = []
    monkeypatch.setattr(ms, "launch", lambda worker, args, plan: launched.append(args))
    argv = ["--dataset", "tiny", "--data", str(root), "--image-size", "32", *map(str, TINY),
            "--multiprocessing-distributed", "--nproc", "2"]
    with pytest.raises(CLIError, match=f"cannot be read, e.g. {bad}"):  # node 0: ranks 0 and 1
        ms.main(argv + ["--output-dir", str(tmp_path / "a")])
    assert not launched and not (tmp_path / "a").exists()
    ms.main(argv + ["--world-size", "2", "--rank", "1", "--output-dir", str(tmp_path / "b")])  # node 1: ranks 2, 3
    assert len(launched) == 1
    ms.build_datasets(launched[0])  # what each spawned process builds: no second check


def test_resume_takes_the_recorded_settings_names_the_overrides_and_a_nan_never_reaches_the_checkpoint(
        cifar10_root, tmp_path, capsys):
    import hashlib
    from SAMix.main_samix import main
    run = tmp_path / "run"
    train(cifar10_root, run, "--lr", "0.05", "--eta", "0.3", epochs=1)
    ck = run / "latest.pth"
    before = hashlib.md5(ck.read_bytes()).hexdigest()
    with pytest.raises(CLIError, match="--mix mixup differs from the checkpoint's samix"):
        main(["--resume", str(ck), "--mix", "mixup"])
    capsys.readouterr()
    # a diverging continuation: --lr given again overrides the recorded 0.05, the rest is the run's own
    with pytest.raises(CLIError, match=r"non-finite loss \S+ at epoch 2, step \d+: .*lower --lr"):
        main(["--resume", str(ck), "--epochs", "2", "--lr", "1e30", "-j", "0"])
    out = capsys.readouterr().out
    line = [s for s in out.splitlines() if "recorded in" in s]
    assert line == [f"=> resuming with the settings recorded in {ck}; overridden on the command line: "
                    "--epochs 2 (recorded: 1), --lr 1e+30 (recorded: 0.05)"], out
    assert hashlib.md5(ck.read_bytes()).hexdigest() == before
    # the worker count is recorded too (it changes which augmentation each image gets): a resume without -j takes
    # the run's 0, not the default 8; -j given again overrides it (what would be launched, not launched here)
    import SAMix.main_samix as ms
    launched = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ms, "launch", lambda worker, args, plan: launched.append(args))
        main(["--resume", str(ck), "--epochs", "2"])
        main(["--resume", str(ck), "--epochs", "2", "-j", "3"])
    assert [a.workers for a in launched] == [0, 3]
    assert "--epochs 2 (recorded: 1), --workers 3 (recorded: 0)" in capsys.readouterr().out


def test_kill_between_checkpoint_and_log_then_resume_rederives_the_log(cifar10_root, tmp_path):
    """common/runstate.py: killed right after epoch 1's checkpoint (before log.csv/curves.png), a planted partial
    file is removed on resume and the log is re-derived from the checkpoint, with nothing left to train."""
    from test_run_state import killed_then_resumed, same_bytes
    cmd = [SCRIPT, "--dataset", "cifar10", "--data", cifar10_root, "--output-dir", "run", "--epochs", 1,
           "-a", "resnet_tiny", "-b", "8", "-j", "0", "--plot-every", "0"]
    full, part = killed_then_resumed(tmp_path, cmd, [SCRIPT, "--resume", "run/latest.pth", "-j", "0"])
    assert state(part / "latest.pth")["epoch"] == 1
    same_bytes(full, part, "log.csv", "curves.png")
