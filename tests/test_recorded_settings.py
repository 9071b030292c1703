"""A checkpoint's recorded settings are input like the command line (a checkpoint comes from the internet):
every value a resume adopts passes the parser's type, choices and bounds and the scripts' range checks, or the
run stops with one line naming the file and the option; counts have upper bounds and no schedule grows with
them; a recorded data folder is only read. Also the last cases of the hardening: SAMix ``--resume X
--output-dir Y`` onto another run, non-finite evaluation outputs, ``released.py`` lines, ``--eta``'s range,
torchrun's summary, the kind of a resumed file checked first, no output folder left by a refused run."""
import argparse
import json
import math
import resource
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT, script_env
from test_bad_inputs import one_error_line, snapshot
from test_swav_eval import imagenet_like  # noqa: F401  (a fixture)
from test_safety import script
from common import cli
from common.cli import CLIError, adopt_recorded_args
from common.guard import NonFiniteError

C10 = "UnMix_MoCo/for_CIFAR/unmix_c10.py"


def moco_cifar():
    return script("UnMix_MoCo/for_CIFAR/unmix_cifar.py")


def crafted_moco_checkpoint(folder, **recorded):
    """A file that passes the MoCo CIFAR demo's kind check (queue and encoder_q.net weights, epoch, optimizer)
    and records ``recorded`` as its settings, next to the run's derived files."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"queue": torch.zeros(2), "encoder_q.net.0.weight": torch.zeros(1)}, "epoch": 1,
                "optimizer": {}, "args": recorded}, folder / "model_last.pth")
    (folder / "log.csv").write_text("epoch,train_loss,test_acc@1\n1,9.0,10.0\n")
    return folder / "model_last.pth"


# --- 1. the parser's types, choices and bounds, and the range checks, for recorded values -------------------
def test_adopted_values_go_through_the_parsers_type_choices_and_bounds():
    """Unit: the same parser and the same values, typed or recorded, are accepted or refused alike."""
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=cli.count(cli.MAX_EPOCHS), default=10)
    p.add_argument("--mix", choices=["unmix", "none"], default="unmix")
    p.add_argument("--schedule", nargs="*", type=int, default=[])
    p.add_argument("--cos", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    good = {"lr": "0.5", "epochs": 20, "mix": "none", "schedule": [3, 4], "cos": True, "seed": None}
    args = p.parse_args([])
    adopt_recorded_args(args, good, p, [], source="F.pth")
    assert vars(args) == {"lr": 0.5, "epochs": 20, "mix": "none", "schedule": [3, 4], "cos": True, "seed": None}
    for key, bad in [("lr", "rm -rf"), ("epochs", 10 ** 40), ("epochs", 2.5), ("epochs", True), ("mix", "evil"),
                     ("schedule", 5), ("schedule", ["x"]), ("cos", 1), ("seed", {"a": 1}), ("lr", None)]:
        with pytest.raises(CLIError, match=rf"^F\.pth records --{key} = .*: not resumed$"):
            adopt_recorded_args(p.parse_args([]), {key: bad}, p, [], source="F.pth")
    for typed in (["--lr", "rm -rf"], ["--epochs", str(10 ** 40)], ["--epochs", "2.5"], ["--mix", "evil"],
                  ["--schedule", "x"]):
        with pytest.raises(SystemExit):  # the command line refuses the same values
            p.parse_args(typed)
    # a range check of the script names the recorded option and the file; one about a typed value does not
    resumed = adopt_recorded_args(p.parse_args([]), {"lr": -1.0}, p, [], source="F.pth")
    with pytest.raises(CLIError, match=r"^--lr must be >= 0 \(--lr as recorded in F\.pth: not resumed"):
        with cli.recorded_checks(resumed):
            raise CLIError("--lr must be >= 0")
    with pytest.raises(CLIError, match=r"^--epochs must be >= 1$"):
        with cli.recorded_checks(resumed):
            raise CLIError("--epochs must be >= 1")


@pytest.mark.parametrize("recorded,fragments", [
    ({"lr": "rm -rf"}, ["--lr = 'rm -rf'", "invalid float value"]),
    ({"mix": "evil"}, ["--mix = 'evil'", "invalid choice"]),
    ({"moco_t": -1.0}, ["--moco-t", "positive", "--moco-t as recorded in"]),
    ({"moco_k": 2 ** 40}, ["--moco-k", "more than the 4,194,304 allowed"]),
    ({"batch_size": 10 ** 9}, ["--batch-size", "more than the 65,536 allowed"]),
    ({"moco_dim": 10 ** 9}, ["--moco-dim", "more than the 65,536 allowed"]),
    ({"image_size": 10 ** 6}, ["--image-size", "more than the 4,096 allowed"]),
], ids=["lr-text", "mix-choice", "moco-t-range", "queue-bound", "batch-bound", "dim-bound",
        "image-bound"])
def test_moco_cifar_malicious_recorded_setting_is_one_line_and_changes_nothing(recorded, fragments, tmp_path,
                                                                                capsys):
    """(10**40 recorded epochs: test_epoch_counts_of_10_to_the_40_..., in a process with a memory limit.)"""
    ck = crafted_moco_checkpoint(tmp_path / "run", **recorded)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, moco_cifar().main, "cifar10", ["--resume", str(ck), "--results-dir",
                                                                 str(tmp_path / "new")])
    assert str(ck) in line, line
    for frag in fragments:
        assert frag in line, (frag, line)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _limited_memory():
    limit = 6 << 30  # far above what the script needs; a list over 10**12 epochs would need terabytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("how", ["recorded", "typed"])
def test_epoch_counts_of_10_to_the_40_end_in_seconds_with_bounded_memory(how, tmp_path):
    """The zero-lr warning built a list over every epoch: 10**40 recorded (or 10**12 typed) epochs ran the
    machine out of memory. Now one line, in the time it takes to start Python."""
    ck = crafted_moco_checkpoint(tmp_path / "run", epochs=10 ** 40)
    argv = ["--resume", ck] if how == "recorded" else ["--epochs", 10 ** 12, "--results-dir", tmp_path / "new"]
    p = subprocess.run([sys.executable, C10, *map(str, argv)], cwd=ROOT, env=script_env(), capture_output=True,
                       text=True, timeout=120, preexec_fn=_limited_memory)
    err = [line for line in p.stderr.splitlines() if "error" in line.lower()]
    assert p.returncode == 2 and len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "--epochs" in err[0] and "more than the 100,000 allowed" in err[0]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["run"]


def test_zero_lr_warning_needs_no_list_over_the_epochs():
    """Counted from a generator: a schedule of 10**6 epochs is never held in memory (a list would be 8 MB of
    pointers alone); the published demo's warning logic (>= 10 % of the epochs at lr 0) is unchanged."""
    from common.logs import warn_zero_lr_epochs
    assert not warn_zero_lr_epochs(0.1 * (e < 10 ** 6) for e in range(1, 10 ** 6 + 1))
    with pytest.warns(UserWarning, match="epochs 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 10 more of 20 at lr 0"):
        assert warn_zero_lr_epochs(0.0 for _ in range(20))


@pytest.mark.parametrize("cfg", [(0.6, 0.0006, 400, 5, 0.0, 390), (4.8, 0.0048, 200, 10, 0.3, 50),
                                 (0.6, 0.0006, 1, 5, 0.0, 4), (0.5, 0.0, 3, 2, 0.5, 3), (0.1, 0.1, 3, 0, 0.0, 7)])
def test_swav_schedule_is_upstreams_array_bit_for_bit_without_holding_it(cfg):
    """SwAV's per-iteration lr schedule was an array over every iteration of every epoch (4 GB for 100,000
    ImageNet epochs); entry by entry it equals upstream's array (written out here as upstream built it)."""
    import numpy as np
    from UnMix_SwAV.swav.train import lr_schedule
    base_lr, final_lr, epochs, warmup_epochs, start_warmup, iters = cfg
    warmup = np.linspace(start_warmup, base_lr, iters * warmup_epochs)
    n = max(0, iters * (epochs - warmup_epochs))
    upstream = np.concatenate((warmup, final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(np.pi * np.arange(n) / n))))
    ours = lr_schedule(*cfg)
    assert len(ours) == len(upstream) and np.array_equal(np.asarray(ours), upstream)
    assert ours[-1] == upstream[-1] and ours[0] == upstream[0]
    huge = lr_schedule(0.6, 0.0006, cli.MAX_EPOCHS, 10, 0.0, 5005)  # nothing is computed ahead
    assert len(huge) == cli.MAX_EPOCHS * 5005 and huge[len(huge) - 1] == pytest.approx(0.0006)


@pytest.mark.parametrize("exists", [False, True], ids=["missing-folder", "empty-folder"])
def test_recorded_data_folder_is_only_read(exists, tmp_path, capsys):
    """A crafted checkpoint's --data decided where a resumed run created folders and downloaded CIFAR. Now a
    recorded folder is only read: no download is tried, no folder is created, and the line says how to name
    one on the command line (where the download is allowed)."""
    elsewhere = tmp_path / "elsewhere" / "deep"
    if exists:
        elsewhere.mkdir(parents=True)
    ck = crafted_moco_checkpoint(tmp_path / "run", data=str(elsewhere), batch_size=8, bn_splits=2, moco_k=16)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, moco_cifar().main, "cifar10", ["--resume", str(ck), "--workers", "0"])
    assert f"the data folder recorded in {ck}: a resumed run only reads a recorded folder" in line, line
    assert snapshot(tmp_path) == before
    assert elsewhere.exists() == exists and (not exists or not any(elsewhere.iterdir()))
    assert (tmp_path / "elsewhere").exists() == exists


def test_a_data_folder_given_again_on_the_command_line_may_be_downloaded_into(tmp_path, monkeypatch):
    """The command line names the folder: the usual download-when-missing applies (the download is faked)."""
    from common import data as D
    called = []

    class Fake(D.CIFAR_CLASSES["cifar10"]):
        def __init__(self, root, train, transform, download):
            called.append((root, download))
            raise RuntimeError("Dataset not found or corrupted")

    cli.RECORDED_DATA_ROOTS[str(tmp_path / "recorded")] = "F.pth"
    with pytest.raises(CLIError, match="only reads"):
        D.cifar("cifar10", str(tmp_path / "recorded"), True, cls=Fake)
    with pytest.raises(CLIError, match="allow the download"):
        D.cifar("cifar10", str(tmp_path / "named"), True, cls=Fake)
    assert called == [(str(tmp_path / "recorded"), False), (str(tmp_path / "named"), True)]


def test_samix_recorded_mix_outside_its_choices_is_one_line(tmp_path, capsys):
    ms = pytest.importorskip("SAMix.main_samix")
    ck = tmp_path / "run" / "latest.pth"
    ck.parent.mkdir()
    torch.save({"state_dict": {}, "epoch": 1, "optimizer": {}, "args": {"mix": "evil", "eta": 0.5}}, ck)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ms.main, ["--resume", str(ck)])
    assert f"{ck} records --mix = 'evil'" in line and "invalid choice" in line, line
    assert snapshot(tmp_path) == before


def test_moco_imagenet_and_simclr_recorded_settings_are_checked_too(tmp_path, capsys):
    from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls
    ck = tmp_path / "lin.pth.tar"
    torch.save({"state_dict": {}, "epoch": 1, "args": {"lr": "rm -rf"}}, ck)
    line = one_error_line(capsys, lincls.main, [str(tmp_path), "--resume", str(ck)])
    assert f"{ck} records --lr = 'rm -rf'" in line, line
    torch.save({"state_dict": {}, "epoch": 1, "args": {"epochs": -3}}, ck)  # a range check, not the type
    line = one_error_line(capsys, lincls.main, [str(tmp_path), "--resume", str(ck)])
    assert "--epochs must be >= 1" in line and f"--epochs as recorded in {ck}" in line, line
    simclr = script("UnMix_SimCLR_BYOL/main_unmix.py")
    torch.save({"state_dict": {}, "epoch": 1, "args": {"method": "evil"}}, ck)
    line = one_error_line(capsys, simclr.main, ["--resume", str(ck), "--results-dir", str(tmp_path / "new")])
    assert f"{ck} records --method = 'evil'" in line and not (tmp_path / "new").exists(), line


# --- 2. the cases that still failed -----------------------------------------------------------------------------
def test_samix_resume_into_another_runs_folder_is_refused(tmp_path, monkeypatch):
    ms = pytest.importorskip("SAMix.main_samix")
    launched = []
    monkeypatch.setattr(ms, "launch", lambda worker, args, plan: launched.append(args))
    ck = tmp_path / "a" / "latest.pth"
    ck.parent.mkdir()
    torch.save({"state_dict": {}, "epoch": 1, "optimizer": {}, "args": {"epochs": 2}}, ck)
    other = tmp_path / "b"
    other.mkdir()
    for name in ("latest.pth", "log.csv", "args.json", "curves.png"):
        (other / name).write_text(name)
    before = snapshot(tmp_path)
    with pytest.raises(CLIError, match=rf"{other} already holds another run \(latest.pth\): --resume"):
        ms.main(["--resume", str(ck), "--output-dir", str(other)])
    assert not launched and snapshot(tmp_path) == before
    ms.main(["--resume", str(ck), "--output-dir", str(tmp_path / "c")])  # a new folder is fine...
    ms.main(["--resume", str(ck)])  # ...and the checkpoint's own
    assert [a.output_dir for a in launched] == [str(tmp_path / "c"), str(ck.parent)]
    assert not (tmp_path / "c").exists()  # created by the worker, once the data and checkpoint are accepted


def test_samix_eta_is_checked_against_its_range():
    ms = pytest.importorskip("SAMix.main_samix")
    for eta in ("2", "1.01", "-0.1", "nan"):
        with pytest.raises(CLIError, match=r"--eta must be in \[0, 1\]"):
            ms.resolve_defaults(ms.build_parser().parse_args(["--eta", eta]))
    for eta in ("0", "0.5", "1"):  # the released 1 (ImageNet) and 0.5 (CIFAR-100, Tiny)
        assert ms.resolve_defaults(ms.build_parser().parse_args(["--eta", eta])).eta == float(eta)


class NaNNet(nn.Module):
    """A model whose weights are finite but whose outputs are NaN (what an lr of 1e30 leaves behind)."""

    def __init__(self, classes=6):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * math.inf * 0


def _loader(n=12, classes=6):
    from torch.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(torch.randn(n, 3, 4, 4), torch.arange(n) % classes)
    ds.classes = list(range(classes))
    return DataLoader(ds, batch_size=4)


def test_every_evaluation_stops_on_non_finite_outputs():
    """SwAV linear / semi-supervised validation, MoCo lincls validation, SAMix validation, the kNN monitor and the
    SimCLR/BYOL evaluation: NaN outputs raise NonFiniteError (each script's caller saves only afterwards)."""
    from UnMix_SwAV.swav import linear
    from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls
    from common.knn import knn_accuracy
    ms = pytest.importorskip("SAMix.main_samix")
    net, loader = NaNNet(), _loader()
    with pytest.raises(NonFiniteError, match="in the validation after epoch 4"):
        linear.validate(net, None, loader, torch.device("cpu"), 4)
    with pytest.raises(NonFiniteError, match="validation loss after epoch 2"):
        lincls.run_epoch(loader, net, nn.CrossEntropyLoss(), torch.device("cpu"), epoch=2, log=lambda *a: None)
    with pytest.raises(NonFiniteError, match="kNN|features"):
        knn_accuracy(net, loader, loader, torch.device("cpu"), knn_k=2)

    class Heads(NaNNet):
        def evaluate(self, x):
            return {"one_q": self(x)}
    args = argparse.Namespace(amp=False, output_dir="out")
    with pytest.raises(NonFiniteError, match="validation after epoch 3"):
        ms.evaluate(Heads(), loader, torch.device("cpu"), args, 3)
    simclr_eval = script("UnMix_SimCLR_BYOL/eval.py")
    with pytest.raises(NonFiniteError, match="features"):
        simclr_eval.evaluate(net, loader, loader, torch.device("cpu"), knn_k=1, monitor_k=2, probe_epochs=0)
    # finite outputs pass and give the plain accuracy
    finite = nn.Sequential(nn.Flatten(1), nn.Linear(48, 6))
    assert 0 <= linear.validate(finite, None, loader, torch.device("cpu"))[1] <= 100


@pytest.mark.slow  # two short fine-tuning runs in-process
def test_swav_semisup_one_step_at_lr_1e30_keeps_the_checkpoint(tmp_path, imagenet_like):  # noqa: F811
    """The reported case: one step per epoch at --lr 1e30 leaves finite weights whose outputs are NaN
    ("Test: Loss nan"); the run exited 0 and replaced checkpoint.pth.tar. Now it stops before saving."""
    from UnMix_SwAV.swav import semisup
    dump = tmp_path / "semi"
    common_args = ["--data_path", str(imagenet_like), "--labels_perc", "1", "--arch", "resnet18", "--crop_size",
                   "32", "--val_resize", "36", "--pretrained", "", "--dump_path", str(dump), "--workers", "0",
                   "--batch_size", "6"]  # the 6 labelled images: one step per epoch
    semisup.main(common_args + ["--epochs", "1"])
    before = snapshot(dump)
    with pytest.raises(NonFiniteError, match="non-finite .* in the validation after epoch 1"):
        semisup.main(common_args + ["--epochs", "2", "--resume", "true", "--lr", "1e30", "--lr_last_layer", "1e30"])
    after = snapshot(dump)
    assert after["checkpoint.pth.tar"] == before["checkpoint.pth.tar"]


def test_released_eval_cmd_run_on_a_refused_file_prints_one_line(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    p = subprocess.run([sys.executable, "tools/released.py", "eval-cmd", "unmix_moco_c10_symmetric", "--path",
                        str(tmp_path / "m.pth"), "--data", str(tmp_path), "--run"], cwd=ROOT, env=script_env(),
                       capture_output=True, text=True, timeout=300)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(err) == 1 and "HTML" in err[0], p.stderr


def test_under_torchrun_the_error_line_is_the_workers_report(tmp_path, monkeypatch, capsys):
    """torchrun prints its own traceback and a "Root Cause" summary after a worker fails; the worker's report
    file ($TORCHELASTIC_ERROR_FILE, torch's ErrorHandler layout) makes the summary's last field our line."""
    report = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(report))

    def diverged():
        raise NonFiniteError("non-finite loss nan at epoch 1, step 0: training stopped")
    with pytest.raises(SystemExit) as e:
        cli.run_main(diverged)
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    data = json.loads(report.read_text())["message"]
    assert data["message"] == line == data["extraInfo"]["py_callstack"] and "non-finite loss nan" in line
    # what torchrun does with it: its summary shows the report's py_callstack as "traceback :"
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(report))
    summary = ChildFailedError("unmix_c10.py", {0: failure}).format_msg().splitlines()
    assert summary[-1].startswith("=") and summary[-2].strip() == f"traceback : {line}"


def test_torchrun_nan_stop_first_and_last_lines(tmp_path, cifar10_root):
    """The real thing: a diverging MoCo CIFAR run under torchrun (1 process, gloo)."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        C10, "--data", str(cifar10_root), "--results-dir", str(tmp_path / "r"), "--epochs", "1",
                        "--batch-size", "8", "--bn-splits", "2", "--moco-k", "16", "--image-size", "16",
                        "--workers", "0", "--lr", "1e30", "--no-cos", "--knn-k", "5"], cwd=ROOT, env=script_env(),
                       capture_output=True, text=True, timeout=600)
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode != 0
    first = next(line for line in err if "error" in line.lower())
    assert first.startswith("unmix_c10.py: error: non-finite loss"), err[:5]
    assert err[-1].startswith("=") and err[-2].strip() == f"traceback : {first}", err[-6:]


# --- 3. small things ----------------------------------------------------------------------------------------------
def test_moco_cifar_resume_of_a_swav_checkpoint_checks_the_kind_first(tmp_path, capsys):
    ck = tmp_path / "swav" / "checkpoint.pth.tar"
    ck.parent.mkdir()
    torch.save({"epoch": 1, "state_dict": {"module.conv1.weight": torch.zeros(1)}, "optimizer": {},
                "args": {"dataset": None, "data_path": "cifar10"}}, ck)
    line = one_error_line(capsys, moco_cifar().main, "cifar10", ["--resume", str(ck), "--results-dir",
                                                                 str(tmp_path / "new")])
    assert "does not match the model of this script" in line and str(ck) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swav"]


def test_released_verify_says_when_only_the_layout_was_checked(tmp_path):
    from tools import released
    from test_released import fake_file
    f = fake_file(tmp_path / "m.pth.tar", "moco_cifar")
    assert not released.get("unmix_moco_c10_symmetric").md5  # the Drive files have no published md5
    p = subprocess.run([sys.executable, "tools/released.py", "verify", str(f), "--name", "unmix_moco_c10_symmetric"],
                       cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("OK "), p.stderr
    assert "layout only: no md5 was published for unmix_moco_c10_symmetric" in p.stdout


def test_refused_resume_leaves_no_output_folder(tmp_path, capsys, cifar10_root):
    """A checkpoint refused after the data was read (its weights do not fit the model) left an empty output
    folder behind; the folder is created only once the inputs are accepted."""
    ck = crafted_moco_checkpoint(tmp_path / "run", batch_size=8, bn_splits=2, moco_k=16, image_size=16,
                                 workers=0, data=str(cifar10_root))
    line = one_error_line(capsys, moco_cifar().main, "cifar10", ["--resume", str(ck), "--results-dir",
                                                                 str(tmp_path / "new"), "--data", str(cifar10_root)])
    assert "does not match the model" in line, line
    assert not (tmp_path / "new").exists()
