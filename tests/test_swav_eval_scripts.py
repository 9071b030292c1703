"""The SwAV job scripts: published hyper-parameters (checked against upstream's job scripts
by parsing the commands with the entry points' own parsers), the Slurm path
(fake srun/scontrol), and one end-to-end ``bash script_unmix_c10.sh`` run on tiny data.
"""
import os
import shlex
import shutil
import stat
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, script_env
from fakedata import make_cifar, make_image_folder
from UnMix_SwAV.swav import linear, train

CIFAR_DIR = ROOT / "UnMix_SwAV" / "for_CIFAR"
IMAGENET_SCRIPTS = ROOT / "UnMix_SwAV" / "for_ImageNet" / "scripts"


def bash(script, env=None, cwd=None, check=True):
    import subprocess
    p = subprocess.run(["bash", str(script)], cwd=cwd or ROOT, env=script_env(**(env or {})),
                       capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def dry_run(script, **env):
    """The (entry script, parsed args) pairs a job script would launch."""
    out = bash(script, env={"DRY_RUN": "1", **env}).stdout
    steps = []
    for line in out.splitlines():
        if line.startswith("launch "):
            words = shlex.split(line)
            steps.append((os.path.basename(words[1]), words[2:]))
    return steps


# upstream's for_CIFAR scripts
CIFAR_PRETRAIN = dict(arch="resnet18", epochs=400, base_lr=0.6, final_lr=0.0006, warmup_epochs=5, batch_size=128,
                      size_crops=[32], nmb_crops=[2], min_scale_crops=[0.14], max_scale_crops=[1.0], use_fp16=True,
                      run_swav=False, freeze_prototypes_niters=5005, nmb_prototypes=100, queue_length=120,
                      hidden_mlp=512, epoch_queue_starts=15, temperature=0.1, epsilon=0.05, workers=2)


@pytest.mark.parametrize("job,dataset,labels", [("c10", "cifar10", 10), ("c100", "cifar100", 100)])
def test_cifar_scripts_launch_the_published_runs(job, dataset, labels):
    steps = dry_run(CIFAR_DIR / f"script_unmix_{job}.sh")
    assert [s for s, _ in steps] == ["main_swav_unmix.py", "eval_linear.py"]
    pre = train.build_parser("cifar").parse_args(steps[0][1])
    for k, v in CIFAR_PRETRAIN.items():
        assert getattr(pre, k) == v, k
    exp = f"./experiments/unmix_swav_cifar_128_resnet18_400ep_100prot_{dataset}"
    assert pre.data_path == dataset and pre.dump_path == exp and pre.resume is False
    ev = linear.build_parser("cifar").parse_args(steps[1][1])
    assert (ev.num_labels, ev.crop_size, ev.workers, ev.arch, ev.data_path) == (labels, 32, 2, "resnet18", dataset)
    assert ev.pretrained == f"{exp}/checkpoint.pth.tar" and ev.dump_path == f"{exp}_linear_eval"
    # everything else: upstream eval_linear defaults
    assert (ev.epochs, ev.batch_size, ev.lr, ev.wd, ev.scheduler_type, ev.final_lr) == (100, 32, 0.3, 1e-6, "cosine", 0)
    header = (CIFAR_DIR / f"script_unmix_{job}.sh").read_text()
    for line in ["#SBATCH --gpus=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=2",
                 f"#SBATCH --job-name={job}", "#SBATCH --time=12:00:00", "#SBATCH --mem=50G"]:
        assert line in header


def test_cifar_script_overrides_from_the_environment():
    steps = dry_run(CIFAR_DIR / "script_unmix_c10.sh", EPOCHS="1000", RUN_SWAV="true", RESUME="true",
                    PRETRAIN_ARGS="--unmix_prob 0.3", EVAL_ARGS="--lr 0.1")
    pre = train.build_parser("cifar").parse_args(steps[0][1])
    ev = linear.build_parser("cifar").parse_args(steps[1][1])
    assert (pre.epochs, pre.run_swav, pre.resume, pre.unmix_prob) == (1000, True, True, 0.3)
    assert pre.dump_path.endswith("_1000ep_100prot_cifar10")
    assert ev.resume is True and ev.lr == 0.1


# upstream's ImageNet sbatch scripts: nodes, GPUs per node, bs, epochs, lr, final lr, warmup, start_warmup,
# nmb_crops, size_crops, min/max scale, queue, queue start, freeze iters, sync_bn, arch, hidden_mlp
C8 = ([2, 6], [224, 96], [0.14, 0.05], [1.0, 0.14])
IMAGENET = {
    "unmix_swav_100ep_pretrain": (8, 8, 64, 100, 4.8, 0.0048, 10, 0.3, *C8, 0, None, 313, "apex", "resnet50", 2048),
    "unmix_swav_200ep_pretrain": (8, 8, 64, 200, 4.8, 0.0048, 10, 0.3, *C8, 0, None, 313, "apex", "resnet50", 2048),
    "unmix_swav_400ep_pretrain": (8, 8, 64, 400, 4.8, 0.0048, 10, 0.3, *C8, 0, None, 313, "apex", "resnet50", 2048),
    "unmix_swav_800ep_pretrain": (8, 8, 64, 800, 4.8, 0.0048, 10, 0.3, *C8, 0, None, 313, "apex", "resnet50", 2048),
    "unmix_swav_200ep_bs256_pretrain": (1, 4, 64, 200, 0.6, 0.0006, 0, None, *C8, 3840, 15, 5005, "pytorch",
                                        "resnet50", 2048),
    "unmix_swav_400ep_bs256_pretrain": (1, 4, 64, 400, 0.6, 0.0006, 0, None, *C8, 3840, 15, 5005, "pytorch",
                                        "resnet50", 2048),
    "unmix_swav_400ep_2x224_pretrain": (8, 8, 64, 400, 4.8, 0.0048, 10, 0.3, [2], [224], [0.08], [1.0], 0, None,
                                        313, "apex", "resnet50", 2048),
    "unmix_swav_RN50w2_400ep_pretrain": (16, 8, 32, 400, 4.8, 0.0048, 10, 0.3, [2, 4], [224, 96], [0.14, 0.05],
                                         [1.0, 0.14], 0, None, 313, "apex", "resnet50w2", 8192),
    "unmix_swav_RN50w4_400ep_pretrain": (8, 8, 40, 400, 4.8, 0.0048, 10, 0.3, [2, 4], [224, 96], [0.08, 0.08],
                                         [1.0, 0.14], 2560, 0, 313, "apex", "resnet50w4", 8192),
}


def test_every_imagenet_script_is_there():
    assert sorted(p.stem for p in IMAGENET_SCRIPTS.glob("*.sh")) == sorted(IMAGENET)


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_scripts_launch_the_published_runs(name):
    (nodes, gpus, bs, epochs, lr, final, warm, start_warm, nc, sc, mins, maxs, queue, qstart, freeze, syncbn,
     arch, hidden) = IMAGENET[name]
    text = (IMAGENET_SCRIPTS / f"{name}.sh").read_text()
    assert text.startswith("#!/bin/bash\n#SBATCH")  # upstream had the shebang after a licence header
    assert f"#SBATCH --nodes={nodes}\n" in text and f"#SBATCH --ntasks-per-node={gpus}\n" in text
    steps = dry_run(IMAGENET_SCRIPTS / f"{name}.sh")
    assert [s for s, _ in steps] == ["main_swav_unmix.py"]  # LINEAR_EVAL=true adds eval_linear.py
    a = train.build_parser("imagenet").parse_args(steps[0][1])
    got = (a.batch_size, a.epochs, a.base_lr, a.final_lr, a.warmup_epochs, a.nmb_crops, a.size_crops,
           a.min_scale_crops, a.max_scale_crops, a.queue_length, a.freeze_prototypes_niters, a.sync_bn, a.arch,
           a.hidden_mlp)
    assert got == (bs, epochs, lr, final, warm, nc, sc, mins, maxs, queue, freeze, syncbn, arch, hidden)
    if start_warm is not None:
        assert a.start_warmup == start_warm
    if qstart is not None:
        assert a.epoch_queue_starts == qstart
    # common to every upstream script; none passes the Un-Mix flags (ImageNet default: region mixing only)
    assert (a.crops_for_assign, a.temperature, a.epsilon, a.sinkhorn_iterations, a.feat_dim, a.nmb_prototypes,
            a.wd, a.use_fp16) == ([0, 1], 0.1, 0.05, 3, 128, 3000, 1e-6, True)
    assert (a.unmix_prob, a.unmix_beta, a.run_swav) == (0.0, 1.0, False)
    assert not any(w.startswith("--unmix") for w in steps[0][1])


def test_imagenet_script_optional_linear_eval():
    steps = dry_run(IMAGENET_SCRIPTS / "unmix_swav_800ep_pretrain.sh", LINEAR_EVAL="true",
                    DATASET_PATH="/data/imagenet/train")
    ev = linear.build_parser("imagenet").parse_args(steps[1][1])
    assert ev.data_path == "/data/imagenet" and ev.pretrained == "./experiments/unmix_swav_800ep/checkpoint.pth.tar"
    assert (ev.epochs, ev.batch_size, ev.lr) == (100, 32, 0.3)


def _fake_slurm(tmp_path):
    """``srun`` that records its arguments, ``scontrol`` that expands a node list."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "srun.log"
    (bindir / "srun").write_text(f'#!/bin/bash\necho "$@" >> {log}\n')
    (bindir / "scontrol").write_text('#!/bin/bash\nprintf "node017\\nnode018\\n"\n')
    for f in ("srun", "scontrol"):
        (bindir / f).chmod((bindir / f).stat().st_mode | stat.S_IEXEC)
    return bindir, log


def test_under_sbatch_the_spooled_script_finds_the_code_and_uses_srun(tmp_path):
    bindir, log = _fake_slurm(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(CIFAR_DIR / "script_unmix_c10.sh", spool / "slurm_script")  # what sbatch runs
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node[017-018]", "SLURM_SUBMIT_DIR": str(CIFAR_DIR)}
    bash(spool / "slurm_script", env=env, cwd=tmp_path)
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for call, entry in zip(calls, ("main_swav_unmix.py", "eval_linear.py")):
        words = call.split()
        assert words[:3] == ["--label", "python", "-u"]
        assert words[3] == str(CIFAR_DIR / entry)
        assert words[4:6] == ["--dist_url", "tcp://node017:10001"]  # upstream's port, the first node
    # outside Slurm and away from the code, a clear error
    p = bash(spool / "slurm_script", env={"SLURM_SUBMIT_DIR": str(tmp_path)}, cwd=tmp_path, check=False)
    assert p.returncode != 0 and "cannot find main_swav_unmix.py" in p.stderr


def test_script_unmix_c10_runs_end_to_end_on_tiny_data(tmp_path):
    data = make_cifar(tmp_path / "cifar", "cifar10", n_train=16, n_test=8)
    exp = tmp_path / "exp" / "run"
    p = bash(CIFAR_DIR / "script_unmix_c10.sh", cwd=tmp_path,
             env=dict(DATASET_PATH=data, EXPERIMENT_PATH=exp, EPOCHS=1, BS=8, WORKERS=0, EVAL_EPOCHS=1, EVAL_BS=8,
                      PYTHON=sys.executable))  # the interpreter running the tests, venv activated or not
    # pretraining wrote upstream's layout...
    for f in ("checkpoint.pth.tar", "params.pkl", "stats0.pkl", "train.log", "checkpoints/ckp-0.pth"):
        assert (exp / f).is_file(), f
    pre = torch.load(exp / "checkpoint.pth.tar", weights_only=False)
    assert pre["epoch"] == 1 and "module.prototypes.weight" in pre["state_dict"]
    # ...and the linear evaluation read it and reported its accuracy
    ev = exp.parent / "run_linear_eval"
    assert "Loaded 174 backbone tensors" in (ev / "train.log").read_text()
    assert "Top-1 test accuracy:" in p.stdout
    stats = pd.read_pickle(ev / "stats0.pkl")
    assert len(stats) == 1 and 0 <= stats["prec1_val"].iloc[0] <= 100
    out = torch.load(ev / "checkpoint.pth.tar", weights_only=False)
    assert out["state_dict"]["module.linear.weight"].shape == (10, 2048)


def test_imagenet_script_with_linear_eval_runs_end_to_end_on_tiny_data(tmp_path):
    root = make_image_folder(tmp_path / "imagenet", classes=2, per_class=4)
    exp = tmp_path / "exp" / "in"
    p = bash(IMAGENET_SCRIPTS / "unmix_swav_200ep_bs256_pretrain.sh", cwd=tmp_path, env=dict(
        DATASET_PATH=root / "train", EXPERIMENT_PATH=exp, EPOCHS=1, BS=4, WORKERS=0, ARCH="resnet18",
        HIDDEN_MLP=16, NMB_PROTOTYPES=10, NMB_CROPS="2 2", SIZE_CROPS="32 16", QUEUE_LENGTH=0, LINEAR_EVAL="true",
        EVAL_EPOCHS=1, EVAL_BS=4, EVAL_ARGS="--crop_size 32 --val_resize 32", PYTHON=sys.executable))
    pre = torch.load(exp / "checkpoint.pth.tar", weights_only=False)
    assert pre["state_dict"]["module.conv1.weight"].shape == (64, 3, 7, 7)  # the ImageNet stem
    assert "Loaded 174 backbone tensors" in (exp.parent / "in_linear_eval" / "train.log").read_text()
    assert "Top-1 test accuracy:" in p.stdout
