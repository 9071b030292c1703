#!/usr/bin/env python
"""Linear classification on frozen MoCo / Un-Mix features (upstream ``main_lincls_unmix.py``, itself
MoCo's ``main_lincls.py``; see docs/faithfulness.md).

    python main_lincls_unmix.py -a resnet50 --lr 30.0 --batch-size 256 --pretrained checkpoint_0199.pth.tar \\
        --multiprocessing-distributed --world-size 1 --rank 0 --dist-url tcp://localhost:10001 IMAGENET

As upstream: keys ``module.encoder_q.*`` (minus the head) become the backbone; exactly ``fc.weight`` and
``fc.bias`` must be missing; everything but ``fc`` is frozen and the model stays in eval mode for the
whole of training; fc ~ N(0, 0.01), bias 0; SGD lr 30, momentum 0.9, wd 0, 100 epochs, x0.1 at 60 and 80;
after the first epoch a sanity check that the backbone did not change. Fixed for a modern stack: top-k
accuracy uses ``reshape`` (``view`` fails), the default ``--dist-url`` is localhost (upstream's was a
multicast address), the sanity check only runs when ``--pretrained`` is given, and a missing or foreign
``--pretrained`` file is an error instead of a silent random init.
"""
import argparse
import math
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision.models as models  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402

from common.checkpoint import (check_compatible, gather_rng_states, load_checkpoint,  # noqa: E402
                               restore_rng_states, save_atomic, strip_prefix)
from common.cli import (MAX_IMAGE, CLIError, HelpFormatter, add_unsafe_load_arg, count,  # noqa: E402
                        prepare_output_dir, run_main, save_args)
from common.data import IMAGENET_MEAN, IMAGENET_STD, check_image_folder, split_dir, train_val_folders  # noqa: E402
from common.dist import (add_dist_args, barrier, cleanup, first_rank, is_dist, launch, per_process,  # noqa: E402
                         per_process_workers, plan_launch, setup_worker)
from common.guard import check_eval, check_finite_state, check_loss  # noqa: E402
from common.logs import EpochLine, write_csv  # noqa: E402
from common.runstate import copy_atomic, kill_point, remove_partial_files  # noqa: E402
from common.utils import AverageMeter, accuracy, worker_count  # noqa: E402
from UnMix_MoCo.for_ImageNet.moco.train_utils import (add_training_args, adjust_learning_rate,  # noqa: E402
                                                      module_state_dict, parse_args)

CKPT_NAME, BEST_NAME, LOG_NAME = "checkpoint.pth.tar", "model_best.pth.tar", "log.csv"
HINT = "lower the learning rate (--lr)"  # what the NaN guard suggests when the loss diverges
PREFIX = "module.encoder_q."


# per-session options (output, launcher, logging); every other option of a resumed run comes from its checkpoint
# unless given again (the data folder is a required argument, so always given)
SESSION_ARGS = {"resume", "unsafe_load", "output_dir", "print_freq", "start_epoch", "world_size", "rank", "dist_url",
                "dist_backend", "gpu", "multiprocessing_distributed", "nproc", "local_rank", "evaluate"}


def get_parser():
    p = argparse.ArgumentParser(description="Linear classification of MoCo / Un-Mix features (ImageNet)",
                                formatter_class=HelpFormatter)
    add_training_args(p, "dataset root holding train/ and val/ (ImageFolder)", epochs=100, lr=30.0,
                      schedule=[60, 80], weight_decay=0.0)
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="a checkpoint.pth.tar of this script")
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate on val/ and exit")
    p.add_argument("--seed", default=None, type=int,
                   help="seed python and torch; on a GPU cuDNN deterministic without benchmark autotuning (slower)")
    add_dist_args(p)
    p.add_argument("--pretrained", default="", type=str, metavar="PATH",
                   help="MoCo / Un-Mix pretraining checkpoint (module.encoder_q.* keys)")
    add_unsafe_load_arg(p)
    p.add_argument("--output-dir", default=".", help="where checkpoint.pth.tar / model_best.pth.tar go "
                                                     "(upstream: the cwd)")
    p.add_argument("--crop-size", default=224, type=count(MAX_IMAGE),
                   help="train RandomResizedCrop / val CenterCrop size; val resizes to 256/224 of it")
    return p


def pretrained_backbone(path, unsafe=False):
    """Upstream's renaming: ``module.encoder_q.X`` -> ``X`` for every X outside the head ``fc``."""
    ckpt = load_checkpoint(path, "cpu", unsafe=unsafe)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CLIError(f"{path} has no 'state_dict': not a MoCo pretraining checkpoint")
    return {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items()
            if k.startswith(PREFIX) and not k.startswith(PREFIX + "fc")}


def load_pretrained(model, path, unsafe=False):
    state_dict = pretrained_backbone(path, unsafe)
    if not state_dict:
        raise CLIError(f"{path} holds no '{PREFIX}*' weights (expects a MoCo / Un-Mix pretraining checkpoint "
                       "saved through DDP)")
    check_compatible(model, state_dict, f"pretrained checkpoint {path}", allow_missing=("fc.weight", "fc.bias"))
    msg = model.load_state_dict(state_dict, strict=False)
    if set(msg.missing_keys) != {"fc.weight", "fc.bias"}:  # upstream's assertion
        raise CLIError(f"{path}: expected exactly fc.weight and fc.bias missing, got {msg.missing_keys}")


def sanity_check(state_dict, pretrained_path, unsafe=False):
    """Every non-fc tensor of the linear model (``module.`` keys) equals the pretrained query encoder's,
    running statistics included: the frozen backbone really stayed frozen."""
    pre = load_checkpoint(pretrained_path, "cpu", unsafe=unsafe)["state_dict"]
    for k, v in state_dict.items():
        if "fc.weight" in k or "fc.bias" in k:
            continue
        k_pre = PREFIX + (k[len("module."):] if k.startswith("module.") else k)
        assert torch.equal(v.cpu(), pre[k_pre].cpu()), f"{k} is changed in linear classifier training."
    print("=> sanity check passed.")


def read_resume(path, model, unsafe=False):
    ckpt = load_checkpoint(path, "cpu", unsafe=unsafe)
    if (not isinstance(ckpt, dict) or not {"epoch", "state_dict", "optimizer"} <= set(ckpt)
            or not isinstance(ckpt["state_dict"], dict)):
        raise CLIError(f"{path} is not a linear-classification checkpoint (needs epoch, a state_dict dict, "
                       "optimizer)")
    check_compatible(model, strip_prefix(ckpt["state_dict"], "module."), f"checkpoint {path}")
    return ckpt


def build_model(arch):
    model = models.__dict__[arch]()
    for name, param in model.named_parameters():  # freeze all layers but the last fc
        if name not in ("fc.weight", "fc.bias"):
            param.requires_grad = False
    model.fc.weight.data.normal_(mean=0.0, std=0.01)
    model.fc.bias.data.zero_()
    return model


def run_epoch(loader, model, criterion, device, optimizer=None, epoch=0, print_freq=10, log=print):
    """Trains (with ``optimizer``) or validates; the model is in eval mode either way, as upstream."""
    meters = {"time": AverageMeter("Time", ":6.3f"), "loss": AverageMeter("Loss", ":.4e"),
              "acc1": AverageMeter("Acc@1", ":6.2f"), "acc5": AverageMeter("Acc@5", ":6.2f")}
    model.eval()  # frozen BN statistics during training too
    end = time.time()
    with torch.set_grad_enabled(optimizer is not None):
        for i, (images, target) in enumerate(loader):
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            output = model(images)
            loss = criterion(output, target)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            for k, v in (("loss", loss.item()), ("acc1", acc1.item()), ("acc5", acc5.item())):
                meters[k].update(v, images.size(0))
            if optimizer is not None:  # the NaN guard reads the value the meters read anyway
                check_loss(meters["loss"].val, epoch, i, HINT)
            else:  # the validation's too: finite weights whose outputs are NaN must not be saved either
                check_eval(not math.isfinite(meters["loss"].val), f"the validation loss after epoch {epoch}", HINT)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            meters["time"].update(time.time() - end)
            end = time.time()
            if i % print_freq == 0:
                prefix = f"Epoch: [{epoch}]" if optimizer is not None else "Test: "
                log(f"{prefix}[{i}/{len(loader)}]\t" + "\t".join(map(str, meters.values())))
    if optimizer is None:
        log(f" * Acc@1 {meters['acc1'].avg:.3f} Acc@5 {meters['acc5'].avg:.3f}")
    return {k: m.avg for k, m in meters.items() if k != "time"}


def main_worker(local_index, args, plan):
    device, rank, world = setup_worker(local_index, args, plan)
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = True

    # model
    log(f"=> creating model '{args.arch}' ({plan.mode}: {world} process(es), {device})")
    net = build_model(args.arch)
    if args.pretrained:
        load_pretrained(net, args.pretrained, args.unsafe_load)
        log(f"=> loaded pre-trained model '{args.pretrained}'")
    net = net.to(device)
    ids = [device.index] if device.type == "cuda" else None
    model = DistributedDataParallel(net, device_ids=ids) if is_dist() else net
    criterion = nn.CrossEntropyLoss().to(device)
    parameters = [p for p in net.parameters() if p.requires_grad]
    assert len(parameters) == 2  # fc.weight, fc.bias
    optimizer = torch.optim.SGD(parameters, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

    best_acc1, rows = 0.0, []
    if args.resume:
        ckpt = read_resume(args.resume, net, args.unsafe_load)
        net.load_state_dict(strip_prefix(ckpt["state_dict"], "module."))
        optimizer.load_state_dict(ckpt["optimizer"])
        args.start_epoch, best_acc1 = ckpt["epoch"], float(ckpt.get("best_acc1", 0.0))
        rows = list(ckpt.get("log", []))
        restore_rng_states(ckpt.get("rng_states"), rank, world)
        log(f"=> loaded checkpoint '{args.resume}' (epoch {ckpt['epoch']})")
    torch.backends.cudnn.benchmark = args.seed is None  # upstream: always True (its --seed runs were not exact)

    # data
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train_set, val_set = train_val_folders(
        args.data,
        T.Compose([T.RandomResizedCrop(args.crop_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
        T.Compose([T.Resize(round(args.crop_size * 256 / 224)), T.CenterCrop(args.crop_size), T.ToTensor(),
                   normalize]), check=False)  # main() checked every image before the processes started
    batch_size, workers = per_process(args.batch_size, plan), worker_count(per_process_workers(args.workers, plan))
    sampler = DistributedSampler(train_set) if is_dist() else None
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=(sampler is None), num_workers=workers,
                              pin_memory=pin, sampler=sampler)
    # as upstream, every process evaluates the whole validation set
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)

    if args.evaluate:
        run_epoch(val_loader, model, criterion, device, print_freq=args.print_freq, log=log)
        return
    out = Path(args.output_dir)
    if is_main:  # the only process that writes: clean up after a kill, re-derive what follows the checkpoint
        remove_partial_files(out)
        save_args(args, out / "args.json")
        if rows:
            write_csv(rows, out / LOG_NAME)
            accs = [r["val_acc1"] for r in rows]
            if accs[-1] > max([0.0] + accs[:-1]):  # its last epoch was a new best: model_best.pth.tar is a copy
                copy_atomic(args.resume, out / BEST_NAME)
    epoch_line = EpochLine(args.epochs, monitor="linear-probe top-1")
    for epoch in range(args.start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = adjust_learning_rate(optimizer, epoch, args)
        train = run_epoch(train_loader, model, criterion, device, optimizer, epoch, args.print_freq, log)
        val = run_epoch(val_loader, model, criterion, device, print_freq=args.print_freq, log=log)
        is_best = val["acc1"] > best_acc1
        best_acc1 = max(val["acc1"], best_acc1)
        rng_states = gather_rng_states()
        if is_main:
            rows.append({"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in train.items()},
                         **{f"val_{k}": v for k, v in val.items()}})
            state = module_state_dict(net)
            ckpt = {"epoch": epoch + 1, "arch": args.arch, "state_dict": state, "best_acc1": best_acc1,
                    "optimizer": optimizer.state_dict(), "rng_states": rng_states, "log": rows,
                    "args": vars(args)}
            check_finite_state(ckpt, epoch, out / CKPT_NAME, HINT)
            save_atomic(ckpt, out / CKPT_NAME)
            kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
            if is_best:
                copy_atomic(out / CKPT_NAME, out / BEST_NAME)
            write_csv(rows, out / LOG_NAME)
            if epoch == args.start_epoch and args.pretrained:  # guarded: upstream crashed without --pretrained
                sanity_check(state, args.pretrained, args.unsafe_load)
            log(epoch_line(epoch + 1, train["loss"], lr, val["acc1"]))
    log(f"best Acc@1 {best_acc1:.3f}")
    barrier()  # nobody leaves while the main process is still saving
    cleanup()


def check_args(args):
    if args.batch_size < 1 or args.epochs < 1 or args.crop_size < 8 or args.workers < 0:
        raise CLIError("--batch-size and --epochs must be >= 1, --crop-size >= 8, -j >= 0")


def main(argv=None):
    args = parse_args(get_parser(), argv, SESSION_ARGS, check_args)  # --resume PATH: the run's own settings
    plan = plan_launch(args)
    for split in ("train", "val"):
        check_image_folder(split_dir(args.data, split), images=True, rank=first_rank(plan, args))
    if per_process(args.batch_size, plan) < 1:
        raise CLIError(f"--batch-size {args.batch_size} is smaller than the {plan.procs_per_node} processes per node")
    if args.evaluate and not (args.resume or args.pretrained):
        raise CLIError("--evaluate needs --resume (a linear classifier) or --pretrained")
    # every file the processes will read is checked here, before any of them starts
    if args.pretrained:
        load_pretrained(build_model(args.arch), args.pretrained, args.unsafe_load)
    if args.resume:
        read_resume(args.resume, build_model(args.arch), args.unsafe_load)
    prepare_output_dir(args.output_dir, bool(args.resume) or args.evaluate, CKPT_NAME)
    if args.gpu is not None:
        warnings.warn("You have chosen a specific GPU. This will completely disable data parallelism.")
    launch(main_worker, args, plan)


if __name__ == "__main__":
    run_main(main)
