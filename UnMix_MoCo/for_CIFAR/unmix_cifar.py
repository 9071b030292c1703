"""MoCo + Un-Mix on CIFAR-10/100 (or any ImageFolder): the single-GPU demo of the paper.

Faithful to the official ``unmix_c10.py`` / ``unmix_c100.py`` (what is kept, fixed and changed: docs/faithfulness.md),
with a working command line whose defaults are the values the published runs used (upstream ignored its
command line and forced 1000 epochs, cosine schedule and the symmetric loss in code).

``unmix_c10.py`` and ``unmix_c100.py`` are thin entry points around :func:`main`.
"""
import argparse
import math
import os
import sys
import warnings
from datetime import timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402
from torchvision import transforms  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import data as D  # noqa: E402
from common.checkpoint import (check_compatible, gather_rng_states, load_checkpoint,  # noqa: E402
                               restore_rng_states, save_atomic, set_rng_state)
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, MAX_QUEUE, MAX_WIDTH, CLIError, HelpFormatter,  # noqa: E402
                        add_unsafe_load_arg, adopt_recorded_args, count, prepare_output_dir, recorded_checks, save_args)
from common.device_aug import DeviceLoader, add_aug_arg  # noqa: E402
from common.dist import barrier, cleanup, concat_all_gather, get_rank, init_distributed, launcher_env  # noqa: E402
from common.guard import check_finite_state, check_loss  # noqa: E402
from common.knn import knn_accuracy  # noqa: E402
from common.logs import EpochLine, plot_curves, warn_zero_lr_epochs, write_csv  # noqa: E402
from common.mix import unmix_batch, unmix_loss  # noqa: E402
from common.runstate import kill_point, remove_partial_files  # noqa: E402
from common.moco import contrastive_logits, dequeue_and_enqueue, freeze_copy, momentum_update, new_queue  # noqa: E402
from common.utils import amp_dtype, seed_everything, worker_count  # noqa: E402

CHECKPOINT = "model_last.pth"
# what the NaN guard suggests when the loss diverges
HINT = "lower the learning rate (--lr), raise the temperature (--moco-t), or try without --amp"
# per-session options; every other option of a resumed run comes from its checkpoint unless given again
SESSION_ARGS = {"resume", "results_dir", "unsafe_load"}
# DDP: process 0 runs the kNN monitor alone while the others wait in the next collective; NCCL's default
# 10-minute timeout would end the job during a long monitor (a large ImageFolder), so collectives wait this long
MONITOR_TIMEOUT = timedelta(hours=2)


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------
def build_parser(dataset="cifar10"):
    tag = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset, dataset)
    dir_tag = {"cifar10": "C10", "cifar100": "C100"}.get(dataset, "ImageFolder")
    p = argparse.ArgumentParser(description=f"Train MoCo + Un-Mix on {tag}", formatter_class=HelpFormatter)
    # upstream's options; defaults = the values of the published runs
    p.add_argument("-a", "--arch", default="resnet18", help="torchvision ResNet (CIFAR stem is applied)")
    p.add_argument("--lr", "--learning-rate", default=0.06, type=float, dest="lr",
                   help="initial learning rate (0.06 for batch 512, 0.03 for batch 256)")
    p.add_argument("--epochs", default=1000, type=count(MAX_EPOCHS), help="number of total epochs")
    p.add_argument("--schedule", default=[], nargs="*", type=int,
                   help="step milestones (x0.1 each), used only with --no-cos")
    p.add_argument("--cos", default=True, action=argparse.BooleanOptionalAction,
                   help="cosine learning rate schedule (per epoch)")
    p.add_argument("--batch-size", default=512, type=count(MAX_BATCH), help="mini-batch size")
    p.add_argument("--wd", default=5e-4, type=float, help="weight decay")
    p.add_argument("--moco-dim", default=128, type=count(MAX_WIDTH), help="feature dimension")
    p.add_argument("--moco-k", default=4096, type=count(MAX_QUEUE), help="queue size; number of negative keys")
    p.add_argument("--moco-m", default=0.99, type=float, help="moco momentum of updating key encoder")
    p.add_argument("--moco-t", default=0.1, type=float, help="softmax temperature")
    p.add_argument("--prob", default=0.5, type=float,
                   help="probability of the global (λ-blend) mixture; otherwise a region (CutMix) mixture")
    p.add_argument("--beta", default=1.0, type=float, help="λ ~ Beta(beta, beta)")
    p.add_argument("--bn-splits", default=8, type=int,
                   help="simulate multi-gpu behavior of BatchNorm in one gpu; 1 is plain BatchNorm")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="symmetric loss (the published default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="asymmetric loss (the 'w/ asymmetric' rows)")
    p.add_argument("--knn-k", default=200, type=int, help="k in kNN monitor")
    p.add_argument("--knn-t", default=0.1, type=float, help="softmax temperature in kNN monitor")
    p.add_argument("--resume", default="", type=str, metavar="PATH",
                   help="path to a model_last.pth to continue from, exactly, with the settings it was trained "
                        "with (options given again override them)")
    add_unsafe_load_arg(p)
    p.add_argument("--results-dir", default="", type=str, metavar="DIR",
                   help=f"output folder; default ./UnMix_{{symmetric|asymmetric}}_{dir_tag} (MoCo_... with "
                        "--mix none, SAMix_... with --mix samix; the suffix follows --dataset), or the resumed "
                        "checkpoint's folder")
    # additions
    p.add_argument("--mix", default="unmix", choices=["unmix", "samix", "none"],
                   help="image mixtures: Un-Mix (the paper), SAMix's learnable Mixer, or none (plain MoCo)")
    p.add_argument("--no-unmix", dest="unmix", action="store_false",
                   help="plain MoCo without Un-Mix (the baseline rows); the same as --mix none")
    p.add_argument("--samix-alpha", default=2.0, type=float, help="--mix samix: λ ~ Beta(alpha, alpha)")
    p.add_argument("--mixer-loss", default="infonce", choices=["infonce", "bce"],
                   help="--mix samix: the Mixer's objective, mixup-InfoNCE against the queue or the two-way "
                        "'local' softmax between the two sources")
    p.add_argument("--eta", default=0.0, type=float,
                   help="--mix samix: weight of the Mixer's auxiliary 'global' term (extended positives against "
                        "the queue); 0 = off")
    p.add_argument("--mask-weight", default=0.1, type=float, help="--mix samix: weight of the mask loss")
    p.add_argument("--mask-adjust", default=True, action=argparse.BooleanOptionalAction,
                   help="--mix samix: rescale each sample's backbone mask to an anchor mean of λ when that "
                        "sample's mean strays more than 0.1 from λ")
    p.add_argument("--mask-every", default=10, type=int,
                   help="--mix samix: save the Mixer's mask figure (masks.png) every N epochs (and the last)")
    p.add_argument("--two-pass", action="store_true",
                   help="symmetric Un-Mix as upstream: encode the mixture twice (same loss and gradients as the "
                        "default single encoding; BatchNorm running statistics then match upstream too)")
    p.add_argument("--dataset", default=dataset, choices=["cifar10", "cifar100", "imagefolder"],
                   help="training data (imagefolder: normalised with the ImageNet statistics)")
    p.add_argument("--data", default="data", metavar="DIR",
                   help="dataset root: CIFAR is downloaded here when missing; for imagefolder, DIR/train and "
                        "DIR/val hold class folders")
    p.add_argument("--cifar100-stats", action="store_true",
                   help="normalise CIFAR-100 with its own statistics (upstream used CIFAR-10's, which produced "
                        "the published numbers)")
    p.add_argument("--image-size", default=32, type=count(MAX_IMAGE), help="crop size (imagefolder images are resized)")
    p.add_argument("--workers", default=16, type=int, help="data loading workers (capped at the CPU count)")
    p.add_argument("--seed", default=None, type=int, help="seed Python, NumPy and torch (upstream: unseeded)")
    p.add_argument("--knn-every", default=1, type=int, help="run the kNN monitor every N epochs (and the last)")
    p.add_argument("--amp", action="store_true", help="mixed precision with torch.amp (off, as upstream)")
    add_aug_arg(p)
    return p


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def build_transforms(args):
    if args.dataset == "imagefolder":
        mean, std = D.IMAGENET_MEAN, D.IMAGENET_STD
    elif args.dataset == "cifar100" and args.cifar100_stats:
        mean, std = D.CIFAR100_MEAN, D.CIFAR100_STD
    else:  # upstream normalises CIFAR-100 with the CIFAR-10 statistics too
        mean, std = D.CIFAR10_MEAN, D.CIFAR10_STD
    train = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(mean, std)])
    resize = [transforms.Resize(args.image_size), transforms.CenterCrop(args.image_size)] \
        if args.dataset == "imagefolder" else []
    test = transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    return train, test


def build_datasets(args):
    """(pairs for training, training set for the kNN bank, test set), each with its transform."""
    train_t, test_t = build_transforms(args)
    if args.dataset == "imagefolder":
        memory, test = D.train_val_folders(args.data, test_t, test_t)
        return D.image_folder(D.split_dir(args.data, "train"), D.TwoCrops(train_t)), memory, test
    make = lambda train, t: D.cifar(args.dataset, args.data, train, t)  # noqa: E731
    return make(True, D.TwoCrops(train_t)), make(True, test_t), make(False, test_t)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm over ``num_splits`` groups of the batch, simulating per-GPU BN on one device.

    Upstream semantics: the [N, C, H, W] input is viewed as [N/S, C*S, H, W], so group j holds samples
    j, j+S, j+2S, ... (strided, not contiguous). Running statistics are updated with the mean over the
    groups of each group's statistics; ``num_batches_tracked`` is never incremented.
    """

    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input):
        N, C, H, W = input.shape
        if self.training or not self.track_running_stats:
            S = self.num_splits
            running_mean_split = self.running_mean.repeat(S)
            running_var_split = self.running_var.repeat(S)
            outcome = F.batch_norm(input.view(-1, C * S, H, W), running_mean_split, running_var_split,
                                   self.weight.repeat(S), self.bias.repeat(S), True, self.momentum,
                                   self.eps).view(N, C, H, W)
            self.running_mean.data.copy_(running_mean_split.view(S, C).mean(dim=0))
            self.running_var.data.copy_(running_var_split.view(S, C).mean(dim=0))
            return outcome
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            False, self.momentum, self.eps)


class ModelBase(nn.Module):
    """torchvision ResNet with the CIFAR stem: 3x3 stride-1 conv1, no max-pool (upstream's layout).

    ``net`` is a Sequential whose indices (0 conv1, 1 bn1, 3-6 layers, 9 fc) give the released key names.
    """

    def __init__(self, feature_dim=128, arch="resnet18", bn_splits=16):
        super().__init__()
        norm_layer = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
        builder = getattr(torchvision.models, arch, None)
        if not arch.startswith("resnet") or builder is None:
            raise CLIError(f"--arch {arch} is not a torchvision ResNet")
        resnet = builder(num_classes=feature_dim, norm_layer=norm_layer)
        layers = []
        for name, module in resnet.named_children():
            if name == "conv1":  # created after torchvision's init, so it keeps PyTorch's default init
                module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            if isinstance(module, nn.MaxPool2d):
                continue
            if isinstance(module, nn.Linear):
                layers.append(nn.Flatten(1))
            layers.append(module)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ModelMoCo(nn.Module):
    """MoCo with a single-device shuffle-BN key encoder and the Un-Mix loss.

    ``forward(im1, im2, mixed=None, lam=None)`` returns the training loss and enqueues the keys.
    ``mixed`` is Un-Mix's mixture of ``im1`` with its batch reverse; its reverse-order mixture is the
    batch flip of the mixture, so the flipped *features* stand for it (no extra pass, as upstream).
    """

    def __init__(self, dim=128, K=4096, m=0.99, T=0.1, arch="resnet18", bn_splits=8, symmetric=True,
                 two_pass=False):
        super().__init__()
        self.K, self.m, self.T, self.symmetric, self.two_pass = K, m, T, symmetric, two_pass
        self.encoder_q = ModelBase(feature_dim=dim, arch=arch, bn_splits=bn_splits)
        self.encoder_k = ModelBase(feature_dim=dim, arch=arch, bn_splits=bn_splits)
        freeze_copy(self.encoder_q, self.encoder_k)
        self.register_buffer("queue", new_queue(dim, K))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def encode_key(self, im_k):
        """Key features with shuffle-BN on one device: one ``randperm`` from the global CPU generator."""
        idx_shuffle = torch.randperm(im_k.shape[0]).to(im_k.device)
        idx_unshuffle = torch.argsort(idx_shuffle)
        k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
        return k[idx_unshuffle]

    def mixture_losses(self, q_mixed_raw, k):
        """CE of the mixture and of the reverse-order mixture (the batch flip of its features) against ``k``."""
        q_mixed = F.normalize(q_mixed_raw, dim=1)
        q_mixed_flip = F.normalize(torch.flip(q_mixed_raw, (0,)), dim=1)
        return self.ce(q_mixed, k), self.ce(q_mixed_flip, k)

    def ce(self, q, k):
        logits = contrastive_logits(q, k, self.queue, self.T)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.float(), labels)

    def contrastive_loss(self, im_q, im_k, mixed=None):
        """Upstream's order: clean query, then the mixture (its own BN batch), then the keys.

        Returns the clean loss, the keys and the raw mixture features (None without a mixture).
        """
        q = F.normalize(self.encoder_q(im_q), dim=1)
        q_mixed_raw = self.encoder_q(mixed) if mixed is not None else None
        k = self.encode_key(im_k)
        return self.ce(q, k), k, q_mixed_raw

    def forward(self, im1, im2, mixed=None, lam=None):
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.m)
        if not self.symmetric:
            loss, k2, q_mixed = self.contrastive_loss(im1, im2, mixed)
            if mixed is not None:
                loss = unmix_loss(loss, *self.mixture_losses(q_mixed, k2), lam)
            keys = k2
        else:
            # Upstream encodes the mixture (built from im1) again in the second direction. By default we
            # encode it once and use it in both: identical inputs and weights give the same loss and
            # gradients with one forward/backward less; only the BatchNorm running statistics differ
            # (updated 3x per step instead of 4x). --two-pass runs upstream's computation exactly.
            loss_12, k2, q_mixed = self.contrastive_loss(im1, im2, mixed)
            loss_21, k1, q_mixed_2 = self.contrastive_loss(im2, im1, mixed if self.two_pass else None)
            loss = loss_12 + loss_21
            if mixed is not None:
                q_mixed_2 = q_mixed if q_mixed_2 is None else q_mixed_2
                loss = unmix_loss(loss, *self.mixture_losses(q_mixed, k2), lam)
                loss = unmix_loss(loss, *self.mixture_losses(q_mixed_2, k1), lam)
            keys = torch.cat([k1, k2], dim=0)
        dequeue_and_enqueue(self.queue, self.queue_ptr, concat_all_gather(keys))  # every process's keys (DDP)
        return loss


def build_model(args):
    if args.mix == "samix":
        from samix_moco import MoCoSAMix  # (it builds on ModelMoCo: imported here, not at the top)
        return MoCoSAMix(dim=args.moco_dim, K=args.moco_k, m=args.moco_m, T=args.moco_t, arch=args.arch,
                         bn_splits=args.bn_splits, symmetric=args.symmetric, alpha=args.samix_alpha,
                         mixer_loss=args.mixer_loss, eta=args.eta, mask_weight=args.mask_weight,
                         mask_adjust=args.mask_adjust)
    return ModelMoCo(dim=args.moco_dim, K=args.moco_k, m=args.moco_m, T=args.moco_t, arch=args.arch,
                     bn_splits=args.bn_splits, symmetric=args.symmetric, two_pass=args.two_pass)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def learning_rate(epoch, args):
    """Per-epoch learning rate, ``epoch`` 1-based as upstream (the last epoch of a cosine run gets 0)."""
    lr = args.lr
    if args.cos:
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    for milestone in args.schedule:  # upstream's loop: 0.1 ** n can differ from n multiplications in the last bit
        lr *= 0.1 if epoch >= milestone else 1.0
    return lr


def train_epoch(model, loader, optimizer, scaler, epoch, args, device):
    """One epoch; returns the average loss. The NumPy draws of the mixing are upstream's, in order."""
    model.train()
    lr = learning_rate(epoch, args)
    for group in optimizer.param_groups:
        group["lr"] = lr
    total_loss, total_num = 0.0, 0
    bar = tqdm(loader, dynamic_ncols=True, disable=get_rank() != 0)
    for step, ((im_1, im_2), _) in enumerate(bar):
        im_1, im_2 = im_1.to(device, non_blocking=True), im_2.to(device, non_blocking=True)
        mixed, lam = unmix_batch(im_1, args.prob, args.beta) if args.unmix else (None, None)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            loss = model(im_1, im_2, mixed, lam)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = loss.item()  # read every step for the progress bar anyway: the NaN guard costs no extra sync
        check_loss(value, epoch, step, HINT)
        total_num += im_1.size(0)
        total_loss += value * im_1.size(0)
        bar.set_description(f"Train Epoch: [{epoch}/{args.epochs}], lr: {lr:.6f}, Loss: {total_loss / total_num:.4f}")
    return total_loss / total_num


def check_args(args):
    if not args.unmix and args.mix == "unmix":  # --no-unmix is --mix none (also in runs recorded before --mix)
        args.mix = "none"
    args.unmix = args.mix == "unmix"
    if args.mix == "samix" and args.two_pass:
        raise CLIError("--two-pass applies to Un-Mix only")
    if args.samix_alpha <= 0 or args.eta < 0 or args.mask_weight < 0 or args.mask_every < 1:
        raise CLIError("--samix-alpha must be positive, --eta and --mask-weight non-negative, --mask-every >= 1")
    for name in ("bn_splits", "moco_k", "moco_dim", "image_size", "knn_k"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr < 0 or args.moco_t <= 0 or args.knn_t <= 0:
        raise CLIError("--lr must be non-negative, --moco-t and --knn-t positive")
    keys_per_step = args.batch_size * (2 if args.symmetric else 1)
    if args.batch_size < 2 or args.batch_size % args.bn_splits:
        raise CLIError(f"--batch-size {args.batch_size} must be at least 2 and divisible by "
                       f"--bn-splits {args.bn_splits}")
    if args.moco_k % keys_per_step:
        raise CLIError(f"--moco-k {args.moco_k} must be a multiple of the {keys_per_step} keys enqueued per step "
                       f"(batch size {args.batch_size}{' x 2 directions' if args.symmetric else ''})")
    if not 0.0 <= args.prob <= 1.0 or args.beta <= 0:
        raise CLIError("--prob must be in [0, 1] and --beta positive")
    if args.epochs < 1 or args.knn_every < 1:
        raise CLIError("--epochs and --knn-every must be positive")


def check_resumable(ckpt, path):
    """A ``model_last.pth`` of this script with the state to continue from; checked before its recorded
    settings are adopted (another script's file would bring settings this one does not know)."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CLIError(f"{path} has no 'state_dict': not a model_last.pth of this script")
    if state and ("queue" not in state or not any(isinstance(k, str) and k.startswith("encoder_q.net.")
                                                  for k in state)):  # (no weights at all: refused when loaded)
        raise CLIError(f"checkpoint {path} does not match the model of this script (no MoCo queue and "
                       "encoder_q.net weights): a checkpoint of another script?")
    if not {"epoch", "optimizer"} <= set(ckpt):
        raise CLIError(f"{path} holds weights but no 'epoch' and 'optimizer' state to resume from "
                       "(evaluate it with eval_knn.py instead)")


def default_results_dir(args):
    tag = {"cifar10": "C10", "cifar100": "C100"}.get(args.dataset, "ImageFolder")
    method = {"unmix": "UnMix", "samix": "SAMix", "none": "MoCo"}[args.mix]
    return f"./{method}_{'symmetric' if args.symmetric else 'asymmetric'}_{tag}"


def write_log(rows, results_dir):
    """``log.csv`` and ``curves.png``: derived from the checkpoint's ``log`` rows (rewritten on every start)."""
    write_csv(rows, results_dir / "log.csv")
    plot_curves(results_dir / "log.csv", results_dir / "curves.png", title=str(results_dir))


def main(dataset="cifar10", argv=None):
    parser = build_parser(dataset)
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.resume, unsafe=args.unsafe_load) if args.resume else None  # fail early on a bad file
    resumed = None
    if ckpt is not None:  # --resume PATH alone continues the run with its own settings
        check_resumable(ckpt, args.resume)  # its kind first: another script's settings are not adopted
        resumed = adopt_recorded_args(args, ckpt.get("args"), parser, argv, SESSION_ARGS, args.resume)
    with recorded_checks(resumed):
        check_args(args)
    warn_zero_lr_epochs(learning_rate(e, args) for e in range(1, args.epochs + 1))  # no list: memory bounded
    if args.resume and not args.results_dir:
        args.results_dir = os.path.dirname(os.path.abspath(args.resume))
    args.results_dir = args.results_dir or default_results_dir(args)
    # DDP when started by torchrun / torch.distributed.launch / srun (upstream: one GPU only); --batch-size is global
    rank, world, local_rank = launcher_env() or (0, 1, 0)
    batch_size = args.batch_size // world
    if args.batch_size % world or batch_size % args.bn_splits:
        raise CLIError(f"--batch-size {args.batch_size} must split into {world} processes x a multiple of "
                       f"--bn-splits {args.bn_splits}")
    if args.seed is not None:
        seed_everything(args.seed + rank)
    device = init_distributed(rank, world, local_rank=local_rank, timeout=MONITOR_TIMEOUT)
    if rank == 0:
        print(args)

    # data
    train_data, memory_data, test_data = build_datasets(args)
    # rank 0 checks that a resumed run writes only into its own or an empty folder (the other ranks may
    # already see the args.json rank 0 writes there)
    own_folder = args.resume if rank == 0 else bool(args.resume)
    results_dir = prepare_output_dir(args.results_dir, resume=own_folder, marker=CHECKPOINT, create=False)
    if len(train_data) < args.batch_size:
        raise CLIError(f"the training set has {len(train_data)} images, fewer than one batch of {args.batch_size}")
    workers = worker_count(args.workers)
    loader = partial(DataLoader, batch_size=args.batch_size, num_workers=workers,
                     pin_memory=device.type == "cuda")
    sampler = DistributedSampler(train_data, seed=args.seed or 0, drop_last=True) if world > 1 else None
    if args.aug == "device":  # each process augments its own shard on its device
        train_loader = DeviceLoader(train_data, train_data.transform, batch_size, device, sampler=sampler, rank=rank)
    else:
        train_loader = loader(train_data, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=True)
    memory_loader = loader(memory_data, shuffle=False)
    test_loader = loader(test_data, shuffle=False)

    # model
    model = build_model(args).to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.wd, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    epoch_start, log_rows = 1, []
    if ckpt is not None:
        state = ckpt["state_dict"]
        check_compatible(model, state, what=f"checkpoint {args.resume}")
        model.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):  # {} from a run without --amp (or on the CPU): nothing to restore
            scaler.load_state_dict(ckpt["scaler"])
        epoch_start = ckpt["epoch"] + 1
        log_rows = ckpt.get("log", [])
        if "rng_states" in ckpt:  # one state per process
            restore_rng_states(ckpt["rng_states"], rank, world)
        elif "rng" in ckpt:  # a checkpoint written before: process 0's state only, restored in every process
            set_rng_state(ckpt["rng"])
        else:
            warnings.warn("checkpoint has no RNG state (an upstream checkpoint?): training continues, "
                          "but not bit-for-bit as an uninterrupted run")
        print(f"=> resumed from {args.resume} (epoch {ckpt['epoch']})")
    # the inputs are accepted: only now is the output folder created
    prepare_output_dir(args.results_dir, resume=own_folder, marker=CHECKPOINT)
    if rank == 0:  # the only process that writes: what a kill during an atomic write left
        remove_partial_files(results_dir)
        save_args(args, results_dir / "args.json")
        if log_rows:  # lost or stale after a kill between the checkpoint and the log: re-derived,
            write_log(log_rows, results_dir)  # even with nothing left to train

    # loop
    epoch_line = EpochLine(args.epochs, monitor="kNN top-1")
    for epoch in range(epoch_start, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss = train_epoch(net, train_loader, optimizer, scaler, epoch, args, device)
        test_acc = float("nan")
        if rank == 0 and (epoch % args.knn_every == 0 or epoch == args.epochs):  # DDP: process 0 monitors
            test_acc = knn_accuracy(model.encoder_q, memory_loader, test_loader, device, args.knn_k, args.knn_t,
                                    desc=f"Test Epoch: [{epoch}/{args.epochs}]", hint=HINT)
            print(f"Test Epoch: [{epoch}/{args.epochs}] Acc@1:{test_acc:.2f}%")
        # every process's RNG state (a collective), taken after the kNN monitor's draws (its DataLoaders')
        rng_states = gather_rng_states()
        if rank != 0:  # DDP: process 0 logs and saves; the others wait for it
            barrier()
            continue
        log_rows.append({"epoch": epoch, "train_loss": train_loss, "test_acc@1": test_acc})
        ckpt = {"epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "rng_states": rng_states, "log": log_rows, "args": vars(args)}
        check_finite_state(ckpt, epoch, results_dir / CHECKPOINT, HINT)
        save_atomic(ckpt, results_dir / CHECKPOINT)
        kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
        write_log(log_rows, results_dir)
        print(epoch_line(epoch, train_loss, optimizer.param_groups[0]["lr"], test_acc), flush=True)
        if args.mix == "samix" and (epoch % args.mask_every == 0 or epoch == args.epochs):
            model.save_mask_figure(results_dir / "masks.png", title=f"SAMix Mixer, epoch {epoch}")
        barrier()
    cleanup()
    return results_dir
