"""tools/reproduce.py (the paper's rows run, resumed, scheduled and reported) and tools/paper_figures.py."""
import csv
import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_clean_error, run_script, script_env
from fakedata import make_cifar, make_image_folder
from common.cli import CLIError
from tools import layouts, paper_figures, reproduce
from UnMix_MoCo.for_ImageNet import main_lincls_unmix as lincls

TOOL = "tools/reproduce.py"
ROWS = ["moco_c10_symmetric", "unmix_moco_c10_symmetric"]


def git_head():
    return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 24 training images: 3 steps of 8 per epoch, enough for the tiny scale's kNN (k=20)
    return make_cifar(tmp_path_factory.mktemp("repro_data"), "cifar10", n_train=24, n_test=20)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Both rows run uninterrupted (A); the Un-Mix row killed after its first checkpoint, then run again (B)."""
    tmp = tmp_path_factory.mktemp("repro")
    a, b = tmp / "A", tmp / "B"
    run_script([TOOL, "run", *ROWS, "--scale", "tiny", "--data", data, "--out", a])
    killed = run_script([TOOL, "run", ROWS[1], "--scale", "tiny", "--data", data, "--out", b],
                        env=script_env(UNMIX_TEST_KILL_AFTER="checkpoint:1"), check=False)
    ckpt = b / ROWS[1] / "train" / "model_last.pth"
    at_kill = torch.load(ckpt, weights_only=False)["epoch"]
    reproduce.main(["report", str(b), "--no-figures"])
    partial = (b / "results.md").read_text()
    again = run_script([TOOL, "run", ROWS[1], "--scale", "tiny", "--data", data, "--out", b])
    return dict(a=a, b=b, killed=killed, at_kill=at_kill, partial=partial, again=again, data=data)


def record(folder, row):
    return json.loads((folder / row / "run.json").read_text())


@pytest.mark.slow
def test_killed_row_continues_to_the_uninterrupted_checkpoint(runs):
    assert_clean_error(runs["killed"], f"{ROWS[1]}: train was killed by signal {int(signal.SIGKILL)}",
                       "run the same command again")
    assert runs["at_kill"] == 1  # killed right after epoch 1's checkpoint, of 3
    # the interrupted run is reported as partial: 1 of 3 epochs (its checkpoint's; the kill came before the log
    # was written, so no result yet), no Δ
    assert f"| `{ROWS[1]}` | tiny | 92.25 | – (partial) | – | train 1/3 |" in runs["partial"]
    assert "continuing" in runs["again"].stdout
    full = torch.load(runs["a"] / ROWS[1] / "train" / "model_last.pth", weights_only=False)
    cont = torch.load(runs["b"] / ROWS[1] / "train" / "model_last.pth", weights_only=False)
    assert full["epoch"] == cont["epoch"] == 3
    for k, v in full["state_dict"].items():
        assert torch.equal(v, cont["state_dict"][k]), k
    executed = record(runs["b"], ROWS[1])["executed"]
    assert len(executed) == 2 and executed[1] == executed[0] + " --resume " + shlex.quote(
        reproduce.show(runs["b"] / ROWS[1] / "train" / "model_last.pth"))
    # a finished row is collected, not run again
    p = run_script([TOOL, "run", ROWS[1], "--scale", "tiny", "--data", runs["data"], "--out", runs["b"]])
    assert "finished, collected" in p.stdout and len(record(runs["b"], ROWS[1])["executed"]) == 2


@pytest.mark.slow
def test_report_names_command_commit_and_scale(runs):
    p = run_script([TOOL, "report", runs["a"]])
    assert "2 figures" in p.stdout
    md = (runs["a"] / "results.md").read_text()
    with open(runs["a"] / "results.csv", newline="") as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    assert set(table) == set(ROWS)
    for row in ROWS:
        rec, res = record(runs["a"], row), table[row]
        log = list(csv.DictReader(open(runs["a"] / row / "train" / "log.csv")))
        assert res["scale"] == "tiny" and res["epochs"] == "train 3/3" and res["finished"] == "True"
        assert float(res["ours"]) == round(float(log[-1]["test_acc@1"]), 2)  # the last epoch's kNN top-1
        assert float(res["published"]) == float(re.findall(r"\d+\.\d+", reproduce.released.CATALOGUE[row].published)[0])
        assert res["delta"] == ""  # a scaled row is never compared with the published number
        assert res["commit"] == rec["commits"][0] and rec["commits"][0].startswith(git_head())
        assert res["command"] == rec["executed"][0]
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| `{row}`"))
        assert re.search(rf"\| tiny \| {res['published']} \| {res['ours']} \| – \| train 3/3 \|", line), line
        assert f"  {rec['executed'][0]}" in md and f"`{row}` (scale tiny, commit {res['commit']}" in md
    assert "scale `tiny`" in md and "no Δ is given" in md
    assert "![Figure 2" in md and "![Figure 4" in md and (runs["a"] / "figure4.png").stat().st_size > 5000
    b = run_script([TOOL, "report", runs["b"], "--no-figures"])
    assert "1 rows" in b.stdout and "resumed 1×" in (runs["b"] / "results.md").read_text()


@pytest.mark.slow
def test_slurm_script_runs_the_commands_run_executed(runs, tmp_path):
    script = tmp_path / "job.sh"
    run_script([TOOL, "slurm", *ROWS, "--scale", "tiny", "--data", runs["data"], "--runs", runs["a"],
                "--out", script])
    text = script.read_text()
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert "#SBATCH --array=0-1" in text
    tasks = reproduce.slurm_commands(text)
    assert tasks == [record(runs["a"], row)["executed"] for row in ROWS]
    fresh = run_script([TOOL, "run", *ROWS, "--scale", "tiny", "--data", runs["data"], "--out", runs["a"],
                        "--dry-run"])
    assert fresh.stdout == ""  # both finished: nothing left to execute


def test_dry_run_matches_slurm_and_resumes_from_the_newest_checkpoint(tmp_path, data):
    rows = reproduce.get_rows(["unmix_mocov2_200ep"])
    scale, out = reproduce.SCALES["tiny"], tmp_path / "runs"
    fresh = [c for _, c, _ in reproduce.plan(rows[0], scale, out, data)]
    text = reproduce.slurm_script(rows, scale, out, data, "slurm unmix_mocov2_200ep")
    assert reproduce.slurm_commands(text) == [[reproduce.shell(c) for c in fresh]]
    pre, lin = fresh
    assert pre[:2] == ["python", "UnMix_MoCo/for_ImageNet/main_moco_unmix.py"] and pre[-1] == str(data)
    assert "--multiprocessing-distributed" not in pre and pre[pre.index("--epochs") + 1] == "3"
    assert lin[lin.index("--pretrained") + 1].endswith("unmix_mocov2_200ep/pretrain/checkpoint_0002.pth.tar")
    # an interrupted pretraining continues from its newest checkpoint; the linear step then starts fresh
    d = out / "unmix_mocov2_200ep" / "pretrain"
    d.mkdir(parents=True)
    for e in (0, 1):
        (d / f"checkpoint_{e:04d}.pth.tar").write_bytes(b"x")
    (d / "log.csv").write_text("epoch,loss\n1,5.0\n2,4.0\n")
    todo = reproduce.plan(rows[0], scale, out, data)
    assert [s.name for s, _, _ in todo] == ["pretrain", "linear"]
    assert todo[0][1] == pre + ["--resume", str(d / "checkpoint_0001.pth.tar")] and todo[0][2]
    (d / "log.csv").write_text("epoch,loss\n1,5.0\n2,4.0\n3,3.0\n")
    assert [s.name for s, _, _ in reproduce.plan(rows[0], scale, out, data)] == ["linear"]


def test_full_scale_commands_and_bad_input(tmp_path, capsys):
    reproduce.main(["commands", "unmix_swav_c100_600ep", "--out", str(tmp_path)])
    pre, lin = capsys.readouterr().out.splitlines()
    assert pre.startswith("python UnMix_SwAV/for_CIFAR/main_swav_unmix.py --data_path data ") and "--epochs 600" in pre
    assert "--run_swav" not in pre and "--num_labels 100" in lin and "--epochs 100" in lin
    assert reproduce.ROWS["unmix_swav_c100_600ep"].published == 68.5  # the for_CIFAR table
    assert reproduce.ROWS["swav_c10_200ep"].published == 84.9
    assert reproduce.ROWS["unmix_mocov2_800ep"].published == 71.8
    reproduce.main(["commands", "samix_in1k_r50_100ep"])
    assert capsys.readouterr().out.startswith("torchrun --nproc_per_node 4 SAMix/main_samix.py --dataset imagenet")
    with pytest.raises(CLIError, match="no row named 'moco_c10'.*did you mean"):
        reproduce.get_rows(["moco_c10"])
    assert [r.name for r in reproduce.get_rows(["unmix_moco_c10_*"])] == ["unmix_moco_c10_symmetric",
                                                                        "unmix_moco_c10_asymmetric"]
    reproduce.save_state(tmp_path / ROWS[0], dict(row=ROWS[0], scale="small"))
    with pytest.raises(CLIError, match="holds a --scale small run"):
        reproduce.main(["run", ROWS[0], "--scale", "tiny", "--out", str(tmp_path), "--data", str(tmp_path)])
    with pytest.raises(CLIError, match="unmix_mocov2_800ep needs --data: the dataset's folder holding train/ and val/"):
        reproduce.main(["run", "unmix_mocov2_800ep", "--out", str(tmp_path)])
    p = run_script([TOOL, "report", tmp_path / "nothing"], check=False)
    assert_clean_error(p, "is not a folder")


# --- the documentation's reproduce commands are the catalogue's ------------------------------------------------
PATH_OPTIONS = {"--data", "--data_path", "--results-dir", "--dump_path", "--output-dir", "--pretrained"}


def command_key(argv, step):
    """(launcher, script, options) with the path-valued options and positional paths left out, and the
    script's default --epochs filled in where a command leaves it out."""
    i = next(k for k, t in enumerate(argv) if t.endswith(".py"))
    opts, k = {}, i + 1
    while k < len(argv):
        if argv[k].startswith("-"):
            vals = []
            while k + 1 < len(argv) and not argv[k + 1].startswith("-"):
                k += 1
                vals.append(argv[k])
            opts[argv[k - len(vals)]] = vals
        k += 1
    # a trailing positional (MoCo ImageNet's data folder) is taken as the last option's value: drop paths
    for o, v in opts.items():
        if v and o not in PATH_OPTIONS and len(v) > 1 and "/" in v[-1]:
            opts[o] = v[:-1]
    if opts.get("--data_path", [""])[0] in ("cifar10", "cifar100"):  # SwAV's upstream form names the dataset
        opts.setdefault("--dataset", opts["--data_path"])
    for o, v in (("--epochs", str(step.default_epochs)),) + step.defaults:
        opts.setdefault(o, [v])
    opts = {o: tuple(v) for o, v in opts.items() if o not in PATH_OPTIONS}
    return tuple(argv[:i]), argv[i], frozenset(opts.items())


def doc_commands():
    """The commands of the bash blocks of the reproduce sections: in README.md and docs/**/*.md, a
    ``<!-- reproduce:start -->`` ... ``<!-- reproduce:end -->`` block from its "Reproduce" heading on (if any)."""
    texts = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    for path in texts:
        text = path.read_text()
        for block in re.findall(r"<!-- reproduce:start -->(.*?)<!-- reproduce:end -->", text, re.S):
            heading = re.search(r"^#+ Reproduce", block, re.M)
            block = block[heading.start():] if heading else block
            for code in re.findall(r"```bash\n(.*?)```", block, re.S):
                for line in code.replace("\\\n", " ").splitlines():
                    for part in line.split("#")[0].split("&&"):
                        toks = shlex.split(part)
                        if toks:
                            yield path, toks


def test_docs_reproduce_commands_are_the_catalogue_rows():
    scripts = {}
    for r in reproduce.ROWS.values():
        for s in r.steps:
            scripts.setdefault(s.script, {})[(s.default_epochs, s.defaults)] = s  # the defaults vary by dataset
    keys = {}
    for r in reproduce.ROWS.values():
        for s, c in zip(r.steps, reproduce.row_commands(r, reproduce.SCALES["full"], Path("runs"), None)):
            keys.setdefault(command_key(c, s), []).append(r.name)
    checked, families = 0, set()
    for path, toks in doc_commands():
        script = next((t for t in toks if t in scripts), None)
        if script is None:
            continue
        key = next((k for k in (command_key(toks, s) for s in scripts[script].values()) if k in keys), None)
        assert key, f"{path.name}: `{' '.join(toks)}` is none of tools/reproduce.py's rows"
        families.update(reproduce.ROWS[n].family for n in keys[key])
        checked += 1
    assert checked >= 20 and families == set(reproduce.FAMILIES), (checked, families)


# --- figures 3, 4, 5 ------------------------------------------------------------------------------------------
def test_figure3_from_two_linear_classification_runs(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", classes=6, per_class=4)
    logs = []
    for name, lr in (("base", "0.1"), ("unmix", "0.5")):
        out = tmp_path / name
        lincls.main([str(folder), "-a", "resnet18", "-j", "0", "--crop-size", "16", "-b", "8", "--epochs", "2",
                     "--lr", lr, "--seed", "0", "--output-dir", str(out)])  # the entry point, in this process
        logs.append(list(csv.DictReader(open(out / "log.csv"))))
    fig = paper_figures.figure3(tmp_path / "base", tmp_path / "unmix" / "log.csv", ("MoCo v2", "Un-Mix"))
    top1, top5 = fig.axes
    assert top1.get_title() == "linear classification top-1" and top5.get_title() == "linear classification top-5"
    assert top1.get_ylabel() == "top-1 accuracy (%)" and top5.get_xlabel() == "epoch"
    for ax, col in ((top1, "val_acc1"), (top5, "val_acc5")):
        assert [ln.get_label() for ln in ax.lines] == ["MoCo v2", "Un-Mix"]
        assert [ln.get_linestyle() for ln in ax.lines] == ["--", "-"]
        for line, log in zip(ax.lines, logs):
            assert list(line.get_xdata()) == [1, 2]
            assert np.allclose(line.get_ydata(), [float(r[col]) for r in log])
    assert any(float(r["val_acc5"]) > float(r["val_acc1"]) for log in logs for r in log)  # 6 classes: top-5 > top-1


@pytest.mark.slow
def test_figure4_embeds_the_test_set_of_each_checkpoint(runs):
    ck = [runs["a"] / row / "train" / "model_last.pth" for row in ROWS]
    fig = paper_figures.figure4(ck[0], ck[1], runs["data"], "cifar10", labels=("MoCo", "Un-Mix"), n=20)
    axes = [ax for ax in fig.axes if ax.collections]
    assert [ax.get_title() for ax in axes] == ["MoCo: 20 test images", "Un-Mix: 20 test images"]
    for ax in axes:
        (points,) = ax.collections
        xy = points.get_offsets()
        assert xy.shape == (20, 2) and np.ptp(xy[:, 0]) > 0 and ax.get_xlabel() == "t-SNE 1"
        # coloured by class: the test batch's labels are i % 10 (tests/fakedata.py), two images per class
        assert sorted(points.get_array().tolist()) == sorted(i % 10 for i in range(20))
        assert points.get_cmap().name == "tab10"
    legend = axes[1].get_legend()
    assert legend.get_title().get_text() == "class" and [t.get_text() for t in legend.get_texts()] == \
        [f"c{i}" for i in range(10)]
    # the two panels embed different features (two different networks)
    assert not np.allclose(axes[0].collections[0].get_offsets(), axes[1].collections[0].get_offsets())


# the 1st, 10th, ..., 50th convolution of torchvision's ResNet-50, counted by hand (3 convs per bottleneck,
# plus the shortcut convolution after the first block of each stage)
RESNET50_CONVS = {1: "conv1", 10: "layer1.2.conv2", 20: "layer2.2.conv2", 30: "layer3.1.conv2",
                  40: "layer3.4.conv3", 50: "layer4.1.conv3"}


def moco_resnet50_checkpoint(seed):
    """A MoCo v2 ImageNet state_dict: random weights in the six convolutions of the figure, constants (stride-0,
    tiny files) elsewhere."""
    torch.manual_seed(seed)
    sd = {}
    for k, shape in layouts.moco_imagenet_specs()["v2"].items():
        shape = [8 if d is None else d for d in shape]
        if any(k == f"module.encoder_q.{n}.weight" for n in RESNET50_CONVS.values()):
            sd[k] = torch.randn(shape)
        else:
            z = torch.zeros(1, dtype=torch.long if k.endswith(("tracked", "ptr")) else torch.float32)
            sd[k] = z.expand(shape) if shape else z[0].clone()
    return sd


@pytest.mark.slow
def test_figure5_histograms_the_named_convolutions(tmp_path):
    sds = [moco_resnet50_checkpoint(0), moco_resnet50_checkpoint(1)]
    sds[1] = {k: v * 2 if v.is_floating_point() else v for k, v in sds[1].items()}  # Un-Mix: twice as wide
    for sd, n in zip(sds, ("base", "unmix")):
        torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd}, tmp_path / f"{n}.pth.tar")
    fig = paper_figures.figure5(tmp_path / "base.pth.tar", tmp_path / "unmix.pth.tar", labels=("MoCo v2", "Un-Mix"),
                                bins=20)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    for ax, (k, name) in zip(axes, RESNET50_CONVS.items()):
        assert ax.get_title() == f"conv {k} ({name})" and ax.get_xlabel() == "weight"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["MoCo v2", "Un-Mix"]
        w = [sd[f"module.encoder_q.{name}.weight"].flatten().numpy() for sd in sds]
        lo, hi = min(x.min() for x in w), max(x.max() for x in w)
        for patch, x in zip(ax.patches, w):
            dens, _ = np.histogram(x, bins=20, range=(lo, hi), density=True)
            ys = patch.get_xy()[:, 1]
            assert np.isclose(ys.max(), dens.max()) and np.isclose(patch.get_xy()[:, 0].min(), lo, atol=1e-6)
    # the wider distribution is lower and flatter
    assert axes[0].patches[1].get_xy()[:, 1].max() < axes[0].patches[0].get_xy()[:, 1].max()
    with pytest.raises(CLIError, match="has 53 convolutions; figure 5 needs 60"):
        paper_figures.main(["figure5", "--baseline", str(tmp_path / "base.pth.tar"), "--unmix",
                            str(tmp_path / "unmix.pth.tar"), "--convs", "1", "60", "--out", str(tmp_path / "f5.png")])
    assert not (tmp_path / "f5.png").exists()


@pytest.mark.parametrize("figure,words", [("figure3", "top-1/top-5"), ("figure4", "t-SNE"),
                                          ("figure5", "ResNet-50")])
def test_each_figure_has_its_own_help(figure, words, capsys):
    with pytest.raises(SystemExit) as e:
        paper_figures.main([figure, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and words in out and "--baseline" in out and "--unmix" in out


def test_tiny_scale_generates_its_data_once(tmp_path, capsys):
    root = Path(reproduce.generate_data(tmp_path, ["cifar10", "imagenet"]))
    assert (root / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert len(list((root / "imagenet" / "val").glob("class_*/*.png"))) == 4 * 12
    stamp = (root / "cifar10" / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns
    reproduce.generate_data(tmp_path, ["cifar10"])  # kept, not written again
    assert (root / "cifar10" / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns == stamp
    assert reproduce.generated({"data": str(root / "cifar10")}) and not reproduce.generated({"data": str(tmp_path)})
    capsys.readouterr()
    reproduce.main(["run", ROWS[0], "--scale", "tiny", "--out", str(tmp_path), "--dry-run"])
    cmd = shlex.split(capsys.readouterr().out)
    assert cmd[cmd.index("--data") + 1] == str(root / "cifar10") and cmd[cmd.index("--epochs") + 1] == "3"


def processes_naming(text):
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(d.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_sigterm_stops_the_running_step_too(data, tmp_path):
    """A scheduler's SIGTERM to the tool ends the entry script it runs (no orphan training on)."""
    import sys
    import time
    out = tmp_path / "term"
    tool = subprocess.Popen([sys.executable, TOOL, "run", ROWS[0], "--scale", "tiny", "--data", str(data), "--out",
                             str(out)], cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not processes_naming(f"--results-dir {reproduce.show(out / ROWS[0] / 'train')}") and time.time() < deadline:
        time.sleep(0.1)
    assert processes_naming(f"--results-dir {reproduce.show(out / ROWS[0] / 'train')}"), "the step never started"
    tool.send_signal(signal.SIGTERM)
    assert tool.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert not processes_naming(str(out)), "the entry script outlived the tool"
    assert record(out, ROWS[0])["wall_s"] > 0
