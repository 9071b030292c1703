"""common/: atomic checkpoints under kill -9, clear load errors, RNG capture, CLI helpers, launcher parsing."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from common.checkpoint import (check_compatible, get_rng_state, load_checkpoint, save_atomic, set_rng_state,
                               strip_prefix)
from common.cli import CLIError, bool_flag, prepare_output_dir
from common.dist import launcher_env, slurm_tasks_per_node
from conftest import ROOT, script_env

WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from common.checkpoint import save_atomic
i = 0
while True:
    i += 1
    save_atomic({{"step": i, "w": torch.full((1 << 20,), float(i))}}, {path!r})
    print(i, flush=True)
"""


def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    code = WRITER.format(root=str(ROOT), path=str(path))
    for delay in (0.9, 1.3, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", code], env=script_env(), stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete write
        time.sleep(delay * 0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=False)
        assert torch.equal(ckpt["w"], torch.full((1 << 20,), float(ckpt["step"])))
    leftovers = [f for f in os.listdir(tmp_path) if f != "ckpt.pth"]
    # a temp file may survive a kill; it never replaces the checkpoint and is named as hidden temp
    assert all(f.startswith(".tmp-") for f in leftovers)


def test_save_atomic_keeps_previous_file_when_the_write_fails(tmp_path):
    path = tmp_path / "c.pth"
    save_atomic({"v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("fail mid-write")

    with pytest.raises(RuntimeError):
        save_atomic({"v": 2, "bad": Boom()}, path)
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.pth"]


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>", "HTML"),
    (b"PK\x03\x04garbage", "cannot read"),
])
def test_load_checkpoint_errors_are_one_clear_message(tmp_path, content, fragment):
    p = tmp_path / "x.pth"
    p.write_bytes(content)
    with pytest.raises(CLIError, match=fragment):
        load_checkpoint(p)
    with pytest.raises(CLIError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_truncated_checkpoint_is_refused(tmp_path):
    p = tmp_path / "t.pth"
    torch.save({"w": torch.randn(1000)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CLIError, match="truncated"):
        load_checkpoint(p)


def test_check_compatible_names_the_problem():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    check_compatible(model, model.state_dict())
    sd = model.state_dict()
    sd["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(CLIError, match=r"shape mismatches \(e.g. 0.weight: \(5, 4\)"):
        check_compatible(model, sd)
    with pytest.raises(CLIError, match="2 missing keys"):
        check_compatible(model, {k: v for k, v in model.state_dict().items() if k.startswith("0.")})
    first = {k: v for k, v in model.state_dict().items() if k.startswith("0.")}
    check_compatible(model, first, allow_missing=("1.weight", "1.bias"))
    assert strip_prefix({"module.a": 1, "b": 2}, "module.") == {"a": 1}


def test_rng_state_roundtrip_covers_python_numpy_torch(tmp_path):
    np.random.randn()  # a cached Gaussian is part of NumPy's state
    save_atomic({"rng": get_rng_state()}, tmp_path / "s.pth")
    a = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item())
    # the state survives torch's safe loader (weights_only=True, PyTorch >= 2.6's default)
    set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()) == a


def test_prepare_output_dir_refuses_existing_run(tmp_path):
    d = prepare_output_dir(tmp_path / "run", resume=False, marker="model_last.pth")
    (d / "model_last.pth").write_bytes(b"x")
    with pytest.raises(CLIError, match="--resume"):
        prepare_output_dir(d, resume=False, marker="model_last.pth")
    assert prepare_output_dir(d, resume=True, marker="model_last.pth") == d


def test_bool_flag():
    assert bool_flag("True") and bool_flag("on") and not bool_flag("0") and not bool_flag("off")
    with pytest.raises(Exception):
        bool_flag("maybe")


@pytest.mark.parametrize("value,expected", [("1", 1), ("16", 16), ("8(x2)", 8), ("4(x2),3", 4), ("12", 12)])
def test_slurm_tasks_per_node(value, expected):
    assert slurm_tasks_per_node(value) == expected


def test_launcher_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NNODES",
              "SLURM_TASKS_PER_NODE", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert launcher_env() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "16(x2)")
    assert launcher_env() == (13, 32, 5)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launcher_env() == (1, 2, 1)


def test_help_shows_no_misleading_default_on_store_false_switches():
    import argparse

    from common.cli import HelpFormatter
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--no-unmix", dest="unmix", action="store_false", help="plain baseline")
    p.add_argument("--epochs", default=7, type=int, help="epochs")
    text = " ".join(p.format_help().split())
    assert "plain baseline (default: True)" not in text and "plain baseline" in text
    assert "epochs (default: 7)" in text


def test_image_folder_with_an_empty_class_is_one_clear_error(tmp_path):
    from common.data import image_folder
    from fakedata import make_image_folder
    root = make_image_folder(tmp_path, classes=2, per_class=1, size=8, splits=("train",))
    (root / "train" / "class_empty").mkdir()
    with pytest.raises(CLIError, match="class_empty"):
        image_folder(root / "train")


def test_train_val_folders_refuse_different_classes(tmp_path):
    from common.data import train_val_folders
    from fakedata import make_image_folder
    make_image_folder(tmp_path, classes=3, per_class=1, size=8)
    train, val = train_val_folders(tmp_path)
    assert train.classes == val.classes == ["class_0", "class_1", "class_2"]
    for f in (tmp_path / "val" / "class_1").iterdir():
        f.unlink()
    (tmp_path / "val" / "class_1").rmdir()  # val's class_2 would be numbered 1
    with pytest.raises(CLIError, match="same class folders"):
        train_val_folders(tmp_path)
