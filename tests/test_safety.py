"""Loading never runs code from a file: a checkpoint (or stats pickle) whose unpickling would create a marker
file is refused by every loader with one error line naming the file and the global it wanted, and the
marker never appears; what the released/upstream formats really hold (NumPy scalars, an argparse
Namespace) still loads; ``--unsafe-load`` is the only way to open such a file."""
import argparse
import builtins
import importlib.util
import io
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, assert_clean_error, run_script
from fakedata import make_cifar
from common.checkpoint import load_checkpoint
from common.cli import CLIError, run_main


class Payload:
    """Unpickling it calls ``exec``, which creates ``marker``: what a malicious download would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def evil_checkpoint(path, marker, **extra):
    """A file in the MoCo/SwAV checkpoint shape whose unpickling runs the payload."""
    torch.save({"epoch": 1, "state_dict": {}, "optimizer": {}, "payload": Payload(marker), **extra}, path)
    return path


def script(relpath):
    """Imports an entry script by path (also ``convert-pretrain-to-detectron2.py``)."""
    name = "safety_" + relpath.replace("/", "_").replace("-", "_").replace(".py", "")
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_refused(capsys, marker, path, main, *args):
    """``run_main(main, *args)`` exits non-zero with one error line naming ``path`` and the global ``exec``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, *args)
    err = capsys.readouterr().err
    assert e.value.code != 0
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "refused" in lines[0] and str(path) in lines[0] and "exec" in lines[0], lines[0]
    assert not os.path.exists(marker), "the payload ran"


@pytest.fixture(scope="module")
def tiny_c10(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("safety_c10"), "cifar10", n_train=16, n_test=8)


# --- common.checkpoint ---------------------------------------------------------------------------------------
def test_load_checkpoint_refuses_code_and_keeps_the_released_contents(tmp_path):
    marker = tmp_path / "marker"
    for name, save in (("zip.pth", {}), ("legacy.pth", {"_use_new_zipfile_serialization": False})):
        f = tmp_path / name
        torch.save({"state_dict": {}, "x": Payload(marker)}, f, **save)
        with pytest.raises(CLIError, match=rf"refused to load {f}: .*global exec.*--unsafe-load"):
            load_checkpoint(f)
        assert not marker.exists()
    # a plain pickle (not a torch file) is refused as well
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump({"x": Payload(marker)}, fh, protocol=2)
    with pytest.raises(CLIError, match="plain.pkl"):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not marker.exists()
    # what older scripts/tools put into checkpoints: NumPy scalars and arrays, an argparse Namespace,
    # a scheduler's Counter, torch dtypes/devices - loads without the unsafe switch, values intact
    obj = {"epoch": np.int64(3), "best_acc": np.float64(71.25), "acc": np.float32(0.5), "flag": np.bool_(True),
           "hist": np.arange(4.0), "args": argparse.Namespace(arch="resnet50", lr=0.03, schedule=[120, 160]),
           "scheduler": torch.optim.lr_scheduler.MultiStepLR(
               torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), [2, 2]).state_dict(),
           "state_dict": {"w": torch.ones(2, dtype=torch.float16)}}
    torch.save(obj, tmp_path / "ok.pth")
    back = load_checkpoint(tmp_path / "ok.pth")
    assert back["epoch"] == 3 and back["best_acc"] == 71.25 and back["flag"] and back["acc"] == 0.5
    assert np.array_equal(back["hist"], np.arange(4.0)) and back["args"].schedule == [120, 160]
    assert back["scheduler"]["milestones"] == obj["scheduler"]["milestones"]
    assert torch.equal(back["state_dict"]["w"], obj["state_dict"]["w"])
    # the explicit opt-in opens a trusted file with plain pickle (the payload runs: that is the point)
    load_checkpoint(tmp_path / "zip.pth", unsafe=True)
    assert marker.exists()


# --- every loader, as a user reaches it ----------------------------------------------------------------------
def test_moco_cifar_resume_refuses_code_end_to_end(tmp_path, tiny_c10):
    marker = tmp_path / "marker"
    f = evil_checkpoint(tmp_path / "model_last.pth", marker)
    before = sorted(os.listdir(tmp_path))
    p = run_script(["UnMix_MoCo/for_CIFAR/unmix_c10.py", "--data", tiny_c10, "--resume", f], check=False)
    assert_clean_error(p, f"refused to load {f}", "exec", "--unsafe-load")
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == before


def test_every_checkpoint_loader_refuses_code(tmp_path, capsys, imagefolder_root, tiny_c10):
    marker = tmp_path / "marker"
    f = evil_checkpoint(tmp_path / "evil.pth.tar", marker)
    folder = str(imagefolder_root)

    assert_refused(capsys, marker, f, script("UnMix_MoCo/for_CIFAR/unmix_cifar.py").main, "cifar100",
                   ["--data", str(tiny_c10), "--resume", str(f)])
    assert_refused(capsys, marker, f, script("UnMix_MoCo/for_CIFAR/eval_knn.py").main, [str(f)])
    assert_refused(capsys, marker, f, script("UnMix_MoCo/for_ImageNet/main_moco_unmix.py").main,
                   [folder, "-a", "resnet18", "--resume", str(f), "--output-dir", str(tmp_path / "m")])
    lincls = script("UnMix_MoCo/for_ImageNet/main_lincls_unmix.py").main
    assert_refused(capsys, marker, f, lincls, [folder, "-a", "resnet18", "--pretrained", str(f),
                                               "--output-dir", str(tmp_path / "l")])
    assert_refused(capsys, marker, f, lincls, [folder, "-a", "resnet18", "--resume", str(f),
                                               "--output-dir", str(tmp_path / "l")])
    assert_refused(capsys, marker, f, script("UnMix_MoCo/for_ImageNet/detection/convert-pretrain-to-detectron2.py")
                   .main, [str(f), str(tmp_path / "out.pkl")])
    linear = script("UnMix_SwAV/for_CIFAR/eval_linear.py").main
    assert_refused(capsys, marker, f, linear, "cifar", ["--data_path", str(tiny_c10), "--pretrained", str(f),
                                                        "--dump_path", str(tmp_path / "lin"), "--workers", "0"])
    assert_refused(capsys, marker, f, script("UnMix_SwAV/for_ImageNet/eval_semisup.py").main,
                   ["--data_path", folder, "--pretrained", str(f), "--dump_path", str(tmp_path / "semi"),
                    "--arch", "resnet50", "--subset_file", str(_subset(tmp_path, imagefolder_root))])
    # SwAV eval_linear --resume reads DUMP/checkpoint.pth.tar
    dump = tmp_path / "lin_resume"
    dump.mkdir()
    evil_checkpoint(dump / "checkpoint.pth.tar", marker)
    assert_refused(capsys, marker, dump / "checkpoint.pth.tar", linear, "cifar",
                   ["--data_path", str(tiny_c10), "--dump_path", str(dump), "--resume", "true", "--workers", "0"])
    simclr = script("UnMix_SimCLR_BYOL/main_unmix.py").main
    assert_refused(capsys, marker, f, simclr, ["--data", str(tiny_c10), "--resume", str(f)])
    assert_refused(capsys, marker, f, script("UnMix_SimCLR_BYOL/eval.py").main, [str(f)])
    released = script("tools/released.py").main
    assert_refused(capsys, marker, f, released, ["verify", str(f)])
    assert_refused(capsys, marker, f, script("tools/convert_to_torchvision.py").main,
                   [str(f), str(tmp_path / "tv.pth")])
    assert not (tmp_path / "out.pkl").exists() and not (tmp_path / "tv.pth").exists()


def _subset(tmp_path, imagefolder_root):
    train = imagefolder_root / "train"
    names = sorted(p.name for d in train.iterdir() for p in d.iterdir())[:4]
    (tmp_path / "subset.txt").write_text("\n".join(names) + "\n")
    return tmp_path / "subset.txt"


def test_swav_pretraining_refuses_code_in_checkpoint_and_queue(tmp_path, capsys, tiny_c10):
    from UnMix_SwAV.swav.resnet import build
    train = script("UnMix_SwAV/for_CIFAR/main_swav_unmix.py").main
    marker = tmp_path / "marker"
    dump = tmp_path / "run"
    dump.mkdir()
    args = ["--data_path", str(tiny_c10), "--dump_path", str(dump), "--epochs", "2", "--batch_size", "8",
            "--hidden_mlp", "16", "--feat_dim", "8", "--nmb_prototypes", "10", "--workers", "0",
            "--queue_length", "16", "--epoch_queue_starts", "0", "--resume"]
    # a run after its first epoch, as the script writes it (upstream keys), with a malicious queue file
    model = build("resnet18", normalize=True, hidden_mlp=16, output_dim=8, nmb_prototypes=10, cifar_stem=True)
    torch.save({"epoch": 1, "state_dict": {"module." + k: t for k, t in model.state_dict().items()},
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()},
               dump / "checkpoint.pth.tar")
    evil_checkpoint(dump / "queue0.pth", marker)
    assert_refused(capsys, marker, dump / "queue0.pth", train, "cifar", args)
    evil_checkpoint(dump / "checkpoint.pth.tar", marker)
    assert_refused(capsys, marker, dump / "checkpoint.pth.tar", train, "cifar", args)


def test_hub_refuses_code_in_local_and_cached_files(tmp_path):
    marker = tmp_path / "marker"
    f = evil_checkpoint(tmp_path / "evil.pth.tar", marker)
    with pytest.raises(CLIError, match="refused to load .*exec"):
        torch.hub.load(str(ROOT), "swav_cifar_resnet18", source="local", checkpoint=str(f))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:  # an HTTPS artefact already in the torch.hub cache is loaded through the same safe loader
        cache = tmp_path / "hub" / "checkpoints" / "unmix"
        cache.mkdir(parents=True)
        evil_checkpoint(cache / "moco_v2_800ep_pretrain.pth.tar", marker)
        with pytest.raises(CLIError, match="refused to load .*exec"):
            torch.hub.load(str(ROOT), "mocov2_resnet50", source="local")
    finally:
        torch.hub.set_dir(old)
    assert not marker.exists()


# --- stats pickles and the CIFAR meta file -------------------------------------------------------------------
def test_stats_pickles_are_read_without_running_code(tmp_path, capsys):
    from UnMix_SwAV.swav.exp import PDStats, rows_before
    marker = tmp_path / "marker"
    with open(tmp_path / "stats0.pkl", "wb") as fh:
        pickle.dump(pd.DataFrame({"epoch": [0], "loss": [Payload(marker)]}), fh)
    assert_refused(capsys, marker, tmp_path / "stats0.pkl", script("tools/plot_curves.py").main,
                   ["--run", str(tmp_path / "stats0.pkl"), "--out", str(tmp_path / "c.png")])
    with pytest.raises(CLIError, match="refused to read .*stats0.pkl.*exec"):
        rows_before(tmp_path / "stats0.pkl", ["epoch", "loss"], 5)
    assert not marker.exists()
    # upstream PD_Stats files (object columns filled row by row with .loc) still read, and the CSV written
    # beside the pickle holds the same table
    (tmp_path / "ok").mkdir()
    s = PDStats(str(tmp_path / "ok" / "stats0.pkl"), ["epoch", "loss"])
    s.update((0, 7.5))
    s.update((1, np.float64(6.25)))
    up = pd.DataFrame(columns=["epoch", "loss"])
    up.loc[0], up.loc[1] = (0, 7.5), (1, 6.25)
    up.to_pickle(tmp_path / "up.pkl", protocol=2)
    assert rows_before(tmp_path / "up.pkl", ["epoch", "loss"], 2) == [(0, 7.5), (1, 6.25)]
    assert rows_before(tmp_path / "ok" / "stats0.pkl", ["epoch", "loss"], 2) == [(0, 7.5), (1, 6.25)]
    assert pd.read_csv(tmp_path / "ok" / "stats0.csv").values.tolist() == [[0, 7.5], [1, 6.25]]


def test_cifar_meta_is_read_without_running_code(tmp_path):
    from common.data import cifar
    marker = tmp_path / "marker"
    root = make_cifar(tmp_path / "c", "cifar10", n_train=8, n_test=4)
    meta = next(p for p in (tmp_path / "c").rglob("batches.meta"))
    with open(meta, "wb") as fh:
        pickle.dump({"label_names": Payload(marker)}, fh)
    with pytest.raises(CLIError, match="refused to read .*batches.meta"):
        cifar("cifar10", root, train=True, download=False)
    assert not marker.exists()


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 wrote its ``str`` (SHORT_BINSTRING / BINSTRING opcodes, no ``_codecs``), as in
    the released CIFAR batch files (cPickle, protocol 2)."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def python2_pickle(obj, path):
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1.x's module name, as the 2009 files have it (protocol 2 names globals in text)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def test_cifar_batches_are_read_without_running_code_in_the_released_layout(tmp_path):
    from common.data import cifar
    root = make_cifar(tmp_path / "c", "cifar10", n_train=10, n_test=4)
    folder = next((tmp_path / "c").rglob("cifar-10-batches-py"))
    # the released files: Python 2 pickles of {'batch_label', 'labels', 'data', 'filenames'}, keys and names as
    # Python 2 str (bytes here), data a uint8 array of rows of 3072 values (R, G, B planes of 32 x 32)
    rng = np.random.RandomState(1)
    expected = []
    for i in range(1, 6):
        data = rng.randint(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.randint(0, 10, size=2)]
        python2_pickle({b"batch_label": b"training batch %d of 5" % i, b"labels": labels, b"data": data,
                        b"filenames": [b"img_%d.png" % k for k in range(2)]}, folder / f"data_batch_{i}")
        expected.append((data, labels))
    assert b"numpy.core.multiarray\n_reconstruct" in (folder / "data_batch_1").read_bytes()
    ds = cifar("cifar10", root, train=True, download=False)
    data = np.concatenate([d for d, _ in expected])
    assert ds.targets == [v for _, ls in expected for v in ls]
    assert np.array_equal(ds.data, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # pixel (y, x) of plane c
    assert ds.data[3, 5, 7, 2] == data[3, 2 * 1024 + 5 * 32 + 7]
    # a batch file whose unpickling would run code is refused in one line, and the code never runs
    marker = tmp_path / "marker"
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Payload(marker), "labels": []}, fh)
    with pytest.raises(CLIError, match="refused to read .*data_batch_3.*exec"):
        cifar("cifar10", root, train=True, download=False)
    assert not marker.exists()
