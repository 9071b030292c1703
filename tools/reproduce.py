"""The paper's reproduction as one command: the published rows, run here or on a cluster, and their results.

    python tools/reproduce.py list [--family F]
    python tools/reproduce.py commands [ROW...] [--scale S] [--markdown]
    python tools/reproduce.py run ROW... [--out DIR] [--scale S] [--data DIR] [--dry-run]
    python tools/reproduce.py slurm ROW... --out FILE [--runs DIR] [--scale S] [--data DIR]
    python tools/reproduce.py report DIR [--no-figures]

Every row is one published number (quoted as published; tools/released.py holds those with a released
artefact) and the entry-script commands that train and evaluate it. ``run`` runs the rows here, one after
another, each step through its entry script (a subprocess): a step already finished is collected, a step
interrupted (killed, preempted, out of time) continues with the script's own ``--resume``. ``slurm`` writes
the same commands as an sbatch array script instead. ``report`` collects every finished or partial run
of a folder into ``results.md`` and ``results.csv``, and draws the paper's figures from them.

``--scale`` shortens a run: ``small`` trains a tenth of the epochs on the real data; ``tiny`` is a check of
the machinery in minutes on a CPU (3 epochs, tiny batches and queues, small images, and generated data
unless ``--data`` is given). A scaled row is labelled with its scale everywhere and never gets a difference
(Δ) against the published number, which belongs to the full run.
"""
import argparse
import csv
import glob
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import CLIError, HelpFormatter, atomic_write, run_main  # noqa: E402
from tools import released  # noqa: E402

RUN_FILE = "run.json"


# --- the catalogue: one row per published number ------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One entry-script invocation of a row. ``args`` may name ``{data}`` (the dataset), ``{out}`` (this
    step's output folder) and ``{prev}`` (the previous step's final checkpoint)."""
    name: str            # train | pretrain | linear
    family: str          # key of the per-script scale options (SCALES)
    script: str          # entry script, relative to the repo root
    args: tuple          # its arguments at the published (full) scale, --epochs excluded
    epochs: int          # planned epochs at full scale
    default_epochs: int  # the script's default (documentation may leave --epochs out when equal)
    final: str           # the final checkpoint in {out}; {last} = the 0-based last epoch
    ckpts: str           # glob of the checkpoints a resume continues from (the newest is taken)
    resume: tuple        # resume arguments; {ckpt} = the newest checkpoint
    log: str             # per-epoch log in {out}
    epoch_base: int = 1  # 1: the log counts finished epochs; 0: 0-based (SwAV's stats)
    launcher: tuple = ("python",)
    gpus: int = 1
    positional: tuple = ()  # arguments after the options (MoCo ImageNet's data folder)
    defaults: tuple = ()    # (option, value) the script defaults to, which documentation may leave out

    def final_path(self, out, epochs):
        return Path(out) / self.final.format(last=epochs - 1)


@dataclass(frozen=True)
class Metric:
    columns: tuple       # log columns of the last step holding the result
    how: str             # last (the final epoch's value) | max (the best epoch, the best column)
    label: str

    def of(self, rows):
        vals = [[_num(r.get(c)) for c in self.columns] for r in rows]
        vals = [[v for v in vs if v is not None] for vs in vals]
        vals = [vs for vs in vals if vs]
        if not vals:
            return None
        return max(vals[-1]) if self.how == "last" else max(max(vs) for vs in vals)


@dataclass(frozen=True)
class Row:
    name: str
    family: str          # moco_cifar | swav_cifar | simclr_byol | moco_imagenet | samix
    paper: str           # where the number is published
    dataset: str         # cifar10 | cifar100 | imagenet | tiny (for generated data and figures)
    published: float     # None: nothing published
    steps: tuple
    metric: Metric
    baseline: str = ""   # the row this one adds Un-Mix (or a learnt mixture) to, for the figures
    approximate: bool = False  # published number read off a plot
    released: str = ""   # the released artefact to compare with (tools/released.py)


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def _published(artefact, index=0):
    """The ``index``-th number of a released artefact's published text: the number is held once, there."""
    nums = re.findall(r"\d+\.\d+", released.CATALOGUE[artefact].published)
    return float(nums[index])


KNN = Metric(("test_acc@1",), "last", "kNN top-1 (k=200), last epoch")
SWAV_LINEAR = Metric(("prec1_val",), "max", "linear top-1, best epoch")
LINEAR_PROBE = Metric(("linear_acc@1",), "last", "linear-probe top-1, last evaluation")
LINCLS = Metric(("val_acc1",), "max", "linear classification top-1, best epoch")
SAMIX_HEADS = Metric(("acc1_one_q", "acc1_mix_q", "acc1_one_k", "acc1_mix_k"), "max",
                     "top-1, best head and epoch")
SHORT = {"cifar10": "c10", "cifar100": "c100"}
DIST = ("--dist-url", "tcp://localhost:10001", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0")


def _moco_cifar_rows():
    rows = []
    for ds in ("cifar10", "cifar100"):
        for loss in ("symmetric", "asymmetric"):
            for unmix in (False, True):
                name = f"{'unmix_' if unmix else ''}moco_{SHORT[ds]}_{loss}"
                args = ("--data", "{data}", "--results-dir", "{out}") + (("--asymmetric",) if loss == "asymmetric"
                                                                          else ()) + (() if unmix else ("--no-unmix",))
                step = Step("train", "moco_cifar", f"UnMix_MoCo/for_CIFAR/unmix_{SHORT[ds]}.py", args, 1000, 1000,
                            "model_last.pth", "model_last.pth", ("--resume", "{ckpt}"), "log.csv")
                rows.append(Row(name, "moco_cifar", "Un-Mix README, MoCo CIFAR demo table", ds, _published(name),
                                (step,), KNN, f"moco_{SHORT[ds]}_{loss}" if unmix else "", released=name))
    return rows


def _swav_cifar_rows():
    rows = []
    for ds, labels in (("cifar10", 10), ("cifar100", 100)):
        for i, ep in enumerate((200, 400, 600, 800, 1000)):
            for unmix in (False, True):
                name = f"{'unmix_' if unmix else ''}swav_{SHORT[ds]}_{ep}ep"
                pre = Step("pretrain", "swav_pretrain", "UnMix_SwAV/for_CIFAR/main_swav_unmix.py",
                           ("--data_path", "{data}", "--dataset", ds, "--dump_path", "{out}")
                           + (() if unmix else ("--run_swav", "true")),
                           ep, 400, "checkpoint.pth.tar", "checkpoint.pth.tar", ("--resume",), "stats0.csv", 0)
                lin = Step("linear", "swav_linear", "UnMix_SwAV/for_CIFAR/eval_linear.py",
                           ("--arch", "resnet18", "--data_path", "{data}", "--dataset", ds, "--num_labels", str(labels),
                            "--crop_size",
                            "32", "--workers", "2", "--pretrained", "{prev}", "--dump_path", "{out}"),
                           100, 100, "checkpoint.pth.tar", "checkpoint.pth.tar", ("--resume",), "stats.csv", 0)
                rows.append(Row(name, "swav_cifar", "SwAV for_CIFAR README (bs 128)", ds,
                                _published(f"swav_{SHORT[ds]}_weights", i + 5 * unmix), (pre, lin), SWAV_LINEAR,
                                f"swav_{SHORT[ds]}_{ep}ep" if unmix else "", released=f"swav_{SHORT[ds]}_weights"))
    return rows


# Paper Figure 2's end points (1000 epochs), read off the plot (±0.3): no number or checkpoint was released
FIGURE2 = {("simclr", "cifar10"): (91.9, 92.3), ("simclr", "cifar100"): (67.7, 68.8),
           ("byol", "cifar10"): (92.4, 94.2), ("byol", "cifar100"): (66.0, 71.5)}


def _simclr_byol_rows():
    rows = []
    for (method, ds), pub in FIGURE2.items():
        for unmix in (False, True):
            name = f"{'unmix_' if unmix else ''}{method}_{SHORT[ds]}"
            step = Step("train", "simclr_byol", "UnMix_SimCLR_BYOL/main_unmix.py",
                        ("--method", method, "--dataset", ds, "--data", "{data}", "--results-dir", "{out}")
                        + (() if unmix else ("--no-unmix",)), 1000, 1000, "model_last.pth", "model_last.pth",
                        ("--resume", "{ckpt}"), "log.csv")
            rows.append(Row(name, "simclr_byol", "paper Figure 2 (read off the plot, ±0.3)", ds, pub[unmix], (step,),
                            LINEAR_PROBE, f"{method}_{SHORT[ds]}" if unmix else "", approximate=True))
    return rows


def _moco_imagenet_rows():
    rows = []
    v2 = ("--mlp", "--moco-t", "0.2", "--aug-plus", "--cos")
    for name, ep, extra, art, idx, base in (
            ("moco_v1_200ep", 200, ("--no-unmix",), "moco_v1_200ep", 0, ""),
            ("moco_v2_200ep", 200, v2 + ("--no-unmix",), "moco_v2_200ep", 0, ""),
            ("unmix_mocov2_200ep", 200, v2 + ("--unmix_prob", "0.5"), "unmix_mocov2_in1k_r50", 0, "moco_v2_200ep"),
            ("moco_v2_800ep", 800, v2 + ("--no-unmix",), "moco_v2_800ep", 0, ""),
            ("unmix_mocov2_800ep", 800, v2 + ("--unmix_prob", "0.5"), "unmix_mocov2_in1k_r50", 1, "moco_v2_800ep")):
        pre = Step("pretrain", "moco_in_pretrain", "UnMix_MoCo/for_ImageNet/main_moco_unmix.py",
                   ("-a", "resnet50", "--lr", "0.03", "--batch-size", "256") + DIST + extra
                   + ("--output-dir", "{out}"), ep, 200, "checkpoint_{last:04d}.pth.tar",
                   "checkpoint_[0-9]*.pth.tar", ("--resume", "{ckpt}"), "log.csv", gpus=8, positional=("{data}",))
        lin = Step("linear", "moco_in_lincls", "UnMix_MoCo/for_ImageNet/main_lincls_unmix.py",
                   ("-a", "resnet50", "--lr", "30.0", "--batch-size", "256", "--pretrained", "{prev}") + DIST
                   + ("--output-dir", "{out}"), 100, 100, "checkpoint.pth.tar", "checkpoint.pth.tar",
                   ("--resume", "{ckpt}"), "log.csv", gpus=8, positional=("{data}",))
        rows.append(Row(name, "moco_imagenet", "paper Table 1 (ImageNet linear top-1)", "imagenet",
                        _published(art, idx), (pre, lin), LINCLS, base, released=art))
    return rows


# OpenMixup's published top-1 (%): (dataset, arch, mix) -> {epochs: top-1}; docs: SAMix / AutoMix tables
SAMIX_PUBLISHED = {
    ("imagenet", "resnet18", "samix"): {100: 70.83, 300: 72.27},
    ("imagenet", "resnet34", "samix"): {100: 74.95, 300: 76.28},
    ("imagenet", "resnet50", "samix"): {100: 78.14, 300: 79.39},
    ("imagenet", "resnet101", "samix"): {100: 80.05, 300: 81.10},
    ("imagenet", "resnext101_32x4d", "samix"): {100: 80.98},
    ("imagenet", "resnet18", "automix"): {100: 70.50, 300: 72.05},
    ("imagenet", "resnet34", "automix"): {100: 74.52, 300: 76.10},
    ("imagenet", "resnet50", "automix"): {100: 77.91, 300: 79.25},
    ("imagenet", "resnet101", "automix"): {100: 79.87, 300: 80.98},
    ("imagenet", "resnext101_32x4d", "automix"): {100: 80.89},
    ("imagenet", "resnet18", "none"): {100: 70.04},
    ("imagenet", "resnet34", "none"): {100: 73.85},
    ("imagenet", "resnet50", "none"): {100: 76.83},
    ("imagenet", "resnet101", "none"): {100: 78.18},
    ("imagenet", "resnext101_32x4d", "none"): {100: 78.71},
    ("cifar100", "resnet18", "samix"): {200: 81.21, 400: 81.97, 800: 82.30, 1200: 82.41},
    ("cifar100", "resnext50_32x4d", "samix"): {200: 83.81, 400: 84.27, 800: 84.42, 1200: 84.31},
    ("cifar10", "resnet18", "samix"): {200: 96.67, 400: 97.16, 800: 97.50, 1200: 97.41},
    ("cifar10", "resnext50_32x4d", "samix"): {200: 97.23, 400: 97.51, 800: 97.93, 1200: 97.74},
    ("cifar100", "resnet18", "automix"): {200: 80.12, 400: 81.78, 800: 82.04, 1200: 81.95},
    ("cifar100", "resnext50_32x4d", "automix"): {200: 82.84, 400: 83.32, 800: 83.64, 1200: 83.80},
    ("cifar10", "resnet18", "automix"): {200: 96.59, 400: 97.08, 800: 97.34, 1200: 97.30},
    ("cifar10", "resnext50_32x4d", "automix"): {200: 97.19, 400: 97.42, 800: 97.65, 1200: 97.51},
    ("tiny", "resnet18", "samix"): {400: 68.89}, ("tiny", "resnext50_32x4d", "samix"): {400: 72.18},
    ("tiny", "resnet18", "automix"): {400: 67.33}, ("tiny", "resnext50_32x4d", "automix"): {400: 70.72},
}
ARCH_SHORT = {"resnet18": "r18", "resnet34": "r34", "resnet50": "r50", "resnet101": "r101",
              "resnext101_32x4d": "rx101", "resnext50_32x4d": "rx50"}
DS_SHORT = {"imagenet": "in1k", "cifar10": "c10", "cifar100": "c100", "tiny": "tiny"}


def _samix_rows():
    rows = []
    for (ds, arch, mix), by_epochs in SAMIX_PUBLISHED.items():
        default = 100 if ds == "imagenet" else 400
        for ep, pub in by_epochs.items():
            extra = ()
            if ds == "cifar100" and arch == "resnet18" and mix == "samix" and ep == 800:
                extra = ("--mask-adjust", "0.25")  # the published 800-epoch config
            if ds == "imagenet" and arch == "resnet50" and mix == "samix" and ep == 100:
                extra = ("--mixer-momentum", "0")  # R-50's 100-epoch config file
            name = f"{mix if mix != 'none' else 'vanilla'}_{DS_SHORT[ds]}_{ARCH_SHORT[arch]}_{ep}ep"
            imagenet = ds == "imagenet"
            step = Step("train", "samix", "SAMix/main_samix.py",
                        ("--dataset", ds, "--data", "{data}", "-a", arch, "--mix", mix) + extra
                        + ("--output-dir", "{out}"), ep, default, "latest.pth", "latest.pth",
                        ("--resume", "{ckpt}"), "log.csv",
                        defaults=(("-a", "resnet18"), ("--mix", "samix"), ("--dataset", "cifar100")),
                        launcher=("torchrun", "--nproc_per_node", "4") if imagenet else ("python",),
                        gpus=4 if imagenet else 1)
            base = f"vanilla_{DS_SHORT[ds]}_{ARCH_SHORT[arch]}_{ep}ep" if mix != "none" and imagenet else ""
            rows.append(Row(name, "samix", "OpenMixup model zoo (their protocol: median of the last epochs)", ds,
                            pub, (step,), SAMIX_HEADS, base if base != name else ""))
    return rows


ROWS = {r.name: r for r in (_moco_cifar_rows() + _swav_cifar_rows() + _simclr_byol_rows() + _moco_imagenet_rows()
                            + _samix_rows())}
FAMILIES = sorted({r.family for r in ROWS.values()})


def get_rows(names):
    out = []
    for n in names:
        if n in ROWS:
            out.append(ROWS[n])
            continue
        matched = [r for r in ROWS.values() if re.fullmatch(n.replace("*", ".*"), r.name)] if "*" in n else []
        if not matched:
            close = [r for r in ROWS if n.lower() in r]
            hint = f" (did you mean {', '.join(close[:4])}?)" if close else " (see `list`)"
            raise CLIError(f"no row named {n!r}{hint}")
        out.extend(matched)
    return list(dict.fromkeys(out))


# --- scales -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    name: str
    about: str
    fraction: float = 1.0       # of the planned epochs (at least 1)
    epochs: int = 0             # a fixed number of epochs instead (0: use fraction)
    generated: bool = False     # generated data unless --data is given
    options: dict = field(default_factory=dict)  # family -> options set (replaced or appended)
    drop: dict = field(default_factory=dict)     # family -> options removed (option -> number of values)

    def planned(self, step):
        return self.epochs or max(1, round(step.epochs * self.fraction))


_NO_DIST = {"--dist-url": 1, "--multiprocessing-distributed": 0, "--world-size": 1, "--rank": 1}
SCALES = {
    "full": Scale("full", "the published setting"),
    "small": Scale("small", "a tenth of the published epochs, real data, published settings otherwise",
                   fraction=0.1),
    "tiny": Scale("tiny", "a check of the machinery, not a result: 3 epochs, tiny batches and queues, small images, "
                  "generated data unless --data is given; one process, CPU is enough", epochs=3, generated=True,
                  options={
                      "moco_cifar": {"--batch-size": "8", "--bn-splits": "2", "--moco-k": "16", "--image-size": "16",
                                     "--workers": "0", "--seed": "0", "--knn-k": "20"},
                      "swav_pretrain": {"--batch_size": "8", "--hidden_mlp": "16", "--feat_dim": "8",
                                        "--nmb_prototypes": "10", "--workers": "0", "--warmup_epochs": "1",
                                        "--size_crops": "16", "--queue_length": "0",
                                        "--freeze_prototypes_niters": "2", "--seed": "0"},
                      "swav_linear": {"--batch_size": "8", "--workers": "0", "--crop_size": "16", "--seed": "0"},
                      "simclr_byol": {"--batch-size": "16", "--crop-size": "16", "--warmup-iters": "2", "--emb": "16",
                                      "--head-size": "32", "--probe-epochs": "5", "--workers": "0", "--seed": "0",
                                      "--eval-every": "1"},
                      "moco_in_pretrain": {"--batch-size": "8", "--moco-k": "16", "--moco-dim": "8", "-j": "0",
                                           "--crop-size": "32", "--seed": "0", "-p": "1"},
                      "moco_in_lincls": {"--batch-size": "8", "-j": "0", "--crop-size": "32", "--seed": "0",
                                         "-p": "1", "--lr": "1.0"},
                      "samix": {"-a": "resnet_tiny", "-b": "8", "-j": "0", "--image-size": "32", "--seed": "0"},
                  },
                  drop={"moco_in_pretrain": _NO_DIST, "moco_in_lincls": _NO_DIST}),
}
# the generated data of --scale tiny (tests/fakedata.py: the real on-disk formats)
GENERATED_NOTE = "generated by tools/reproduce.py for --scale tiny"
TINY_DATA = {"cifar10": dict(n_train=200, n_test=100), "cifar100": dict(n_train=400, n_test=200),
             "imagenet": dict(classes=4, per_class=12, size=40), "tiny": dict(classes=4, per_class=12, size=64)}


def set_options(argv, options, drop=None):
    """The options ``argv`` with each option of ``options`` set to its value (replaced where present, else
    appended) and each option of ``drop`` removed with its number of values."""
    argv = list(argv)
    for opt, n in (drop or {}).items():
        while opt in argv:
            i = argv.index(opt)
            del argv[i:i + 1 + n]
    for opt, value in options.items():
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    return argv


class Generated(str):
    """The root of the generated data sets (``--scale tiny`` without ``--data``): one subfolder per dataset."""


# --- commands -----------------------------------------------------------------------------------------------
def step_dir(out, row, step):
    return Path(out) / row.name / step.name


def show(path):
    """``path`` for a command run from the repository root: relative to it when inside, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def step_argv(row, step, scale, out, data, prev=None):
    """The command of ``step`` (a list, ``python``/``torchrun`` first) at ``scale``."""
    fields = dict(data=data, out=show(step_dir(out, row, step)), prev=show(prev) if prev else "")
    args = [a.format(**fields) for a in step.args]
    planned = scale.planned(step)
    args = set_options(args, {"--epochs": str(planned)})
    args = set_options(args, scale.options.get(step.family, {}), scale.drop.get(step.family))
    launcher = ["python"] if scale.name == "tiny" else list(step.launcher)
    return launcher + [step.script] + args + [a.format(**fields) for a in step.positional]


def data_root(row, scale, data):
    """The dataset argument of ``row``: the --data given (a generated one for tiny), per dataset."""
    if data is None:
        return {"imagenet": "/path/to/imagenet", "tiny": "/path/to/tiny-imagenet-200"}.get(row.dataset, "data")
    return show(Path(data) / row.dataset if isinstance(data, Generated) else data)


def row_commands(row, scale, out, data):
    """Every step's fresh command of ``row`` (lists)."""
    cmds, prev = [], None
    root = data_root(row, scale, data)
    for step in row.steps:
        cmds.append(step_argv(row, step, scale, out, root, prev))
        prev = step.final_path(step_dir(out, row, step), scale.planned(step))
    return cmds


def shell(argv):
    return " ".join(shlex.quote(a) for a in argv)


def executable(argv):
    """``argv`` as run here: ``python`` is this interpreter."""
    return [sys.executable] + argv[1:] if argv[0] == "python" else argv


# --- state of a run folder ----------------------------------------------------------------------------------
def read_log(path):
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epochs_done(step, sdir):
    rows = read_log(Path(sdir) / step.log)
    eps = [_num(r.get("epoch")) for r in rows]
    eps = [e for e in eps if e is not None]
    return int(max(eps)) + (1 - step.epoch_base) if eps else 0


def checkpoint_epochs(step, sdir):
    """The epochs finished in the step's newest checkpoint (its log can lag one epoch behind after a kill);
    read lazily (mmap), 0 when there is none or it cannot be read."""
    import torch
    ckpt = newest_checkpoint(step, sdir)
    if not ckpt:
        return 0
    try:
        epoch = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True).get("epoch")
    except Exception:  # noqa: BLE001 (a report shows what it can read)
        return 0
    return int(epoch) if isinstance(epoch, int) else 0


def newest_checkpoint(step, sdir):
    found = sorted(glob.glob(str(Path(sdir) / step.ckpts)))
    return found[-1] if found else None


def commit():
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    head = git("rev-parse", "--short=12", "HEAD")
    if head.returncode:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+uncommitted changes" if dirty else "")


def load_state(rdir):
    p = Path(rdir) / RUN_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"{p} is not a run record of this tool ({e})") from None


def save_state(rdir, state):
    Path(rdir).mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(rdir) / RUN_FILE) as tmp:
        Path(tmp).write_text(json.dumps(state, indent=1))


def new_state(row, scale, out, data):
    return dict(row=row.name, scale=scale.name, data=str(data_root(row, scale, data)), commits=[commit()],
                planned=[scale.planned(s) for s in row.steps],
                commands=[shell(c) for c in row_commands(row, scale, out, data)], executed=[], wall_s=0.0)


def plan(row, scale, out, data):
    """What ``run`` would execute now for ``row``: [(step, argv, resumed)] of the steps not finished."""
    todo = []
    for step, fresh in zip(row.steps, row_commands(row, scale, out, data)):
        sdir = step_dir(out, row, step)
        if epochs_done(step, sdir) < scale.planned(step):
            ckpt = newest_checkpoint(step, sdir)
            argv = fresh + [a.format(ckpt=show(ckpt)) for a in step.resume] if ckpt else fresh
            todo.append((step, argv, bool(ckpt)))
    return todo


def generate_data(out, datasets):
    """Generated data sets for --scale tiny under ``out/generated/<dataset>`` (kept between runs)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fakedata import make_cifar, make_image_folder
    root = Generated(Path(out).absolute() / "generated")
    for ds in datasets:
        d = Path(root) / ds
        if (d / ".complete").is_file():
            continue
        if d.exists():
            shutil.rmtree(d)
        if ds in ("cifar10", "cifar100"):
            make_cifar(d, ds, **TINY_DATA[ds])
        else:
            make_image_folder(d, **TINY_DATA[ds])
        (d / ".complete").write_text(GENERATED_NOTE + "\n")
        print(f"generated {ds} data in {d}", flush=True)
    return root


def generated(state):
    """Whether the run of ``state`` trained on data this tool generated."""
    note = ROOT / state.get("data", "") / ".complete"
    return note.is_file() and note.read_text().startswith(GENERATED_NOTE)


def resolve_data(args, rows, scale):
    if args.data is not None:
        return Path(args.data).absolute()
    if scale.generated:
        if not getattr(args, "dry_run", False):
            generate_data(args.out, {r.dataset for r in rows})
        return Generated(Path(args.out).absolute() / "generated")
    return None


def check_scale(state, row, scale, rdir):
    if state and state["scale"] != scale.name:
        raise CLIError(f"{rdir} holds a --scale {state['scale']} run of {row.name}; continue it with --scale "
                       f"{state['scale']} or choose another --out")


def run_row(row, scale, out, data, dry_run=False):
    rdir = Path(out) / row.name
    state = load_state(rdir)
    check_scale(state, row, scale, rdir)
    todo = plan(row, scale, out, data)
    if dry_run:
        for _, argv, _ in todo:
            print(shell(argv))
        return
    if not todo:
        print(f"{row.name} ({scale.name}): finished, collected", flush=True)
        return
    state = state or new_state(row, scale, out, data)
    if commit() not in state["commits"]:
        state["commits"].append(commit())
    for step, argv, resumed in todo:
        sdir = step_dir(out, row, step)
        if not resumed and sdir.exists():  # started but never reached a checkpoint: nothing to keep
            shutil.rmtree(sdir)
        state["executed"].append(shell(argv))
        save_state(rdir, state)
        print(f"{row.name} ({scale.name}) {step.name}: {'continuing' if resumed else 'starting'}\n+ {shell(argv)}",
              flush=True)
        t0 = time.time()
        proc = subprocess.Popen(executable(argv), cwd=ROOT)
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C, or SIGTERM (a scheduler's): the step stops too, its checkpoint kept
            proc.terminate()
            proc.wait()
            raise
        finally:
            state["wall_s"] += time.time() - t0
            save_state(rdir, state)
        if rc:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            raise CLIError(f"{row.name}: {step.name} {how}; run the same command again to continue it")


# --- report -------------------------------------------------------------------------------------------------
def collect(out):
    """One dict per row folder of ``out`` that holds a run record."""
    results = []
    order = {name: i for i, name in enumerate(ROWS)}  # the catalogue's order
    for rdir in sorted((p for p in Path(out).iterdir() if (p / RUN_FILE).is_file()),
                       key=lambda p: (order.get(p.name, len(order)), p.name)):
        state = load_state(rdir)
        row, scale = ROWS.get(state["row"]), SCALES.get(state["scale"])
        if row is None or scale is None:
            continue
        planned = state.get("planned") or [scale.planned(s) for s in row.steps]
        steps = [(s, max(epochs_done(s, rdir / s.name), checkpoint_epochs(s, rdir / s.name)), p)
                 for s, p in zip(row.steps, planned)]
        ours = row.metric.of(read_log(rdir / row.steps[-1].name / row.steps[-1].log))
        finished = all(d >= p for _, d, p in steps)
        full = scale.name == "full"
        delta = round(ours - row.published, 2) if full and finished and ours is not None and \
            row.published is not None else None
        results.append(dict(
            row=row.name, scale=scale.name, metric=row.metric.label,
            published=row.published, published_note="≈ (read off a plot)" if row.approximate else "",
            ours=None if ours is None else round(ours, 2), delta=delta,
            epochs="; ".join(f"{s.name} {d}/{p}" for s, d, p in steps), finished=finished,
            wall_time=_hms(state.get("wall_s")) if state.get("executed") else "",  # slurm's: not timed here
            command=" && ".join(state["commands"]),
            resumed=sum(" --resume" in c for c in state.get("executed", [])),
            commit=", ".join(state["commits"]), folder=str(rdir),
            data=("generated " if generated(state) else "") + state.get("data", "")))
    return results


def _hms(s):
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


CSV_COLUMNS = ["row", "scale", "metric", "published", "ours", "delta", "epochs", "finished", "wall_time", "command",
               "resumed", "commit", "data"]


def _fmt(v):
    return "–" if v is None or v == "" else str(v)


def write_report(out, results, figures=()):
    out = Path(out)
    with atomic_write(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    scales = sorted({r["scale"] for r in results})
    gen = any(r["data"].startswith("generated ") for r in results)
    lines = [f"# Reproduction results (scale {', '.join(scales)}{'; generated data' if gen else ''})", ""]
    for s in scales:
        lines.append(f"- **scale `{s}`**: {SCALES[s].about}." + (
            " Its numbers are not comparable with the published ones: no Δ is given." if s != "full" else ""))
    if gen:
        lines.append("- **generated data**: the rows marked so trained and were evaluated on images this tool "
                     "generated (tests/fakedata.py's CIFAR batches and ImageFolder trees: noise around a "
                     "colour per class), not on the published data sets.")
    lines += ["", "| row | scale | published | ours | Δ | epochs done / planned | wall time | metric |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        pub = _fmt(r["published"]) + (" ≈" if r["published_note"] else "")
        ours = _fmt(r["ours"]) + ("" if r["finished"] else " (partial)")
        delta = f"{r['delta']:+.2f}" if r["delta"] is not None else "–"
        scale = r["scale"] + (", generated data" if r["data"].startswith("generated ") else "")
        lines.append(f"| `{r['row']}` | {scale} | {pub} | {ours} | {delta} | {r['epochs']} | "
                     f"{r['wall_time'] or '–'} | {r['metric']} |")
    lines += ["", "Commands and commits (each row ran from the repository root; `--resume` continued a step "
              "that was interrupted):", ""]
    for r in results:
        lines += [f"- `{r['row']}` (scale {r['scale']}, commit {r['commit']}"
                  + (f", resumed {r['resumed']}×" if r["resumed"] else "") + "):",
                  "  ```bash", *[f"  {c}" for c in r["command"].split(" && ")], "  ```"]
    if any(r["published_note"] for r in results):
        lines += ["", "≈: the published number was read off the paper's plot (±0.3)."]
    if figures:
        lines += ["", "## Figures"]
        for title, p in figures:
            lines += ["", f"**{title}**", "", f"![{title}]({Path(p).name})"]
    with atomic_write(out / "results.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return out / "results.md"


def pairs(results, have):
    """(baseline result, mixture result) of the collected rows where ``have(result)`` holds for both."""
    by = {r["row"]: r for r in results}
    out = []
    for r in results:
        base = by.get(ROWS[r["row"]].baseline)
        if base and base["scale"] == r["scale"] and have(base) and have(r):
            out.append((base, r))
    return out


def draw_figures(out, results):
    """The paper's figures from the collected runs that have what each needs; returns [(title, path)]."""
    from common.logs import save_figure
    from tools import paper_figures, plot_curves
    out, drawn = Path(out), []

    def folder(r, i):
        return Path(r["folder"]) / ROWS[r["row"]].steps[i].name

    def label(r):
        return f"{r['row']} ({r['scale']})"

    # Figure 2: loss and downstream accuracy (kNN, linear probe, classifier heads), baseline vs mixture, one
    # column per pair (the other families' first step logs no downstream accuracy)
    p2 = pairs(results, lambda r: ROWS[r["row"]].family in ("moco_cifar", "simclr_byol", "samix")
               and (folder(r, 0) / ROWS[r["row"]].steps[0].log).is_file())
    if p2:
        runs = [(f"{pair[0]['row']} vs {ROWS[pair[1]['row']].name}", label(r), plot_curves.load_run(folder(r, 0)))
                for pair in p2 for r in pair]
        drawn.append(("Figure 2: training loss and accuracy, baseline (dashed) vs mixture (solid)",
                      out / "figure2.png"))
        save_figure(plot_curves.figure(runs, "Figure 2: baseline (dashed) vs mixture (solid)"), drawn[-1][1])
    # Figure 3: linear classification top-1/top-5 per epoch of two lincls runs
    p3 = pairs(results, lambda r: ROWS[r["row"]].family == "moco_imagenet" and (folder(r, 1) / "log.csv").is_file())
    if p3:
        b, m = p3[0]
        fig = paper_figures.figure3(folder(b, 1) / "log.csv", folder(m, 1) / "log.csv", (label(b), label(m)))
        drawn.append(("Figure 3: linear classification top-1 / top-5 per epoch", out / "figure3.png"))
        save_figure(fig, drawn[-1][1])
    # Figure 4: t-SNE of the test set's features, baseline vs mixture
    p4 = pairs(results, lambda r: ROWS[r["row"]].family == "moco_cifar" and (folder(r, 0) / "model_last.pth").is_file())
    if p4:
        b, m = p4[0]
        state = load_state(Path(b["folder"]))
        fig = paper_figures.figure4(folder(b, 0) / "model_last.pth", folder(m, 0) / "model_last.pth",
                                    ROOT / state["data"], ROWS[b["row"]].dataset, labels=(label(b), label(m)))
        drawn.append(("Figure 4: t-SNE of the test set's features, coloured by class", out / "figure4.png"))
        save_figure(fig, drawn[-1][1])
    # Figure 5: conv weight distributions of two ResNet-50 pretraining checkpoints
    p5 = pairs(results, lambda r: ROWS[r["row"]].family == "moco_imagenet"
               and newest_checkpoint(ROWS[r["row"]].steps[0], folder(r, 0)))
    if p5:
        b, m = p5[0]
        ck = [newest_checkpoint(ROWS[r["row"]].steps[0], folder(r, 0)) for r in (b, m)]
        fig = paper_figures.figure5(ck[0], ck[1], labels=(label(b), label(m)))
        drawn.append(("Figure 5: weight distributions of the 1st, 10th, ..., 50th convolution", out / "figure5.png"))
        save_figure(fig, drawn[-1][1])
    return drawn


# --- slurm --------------------------------------------------------------------------------------------------
def slurm_script(rows, scale, runs, data, argv_text):
    gpus = 0 if scale.name == "tiny" else max(s.gpus for r in rows for s in r.steps)
    lines = ["#!/bin/bash", "#SBATCH --job-name=unmix-reproduce", f"#SBATCH --array=0-{len(rows) - 1}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"]
    lines += [f"#SBATCH --gpus={gpus}"] if gpus else []
    lines += [f"#SBATCH --output={runs}/slurm-%A_%a.out", "#",
              f"# generated by: python tools/reproduce.py {argv_text}", f"# commit {commit()}, scale {scale.name}",
              "# One array task per row; its steps are the commands `reproduce.py run` executes on a fresh folder.",
              f"# After a preemption, `python tools/reproduce.py run ROW --scale {scale.name} --out {shlex.quote(str(runs))}"
              + (f" --data {shlex.quote(str(data))}" if data and not isinstance(data, Generated) else "")
              + "` continues a row with --resume.",
              "set -euo pipefail", f"cd {shlex.quote(str(ROOT))}", 'case "${SLURM_ARRAY_TASK_ID:?run with sbatch}" in']
    for i, row in enumerate(rows):
        lines.append(f"{i})  # {row.name} ({scale.name})")
        lines += [f"    {shell(c)}" for c in row_commands(row, scale, runs, data)]
        lines.append("    ;;")
    lines += ['*) echo "no row for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines) + "\n"


def slurm_commands(text):
    """The commands of a script written by :func:`slurm_script`, per array task."""
    tasks, cur = [], None
    for line in text.splitlines():
        if re.match(r"^\d+\)", line):
            cur = []
            tasks.append(cur)
        elif line.strip() == ";;":
            cur = None
        elif cur is not None:
            cur.append(line.strip())
    return tasks


# --- documentation ------------------------------------------------------------------------------------------
def markdown(rows, scale, out, data):
    lines = ["| row | published | metric | source |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.name}` | {r.published}{' ≈' if r.approximate else ''} | {r.metric.label} | {r.paper} |")
    lines += ["", "```bash"]
    for r in rows:
        lines.append(f"# {r.name}")
        lines += [shell(c) for c in row_commands(r, scale, out, data)]
    return "\n".join(lines + ["```"])


# --- CLI ----------------------------------------------------------------------------------------------------
def cmd_list(args):
    rows = [r for r in ROWS.values() if args.family in (None, r.family)]
    w = max(len(r.name) for r in rows)
    print(f"{'row':<{w}}  {'family':<13}  {'dataset':<8}  {'epochs':<9}  {'published':<9}  metric")
    for r in rows:
        eps = "+".join(str(s.epochs) for s in r.steps)
        pub = f"{r.published}{'≈' if r.approximate else ''}"
        print(f"{r.name:<{w}}  {r.family:<13}  {r.dataset:<8}  {eps:<9}  {pub:<9}  {r.metric.label}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="the rows: published number, epochs, metric", formatter_class=HelpFormatter)
    s.add_argument("--family", choices=FAMILIES, default=None)

    def scaled(s, out_help):
        s.add_argument("rows", nargs="+", metavar="ROW", help="row names (`list`); * matches any text")
        s.add_argument("--scale", choices=list(SCALES), default="full",
                       help="; ".join(f"{k}: {v.about}" for k, v in SCALES.items()))
        s.add_argument("--data", default=None, help="dataset root (CIFAR: the folder holding cifar-10-batches-py; "
                       "ImageNet: the folder with train/ and val/); default: 'data' for CIFAR, generated data "
                       "for --scale tiny")
        s.add_argument("--out", required=out_help is None, default="runs" if out_help else None,
                       help=out_help or "the sbatch script to write")

    s = sub.add_parser("commands", help="print the rows' commands (--markdown: a table and a bash block)",
                       formatter_class=HelpFormatter)
    scaled(s, "runs folder the commands write into")
    s.add_argument("--markdown", action="store_true")
    s = sub.add_parser("run", help="run rows here, one after another (finished: collected; interrupted: resumed)",
                       formatter_class=HelpFormatter)
    scaled(s, "runs folder: one subfolder per row")
    s.add_argument("--dry-run", action="store_true", help="print the commands it would execute now")
    s = sub.add_parser("slurm", help="write an sbatch array script running the rows' commands",
                       formatter_class=HelpFormatter)
    scaled(s, None)
    s.add_argument("--runs", default="runs", help="runs folder the commands write into")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s = sub.add_parser("report", help="collect the runs of a folder into results.md + results.csv (+ figures)",
                       formatter_class=HelpFormatter)
    s.add_argument("dir")
    s.add_argument("--no-figures", action="store_true", help="only the tables")
    args = p.parse_args(argv)

    if args.cmd == "list":
        return cmd_list(args)
    if args.cmd == "report":
        if not Path(args.dir).is_dir():
            raise CLIError(f"{args.dir} is not a folder")
        results = collect(args.dir)
        if not results:
            raise CLIError(f"{args.dir} holds no run of this tool (no <row>/{RUN_FILE})")
        figures = [] if args.no_figures else draw_figures(args.dir, results)
        path = write_report(args.dir, results, figures)
        print(f"wrote {path} and results.csv ({len(results)} rows"
              + (f", {len(figures)} figures" if figures else "") + ")")
        return
    rows, scale = get_rows(args.rows), SCALES[args.scale]
    if args.cmd == "slurm":
        from tools import check_output
        check_output(args.out, args.force)
        runs = Path(args.runs).absolute()
        data = Path(args.data).absolute() if args.data else (Generated(runs / "generated") if scale.generated else None)
        if scale.generated and not args.data:
            generate_data(runs, {r.dataset for r in rows})
        for r in rows:  # the records `report` reads, as `run` writes them
            rdir = runs / r.name
            check_scale(load_state(rdir), r, scale, rdir)
            if load_state(rdir) is None:
                save_state(rdir, new_state(r, scale, runs, data))
        text = slurm_script(rows, scale, runs, data, " ".join(sys.argv[1:] if argv is None else argv))
        with atomic_write(args.out) as tmp:
            Path(tmp).write_text(text)
        print(f"wrote {args.out}: {len(rows)} array tasks; submit with: sbatch {args.out}")
        return
    out = Path(args.out).absolute()
    if args.cmd == "commands":
        data = Path(args.data).absolute() if args.data else (Generated(out / "generated") if scale.generated else None)
        if args.markdown:
            print(markdown(rows, scale, out, data))
        else:
            for r in rows:
                for c in row_commands(r, scale, out, data):
                    print(shell(c))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop the running step too
    data = resolve_data(args, rows, scale)
    folders = [r.name for r in rows if data is None and r.dataset in ("imagenet", "tiny")]
    if folders and not args.dry_run:
        raise CLIError(f"{', '.join(folders)} need{'s' if len(folders) == 1 else ''} --data: the dataset's folder "
                       "holding train/ and val/")
    failed = []
    for r in rows:  # a failed row does not stop the others
        try:
            run_row(r, scale, out, data, args.dry_run)
        except CLIError as e:
            if len(rows) == 1:
                raise
            print(f"reproduce.py: {e}", file=sys.stderr, flush=True)
            failed.append(r.name)
    if failed:
        raise CLIError(f"{len(failed)} of {len(rows)} rows did not finish ({', '.join(failed)}); run the same "
                       "command again to continue them")


if __name__ == "__main__":
    run_main(main)
