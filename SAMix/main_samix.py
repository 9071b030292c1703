#!/usr/bin/env python
"""Supervised mixup classification with a learnable Mixer: SAMix and AutoMix, and the vanilla / Mixup /
CutMix baselines of the same tables, from one script.

    python SAMix/main_samix.py --dataset cifar100 --data data --mix samix            # CIFAR-100, R-18, 400 ep
    torchrun --nproc_per_node 4 SAMix/main_samix.py --dataset imagenet --data IMAGENET -a resnet50 --mix samix

``--dataset`` picks the defaults of the released configs (batch size per process, learning rates and their
cosine floors, EMA end momentum, λ rescale, value-net dropout, η, mask-loss weight schedule); every one of them
can be overridden. ``tiny`` and ``imagenet`` read ``DATA/train`` and ``DATA/val`` as ImageFolder trees.

One SAMix/AutoMix iteration (see ``SAMix/models.py``): two λ ~ Beta(α, α) (Mixer's, backbone's), two random
permutations of the local batch (the backbone's drawn first), the Mixer called twice on the EMA network's stage-3
features (the backbone's mask detached; with ``--mask-adjust p`` rescaled per sample toward λ with probability p),
the backbone's mask replaced by plain Mixup when its λ is within ``--lam-margin`` of 0 or 1, the
losses ``L_mix_q + L_one_q + L_mix_k + w_t L_mask``, one SGD step, then the EMA update of k (parameters only).

Outputs in ``--output-dir``: ``latest.pth`` (atomic; exact resume with ``--resume``), ``log.csv`` (per epoch:
losses, schedules, top-1/top-5 of every head), ``curves.png``, and ``masks_epochNNNN.png`` (anchor, partner,
Mixer mask, mixture for a few validation images) every ``--plot-every`` epochs.
"""
import argparse
import inspect
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import data as D  # noqa: E402
from common.checkpoint import (check_compatible, gather_rng_states, load_checkpoint,  # noqa: E402
                               restore_rng_states, save_atomic)
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, CLIError, HelpFormatter, add_unsafe_load_arg,  # noqa: E402
                        adopt_recorded_args, count, explicit_options, prepare_output_dir, recorded_checks, run_main,
                        save_args)
from common.dist import (add_dist_args, all_reduce_sum, barrier, cleanup, first_rank, is_dist, launch,  # noqa: E402
                         plan_launch, setup_worker)
from common.guard import check_eval, check_finite_state, check_loss  # noqa: E402
from common.logs import EpochLine, plot_runs, write_csv  # noqa: E402
from common.runstate import kill_point, remove_partial_files  # noqa: E402
from common.mix import rand_bbox  # noqa: E402
from common.schedules import MASK_WEIGHT_SCHEDULES, MaskWeight, cosine, ema_momentum  # noqa: E402
from common.utils import amp_dtype, seed_everything, worker_count  # noqa: E402
from SAMix.models import ARCHS, MixerModel, build_model  # noqa: E402
from SAMix.plots import plot_masks  # noqa: E402

CHECKPOINT = "latest.pth"
MIXES = ("none", "mixup", "cutmix", "automix", "samix")
HEADS = ("one_q", "mix_q", "one_k", "mix_k")

# Defaults of the released SAMix configs per dataset (ImageNet: 4 GPUs x 64; CIFAR/Tiny: 1 GPU x 100).
# None = the backbone's value (the CIFAR configs have no separate Mixer parameter group).
DEFAULTS = {
    "imagenet": dict(arch="resnet18", epochs=100, batch_size=64, lr=0.1, min_lr=0.0, mixer_lr=0.1,
                     mixer_min_lr=1e-3, ema_end=0.99999, lam_mul_k=-1.0, mixer_dropout=0.1, eta=1.0,
                     mask_weight_schedule="compound", image_size=224, plot_every=10),
    "cifar": dict(arch="resnet18", epochs=400, batch_size=100, lr=0.1, min_lr=0.05, mixer_lr=None,
                  mixer_min_lr=None, ema_end=0.999999, lam_mul_k=0.25, mixer_dropout=0.0, eta=0.5,
                  mask_weight_schedule="constant", image_size=32, plot_every=50),
    "tiny": dict(arch="resnet18", epochs=400, batch_size=100, lr=0.2, min_lr=0.05, mixer_lr=0.1,
                 mixer_min_lr=1e-3, ema_end=0.999999, lam_mul_k=None, mixer_dropout=0.0, eta=0.5,
                 mask_weight_schedule="constant", image_size=64, plot_every=50),
}
FAMILY = {"cifar10": "cifar", "cifar100": "cifar", "tiny": "tiny", "imagenet": "imagenet"}
MEAN_STD = {"cifar10": (D.CIFAR10_MEAN, D.CIFAR10_STD), "cifar100": (D.CIFAR100_MEAN, D.CIFAR100_STD),
            # Tiny-ImageNet's own channel statistics
            "tiny": ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),
            "imagenet": (D.IMAGENET_MEAN, D.IMAGENET_STD)}


class _Help(HelpFormatter):
    """The repository's formatter, minus "(default: None)" on the options whose default depends on --dataset
    (their help lists the per-dataset values)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _per_dataset(key, fmt=str):
    vals = "; ".join(f"{k}: {fmt(v[key])}" for k, v in DEFAULTS.items())
    return f"(default per --dataset: {vals})"


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description="Supervised mixup classification: SAMix, AutoMix and baselines",
                                formatter_class=_Help)
    p.add_argument("--dataset", default="cifar100", choices=list(FAMILY),
                   help="cifar10/cifar100 (torchvision format, downloaded when missing; CIFAR ResNet stem), tiny "
                        "(Tiny-ImageNet, 64 px, CIFAR stem) or imagenet (torchvision ResNet stem); tiny and imagenet "
                        "read DATA/train and DATA/val as ImageFolder trees")
    p.add_argument("--data", default="data", metavar="DIR", help="dataset root")
    p.add_argument("--mix", default="samix", choices=MIXES,
                   help="none: vanilla; mixup / cutmix: hand-crafted baselines; automix / samix: learnable Mixer")
    p.add_argument("-a", "--arch", default=None, choices=list(ARCHS),
                   help="backbone; resnet_tiny is a tiny test network, not a published model (default: resnet18)")
    p.add_argument("--epochs", default=None, type=count(MAX_EPOCHS), help="epochs " + _per_dataset("epochs"))
    p.add_argument("-b", "--batch-size", default=None, type=count(MAX_BATCH),
                   help="images per process (per GPU) " + _per_dataset("batch_size"))
    p.add_argument("--lr", default=None, type=float, help="backbone learning rate " + _per_dataset("lr"))
    p.add_argument("--min-lr", default=None, type=float,
                   help="floor of the per-epoch cosine schedule of the backbone " + _per_dataset("min_lr"))
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay",
                   help="weight decay (on every parameter, BN and Mixer included, as released)")
    p.add_argument("--alpha", default=None, type=float,
                   help="λ ~ Beta(alpha, alpha) (default: 2 for automix/samix as released; 1 for mixup/cutmix)")
    g = p.add_argument_group("Mixer (automix/samix)")
    g.add_argument("--mixer-lr", default=None, type=float,
                   help="Mixer learning rate; its cosine schedule ends at --mixer-min-lr "
                        + _per_dataset("mixer_lr", lambda v: "= --lr" if v is None else v))
    g.add_argument("--mixer-min-lr", default=None, type=float,
                   help="floor of the Mixer's cosine " + _per_dataset("mixer_min_lr",
                                                                      lambda v: "= --min-lr" if v is None else v))
    g.add_argument("--mixer-momentum", default=0.9, type=float, help="SGD momentum of the Mixer (the 'm0' configs: 0)")
    g.add_argument("--mixer-loss", default="softce", choices=["softce", "bce"],
                   help="the Mixer's classification loss: softce (released; η has no effect) or bce (η weights "
                        "the non-mixed classes)")
    g.add_argument("--eta", default=None, type=float,
                   help="η, the weight of the classes outside the mixed pair (only changes the loss with "
                        "--mixer-loss bce) " + _per_dataset("eta"))
    g.add_argument("--mask-weight", default=0.1, type=float, help="weight of the mask loss at the start")
    g.add_argument("--mask-weight-schedule", default=None, choices=MASK_WEIGHT_SCHEDULES,
                   help="compound: the ImageNet configs' per-iteration hook re-applies the cosine factor to the "
                        "current weight (collapses within ~2 epochs); cosine: 0.1 to 0 by a plain cosine; "
                        "constant: the CIFAR/Tiny configs " + _per_dataset("mask_weight_schedule"))
    g.add_argument("--lam-mul-k", default=None, type=float,
                   help="λ rescale k (-1: off; samix only) "
                        + _per_dataset("lam_mul_k", lambda v: "-1 (resnet*), 0.25 (resnext*)" if v is None else v))
    g.add_argument("--mixer-dropout", default=None, type=float,
                   help="dropout on the value net's output (samix) " + _per_dataset("mixer_dropout"))
    g.add_argument("--lam-margin", default=0.08, type=float,
                   help="backbone λ within this of 0 or 1: plain Mixup for that iteration")
    g.add_argument("--mask-adjust", default=0.0, type=float,
                   help="probability per iteration of rescaling the backbone's mask so that each sample's anchor "
                        "mean is the Mixer's λ (0 in the released ImageNet/CIFAR-400/Tiny configs, 0.25 in the "
                        "CIFAR 800-epoch config)")
    g.add_argument("--ema-momentum", default=0.999, type=float, help="EMA momentum of k before the cosine phase")
    g.add_argument("--ema-end", default=None, type=float, help="EMA momentum at the end " + _per_dataset("ema_end"))
    g.add_argument("--ema-start", default=0.1, type=float,
                   help="fraction of the iterations at constant --ema-momentum before the cosine phase")
    o = p.add_argument_group("run")
    o.add_argument("--image-size", default=None, type=count(MAX_IMAGE),
                   help="training crop size " + _per_dataset("image_size"))
    o.add_argument("-j", "--workers", default=8, type=int, help="data loading workers per process (capped at the CPUs)")
    o.add_argument("--seed", default=0, type=int,
                   help="seed; every process gets the same one, so all draw the same λ and permutations (as released)")
    o.add_argument("--amp", action="store_true", help="mixed precision with torch.amp (the Mixer's attention stays fp32)")
    o.add_argument("--resume", default="", metavar="PATH", help="latest.pth of a run to continue exactly")
    add_unsafe_load_arg(o)
    o.add_argument("--output-dir", default="", metavar="DIR",
                   help="where the run is written (default: ./work_dirs/<dataset>_<arch>_<mix>, or the resumed "
                        "checkpoint's folder)")
    o.add_argument("--plot-every", default=None, type=int,
                   help="mask figure every N epochs (and the last; 0: never) " + _per_dataset("plot_every"))
    add_dist_args(p)
    return p


def resolve_defaults(args):
    """Fills the per-dataset defaults and checks the values; raises CLIError on bad input."""
    fam = DEFAULTS[FAMILY[args.dataset]]
    for key, value in fam.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lam_mul_k is None:  # Tiny: R-18 config off, RX-50 config 0.25
        args.lam_mul_k = 0.25 if args.arch.startswith("resnext") else -1.0
    if args.mixer_lr is None:
        args.mixer_lr = args.lr
    if args.mixer_min_lr is None:
        args.mixer_min_lr = args.min_lr
    if args.alpha is None:
        args.alpha = 2.0 if args.mix in ("automix", "samix") else 1.0
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size < 2 and args.mix != "none":
        raise CLIError("--batch-size must be at least 2 to mix images")
    if args.alpha <= 0 or args.lr < 0 or args.min_lr < 0 or args.mixer_lr < 0 or args.mixer_min_lr < 0:
        raise CLIError("--alpha must be positive and the learning rates non-negative")
    if not 0 <= args.lam_margin < 0.5 or not 0 <= args.mask_adjust <= 1 or not 0 <= args.mixer_dropout < 1:
        raise CLIError("--lam-margin must be in [0, 0.5), --mask-adjust in [0, 1] and --mixer-dropout in [0, 1)")
    if not 0 <= args.ema_momentum <= 1 or not 0 <= args.ema_end <= 1 or not 0 <= args.ema_start <= 1:
        raise CLIError("--ema-momentum, --ema-end and --ema-start must be in [0, 1]")
    if not 0 <= args.eta <= 1:  # η weights the classes outside the mixed pair, at most as much as the pair's (1)
        raise CLIError(f"--eta must be in [0, 1] (got {args.eta})")
    if args.mask_weight < 0 or args.plot_every < 0 or args.workers < 0:
        raise CLIError("--mask-weight, --plot-every and --workers must be non-negative")
    # the Mixer upsamples its stage-3 mask x16 above 64 px (ImageNet stem, stride 16) and x4 otherwise
    # (CIFAR stem, stride 4): the image must match the stem
    if args.dataset == "imagenet" and (args.image_size <= 64 or args.image_size % 16):
        raise CLIError(f"--image-size {args.image_size}: with the ImageNet stem it must be above 64 and a multiple "
                       "of 16 (the Mixer upsamples its stride-16 mask x16 above 64 px)")
    if args.dataset != "imagenet" and (args.image_size > 64 or args.image_size % 4):
        raise CLIError(f"--image-size {args.image_size}: with the CIFAR stem it must be at most 64 and a multiple "
                       "of 4 (the Mixer upsamples its stride-4 mask x4 up to 64 px)")
    return args


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def build_transforms(args):
    mean, std = MEAN_STD[args.dataset]
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    s = args.image_size
    if args.dataset == "imagenet":
        train = [transforms.RandomResizedCrop(s, interpolation=InterpolationMode.BICUBIC),
                 transforms.RandomHorizontalFlip()]
        val = [transforms.Resize(s * 256 // 224, interpolation=InterpolationMode.BICUBIC), transforms.CenterCrop(s)]
    elif args.dataset == "tiny":
        train = [transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip()]
        val = [transforms.Resize(s), transforms.CenterCrop(s)]
    else:
        train = [transforms.RandomCrop(s, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
        val = [] if s == 32 else [transforms.Resize(s)]
    return transforms.Compose(train + norm), transforms.Compose(val + norm)


def build_datasets(args):
    train_t, val_t = build_transforms(args)
    if args.dataset in ("tiny", "imagenet"):  # main() checked every image before the processes started
        return D.train_val_folders(args.data, train_t, val_t, check=False)
    return D.cifar(args.dataset, args.data, True, train_t), D.cifar(args.dataset, args.data, False, val_t)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def build_optimizer(net, args):
    """SGD with the Mixer in its own parameter group (own lr schedule and momentum); k's frozen tensors excluded
    (they never get a gradient, so SGD would skip them anyway)."""
    mixer = [p for n, p in net.named_parameters() if n.startswith("mixer.")]
    rest = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("mixer.")]
    groups = [{"params": rest, "name": "backbone"}]
    if mixer:
        groups.append({"params": mixer, "name": "mixer", "momentum": args.mixer_momentum})
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def set_epoch_lr(optimizer, epoch, args):
    """Per-epoch cosine (no warm-up): backbone ``lr -> min_lr``, Mixer ``mixer_lr -> mixer_min_lr``."""
    lrs = {"backbone": cosine(args.lr, args.min_lr, epoch / args.epochs),
           "mixer": cosine(args.mixer_lr, args.mixer_min_lr, epoch / args.epochs)}
    for g in optimizer.param_groups:
        g["lr"] = lrs[g["name"]]
    return lrs


def mix_baseline(x, y, args):
    """Mixup / CutMix of the batch with a random permutation of itself; returns ``(x, y_b, lam)``."""
    lam = float(np.random.beta(args.alpha, args.alpha))
    index = torch.randperm(x.size(0)).to(x.device)
    if args.mix == "mixup":
        return lam * x + (1 - lam) * x[index], y[index], lam
    x1, y1, x2, y2 = rand_bbox(x.size(), lam)
    x = x.clone()
    x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
    return x, y[index], 1.0 - (x2 - x1) * (y2 - y1) / (x.size(-1) * x.size(-2))


HINT = "lower --lr, or try without --amp"


def train_step(model, net, x, y, t, optimizer, scaler, args, mask_weight, total, epoch=None, step=None):
    """One iteration ``t`` (0-based, of ``total``; ``step`` of ``epoch`` for the error line): losses, backward,
    SGD step and, for automix/samix, the EMA update of k. Returns the logged values (tensors or floats); a
    non-finite loss stops the run (common.guard: the loss value read here is the one the loop logs)."""
    logged = {}
    with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=args.amp):
        if isinstance(net, MixerModel):
            lam = np.random.beta(args.alpha, args.alpha, 2)  # [Mixer's, backbone's], one call as released
            index_bb = torch.randperm(x.size(0)).to(x.device)  # the backbone's first, in upstream's order
            index_mb = torch.randperm(x.size(0)).to(x.device)
            w = mask_weight(t)
            out = model(x, y, lam, index_mb, index_bb, w)
            logged = {k: out[k].detach() for k in ("loss_one_q", "loss_mix_q", "loss_mix_k", "loss_mask")}
            logged["mask_weight"] = w
        elif args.mix == "none":
            out = model(x, y)
        else:
            xm, y_b, lam = mix_baseline(x, y, args)
            out = model(xm, y, y_b, lam)
    loss = out["loss"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if isinstance(net, MixerModel):
        m = ema_momentum(t, total, args.ema_momentum, args.ema_end, args.ema_start)
        net.momentum_update(m)
        logged["ema_momentum"] = m
    logged["loss"] = loss.item()  # the one read of the loss per step (logged and averaged by train_epoch)
    check_loss(logged["loss"], epoch, t if step is None else step, HINT)
    return logged


def train_epoch(model, net, loader, optimizer, scaler, epoch, args, device, schedules, show):
    """One epoch; returns the averages of the logged quantities."""
    model.train()
    mask_weight, total = schedules
    sums, count = {}, 0
    bar = tqdm(loader, dynamic_ncols=True, disable=not show, desc=f"epoch {epoch + 1}/{args.epochs}")
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logged = train_step(model, net, x, y, epoch * len(loader) + i, optimizer, scaler, args, mask_weight, total,
                            epoch + 1, i)
        n = x.size(0)
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
        bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def evaluate(net, loader, device, args, epoch=None):
    """Top-1 / top-5 of every head over this process's share of the validation set, summed over processes."""
    net.eval()
    keys = None
    stats = None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            logits = net.evaluate(x)
        keys = keys or list(logits)
        if stats is None:
            stats = torch.zeros(2 * len(keys) + 2, dtype=torch.float64, device=device)
        for j, k in enumerate(keys):
            top = logits[k].float().topk(min(5, logits[k].size(1)), dim=1).indices
            hit = top.eq(y[:, None])
            stats[2 * j] += hit[:, :1].any(1).sum()
            stats[2 * j + 1] += hit.any(1).sum()
            stats[-2] += (~torch.isfinite(logits[k])).sum()  # the NaN guard of the evaluation (no extra sync)
        stats[-1] += y.numel()
    keys = keys or list(HEADS if isinstance(net, MixerModel) else ("one_q",))
    if stats is None:
        stats = torch.zeros(2 * len(keys) + 2, dtype=torch.float64, device=device)
    all_reduce_sum(stats)
    net.train()
    check_eval(stats[-2].item(), f"the validation after epoch {epoch}", HINT)  # summed: every process stops
    n = max(stats[-1].item(), 1.0)
    out = {}
    for j, k in enumerate(keys):
        out[f"acc1_{k}"] = 100.0 * stats[2 * j].item() / n
        out[f"acc5_{k}"] = 100.0 * stats[2 * j + 1].item() / n
    return out


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------
def read_resume(path, net, unsafe=False):
    ckpt = load_checkpoint(path, unsafe=unsafe)
    if not isinstance(ckpt, dict) or not {"state_dict", "optimizer", "epoch"} <= set(ckpt):
        raise CLIError(f"{path} is not a {CHECKPOINT} of main_samix.py (needs state_dict, optimizer, epoch)")
    check_compatible(net, ckpt["state_dict"], f"checkpoint {path}")
    return ckpt


def main_worker(local_index, args, plan):
    device, rank, world = setup_worker(local_index, args, plan)
    show = rank == 0
    log = print if show else (lambda *a, **k: None)
    seed_everything(args.seed)  # the same seed everywhere, as the released runs (no --diff-seed)

    # data
    train_set, val_set = build_datasets(args)
    num_classes = len(train_set.classes)
    sampler = DistributedSampler(train_set, seed=args.seed) if is_dist() else None
    workers = worker_count(args.workers)
    pin = device.type == "cuda"
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=workers, pin_memory=pin, drop_last=True)
    if len(loader) == 0:
        raise CLIError(f"{len(train_set)} training images are fewer than one batch of {args.batch_size} "
                       f"per process x {world} processes")
    val_share = Subset(val_set, range(rank, len(val_set), world))  # exact shares, no padding
    val_loader = DataLoader(val_share, batch_size=args.batch_size, shuffle=False, num_workers=workers, pin_memory=pin)

    # model
    net = build_model(args, num_classes).to(device)
    ids = [device.index] if device.type == "cuda" else None
    # released: find_unused_parameters=False, broadcast_buffers=False (each process keeps its BN buffers;
    # they start equal: same seed, same checkpoint). PyTorch >= 2.14 names it forward_sync_buffers.
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
        inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}
    model = DistributedDataParallel(net, device_ids=ids, **no_sync) if is_dist() else net
    optimizer = build_optimizer(net, args)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    total = args.epochs * len(loader)
    mask_weight = MaskWeight(args.mask_weight_schedule, args.mask_weight, total)
    log(f"=> {args.mix} on {args.dataset} ({len(train_set)} images, {num_classes} classes), {args.arch}, "
        f"{world} process(es) x batch {args.batch_size}, {len(loader)} iterations/epoch, {device}")

    start, rows = 0, []
    if args.resume:
        ckpt = read_resume(args.resume, net, args.unsafe_load)
        net.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start, rows = ckpt["epoch"], list(ckpt.get("log", []))
        restore_rng_states(ckpt.get("rng_states"), rank, world)
        log(f"=> resumed {args.resume} at epoch {start}")

    out = prepare_output_dir(args.output_dir, True, CHECKPOINT)  # checked in main(); the inputs are accepted
    if show:  # the only process that writes: what a kill during an atomic write left, then the derived files
        remove_partial_files(out)
        save_args(args, out / "args.json")
        if rows:  # lost or stale after a kill between the checkpoint and the log: re-derived from the
            write_csv(rows, out / "log.csv")  # checkpoint's log, even with nothing left to train
            write_curves(rows, out / "curves.png", str(out))
    plot_idx = list(range(min(6, len(val_set))))
    # the deployment model: the EMA network k with head_one_k (automix/samix), the only head otherwise
    deployed = "acc1_one_k" if isinstance(net, MixerModel) else "acc1_one_q"
    epoch_line = EpochLine(args.epochs, monitor="val top-1")
    for epoch in range(start, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        lrs = set_epoch_lr(optimizer, epoch, args)
        stats = train_epoch(model, net, loader, optimizer, scaler, epoch, args, device, (mask_weight, total), show)
        acc = evaluate(net, val_loader, device, args, epoch + 1)
        row = {"epoch": epoch + 1, "lr": lrs["backbone"]}
        if isinstance(net, MixerModel):
            row["mixer_lr"] = lrs["mixer"]
        row.update({k: float(v) for k, v in stats.items()})
        row.update(acc)
        rows.append(row)
        log(epoch_line(epoch + 1, row["loss"], lrs["backbone"], acc.get(deployed)))
        if isinstance(net, MixerModel):
            log("  val top-1 per head: " + ", ".join(f"{k[5:]} {v:.2f}%" for k, v in acc.items() if k.startswith("acc1")))
        last = epoch + 1 == args.epochs
        if show and isinstance(net, MixerModel) and args.plot_every and ((epoch + 1) % args.plot_every == 0 or last):
            x = torch.stack([val_set[i][0] for i in plot_idx]).to(device)
            plot_masks(net, x, MEAN_STD[args.dataset], out / f"masks_epoch{epoch + 1:04d}.png",
                       title=f"{args.mix} epoch {epoch + 1}")
        rng_states = gather_rng_states()  # collective
        if show:
            ckpt = {"epoch": epoch + 1, "iter": (epoch + 1) * len(loader), "arch": args.arch,
                    "state_dict": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "rng_states": rng_states, "log": rows, "args": vars(args)}
            check_finite_state(ckpt, epoch + 1, out / CHECKPOINT, HINT)  # a NaN never reaches the checkpoint
            save_atomic(ckpt, out / CHECKPOINT)
            kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
            write_csv(rows, out / "log.csv")
            write_curves(rows, out / "curves.png", str(out))
    barrier()
    cleanup()


def write_curves(rows, path, title):
    import pandas as pd
    df = pd.DataFrame(rows)
    cols = [c for c in ("loss", "loss_one_q", "loss_mix_q", "loss_mix_k", "loss_mask") if c in df] + \
        [c for c in df if c.startswith("acc1_")] + [c for c in ("mask_weight", "lr") if c in df]
    plot_runs([(None, df)], path, title=title, columns=cols)


# options that describe how this invocation runs, not the run itself: never taken from a checkpoint. --workers is
# not one of them (as in every other script): the worker count changes which augmentation each image gets, so a
# resume takes the recorded count unless -j N is given again
RUNTIME_OPTIONS = {"resume", "output_dir", "world_size", "rank", "dist_url", "dist_backend", "gpu",
                   "multiprocessing_distributed", "nproc", "local_rank", "unsafe_load"}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ckpt = resumed = None
    if args.resume:
        ckpt = load_checkpoint(args.resume, unsafe=args.unsafe_load)  # fail early, before any process starts
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("args"), dict) or "state_dict" not in ckpt:
            raise CLIError(f"{args.resume} is not a {CHECKPOINT} of main_samix.py")
        # the run's settings come from the checkpoint; options given again on the command line win, except
        # those that make it another run
        given = explicit_options(parser, argv)
        for key in ("dataset", "mix", "arch"):
            if key in given and ckpt["args"].get(key) != getattr(args, key):
                raise CLIError(f"--{key} {getattr(args, key)} differs from the checkpoint's {ckpt['args'].get(key)}")
        resumed = adopt_recorded_args(args, ckpt["args"], parser, argv, RUNTIME_OPTIONS, args.resume)
        if not args.output_dir:
            args.output_dir = os.path.dirname(args.resume) or "."  # as given: the plots' title is the folder
    with recorded_checks(resumed):
        args = resolve_defaults(args)
    if ckpt is not None and ckpt.get("epoch", 0) >= args.epochs:
        warnings.warn(f"the checkpoint already holds {ckpt['epoch']} of {args.epochs} epochs: nothing to train")
    plan = plan_launch(args)
    if args.dataset in ("tiny", "imagenet"):  # every image's header, once per job, before anything is written
        for split in ("train", "val"):
            D.check_image_folder(D.split_dir(args.data, split), images=True, rank=first_rank(plan, args))
    args.output_dir = args.output_dir or f"./work_dirs/{args.dataset}_{args.arch}_{args.mix}"
    # a resumed run writes into its own folder or a new or empty one, never over another run; the folder is
    # created by the worker once the inputs (data, checkpoint) are accepted
    prepare_output_dir(args.output_dir, args.resume, CHECKPOINT, create=False)
    launch(main_worker, args, plan)
    return Path(args.output_dir)


if __name__ == "__main__":
    run_main(main)
