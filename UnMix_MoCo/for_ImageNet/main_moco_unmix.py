#!/usr/bin/env python
"""MoCo v1/v2 + Un-Mix pretraining on ImageNet (upstream ``main_moco_unmix.py``; see
docs/faithfulness.md, "MoCo v1/v2 + Un-Mix ImageNet pretraining").

MoCo v2 + Un-Mix, as the published rows (8 GPUs, one node)::

    python main_moco_unmix.py -a resnet50 --lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus --cos \\
        --multiprocessing-distributed --world-size 1 --rank 0 --dist-url tcp://localhost:10001 [--unmix_prob 0.5] IMAGENET

``IMAGENET/train`` is read as an ImageFolder. Launch with ``--multiprocessing-distributed`` (as upstream),
``torchrun``, ``python -m torch.distributed.launch``, ``srun``, or as a single process (see
``common/dist.py``). Checkpoints ``checkpoint_{epoch:04d}.pth.tar`` (0-based epoch) go to
``--output-dir`` with upstream's dict keys plus the RNG states of every process and the log history.
"""
import argparse
import glob
import os
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision.models as models  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402

from common.checkpoint import (check_compatible, gather_rng_states, load_checkpoint,  # noqa: E402
                               restore_rng_states, save_atomic, strip_prefix)
from common.cli import (MAX_IMAGE, MAX_QUEUE, MAX_WIDTH, CLIError, HelpFormatter, add_unsafe_load_arg,  # noqa: E402
                        count, prepare_output_dir, run_main, save_args)
from common.data import TwoCrops, check_image_folder, image_folder, split_dir  # noqa: E402
from common.dist import (add_dist_args, barrier, cleanup, first_rank, is_dist, launch, per_process,  # noqa: E402
                         per_process_workers, plan_launch, setup_worker)
from common.guard import check_finite_state, check_loss  # noqa: E402
from common.logs import EpochLine, plot_curves, write_csv  # noqa: E402
from common.mix import unmix_batch, unmix_loss  # noqa: E402
from common.runstate import kill_point, remove_partial_files  # noqa: E402
from common.utils import AverageMeter, accuracy, amp_dtype, worker_count  # noqa: E402
from UnMix_MoCo.for_ImageNet.moco.builder import MoCo  # noqa: E402
from UnMix_MoCo.for_ImageNet.moco.loader import pretrain_transform  # noqa: E402
from UnMix_MoCo.for_ImageNet.moco.train_utils import (add_training_args, adjust_learning_rate,  # noqa: E402
                                                      module_state_dict, parse_args)

LOG_NAME = "log.csv"
# what the NaN guard suggests when the loss diverges
HINT = "lower the learning rate (--lr), raise the temperature (--moco-t), or try without --amp"


# per-session options (output, launcher, logging); every other option of a resumed run comes from its checkpoint
# unless given again (the data folder is a required argument, so always given)
SESSION_ARGS = {"resume", "unsafe_load", "output_dir", "print_freq", "start_epoch", "world_size", "rank", "dist_url",
                "dist_backend", "gpu", "multiprocessing_distributed", "nproc", "local_rank"}


def get_parser():
    p = argparse.ArgumentParser(description="MoCo v1/v2 + Un-Mix pretraining (ImageNet)",
                                formatter_class=HelpFormatter)
    add_training_args(p, "dataset root holding train/<class>/<image>", epochs=200, lr=0.03,
                      schedule=[120, 160], weight_decay=1e-4)
    p.add_argument("--resume", default="", type=str, metavar="PATH",
                   help="checkpoint_XXXX.pth.tar to continue, with the settings recorded in it (options given again "
                        "override them)")
    add_unsafe_load_arg(p)
    p.add_argument("--seed", default=None, type=int,
                   help="seeds python/torch (as upstream) and also NumPy with seed+rank (upstream left the "
                        "Un-Mix draws unseeded); on a GPU cuDNN deterministic without benchmark autotuning "
                        "(slower)")
    add_dist_args(p)
    # MoCo
    p.add_argument("--moco-dim", default=128, type=count(MAX_WIDTH), help="feature dimension")
    p.add_argument("--moco-k", default=65536, type=count(MAX_QUEUE), help="queue size (multiple of the global batch)")
    p.add_argument("--moco-m", default=0.999, type=float, help="key encoder momentum")
    p.add_argument("--moco-t", default=0.07, type=float, help="softmax temperature (0.2 for MoCo v2)")
    p.add_argument("--moco-tm", default=0.07, type=float, help="accepted for compatibility; unused, as upstream")
    p.add_argument("--mlp", action="store_true", help="MoCo v2 MLP head")
    p.add_argument("--aug-plus", action="store_true", help="MoCo v2 augmentation (blur, p=0.8 jitter)")
    p.add_argument("--cos", action="store_true", help="cosine lr schedule (MoCo v2)")
    # Un-Mix
    p.add_argument("--beta", default=1.0, type=float, help="lambda ~ Beta(beta, beta)")
    p.add_argument("--unmix_prob", "--unmix-prob", default=0.0, type=float, dest="unmix_prob",
                   help="probability of the global (pixel-blend) mixture, else region (CutMix) mixture; "
                        "0.0 = region only (upstream default since 0911f77), run.sh passes 0.5")
    p.add_argument("--no-unmix", action="store_true", help="plain MoCo (no mixtures, no Un-Mix draws)")
    # ours
    p.add_argument("--output-dir", default=".", help="where checkpoints and logs go (upstream: the cwd)")
    p.add_argument("--keep-last", default=0, type=int,
                   help="keep only the newest N checkpoint_XXXX.pth.tar (0: keep all, as upstream)")
    p.add_argument("--crop-size", default=224, type=count(MAX_IMAGE), help="RandomResizedCrop size (224 upstream)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision with torch.amp (CUDA float16 + GradScaler, CPU bfloat16); off, as "
                        "upstream MoCo, which had none")
    return p


def build_model(args):
    return MoCo(models.__dict__[args.arch], args.moco_dim, args.moco_k, args.moco_m, args.moco_t,
                args.moco_tm, args.mlp)


def read_resume(path, net, map_location="cpu", unsafe=False):
    """Loads and checks a pretraining checkpoint; returns it (CLIError if it does not fit ``net``)."""
    ckpt = load_checkpoint(path, map_location, unsafe=unsafe)
    if (not isinstance(ckpt, dict) or not {"epoch", "state_dict", "optimizer"} <= set(ckpt)
            or not isinstance(ckpt["state_dict"], dict)):
        raise CLIError(f"{path} is not a MoCo pretraining checkpoint (needs epoch, a state_dict dict, optimizer)")
    check_compatible(net, strip_prefix(ckpt["state_dict"], "module."), f"checkpoint {path}")
    return ckpt


def unmix_step(model, im_q, im_k, criterion, args):
    """One forward of the Un-Mix objective; returns ``(loss, parts, clean_logits, labels)``.

    The local query batch is mixed with its reverse (``rand(1)``, ``beta``, then the box draws from
    NumPy's global RNG, as upstream); the key view is never mixed.
    """
    if args.no_unmix:
        output, target, _, _ = model(im_q, im_k)
        loss = criterion(output, target)
        return loss, {"loss_cl": loss.item()}, output, target
    mixed, lam = unmix_batch(im_q, args.unmix_prob, args.beta)
    # upstream also builds mixed.flip(0) and passes it as im_qm_flip, which forward ignores
    output, target, output_m, output_m_flip = model(im_q=im_q, im_k=im_k, im_qm=mixed, im_qm_flip=None, lam=lam)
    loss_o = criterion(output, target)
    loss_m = criterion(output_m, target)
    loss_m_flip = criterion(output_m_flip, target)
    loss = unmix_loss(loss_o, loss_m, loss_m_flip, lam)
    return loss, {"loss_cl": loss_o.item(), "loss_mix": loss_m.item(), "loss_mix_flip": loss_m_flip.item(),
                  "lam": lam}, output, target


def train_one_epoch(loader, model, criterion, optimizer, epoch, args, device, log, scaler=None):
    meters = {n: AverageMeter(n.capitalize(), ":.4e") for n in ("loss", "loss_cl", "loss_mix", "loss_mix_flip")}
    meters.update(acc1=AverageMeter("Acc@1", ":6.2f"), acc5=AverageMeter("Acc@5", ":6.2f"),
                  time=AverageMeter("Time", ":6.3f"), data=AverageMeter("Data", ":6.3f"))
    model.train()
    end = time.time()
    for i, (images, _) in enumerate(loader):
        meters["data"].update(time.time() - end)
        im_q = images[0].to(device, non_blocking=True)
        im_k = images[1].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=getattr(args, "amp", False)):
            loss, parts, output, target = unmix_step(model, im_q, im_k, criterion, args)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        n = im_q.size(0)
        meters["loss"].update(loss.item(), n)  # read every step anyway: the NaN guard costs no extra sync
        check_loss(meters["loss"].val, epoch, i, HINT)
        for k, v in parts.items():
            if k in meters:
                meters[k].update(v, n)
        meters["acc1"].update(acc1.item(), n)
        meters["acc5"].update(acc5.item(), n)
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # --amp; a disabled scaler (CPU) is the plain step
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        meters["time"].update(time.time() - end)
        end = time.time()
        if i % args.print_freq == 0:
            shown = [meters[k] for k in ("time", "data", "loss", "loss_cl", "loss_mix", "loss_mix_flip",
                                          "acc1", "acc5") if meters[k].count]
            log(f"Epoch: [{epoch}][{i:>{len(str(len(loader)))}}/{len(loader)}]\t" + "\t".join(map(str, shown)))
    return {k: m.avg for k, m in meters.items() if m.count and k not in ("time", "data")}


def write_log(rows, out):
    """``log.csv`` and ``curves.png``: derived from the checkpoint's ``log`` rows (rewritten on every start)."""
    write_csv(rows, out / LOG_NAME)
    plot_curves(out / LOG_NAME, out / "curves.png")


def main_worker(local_index, args, plan):
    device, rank, world = setup_worker(local_index, args, plan)
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)  # upstream: only the first process prints
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed + rank)  # ours: makes the Un-Mix draws reproducible, different per rank
        torch.backends.cudnn.deterministic = True
    batch_size = per_process(args.batch_size, plan)
    workers = worker_count(per_process_workers(args.workers, plan))

    # data
    dataset = image_folder(split_dir(args.data, "train"), TwoCrops(pretrain_transform(args.aug_plus, args.crop_size)),
                           check=False)  # main() checked every image before the processes started
    sampler = DistributedSampler(dataset) if is_dist() else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=(sampler is None), num_workers=workers,
                        pin_memory=device.type == "cuda", sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise CLIError(f"{len(dataset)} training images are fewer than one batch of {batch_size} per process "
                       f"x {world} processes (batches are dropped when incomplete)")

    # model
    log(f"=> creating model '{args.arch}' ({plan.mode}: {world} process(es), batch {batch_size} each, {device})")
    net = build_model(args).to(device)
    ids = [device.index] if device.type == "cuda" else None
    model = DistributedDataParallel(net, device_ids=ids) if is_dist() else net  # default settings, as upstream
    criterion = nn.CrossEntropyLoss().to(device)
    # all parameters (q then k) in one group, as upstream: the k tensors never get a grad
    optimizer = torch.optim.SGD(net.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda") if args.amp else None

    rows = []
    if args.resume:
        # on the CPU (upstream: map_location=cuda:N): load_state_dict copies to the device, the RNG states stay
        ckpt = read_resume(args.resume, net, unsafe=args.unsafe_load)
        net.load_state_dict(strip_prefix(ckpt["state_dict"], "module."))
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):  # {} from a run without --amp: nothing to restore
            scaler.load_state_dict(ckpt["scaler"])
        args.start_epoch = ckpt["epoch"]
        rows = list(ckpt.get("log", []))
        restore_rng_states(ckpt.get("rng_states"), rank, world)
        log(f"=> loaded checkpoint '{args.resume}' (epoch {ckpt['epoch']})")
    torch.backends.cudnn.benchmark = args.seed is None  # upstream: always True (its --seed runs were not exact)

    out = Path(args.output_dir)
    if is_main:  # the only process that writes: clean up after a kill, re-derive what follows the checkpoint
        remove_partial_files(out)
        save_args(args, out / "args.json")
        if rows:
            write_log(rows, out)
    epoch_line = EpochLine(args.epochs, monitor="pretext top-1")
    for epoch in range(args.start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = adjust_learning_rate(optimizer, epoch, args)
        stats = train_one_epoch(loader, model, criterion, optimizer, epoch, args, device, log, scaler)
        rng_states = gather_rng_states()  # collective: every process takes part
        if is_main:  # one process saves (upstream: the first process of every node)
            rows.append({"epoch": epoch + 1, "lr": lr, **stats})
            path = out / f"checkpoint_{epoch:04d}.pth.tar"
            ckpt = {"epoch": epoch + 1, "arch": args.arch, "state_dict": module_state_dict(net),
                    "optimizer": optimizer.state_dict(), "rng_states": rng_states, "log": rows,
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                    "args": vars(args)}
            check_finite_state(ckpt, epoch, path, HINT)
            save_atomic(ckpt, path)
            kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
            write_log(rows, out)
            if args.keep_last > 0:
                for old in sorted(glob.glob(str(out / "checkpoint_[0-9]*.pth.tar")))[:-args.keep_last]:
                    os.remove(old)
            log(f"=> saved {path}")
            log(epoch_line(epoch + 1, stats["loss"], lr, stats.get("acc1")))
    barrier()  # nobody leaves while the main process is still saving
    cleanup()


def check_args(args):
    if args.batch_size < 1 or args.epochs < 1 or args.moco_k < 1 or args.crop_size < 8 or args.workers < 0:
        raise CLIError("--batch-size, --epochs and --moco-k must be >= 1, --crop-size >= 8, -j >= 0")
    if not 0.0 <= args.unmix_prob <= 1.0 or args.beta <= 0:
        raise CLIError("--unmix_prob must be in [0, 1] and --beta > 0")


def main(argv=None):
    # --resume PATH: the run's own settings; every user error is caught here, before any process starts or
    # waits for the others
    args = parse_args(get_parser(), argv, SESSION_ARGS, check_args)
    plan = plan_launch(args)
    check_image_folder(split_dir(args.data, "train"), images=True, rank=first_rank(plan, args))
    per_proc = per_process(args.batch_size, plan)
    if per_proc < 1:
        raise CLIError(f"--batch-size {args.batch_size} is smaller than the {plan.procs_per_node} processes per node")
    if args.moco_k % (per_proc * plan.world):
        raise CLIError(f"--moco-k {args.moco_k} must be a multiple of the global batch "
                       f"{per_proc} x {plan.world} = {per_proc * plan.world}")
    if args.resume:
        read_resume(args.resume, build_model(args), unsafe=args.unsafe_load)
    out = prepare_output_dir(args.output_dir, bool(args.resume), LOG_NAME)
    if not args.resume and glob.glob(str(out / "checkpoint_[0-9]*.pth.tar")):
        raise CLIError(f"{out} already holds checkpoints; pass --resume to continue or choose another --output-dir")
    if args.gpu is not None:
        warnings.warn("You have chosen a specific GPU. This will completely disable data parallelism.")
    launch(main_worker, args, plan)


if __name__ == "__main__":
    run_main(main)
