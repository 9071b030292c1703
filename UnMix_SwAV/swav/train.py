"""SwAV + Un-Mix pretraining: the one implementation behind ``for_CIFAR/main_swav_unmix.py`` and
``for_ImageNet/main_swav_unmix.py``.

The two entry points share this command line and differ only in defaults (the published scripts'
values), data (torchvision CIFAR vs an ImageFolder), the Sinkhorn variant (old SwAV with ``shoot_infs``
vs April-2021) and two details upstream had (CIFAR's ``log(softmax)`` and DDP's
``find_unused_parameters=True``). What is kept, fixed and changed: docs/faithfulness.md.

Departures from upstream (each keeps the published mathematics):
* apex is gone: LARC is ``common.larc.LARC`` (apex's exact math), fp16 is ``torch.amp`` autocast +
  GradScaler with Sinkhorn in float32, SyncBN is ``nn.SyncBatchNorm``.
* Runs without a launcher (world of 1, no process group; checkpoint keys still get ``module.``), and on
  CPU with gloo. ``--use_fp16`` and ``--sync_bn`` are no-ops on CPU (warned).
* The queue works (upstream raised NameError once it was used).
* Checkpoints are written atomically and also hold every rank's RNG state and stats rows, so ``--resume``
  continues a run exactly. An existing run is never overwritten: without ``--resume`` the script refuses a
  ``--dump_path`` that already holds ``checkpoint.pth.tar`` (upstream resumed silently).
"""
import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common.checkpoint import (check_compatible, get_rng_state, load_checkpoint, save_atomic,
                               set_rng_state, strip_prefix)
from common.cli import (MAX_BATCH, MAX_CROPS, MAX_EPOCHS, MAX_IMAGE, MAX_QUEUE, MAX_WIDTH, RECORDED_DATA_ROOTS,
                        CLIError, HelpFormatter, add_local_rank_arg, add_unsafe_load_arg, adopt_recorded_args,
                        bool_flag, count, prepare_output_dir, recorded_checks, recorded_data_root)
from common.data import cifar, image_folder
from common.device_aug import DeviceLoader, add_aug_arg
from common.dist import barrier, init_distributed, launcher_env
from common.guard import check_finite_state, check_loss
from common.larc import LARC
from common.logs import EpochLine
from common.mix import draw_mix_params
from common.runstate import copy_atomic, kill_point, remove_partial_files
from common.utils import AverageMeter, seed_everything, worker_count

from .exp import FILE_ONLY, PDStats, initialize_exp, rows_before
from .loss import SwAVLoss, make_unmix_inputs, unmix_swav_loss
from .multicrop import cifar_multicrop, imagenet_multicrop
from .resnet import ARCHS, build
from .sinkhorn import sinkhorn_cifar, sinkhorn_imagenet

logger = logging.getLogger("swav")

# Defaults = the published scripts' values (faithfulness contract, rule 1).
DEFAULTS = {
    # for_CIFAR/script_unmix_c10.sh (c100: --data_path cifar100)
    "cifar": dict(
        data_path="cifar10", nmb_crops=[2], size_crops=[32], min_scale_crops=[0.14], max_scale_crops=[1.0],
        nmb_prototypes=100, queue_length=120, epoch_queue_starts=15, epochs=400, batch_size=128,
        base_lr=0.6, final_lr=0.0006, freeze_prototypes_niters=5005, warmup_epochs=5, start_warmup=0.0,
        arch="resnet18", hidden_mlp=512, workers=2, sync_bn="pytorch", unmix_prob=0.5,
        dump_path="./experiments/unmix_swav_cifar_{batch_size}_{arch}_{epochs}ep_{nmb_prototypes}prot_"
                  "{dataset}"),
    # for_ImageNet/scripts/unmix_swav_800ep_pretrain.sh (8 nodes x 8 GPUs x 64); unmix_prob as upstream
    # HEAD (0911f77: region mixing only)
    "imagenet": dict(
        data_path="/path/to/imagenet/train", nmb_crops=[2, 6], size_crops=[224, 96],
        min_scale_crops=[0.14, 0.05], max_scale_crops=[1.0, 0.14], nmb_prototypes=3000, queue_length=0,
        epoch_queue_starts=15, epochs=800, batch_size=64, base_lr=4.8, final_lr=0.0048,
        freeze_prototypes_niters=313, warmup_epochs=10, start_warmup=0.3, arch="resnet50",
        hidden_mlp=2048, workers=10, sync_bn="apex", unmix_prob=0.0,
        dump_path="./experiments/unmix_swav_{epochs}ep_pretrain"),
}
# what really differs between the two upstream files besides defaults and data
VARIANT = {
    "cifar": dict(sinkhorn="old (shoot_infs)", softmax_then_log=True, find_unused_parameters=True),
    "imagenet": dict(sinkhorn="April 2021", softmax_then_log=False, find_unused_parameters=False),
}


def add_cifar_data_args(parser, default="cifar10"):
    """``--data_path`` / ``--dataset`` for CIFAR, resolved by :func:`cifar_source`."""
    parser.add_argument("--data_path", default=default,
                        help="'cifar10' / 'cifar100' (upstream: torchvision download into data/CIFAR-10 or "
                             "data/CIFAR-100 under the working directory), or a directory holding "
                             "cifar-10-batches-py/ or cifar-100-python/ (downloaded there when missing)")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None,
                        help="which CIFAR a --data_path directory holds (default: inferred from its content)")


# per-session options; every other option of a run resumed with --resume comes from its checkpoint unless given
SESSION_ARGS = {"dump_path", "resume", "unsafe_load", "dist_url", "world_size", "rank", "local_rank"}


def build_parser(variant):
    d = DEFAULTS[variant]
    what = "CIFAR-10/100" if variant == "cifar" else "ImageNet (ImageFolder)"
    p = argparse.ArgumentParser(description=f"SwAV + Un-Mix pretraining on {what}", formatter_class=HelpFormatter)
    if variant == "cifar":
        add_cifar_data_args(p, d["data_path"])
    else:
        p.add_argument("--data_path", default=d["data_path"],
                       help="the ImageNet TRAIN folder itself (ImageFolder root: <class>/<image>)")
    p.add_argument("--nmb_crops", type=count(MAX_CROPS), nargs="+", default=d["nmb_crops"], help="crops per resolution")
    p.add_argument("--size_crops", type=count(MAX_IMAGE), nargs="+", default=d["size_crops"], help="crop resolutions")
    p.add_argument("--min_scale_crops", type=float, nargs="+", default=d["min_scale_crops"],
                   help="RandomResizedCrop minimum scale per resolution")
    p.add_argument("--max_scale_crops", type=float, nargs="+", default=d["max_scale_crops"],
                   help="RandomResizedCrop maximum scale per resolution")
    p.add_argument("--use_pil_blur", type=bool_flag, default=True,
                   help="ignored on CIFAR (upstream for_CIFAR has no blur)" if variant == "cifar"
                   else "PIL Gaussian blur (p=0.5) as upstream; false: no blur")
    p.add_argument("--crops_for_assign", type=int, nargs="+", default=[0, 1],
                   help="crops whose codes are computed")
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of the predictions")
    p.add_argument("--epsilon", type=float, default=0.05, help="Sinkhorn regularisation")
    p.add_argument("--improve_numerical_stability", type=bool_flag, default=False,
                   help="subtract the global max before exp (old Sinkhorn, CIFAR only)")
    p.add_argument("--sinkhorn_iterations", type=int, default=3, help="Sinkhorn-Knopp iterations")
    p.add_argument("--feat_dim", type=count(MAX_WIDTH), default=128, help="projection (embedding) dimension")
    p.add_argument("--nmb_prototypes", type=count(MAX_WIDTH), default=d["nmb_prototypes"], help="number of prototypes")
    p.add_argument("--queue_length", type=count(MAX_QUEUE), default=d["queue_length"],
                   help="global queue length, rounded to a multiple of batch_size * world_size "
                        "(see --queue_rounding); 0: no queue")
    p.add_argument("--queue_rounding", choices=["down", "up"], default="down",
                   help="'down' as upstream (the CIFAR scripts' 120 with batch 128 becomes 0: no queue); "
                        "'up' rounds to the next multiple instead")
    p.add_argument("--epoch_queue_starts", type=int, default=d["epoch_queue_starts"],
                   help="epoch from which the queue is used")
    p.add_argument("--epochs", type=count(MAX_EPOCHS), default=d["epochs"], help="training epochs")
    p.add_argument("--batch_size", type=count(MAX_BATCH), default=d["batch_size"], help="per process")
    p.add_argument("--base_lr", type=float, default=d["base_lr"], help="learning rate after the warmup")
    p.add_argument("--final_lr", type=float, default=d["final_lr"], help="learning rate at the end (cosine)")
    p.add_argument("--freeze_prototypes_niters", type=int, default=d["freeze_prototypes_niters"],
                   help="the prototypes get no update during the first iterations")
    p.add_argument("--wd", type=float, default=1e-6, help="weight decay")
    p.add_argument("--warmup_epochs", type=int, default=d["warmup_epochs"], help="linear warmup epochs")
    p.add_argument("--start_warmup", type=float, default=d["start_warmup"], help="learning rate at iteration 0")
    p.add_argument("--dist_url", default="env://", help="init method (tcp://host:port or env://)")
    p.add_argument("--world_size", type=int, default=-1, help="ignored: taken from the launcher")
    p.add_argument("--rank", type=int, default=0, help="ignored: taken from the launcher")
    add_local_rank_arg(p)
    p.add_argument("--arch", default=d["arch"], choices=list(ARCHS),
                   help="resnet18 is upstream's CIFAR Bottleneck [2, 2, 2, 2] network (2048-d features)")
    p.add_argument("--hidden_mlp", type=count(MAX_WIDTH), default=d["hidden_mlp"], help="projection head hidden width")
    p.add_argument("--workers", type=int, default=d["workers"], help="data workers per process")
    p.add_argument("--checkpoint_freq", type=int, default=25, help="keep checkpoints/ckp-{epoch}.pth every N")
    p.add_argument("--use_fp16", type=bool_flag, default=True,
                   help="mixed precision (torch.amp, CUDA only; ignored with a warning on CPU)")
    p.add_argument("--sync_bn", default=d["sync_bn"],
                   help="'pytorch': nn.SyncBatchNorm over all processes; 'apex': SyncBN within groups of "
                        "--syncbn_process_group_size consecutive ranks (apex itself if installed); "
                        "anything else: none. Needs CUDA and a process group")
    p.add_argument("--syncbn_process_group_size", type=int, default=8, help="ranks per group for --sync_bn apex")
    p.add_argument("--dump_path", default=d["dump_path"],
                   help="output folder; {name} fields are filled from the arguments")
    p.add_argument("--resume", type=bool_flag, nargs="?", const=True, default=False,
                   help="continue the run in --dump_path (upstream resumed automatically; here a run is "
                        "never overwritten without it)")
    add_unsafe_load_arg(p)
    p.add_argument("--seed", type=int, default=31, help="seed of torch and NumPy (the same on every rank)")
    if variant == "cifar":  # the ImageNet crops' PIL blur has no device version
        add_aug_arg(p)
    # Un-Mix
    p.add_argument("--run_swav", type=bool_flag, default=False, help="true: vanilla SwAV (no Un-Mix)")
    p.add_argument("--unmix_prob", type=float, default=d["unmix_prob"],
                   help="probability of the global (λ-blend) mixture; otherwise region (CutMix)")
    p.add_argument("--unmix_beta", type=float, default=1.0, help="λ ~ Beta(β, β)")
    p.add_argument("--unmix_chain_lambda", type=bool_flag, default=True,
                   help="upstream: with several crop pairs, each region box is drawn from the previous "
                        "pair's λ and the loss uses the last pair's λ; false: every box from the Beta draw, "
                        "loss weighted by the first mixture's λ")
    p.add_argument("--unmix_reverse", choices=["codes", "full"], default="codes",
                   help="'codes': upstream's reverse term flips only the mixture's codes; 'full': the "
                        "reversed mixture also predicts (the paper's formula)")
    return p


def check_args(args, variant):
    n = len(args.nmb_crops)
    if not (len(args.size_crops) == len(args.min_scale_crops) == len(args.max_scale_crops) == n):
        raise CLIError("--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need the same "
                       "number of values")
    if min(args.nmb_crops) < 1 or min(args.size_crops) < 1:
        raise CLIError("--nmb_crops and --size_crops must be positive")
    for lo, hi in zip(args.min_scale_crops, args.max_scale_crops):
        if not 0 < lo <= hi:
            raise CLIError(f"invalid crop scale range ({lo}, {hi}): need 0 < min <= max")
    total = sum(args.nmb_crops)
    if total < 2:
        raise CLIError("SwAV needs at least 2 crops")
    if not args.run_swav and total % 2:
        raise CLIError(f"Un-Mix mixes crop pairs: the total number of crops must be even, not {total}")
    if not args.crops_for_assign or any(not 0 <= c < total for c in args.crops_for_assign) \
            or len(set(args.crops_for_assign)) != len(args.crops_for_assign):
        raise CLIError(f"--crops_for_assign must be distinct crop indices in [0, {total})")
    for name in ("batch_size", "epochs", "feat_dim", "nmb_prototypes", "checkpoint_freq"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be positive")
    for name in ("queue_length", "warmup_epochs", "sinkhorn_iterations", "workers", "hidden_mlp"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name} must be >= 0")
    if not 0 <= args.unmix_prob <= 1 or args.unmix_beta <= 0:
        raise CLIError("need 0 <= --unmix_prob <= 1 and --unmix_beta > 0")
    if args.epsilon <= 0 or args.temperature <= 0:
        raise CLIError("--epsilon and --temperature must be positive")
    if variant == "imagenet" and args.improve_numerical_stability:
        raise CLIError("--improve_numerical_stability belongs to the old (CIFAR) Sinkhorn")


def cifar_source(data_path, dataset):
    """``(dataset name, root)`` from upstream's ``--data_path cifar10|cifar100`` or a directory."""
    if data_path in ("cifar10", "cifar100"):
        if dataset not in (None, data_path):
            raise CLIError(f"--data_path {data_path} contradicts --dataset {dataset}")
        root = os.path.join("data", "CIFAR-10" if data_path == "cifar10" else "CIFAR-100")
        if recorded_data_root(data_path) is not None:  # a recorded keyword: its folder is only read too
            RECORDED_DATA_ROOTS[os.path.abspath(root)] = recorded_data_root(data_path)
        return data_path, root
    if not os.path.isdir(data_path):
        raise CLIError(f"--data_path {data_path} is neither 'cifar10'/'cifar100' nor an existing directory")
    if dataset is None:
        found = [n for n, sub in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"))
                 if os.path.isdir(os.path.join(data_path, sub))]
        if len(found) != 1:
            raise CLIError(f"cannot tell which CIFAR {data_path} holds (looked for cifar-10-batches-py/ and "
                           "cifar-100-python/); pass --dataset cifar10 or cifar100")
        dataset = found[0]
    return dataset, data_path


def build_dataset(args, variant):
    if variant == "cifar":
        name, root = cifar_source(args.data_path, args.dataset)
        args.dataset = name
        return cifar(name, root, train=True, transform=cifar_multicrop(args))
    return image_folder(args.data_path, transform=imagenet_multicrop(args))


class lr_schedule:
    """Per-iteration schedule: ``linspace(start_warmup, base_lr)`` warmup (both ends included), then
    cosine from base_lr to final_lr; one entry per global iteration.

    Upstream built the whole array (``np.concatenate((warmup, cosine))``); here ``schedule[i]`` computes entry
    ``i`` with the same float operations (``np.linspace``'s ``i * step + start``, its last entry exactly
    ``base_lr``; the cosine as upstream wrote it), so the values are the array's, bit for bit, and the memory
    does not grow with the epoch count. ``len()`` and ``np.asarray(schedule)`` (for tests) as the array."""

    def __init__(self, base_lr, final_lr, epochs, warmup_epochs, start_warmup, iters_per_epoch):
        self.base_lr, self.final_lr, self.start = base_lr, final_lr, start_warmup
        self.n_warmup = iters_per_epoch * warmup_epochs
        self.n = max(0, iters_per_epoch * (epochs - warmup_epochs))  # a run shorter than the warmup: warmup only

    def __len__(self):
        return self.n_warmup + self.n

    def __getitem__(self, i):
        i = int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < self.n_warmup:
            div = self.n_warmup - 1
            if div == 0:  # np.linspace(a, b, 1) == [a]
                return np.float64(self.start)
            if i == div:
                return np.float64(self.base_lr)
            delta = np.float64(self.base_lr) - self.start
            step = delta / div
            return (np.float64(i) * step if step != 0 else np.float64(i) / div * delta) + self.start
        t = np.float64(i - self.n_warmup)
        return self.final_lr + 0.5 * (self.base_lr - self.final_lr) * (1 + np.cos(np.pi * t / self.n))

    def __array__(self, dtype=None, copy=None):
        return np.array([self[i] for i in range(len(self))], dtype=dtype)


def apply_sync_bn(model, args, world, device):
    """Converts BN layers as upstream's ``--sync_bn``; only with CUDA and a process group (SyncBN does not
    run on CPU, where it is skipped with a warning)."""
    if args.sync_bn not in ("pytorch", "apex"):
        return model
    if world == 1:
        return model
    if device.type != "cuda":
        logger.warning("--sync_bn %s ignored: SyncBatchNorm needs CUDA; each process normalises its own "
                       "batch", args.sync_bn)
        return model
    if args.sync_bn == "pytorch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    size = args.syncbn_process_group_size
    if world < size or world % size:
        raise CLIError(f"--sync_bn apex needs a world size that is a multiple of --syncbn_process_group_size "
                       f"({size}), got {world}; use --sync_bn pytorch or a smaller group size")
    try:  # apex only if the user has it (never installable from PyPI)
        import apex.parallel as apex_parallel
        group = apex_parallel.create_syncbn_process_group(size)
        return apex_parallel.convert_syncbn_model(model, process_group=group)
    except ImportError:
        pass
    # same grouping with nn.SyncBatchNorm: every rank creates every group of consecutive ranks
    rank, own = dist.get_rank(), None
    for g in range(world // size):
        pg = dist.new_group(ranks=list(range(g * size, (g + 1) * size)))
        if g == rank // size:
            own = pg
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=own)


def gather_objects(obj, world):
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def fill_dump_path(args, variant):
    """``--dump_path`` with its ``{name}`` fields filled from the arguments (``{dataset}``: the CIFAR in use)."""
    fields = dict(vars(args))
    if variant == "cifar" and "{dataset" in args.dump_path:
        fields["dataset"] = cifar_source(args.data_path, args.dataset)[0]
    try:
        return args.dump_path.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise CLIError(f"--dump_path {args.dump_path}: cannot fill in {{{e}}} (use argument names)") from None


def resumed_checkpoint(parser, args, argv, ckpt_path):
    """With ``--resume`` and a checkpoint at ``ckpt_path``: ``(checkpoint, adopted)``, its recorded settings
    adopted into ``args`` for every option not given again (per-session: :data:`SESSION_ARGS`; ``adopted`` is
    what :func:`common.cli.adopt_recorded_args` returns, for :func:`common.cli.recorded_checks`); else
    ``(None, None)``. Also used by the linear and semi-supervised evaluations."""
    if not (args.resume and os.path.isfile(ckpt_path)):
        return None, None
    ckpt = load_checkpoint(ckpt_path, map_location="cpu", unsafe=args.unsafe_load)
    adopted = adopt_recorded_args(args, ckpt.get("args") if isinstance(ckpt, dict) else None, parser, argv,
                                  SESSION_ARGS, source=str(ckpt_path))
    return ckpt, adopted


def main(variant, argv=None):
    parser = build_parser(variant)
    args = parser.parse_args(argv)
    args.dump_path = fill_dump_path(args, variant)
    ckpt_path = Path(args.dump_path) / "checkpoint.pth.tar"
    ckpt, adopted = resumed_checkpoint(parser, args, argv, ckpt_path)  # the run's own settings; given ones win
    with recorded_checks(adopted):
        check_args(args, variant)
    recorded = dict(vars(args))  # the settings as given, before the run fills in rank, world size, ...
    v = VARIANT[variant]

    # ---- distributed setup: torchrun / torch.distributed.launch / srun, or a world of 1 ----
    env = launcher_env()
    rank, world, local_rank = env if env is not None else (0, 1, args.local_rank)
    args.rank, args.world_size = rank, world
    device = init_distributed(rank, world, args.dist_url, local_rank=local_rank)
    seed_everything(args.seed)  # same seed on every rank, as upstream (identical Un-Mix draws)

    # ---- data ----
    dataset = build_dataset(args, variant)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world, rank=rank)
    if getattr(args, "aug", "pil") == "device":  # each process augments its own shard
        loader = DeviceLoader(dataset, dataset.transform, args.batch_size, device, sampler=sampler, rank=rank)
    else:
        loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=args.batch_size,
                                             num_workers=worker_count(args.workers),
                                             pin_memory=device.type == "cuda", drop_last=True)
    if len(loader) == 0:
        raise CLIError(f"the dataset has {len(dataset)} images: fewer than one batch of {args.batch_size} "
                       f"per process x {world} processes (batches are dropped when incomplete)")

    # ---- output folder (never overwrite a previous run); upstream's params.pkl, checkpoints/, stats, log
    # (console: stderr, as upstream's pretraining) ----
    dump = prepare_output_dir(args.dump_path, args.resume, "checkpoint.pth.tar")
    ckpt_dir = dump / "checkpoints"
    if rank == 0:  # what a kill during an atomic write left, before anyone writes again
        remove_partial_files(dump, ckpt_dir)
    barrier()
    _, stats = initialize_exp(args, "epoch", "loss", rank=rank, console="stderr")
    logger.info(f"Building data done with {len(dataset)} images loaded.")

    # ---- model ----
    model = build(args.arch, normalize=True, hidden_mlp=args.hidden_mlp, output_dim=args.feat_dim,
                  nmb_prototypes=args.nmb_prototypes, cifar_stem=variant == "cifar")
    model = apply_sync_bn(model, args, world, device).to(device)
    if rank == 0:
        logger.info(model, extra=FILE_ONLY)  # ~110 lines: train.log only, not the console
    logger.info("Building model done.")
    raw_model = model  # the un-wrapped model (DDP below); its keys get "module." in checkpoints

    # ---- optimizer (SGD wrapped in LARC, apex semantics), schedule, mixed precision ----
    base = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd)
    optimizer = LARC(optimizer=base, trust_coefficient=0.001, clip=False)
    schedule = lr_schedule(args.base_lr, args.final_lr, args.epochs, args.warmup_epochs, args.start_warmup,
                           len(loader))
    use_amp = args.use_fp16 and device.type == "cuda"
    if args.use_fp16 and not use_amp:
        logger.warning("--use_fp16 ignored: mixed precision needs CUDA; training in float32")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    logger.info("Building optimizer done.")

    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=v["find_unused_parameters"])

    # ---- resume ----
    start_epoch, rng_states, saved_stats = 0, None, None
    if ckpt is not None:
        if (not isinstance(ckpt, dict) or not {"state_dict", "optimizer", "epoch"} <= set(ckpt)
                or not isinstance(ckpt["state_dict"], dict)):
            raise CLIError(f"{ckpt_path} is not a SwAV pretraining checkpoint (needs 'epoch', 'state_dict' "
                           "and 'optimizer')")
        sd = strip_prefix(ckpt["state_dict"], "module.")
        check_compatible(raw_model, sd, f"checkpoint {ckpt_path}")
        raw_model.load_state_dict(sd)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as e:
            raise CLIError(f"cannot restore the optimizer from {ckpt_path}: {e}") from None
        if use_amp and "amp" in ckpt:
            amp = ckpt["amp"]
            if "loss_scaler0" in amp:  # an apex checkpoint
                amp = {"scale": amp["loss_scaler0"]["loss_scale"], "growth_factor": 2.0,
                       "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": amp["loss_scaler0"]["unskipped"]}
            scaler.load_state_dict(amp)
        start_epoch = int(ckpt["epoch"])
        rng_states, saved_stats = ckpt.get("rng_states"), ckpt.get("stats")
        if rng_states is None or len(rng_states) != world:
            logger.warning("the checkpoint holds no RNG state for %d processes: the run continues, but not "
                           "bit-exactly", world)
            rng_states = None
        logger.info(f"Resumed from {ckpt_path} at epoch {start_epoch}")
    elif args.resume:
        logger.info(f"--resume: no checkpoint in {dump} yet, starting from scratch")

    # ---- queue: every rank's queue is in the checkpoint; queue{rank}.pth (upstream's file) is derived from it.
    # Checkpoints of the earlier format (no "queues") read the queue file, as upstream ----
    queue, saved_queues = None, ckpt.get("queues") if ckpt is not None else None
    queue_path = dump / f"queue{rank}.pth"
    if saved_queues is not None and len(saved_queues) != world:
        raise CLIError(f"{ckpt_path} holds the queues of {len(saved_queues)} processes, not {world}: resume it "
                       "with as many processes")
    if start_epoch > 0 and saved_queues is not None:
        queue = saved_queues[rank]
        if queue is not None:
            queue = queue.to(device)
            save_atomic({"queue": queue}, queue_path)  # re-derived: lost or stale after a kill
        elif queue_path.exists():  # from a later epoch of an interrupted run: stale
            queue_path.unlink()
    elif start_epoch > 0 and queue_path.is_file():
        queue = load_checkpoint(queue_path, map_location=device, unsafe=args.unsafe_load)
        if not isinstance(queue, dict) or not torch.is_tensor(queue.get("queue")):
            raise CLIError(f"{queue_path} is not a SwAV queue file (no 'queue' tensor)")
        queue = queue["queue"]
    requested = args.queue_length
    step = args.batch_size * world
    args.queue_length -= args.queue_length % step
    if args.queue_rounding == "up" and args.queue_length < requested:
        args.queue_length += step
    if requested and args.queue_length != requested:
        logger.warning(f"queue_length {requested} rounded {args.queue_rounding} to {args.queue_length} "
                       f"(a multiple of batch_size x world_size = {step})")
    if queue is not None and tuple(queue.shape) != (len(args.crops_for_assign), args.queue_length // world,
                                                    args.feat_dim):
        raise CLIError(f"{queue_path} holds a queue of shape {tuple(queue.shape)}, which does not fit these "
                       "arguments")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    swav_loss = SwAVLoss(args.batch_size, args.nmb_crops, args.crops_for_assign, args.temperature,
                         make_sinkhorn(args, variant), softmax_then_log=v["softmax_then_log"])
    if start_epoch > 0:  # the history up to the checkpoint (the stats file may hold later epochs)
        rows = (saved_stats[rank] if saved_stats is not None and len(saved_stats) == world
                else rows_before(stats.path, stats.columns, start_epoch))  # checkpoints without "stats"
        stats = PDStats(stats.path, stats.columns, rows)
    if rng_states is not None:
        set_rng_state(rng_states[rank])
    last = start_epoch - 1
    if rank == 0 and ckpt is not None and (last % args.checkpoint_freq == 0 or last == args.epochs - 1):
        copy_atomic(ckpt_path, ckpt_dir / f"ckp-{last}.pth")  # re-derived: lost after a kill

    epoch_line = EpochLine(args.epochs)  # SwAV pretraining monitors no accuracy
    for epoch in range(start_epoch, args.epochs):
        logger.info(f"============ Starting epoch {epoch} ... ============")
        sampler.set_epoch(epoch)
        if args.queue_length > 0 and epoch >= args.epoch_queue_starts and queue is None:
            queue = torch.zeros(len(args.crops_for_assign), args.queue_length // world, args.feat_dim,
                                device=device)
        (ep, loss), queue = train_one_epoch(loader, model, raw_model, optimizer, scaler, epoch, schedule,
                                            queue, swav_loss, args, device, use_amp)
        stats.update((ep, loss))
        lr = optimizer.optim.param_groups[0]["lr"]  # the schedule's last value of the epoch
        # every rank's RNG state, stats rows and queue, for an exact resume from the one checkpoint file
        rng, rows, queues = zip(*gather_objects((get_rng_state(), stats.rows,
                                                 None if queue is None else queue.cpu()), world))
        if rank == 0:
            save_dict = {"epoch": epoch + 1,
                         "state_dict": {"module." + k: t for k, t in raw_model.state_dict().items()},
                         "optimizer": optimizer.state_dict(),
                         "rng_states": list(rng), "stats": list(rows), "queues": list(queues),
                         "args": recorded}
            if use_amp:
                save_dict["amp"] = scaler.state_dict()
            check_finite_state(save_dict, epoch, ckpt_path)
            save_atomic(save_dict, ckpt_path)
            kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
            if epoch % args.checkpoint_freq == 0 or epoch == args.epochs - 1:
                copy_atomic(ckpt_path, ckpt_dir / f"ckp-{epoch}.pth")
            logger.info(epoch_line(epoch + 1, loss, lr))
        if queue is not None:
            save_atomic({"queue": queue}, queue_path)
        barrier()
    logger.info("Training done.")
    if world > 1:
        dist.destroy_process_group()


def make_sinkhorn(args, variant):
    if variant == "cifar":
        return lambda out: sinkhorn_cifar(out, args.epsilon, args.sinkhorn_iterations,
                                          args.improve_numerical_stability)
    return lambda out: sinkhorn_imagenet(out, args.epsilon, args.sinkhorn_iterations)


def train_one_epoch(loader, model, raw_model, optimizer, scaler, epoch, schedule, queue, swav_loss, args,
                    device, use_amp):
    batch_time, data_time, losses = AverageMeter(), AverageMeter(), AverageMeter()
    model.train()
    use_the_queue = False
    n_pairs = sum(args.nmb_crops) // 2
    end = time.time()
    for it, (inputs, _) in enumerate(loader):
        data_time.update(time.time() - end)
        iteration = epoch * len(loader) + it
        for group in optimizer.param_groups:
            group["lr"] = float(schedule[iteration])  # a Python float: weights_only-loadable

        # normalise the prototypes (cosine-similarity scores), every iteration before the forward
        with torch.no_grad():
            w = raw_model.prototypes.weight.data.clone()
            raw_model.prototypes.weight.copy_(F.normalize(w, dim=1, p=2))

        # Un-Mix draws (NumPy's global RNG, also when --run_swav, as upstream), mixing on CPU
        use_global, lam = draw_mix_params(args.unmix_prob, args.unmix_beta)
        if not args.run_swav:
            inputs, lam = make_unmix_inputs(inputs, lam, use_global, args.unmix_chain_lambda)
        bs = args.batch_size

        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            embedding, output = model(inputs)
            embedding = embedding.detach()
            if args.run_swav:
                loss, queue, use_the_queue = swav_loss(embedding, output, raw_model.prototypes.weight, queue,
                                                       use_the_queue)
            else:
                loss, queue, use_the_queue = unmix_swav_loss(
                    swav_loss, embedding, output, raw_model.prototypes.weight, lam, n_pairs, queue,
                    use_the_queue, reverse=args.unmix_reverse)

        optimizer.zero_grad()
        scaler.scale(loss).backward()
        # freeze the prototypes during the first iterations (no update, decay or momentum)
        if iteration < args.freeze_prototypes_niters:
            for name, p in model.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        scaler.step(optimizer)
        scaler.update()

        losses.update(loss.item(), bs)  # read every step anyway: the NaN guard costs no extra sync
        # (with --use_fp16 the GradScaler's skipped steps are not errors: this is the unscaled loss)
        check_loss(losses.val, epoch, it, hint="lower --base_lr, raise --temperature or --epsilon, or try "
                                               "--use_fp16 false")
        batch_time.update(time.time() - end)
        end = time.time()
        if args.rank == 0 and it % 50 == 0:
            logger.info(f"Epoch: [{epoch}][{it}]\tTime {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                        f"Data {data_time.val:.3f} ({data_time.avg:.3f})\t"
                        f"Loss {losses.val:.4f} ({losses.avg:.4f})\t"
                        f"Lr: {optimizer.optim.param_groups[0]['lr']:.4f}")
    return (epoch, losses.avg), queue
