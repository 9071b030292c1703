"""Linear classification on frozen SwAV features (upstream ``eval_linear.py``, CIFAR and ImageNet).

One implementation for both variants; ``for_CIFAR/eval_linear.py`` and ``for_ImageNet/eval_linear.py``
only pick the variant (data, defaults, normalisation, stem). Upstream behaviour kept:

* backbone ``<arch>(output_dim=0, eval_mode=True)`` in ``eval()`` under ``no_grad`` (BN uses the
  pretrained running statistics), not DDP-wrapped; ``RegLog`` = pool -> (BN) -> flatten -> Linear with
  weight ~ N(0, 0.01), bias 0, DDP-wrapped when distributed;
* SGD(momentum 0.9) with a per-epoch cosine (or step) schedule, ``DistributedSampler`` for training
  (also with one process, so the sample order is upstream's), the full validation set on every rank;
* ``best_acc`` = the best validation top-1 over epochs, the number upstream reports;
* dump layout: ``params.pkl``, ``checkpoints/``, ``stats{rank}.pkl``, ``train.log`` and
  ``checkpoint.pth.tar`` = {epoch, state_dict (``module.linear.*``), optimizer, scheduler, best_acc}
  (extras: ``stats`` and ``rng_states``, every process's stats rows and RNG state, for an exact resume, and
  ``args``, the run's settings: ``--resume`` continues with them, as pretraining, options given again override).

Fixed (upstream quirks that are bugs, not numbers): pretrained weights are checked key by key and a
checkpoint that does not match the backbone is refused (upstream's ``strict=False`` silently trained
on random weights), a missing ``--pretrained`` file is an error, ``accuracy`` uses ``reshape``,
``resnet50w5`` has its feature size, a finished run is not overwritten without ``--resume true``.
"""
import argparse
import os
import time

import torch
import torch.nn as nn
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from common.checkpoint import (check_compatible, get_rng_state, load_checkpoint, save_atomic,
                               set_rng_state)
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, CLIError, HelpFormatter, add_local_rank_arg,
                        add_unsafe_load_arg, bool_flag, count, prepare_output_dir, recorded_checks)
from common.data import CIFAR10_MEAN, IMAGENET_MEAN, cifar, train_val_folders
from common.dist import all_reduce_sum, barrier, cleanup, init_distributed, launcher_env
from common.guard import check_eval, check_finite_state, check_loss, nonfinite
from common.logs import EpochLine, write_csv
from common.utils import AverageMeter, accuracy, seed_everything, worker_count

from .exp import PDStats, initialize_exp, rows_before
from .resnet import ARCHS, build
from .train import add_cifar_data_args, cifar_source, gather_objects, resumed_checkpoint

# Upstream eval_linear (CIFAR) normalises with the true CIFAR-10 std, which differs from the std used
# in pretraining (0.2023, 0.1994, 0.2010): kept, it produced the published numbers.
CIFAR_EVAL_STD = (0.2470, 0.2435, 0.2616)
# Upstream SwAV uses 0.228 (not torchvision's 0.229) for the red channel: kept for compatibility.
SWAV_IMAGENET_STD = (0.228, 0.224, 0.225)

CHECKPOINT = "checkpoint.pth.tar"
HINT = "lower --lr"  # what the NaN guard suggests when the loss diverges
# pretraining keys that are not part of the backbone (SwAV head / prototypes; torchvision's fc)
NOT_BACKBONE = ("projection_head.", "prototypes", "fc.")

VARIANTS = {
    "cifar": dict(description="Evaluate models: linear classification on CIFAR-10/100",
                  data_path="cifar10", arch="resnet18", workers=20, crop_size=32, cifar_stem=True),
    "imagenet": dict(description="Evaluate models: linear classification on ImageNet",
                     data_path="/path/to/imagenet", arch="resnet50", workers=10, crop_size=224,
                     cifar_stem=False),
}


def add_common_args(parser, v):
    """Arguments shared by eval_linear and eval_semisup (upstream names)."""
    parser.add_argument("--dump_path", type=str, default=".", help="experiment dump path")
    parser.add_argument("--seed", type=int, default=31, help="seed")
    if v is VARIANTS["cifar"]:
        add_cifar_data_args(parser, v["data_path"])  # as main_swav_unmix.py: one DATASET_PATH for both
    else:
        parser.add_argument("--data_path", type=str, default=v["data_path"],
                            help="dataset root holding train/ and val/ ImageFolder trees")
    parser.add_argument("--workers", type=int, default=v["workers"],
                        help="data loading workers (capped to the CPUs available)")
    parser.add_argument("--arch", type=str, default=v["arch"], choices=list(ARCHS), help="backbone")
    parser.add_argument("--pretrained", type=str, default="",
                        help="pretraining checkpoint (SwAV or SwAV+Un-Mix checkpoint.pth.tar, ckp-N.pth, "
                             "or a raw state_dict); empty = random weights")
    parser.add_argument("--dist_url", type=str, default="env://", help="url used to set up distributed training")
    parser.add_argument("--world_size", type=int, default=-1, help="set from the launcher's environment")
    parser.add_argument("--rank", type=int, default=0, help="set from the launcher's environment")
    add_local_rank_arg(parser)
    parser.add_argument("--resume", type=bool_flag, nargs="?", const=True, default=False,
                        help="continue the run in --dump_path (upstream always did; here a finished or "
                             "interrupted run is never silently continued or overwritten)")
    add_unsafe_load_arg(parser)


def build_parser(variant):
    v = VARIANTS[variant]
    parser = argparse.ArgumentParser(description=v["description"], formatter_class=HelpFormatter)
    add_common_args(parser, v)
    parser.add_argument("--global_pooling", type=bool_flag, default=True,
                        help="global average pooling (else AvgPool2d(6) on resnet50's 7x7 map)")
    parser.add_argument("--use_bn", type=bool_flag, default=False,
                        help="BatchNorm2d before the linear layer (only with --global_pooling false)")
    parser.add_argument("--epochs", type=count(MAX_EPOCHS), default=100, help="number of total epochs to run")
    parser.add_argument("--batch_size", type=count(MAX_BATCH), default=32, help="batch size per process")
    parser.add_argument("--num_labels", type=int, default=0,
                        help="classes of the linear layer; 0 = the dataset's number of classes "
                             "(upstream: 10 / 100 passed by the CIFAR scripts, 1000 on ImageNet)")
    parser.add_argument("--crop_size", type=count(MAX_IMAGE), default=v["crop_size"], help="training crop size")
    if variant == "imagenet":
        parser.add_argument("--val_resize", type=count(MAX_IMAGE), default=256,
                            help="validation Resize before CenterCrop(crop_size)")
    parser.add_argument("--lr", type=float, default=0.3, help="initial learning rate")
    parser.add_argument("--wd", type=float, default=1e-6, help="weight decay")
    parser.add_argument("--nesterov", type=bool_flag, default=False, help="nesterov momentum")
    parser.add_argument("--scheduler_type", type=str, default="cosine", choices=["step", "cosine"],
                        help="learning rate scheduler")
    parser.add_argument("--decay_epochs", type=int, nargs="+", default=[60, 80],
                        help="epochs at which to decay the lr (step scheduler)")
    parser.add_argument("--gamma", type=float, default=0.1, help="lr decay factor (step scheduler)")
    parser.add_argument("--final_lr", type=float, default=0.0, help="final lr (cosine scheduler)")
    return parser


# ---------------------------------------------------------------------------------------------- #
# pieces shared with eval_semisup
# ---------------------------------------------------------------------------------------------- #
def setup_distributed(args):
    """``(rank, world_size, device)`` from the launcher (torchrun, torch.distributed.launch, srun)."""
    env = launcher_env()
    rank, world, local_rank = env if env else (0, 1, args.local_rank)
    args.rank, args.world_size = rank, world
    try:
        device = init_distributed(rank, world, args.dist_url, local_rank=local_rank)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"cannot initialise distributed training with --dist_url {args.dist_url}: "
                       f"{str(e).splitlines()[0]}") from None
    return rank, world, device


def start_run(args, first_message):
    """Distributed setup, the output folder (never overwriting a run without ``--resume``) and upstream's
    experiment files; returns ``(rank, world, device, logger, stats)``."""
    rank, world, device = setup_distributed(args)
    prepare_output_dir(args.dump_path, args.resume, CHECKPOINT)
    barrier()
    logger, stats = initialize_exp(args, "epoch", "loss", "prec1", "prec5", "loss_val", "prec1_val",
                                   "prec5_val", rank=rank)
    logger.info(first_message)
    return rank, world, device, logger, stats


def check_positive(args, *names):
    for n in names:
        if getattr(args, n) <= 0:
            raise CLIError(f"--{n} must be positive (got {getattr(args, n)})")


def imagenet_transforms(crop_size, val_resize):
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=SWAV_IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val = T.Compose([T.Resize(val_resize), T.CenterCrop(crop_size), T.ToTensor(), normalize])
    return train, val


def imagenet_datasets(data_path, train_tf, val_tf, train_cls=None):
    """``ImageFolder(data_path/train)`` and ``ImageFolder(data_path/val)`` with the same classes."""
    if not os.path.isdir(data_path):
        raise CLIError(f"--data_path {data_path} does not exist (expected a folder with train/ and val/)")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_path, split)):
            raise CLIError(f"--data_path {data_path} has no {split}/ folder (expected {data_path}/{split}/<class>/<image>)")
    return train_val_folders(data_path, train_tf, val_tf, train_cls)


def load_backbone(model, path, what="pretrained weights", allow_missing=(), unsafe=False):
    """Loads a SwAV / SwAV+Un-Mix pretraining checkpoint into ``model`` (no head, no prototypes).

    Accepts ``{"state_dict": ...}`` or a raw state_dict, ``module.``-prefixed or not; the projection
    head, the prototypes (and a torchvision ``fc``) are dropped; every remaining key must match the
    backbone key for key and shape for shape, else one clear error (upstream loaded with
    ``strict=False`` and silently trained on random weights). Returns a message for the log.
    """
    ckpt = load_checkpoint(path, map_location="cpu", unsafe=unsafe)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(torch.is_tensor(t) for t in sd.values()):
        raise CLIError(f"{path} holds no state_dict (a dict of tensors, or {{'state_dict': ...}})")
    sd = {k.replace("module.", ""): t for k, t in sd.items()}
    ignored = sorted(k for k in sd if k.startswith(NOT_BACKBONE))
    sd = {k: t for k, t in sd.items() if not k.startswith(NOT_BACKBONE)}
    check_compatible(model, sd, what=f"{what} {path}", allow_missing=allow_missing)
    model.load_state_dict(sd, strict=not allow_missing)  # check_compatible vetted every other key
    return (f"Loaded {len(sd)} backbone tensors from {path} (ignored {len(ignored)} head/prototype "
            f"keys: {', '.join(ignored[:6])}{', ...' if len(ignored) > 6 else ''})")


def loader(dataset, batch_size, workers, sampler=None, shuffle=False):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=worker_count(workers), pin_memory=torch.cuda.is_available(),
                      drop_last=False, persistent_workers=False)


def parse_run_args(parser, argv=None, check=lambda args: None):
    """``(args, checkpoint, recorded)``: the command line and, with ``--resume`` and a checkpoint in
    ``--dump_path``, that checkpoint (else None) and the run's recorded settings for every option not given
    again (as SwAV pretraining: the output folder, ``--resume`` and the launcher settings are per-session);
    ``recorded`` = the settings to save with the run, before the run fills in its rank and world size.
    ``check(args)``: the script's range checks (an error about a recorded value names the checkpoint)."""
    args = parser.parse_args(argv)
    ckpt, adopted = resumed_checkpoint(parser, args, argv, os.path.join(args.dump_path, CHECKPOINT))
    with recorded_checks(adopted):
        check(args)
    return args, ckpt, dict(vars(args))


def with_module_prefix(state_dict):
    """``module.``-prefixed keys, as upstream's DDP-wrapped classifier wrote them (for any world size)."""
    return {k if k.startswith("module.") else "module." + k: t for k, t in state_dict.items()}


def strip_module(state_dict):
    return {k[len("module."):] if k.startswith("module.") else k: t for k, t in state_dict.items()}


def unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------- #
# linear classifier
# ---------------------------------------------------------------------------------------------- #
class RegLog(nn.Module):
    """Upstream's linear classifier: pool -> (BN) -> flatten -> Linear (keys ``linear.*``, ``bn.*``)."""

    def __init__(self, num_labels, num_features=2048, global_avg=True, use_bn=False):
        super().__init__()
        self.bn = None
        if global_avg:
            s = num_features
            self.av_pool = nn.AdaptiveAvgPool2d((1, 1))
        else:  # upstream: resnet50 only, AvgPool2d(6) on the 7x7 map -> 2x2x2048
            s = 4 * num_features
            self.av_pool = nn.AvgPool2d(6, stride=1)
            if use_bn:
                self.bn = nn.BatchNorm2d(num_features)
        self.linear = nn.Linear(s, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x):
        x = self.av_pool(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.linear(torch.flatten(x, 1))


def build_data(args, variant):
    if variant == "cifar":
        name, root = cifar_source(args.data_path, args.dataset)
        normalize = T.Normalize(mean=CIFAR10_MEAN, std=CIFAR_EVAL_STD)
        train_tf = T.Compose([T.RandomResizedCrop(args.crop_size), T.RandomHorizontalFlip(), T.ToTensor(),
                              normalize])
        val_tf = T.Compose([T.ToTensor(), normalize])  # full 32x32 image, no crop (upstream)
        train = cifar(name, root, True, train_tf)
        val = cifar(name, root, False, val_tf)
        return train, val, len(train.classes)
    train_tf, val_tf = imagenet_transforms(args.crop_size, args.val_resize)
    train, val = imagenet_datasets(args.data_path, train_tf, val_tf)
    return train, val, len(train.classes)


def train_one_epoch(model, head, optimizer, loader_, epoch, device, logger, rank):
    """One epoch of cross-entropy training; returns ``(epoch, loss, top1, top5)``.

    With a ``head`` (linear evaluation) the backbone is frozen: ``eval()`` mode (BN uses the pretrained
    running statistics) under ``no_grad``, only the head trains. Without one (semi-supervised) the
    whole ``model`` trains in ``train()`` mode.
    """
    batch_time, data_time, losses, top1, top5 = (AverageMeter() for _ in range(5))
    if head is None:
        model.train()
    else:
        model.eval()
        head.train()
    criterion = nn.CrossEntropyLoss()
    end = time.perf_counter()
    for it, (inp, target) in enumerate(loader_):
        data_time.update(time.perf_counter() - end)
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if head is None:
            output = model(inp)
        else:
            with torch.no_grad():
                feats = model(inp)
            output = head(feats)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        losses.update(loss.item(), inp.size(0))  # read every step anyway: the NaN guard costs no extra sync
        check_loss(losses.val, epoch, it, hint=HINT)
        top1.update(acc1.item(), inp.size(0))
        top5.update(acc5.item(), inp.size(0))
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if rank == 0 and it % 50 == 0:
            lrs = " / ".join(str(g["lr"]) for g in optimizer.param_groups)  # semisup: trunk / head
            logger.info(f"Epoch[{epoch}] - Iter: [{it}/{len(loader_)}]\t"
                        f"Time {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                        f"Data {data_time.val:.3f} ({data_time.avg:.3f})\t"
                        f"Loss {losses.val:.4f} ({losses.avg:.4f})\t"
                        f"Prec {top1.val:.3f} ({top1.avg:.3f})\t"
                        f"LR {lrs}")
    return epoch, losses.avg, top1.avg, top5.avg


@torch.no_grad()
def validate(model, head, loader_, device, epoch=0):
    """``(loss, top1, top5)`` averaged over ``loader_``; ``head`` is None when ``model`` has its own. A NaN or
    inf output or loss in any process stops every process (before the epoch's checkpoint is written)."""
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    model.eval()
    if head is not None:
        head.eval()
    criterion = nn.CrossEntropyLoss()
    bad = torch.zeros((), device=device)
    for inp, target in loader_:
        inp, target = inp.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(inp) if head is None else head(model(inp))
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        loss = criterion(output, target)
        bad += nonfinite(output) + nonfinite(loss)
        losses.update(loss.item(), inp.size(0))
        top1.update(acc1.item(), inp.size(0))
        top5.update(acc5.item(), inp.size(0))
    check_eval(all_reduce_sum(bad), f"the validation after epoch {epoch} (outputs or loss)", HINT)
    return losses.avg, top1.avg, top5.avg


SCHEDULE_SETTINGS = ("base_lrs", "T_max", "eta_min", "milestones", "gamma")  # what the command line sets


def keep_command_line_schedule(scheduler, built, logger):
    """After a resume: the schedule's settings as the command line built them (``built``: the scheduler's
    ``state_dict()`` before the checkpoint's was loaded), not as the checkpoint restored them.

    With the same settings (an exact resume) nothing changes. When ``--epochs``, ``--lr``, ``--lr_last_layer``,
    ``--final_lr``, ``--decay_epochs`` or ``--gamma`` were changed, the restored scheduler takes the new ones and
    the lr is set to the new schedule's value at the current epoch, as the other scripts' schedules do (they
    compute the lr from the command line every epoch); the scheduler's steps then follow the new curve. Departure
    from upstream, which kept the checkpoint's: a run resumed with a larger ``--epochs`` trained its extra epochs
    from ``final_lr`` upwards (the cosine's next period), and a changed ``--lr`` did nothing."""
    changed = [k for k in SCHEDULE_SETTINGS if k in built and built[k] != getattr(scheduler, k)]
    if not changed:
        return
    for k in changed:
        setattr(scheduler, k, built[k])
    lrs = scheduler._get_closed_form_lr()  # the schedule's value at scheduler.last_epoch (torch's own formula)
    for group, lr, base in zip(scheduler.optimizer.param_groups, lrs, scheduler.base_lrs):
        group["lr"], group["initial_lr"] = lr, base
    scheduler._last_lr = list(lrs)
    logger.info(f"the schedule follows the command line ({', '.join(changed)} changed): lr {lrs} from epoch "
                f"{scheduler.last_epoch}")


def fit(model, head, optimizer, scheduler, sampler, train_loader, val_loader, args, stats, device, logger, rank,
        ckpt=None, recorded=None):
    """Resume (from ``ckpt``, :func:`parse_run_args`' checkpoint) and run the epochs: train, validate, keep the
    best validation top-1 (and its top-5), write ``checkpoint.pth.tar`` (with ``recorded``, the run's settings)
    after every epoch. Returns ``(best top-1, its top-5)``.

    ``head`` given (linear evaluation): only the head trains, ``best_acc`` is saved as upstream's top-1.
    ``head`` None (semi-supervised): the whole ``model`` trains, ``best_acc`` is upstream's (top-1, top-5).
    """
    trained = unwrap(model if head is None else head)
    world = args.world_size
    start_epoch, best = 0, (0.0, 0.0)
    if ckpt is not None:
        logger.info(f"Found checkpoint at {os.path.join(args.dump_path, CHECKPOINT)}: resuming from epoch "
                    f"{ckpt.get('epoch', 0)}")
        try:
            sd = strip_module(ckpt["state_dict"])
            check_compatible(trained, sd, what=f"{os.path.join(args.dump_path, CHECKPOINT)}")
            trained.load_state_dict(sd)
            built = scheduler.state_dict()  # the schedule as this command line sets it
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            keep_command_line_schedule(scheduler, built, logger)
            start_epoch, b = int(ckpt["epoch"]), ckpt["best_acc"]
        except (KeyError, ValueError, TypeError) as e:
            raise CLIError(f"{os.path.join(args.dump_path, CHECKPOINT)} is not a checkpoint of this evaluation: "
                           f"{e}") from None
        best = tuple(b) if isinstance(b, (tuple, list)) else (b, 0.0)
        # this process's own stats rows and RNG state (as pretraining); checkpoints of the earlier format
        # hold rank 0's only ("stats", "rng"), upstream's none: the other histories are read back from
        # stats{rank}.pkl, up to the checkpoint's epoch
        rng_states, saved = ckpt.get("rng_states"), ckpt.get("stats")
        if rng_states is not None:
            if len(rng_states) == world and saved is not None and len(saved) == world:
                rows, rng = saved[rank], rng_states[rank]
            else:
                logger.warning("the checkpoint holds the state of %d processes, not %d: the run continues, "
                               "but not bit-exactly", len(rng_states), world)
                rows, rng = rows_before(stats.path, stats.columns, start_epoch), None
        else:
            rows = (saved if rank == 0 and saved is not None
                    else rows_before(stats.path, stats.columns, start_epoch))
            rng = ckpt.get("rng")
        stats = PDStats(stats.path, stats.columns, rows)
        if rng is not None:
            set_rng_state(rng)

    epoch_line = EpochLine(args.epochs, monitor="linear-probe top-1" if head is not None else "fine-tuned top-1")
    for epoch in range(start_epoch, args.epochs):
        logger.info(f"============ Starting epoch {epoch} ... ============")
        sampler.set_epoch(epoch)
        scores = train_one_epoch(model, head, optimizer, train_loader, epoch, device, logger, rank)
        scores_val = validate(model, head, val_loader, device, epoch)
        if scores_val[1] > best[0]:
            best = (scores_val[1], scores_val[2])
        if rank == 0:
            logger.info(f"Test:\tLoss {scores_val[0]:.4f}\tAcc@1 {scores_val[1]:.3f}\tAcc@5 {scores_val[2]:.3f}\t"
                        f"Best Acc@1 so far {best[0]:.1f}")
        stats.update(scores + scores_val)
        lr = optimizer.param_groups[-1]["lr"]  # the head's (semisup: --lr_last_layer), before the step
        scheduler.step()
        # every process's RNG state and stats rows, for an exact resume (as pretraining)
        rng_states, rows = zip(*gather_objects((get_rng_state(), stats.rows), world))
        if rank == 0:
            ckpt = {"epoch": epoch + 1,
                    "state_dict": with_module_prefix(trained.state_dict()),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_acc": best[0] if head is not None else best,
                    # extras (not upstream): exact resume and history
                    "stats": list(rows), "rng_states": list(rng_states), "args": recorded}
            check_finite_state(ckpt, epoch, os.path.join(args.dump_path, CHECKPOINT), hint=HINT)
            save_atomic(ckpt, os.path.join(args.dump_path, CHECKPOINT))
            write_csv([dict(zip(stats.columns, r)) for r in stats.rows], os.path.join(args.dump_path, "stats.csv"))
            logger.info(epoch_line(epoch + 1, scores[1], lr, scores_val[1]))
    return best


def main(variant, argv=None):
    def check(args):
        check_positive(args, "epochs", "batch_size", "crop_size", "lr")
        if variant == "imagenet":
            check_positive(args, "val_resize")
        if args.num_labels < 0:
            raise CLIError(f"--num_labels must be >= 0 (got {args.num_labels})")

    args, ckpt, recorded = parse_run_args(build_parser(variant), argv, check)  # --resume: the run's own settings
    if not args.global_pooling and (args.arch != "resnet50" or variant == "cifar"):
        raise CLIError("--global_pooling false needs resnet50's 7x7 ImageNet feature map "
                       "(AvgPool2d(6) as upstream); use --global_pooling true")
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise CLIError(f"--pretrained {args.pretrained} does not exist "
                       "(pass '' to train on random weights deliberately)")

    # ---- frozen backbone, checked before anything is written (seeded as upstream: the RegLog init
    # below draws from the seeded RNG after the backbone, in upstream's order)
    seed_everything(args.seed)
    model = build(args.arch, output_dim=0, eval_mode=True, cifar_stem=VARIANTS[variant]["cifar_stem"])
    loaded = load_backbone(model, args.pretrained, unsafe=args.unsafe_load) if args.pretrained else None

    # ---- data (before anything is written: a wrong path leaves no half-made dump folder)
    train_set, val_set, n_classes = build_data(args, variant)
    num_labels = args.num_labels or n_classes
    if num_labels < n_classes:
        raise CLIError(f"--num_labels {num_labels} is smaller than the {n_classes} classes of the dataset")

    rank, world, device, logger, stats = start_run(
        args, loaded or "No pretrained weights given => training with random weights")

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank)  # shuffle, seed 0 (upstream)
    train_loader = loader(train_set, args.batch_size, args.workers, sampler=sampler)
    val_loader = loader(val_set, args.batch_size, args.workers)  # every rank: full set (upstream)
    logger.info(f"Building data done: {len(train_set)} train / {len(val_set)} val images, {n_classes} classes")

    # ---- linear classifier
    reglog = RegLog(num_labels, model.num_features, args.global_pooling, args.use_bn)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    reglog.to(device)
    if world > 1:
        if device.type == "cuda":  # SyncBatchNorm does not run on CPU (gloo): plain BN there
            reglog = nn.SyncBatchNorm.convert_sync_batchnorm(reglog)
        reglog = nn.parallel.DistributedDataParallel(
            reglog, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.SGD(reglog.parameters(), lr=args.lr, nesterov=args.nesterov, momentum=0.9,
                                weight_decay=args.wd)
    if args.scheduler_type == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.final_lr)

    best_acc = fit(model, reglog, optimizer, scheduler, sampler, train_loader, val_loader, args, stats, device,
                   logger, rank, ckpt, recorded)[0]
    logger.info("Training of the supervised linear classifier on frozen features completed.\n"
                f"Top-1 test accuracy: {best_acc:.1f}")
    cleanup()
    return best_acc
