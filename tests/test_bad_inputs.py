"""Bad inputs that used to crash with a traceback or overwrite something: an unreadable image in an ImageFolder
tree, an output folder that cannot be written, a checkpoint of the wrong shape, ``--resume X --results-dir Y``
onto another run, a SimCLR ``--resume`` of a weights-only file, a failed CIFAR download, and checkpoint file
modes. Each gives one error line and a non-zero exit, and leaves what was there before unchanged."""
import errno
import hashlib
import os

import pytest
import torch
from PIL import Image

from test_safety import script
from fakedata import make_cifar, make_image_folder
from common import checkpoint as C
from common import cli
from common import data as D
from common.cli import CLIError, prepare_output_dir, run_main


def snapshot(folder):
    """{relative path: md5} of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, main, *args):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, *args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert e.value.code != 0 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _first_image(root):
    return sorted(p for p in (root / "train").rglob("*") if p.is_file())[0]


# --- 4. unreadable images ------------------------------------------------------------------------------------
def test_corrupt_image_is_refused_before_training_with_one_line(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs")
    bad = _first_image(root)
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "run"
    line = one_error_line(capsys, script("UnMix_MoCo/for_CIFAR/unmix_cifar.py").main, "cifar10",
                          ["--dataset", "imagefolder", "--data", str(root), "--results-dir", str(out), "--epochs",
                           "1", "--batch-size", "8", "--bn-splits", "2", "--workers", "0"])
    assert str(bad) in line and "cannot be read" in line
    assert not out.exists()  # refused before the output folder was made


def test_every_imagefolder_loader_checks_headers_and_names_a_truncated_image(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    empty = _first_image(root)
    keep = empty.read_bytes()
    empty.write_bytes(b"")
    with pytest.raises(CLIError, match=f"1 of the .* images under .*cannot be read, e.g. {empty}"):
        D.image_folder(root / "train")
    with pytest.raises(CLIError, match=str(empty)):
        D.train_val_folders(root)
    with pytest.raises(CLIError, match=str(empty)):
        D.check_image_folder(root / "train", images=True)  # what the ImageNet scripts run before spawning
    # a truncated body passes the header check; decoding it stops with one line, also from a loader worker
    empty.write_bytes(keep)
    img = Image.open(empty).convert("RGB")
    img.save(empty.with_suffix(".jpg"), "JPEG")
    empty.unlink()
    trunc = empty.with_suffix(".jpg")
    data = trunc.read_bytes()
    trunc.write_bytes(data[:len(data) * 3 // 4])
    ds = D.image_folder(root / "train", transform=None)
    i = [p for p, _ in ds.samples].index(str(trunc))
    with pytest.raises(CLIError, match=f"cannot decode image {trunc}"):
        ds[i]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [i]), num_workers=1,
                                         collate_fn=lambda b: b)
    with pytest.raises(D.ImageReadError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"cannot decode image {trunc}") and "\n" not in str(e.value)


# --- 4. an output folder that cannot be written ---------------------------------------------------------------
def test_save_atomic_full_or_read_only_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model_last.pth"
    C.save_atomic({"epoch": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f):  # what torch.save raises when the disk fills up mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(CLIError, match=rf"cannot write {path}: the write failed .*intact"):
        C.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()

    def read_only(d, suffix):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(d, ".tmp-x" + suffix))

    monkeypatch.setattr(cli, "_create_temp", read_only)  # the temp file of every atomic write
    with pytest.raises(CLIError, match=rf"cannot write {path}: Read-only file system.*intact"):
        C.save_atomic({"epoch": 2}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model_last.pth"]  # no temp file left


def test_run_main_turns_a_full_disk_into_one_line(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "run/log.csv")
    line = one_error_line(capsys, main)
    assert "cannot write run/log.csv: No space left on device" in line


def test_checkpoints_honour_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        C.save_atomic({"a": 1}, tmp_path / "shared.pth")
        os.umask(0o077)
        C.save_atomic({"a": 1}, tmp_path / "private.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.pth").stat().st_mode & 0o777 == 0o664  # a group can read it (mkstemp: 0600)
    assert (tmp_path / "private.pth").stat().st_mode & 0o777 == 0o600


def test_moco_imagenet_resume_with_a_state_dict_that_is_not_a_dict(tmp_path, capsys, imagefolder_root):
    f = tmp_path / "checkpoint_0000.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": [1, 2], "optimizer": {}}, f)
    line = one_error_line(capsys, script("UnMix_MoCo/for_ImageNet/main_moco_unmix.py").main,
                          [str(imagefolder_root), "-a", "resnet18", "--resume", str(f),
                           "--output-dir", str(tmp_path / "o")])
    assert str(f) in line and "state_dict" in line
    assert not (tmp_path / "o").exists()


# --- 5. --resume X --results-dir Y ----------------------------------------------------------------------------
def test_prepare_output_dir_resume_only_into_its_own_or_an_empty_folder(tmp_path):
    own, other, empty = tmp_path / "own", tmp_path / "other", tmp_path / "empty"
    for d in (own, other):
        d.mkdir()
        (d / "model_last.pth").write_bytes(b"x")
    empty.mkdir()
    ckpt = own / "model_last.pth"
    assert prepare_output_dir(own, str(ckpt), "model_last.pth") == own
    assert prepare_output_dir(empty, str(ckpt), "model_last.pth") == empty
    assert prepare_output_dir(tmp_path / "new" / "dir", str(ckpt), "model_last.pth").is_dir()
    with pytest.raises(CLIError, match="already holds another run"):
        prepare_output_dir(other, str(ckpt), "model_last.pth")
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(CLIError, match="already holds other files"):
        prepare_output_dir(empty, str(ckpt), "model_last.pth")


def test_moco_cifar_and_simclr_resume_refuse_to_write_over_another_run(tmp_path, capsys):
    c10 = make_cifar(tmp_path / "c10", "cifar10", n_train=16, n_test=8)
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):  # two runs (the refusal comes before the weights are looked at)
        run.mkdir()
        torch.save({"epoch": 1, "state_dict": {}, "optimizer": {}, "args": {"data": str(c10), "batch_size": 8}},
                   run / "model_last.pth")
        (run / "log.csv").write_text(f"epoch,train_loss\n1,{len(run.name)}\n")
    before = snapshot(b), snapshot(a)
    line = one_error_line(capsys, script("UnMix_MoCo/for_CIFAR/unmix_cifar.py").main, "cifar10",
                          ["--data", str(c10), "--resume", str(a / "model_last.pth"), "--results-dir", str(b),
                           "--batch-size", "8", "--bn-splits", "2", "--workers", "0"])
    assert f"{b} already holds another run" in line
    # SimCLR / BYOL: the same rule (its settings come from the checkpoint)
    line = one_error_line(capsys, script("UnMix_SimCLR_BYOL/main_unmix.py").main,
                          ["--resume", str(a / "model_last.pth"), "--results-dir", str(b), "--workers", "0"])
    assert f"{b} already holds another run" in line
    assert (snapshot(b), snapshot(a)) == before


# --- 7. SimCLR --resume of a weights-only file; a failed CIFAR download --------------------------------------
def test_simclr_resume_of_a_file_without_settings_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "contrastive_cifar10_99.pt"  # htdt's snapshot: a bare state_dict
    torch.save({"model.module.conv1.weight": torch.zeros(1)}, f)
    line = one_error_line(capsys, script("UnMix_SimCLR_BYOL/main_unmix.py").main, ["--resume", str(f)])
    assert f"{f} holds no recorded settings" in line
    assert os.listdir(tmp_path) == [f.name]  # no ./data, no results folder


def test_failed_cifar_download_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(url, download_root, **kw):  # torchvision makes the folder, then the network fails
        os.makedirs(download_root, exist_ok=True)
        open(os.path.join(download_root, kw.get("filename") or "part"), "wb").close()
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    root = tmp_path / "new" / "data"
    with pytest.raises(CLIError, match="could not download cifar10"):
        D.cifar("cifar10", str(root), train=True)
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()  # a folder that existed before is left alone
    with pytest.raises(CLIError, match="could not download cifar10"):
        D.cifar("cifar10", str(tmp_path / "kept"), train=True)
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("relpath,extra", [("UnMix_MoCo/for_ImageNet/main_moco_unmix.py", ["--moco-k", "16"]),
                                           ("UnMix_MoCo/for_ImageNet/main_lincls_unmix.py", [])])
def test_moco_imagenet_checks_images_once_per_job_also_off_node_0(tmp_path, monkeypatch, relpath, extra):
    """No $RANK under mp.spawn or a manual --rank: the parent checks as its first process's rank
    (common.dist.first_rank), so only the invocation that runs rank 0 checks."""
    mod = script(relpath)
    root = make_image_folder(tmp_path / "imgs")
    bad = _first_image(root)
    bad.write_bytes(b"not an image")
    launched = []
    monkeypatch.setattr(mod, "launch", lambda worker, args, plan: launched.append(plan.mode))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    argv = [str(root), "-a", "resnet18", "-b", "8", "-j", "0", "--epochs", "1", *extra]
    spawn = ["--multiprocessing-distributed", "--nproc", "2", "--dist-backend", "gloo"]
    with pytest.raises(CLIError, match=f"cannot be read, e.g. {bad}"):  # node 0: ranks 0 and 1
        mod.main(argv + spawn + ["--output-dir", str(tmp_path / "a")])
    mod.main(argv + spawn + ["--world-size", "2", "--rank", "1", "--output-dir", str(tmp_path / "b")])  # ranks 2, 3
    mod.main(argv + ["--world-size", "2", "--rank", "1", "--dist-backend", "gloo",
                     "--output-dir", str(tmp_path / "c")])  # a manual launch's rank 1
    assert launched == ["spawn", "manual"]
    with pytest.raises(CLIError, match="cannot be read"):  # and its rank 0 does check
        mod.main(argv + ["--world-size", "2", "--rank", "0", "--dist-backend", "gloo",
                         "--output-dir", str(tmp_path / "d")])
