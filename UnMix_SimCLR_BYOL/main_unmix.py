"""SimCLR / BYOL + Un-Mix on CIFAR-10/100 (or any ImageFolder): the runs of the paper's Figure 2.

The Un-Mix authors never released this code. Their SimCLR/BYOL runs were built on htdt/self-supervised
(the W-MSE codebase): the defaults here are that code's CIFAR commands (``--epoch 1000 --lr 3e-3 --emb 64``)
with the Un-Mix recipe the maintainer gave for SimCLR (Un-Mix issue #5: β = 1, P = 0.5, two images per
mixture). Choices and departures: docs/faithfulness.md. Run layout as the MoCo CIFAR demo: ``args.json``, ``model_last.pth``
(state + RNG + log rows, every epoch), ``log.csv`` and ``curves.png``; plus htdt's snapshot
``{contrastive|byol}_{dataset}_{ep}.pt`` (a bare state_dict, htdt's key names, 0-based ``ep``) every
``--save-every`` epochs.

    python UnMix_SimCLR_BYOL/main_unmix.py --method byol --dataset cifar100            # BYOL + Un-Mix
    python UnMix_SimCLR_BYOL/main_unmix.py --method byol --dataset cifar100 --no-unmix # the baseline
"""
import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.checkpoint import (check_compatible, get_rng_state, load_checkpoint, save_atomic,  # noqa: E402
                               set_rng_state)
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, MAX_WIDTH, CLIError, HelpFormatter,  # noqa: E402
                        add_unsafe_load_arg, adopt_recorded_args, count, prepare_output_dir, recorded_checks, run_main,
                        save_args)
from common.device_aug import DeviceLoader, add_aug_arg  # noqa: E402
from common.guard import check_finite_state, check_loss  # noqa: E402
from common.logs import EpochLine, write_csv  # noqa: E402
from common.mix import unmix_batch  # noqa: E402
from common.runstate import kill_point, remove_partial_files  # noqa: E402
from common.utils import amp_dtype, get_device, seed_everything, worker_count  # noqa: E402
from UnMix_SimCLR_BYOL import data as P  # noqa: E402
from UnMix_SimCLR_BYOL.eval import add_eval_args, eval_loaders, evaluate  # noqa: E402
from UnMix_SimCLR_BYOL.methods import build_model  # noqa: E402
from UnMix_SimCLR_BYOL.plot_figure2 import plot_runs  # noqa: E402

CHECKPOINT = "model_last.pth"
# what the NaN guard suggests when the loss diverges
HINT = "lower the learning rate (--lr), raise SimCLR's temperature (--tau), or try without --amp"
HTDT_NAME = {"simclr": "contrastive", "byol": "byol"}  # htdt's --method names, used in its snapshot file names


# ----------------------------------------------------------------------------------------------------------
# Arguments (defaults = htdt's CIFAR commands)
# ----------------------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description="Train SimCLR or BYOL (+ Un-Mix) with htdt's CIFAR protocol",
                                formatter_class=HelpFormatter)
    p.add_argument("--method", default="simclr", choices=["simclr", "byol"], help="base method")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "imagefolder"],
                   help="imagefolder follows htdt's Tiny ImageNet settings (64 px, max-pool kept)")
    p.add_argument("--data", default="data", metavar="DIR",
                   help="dataset root: CIFAR is downloaded here when missing; for imagefolder, DIR/train and "
                        "DIR/val hold class folders")
    p.add_argument("-a", "--arch", default="resnet18", help="torchvision ResNet (small-image stem applied)")
    p.add_argument("--epochs", default=1000, type=count(MAX_EPOCHS), help="training epochs")
    p.add_argument("--batch-size", default=512, type=count(MAX_BATCH), help="original images per batch (N)")
    p.add_argument("--lr", default=3e-3, type=float, help="Adam learning rate")
    p.add_argument("--adam-l2", default=1e-6, type=float, help="Adam weight_decay (coupled L2, not AdamW)")
    p.add_argument("--warmup-iters", default=500, type=int, help="linear warmup iterations (0: none)")
    p.add_argument("--drop", default=[50, 25], nargs="*", type=int,
                   help="lr drops at epochs (epochs - d) for each d; none with an empty list")
    p.add_argument("--drop-gamma", default=0.2, type=float, help="lr multiplier at each drop")
    p.add_argument("--emb", default=64, type=count(MAX_WIDTH), help="projection (head output) size")
    p.add_argument("--head-size", default=1024, type=count(MAX_WIDTH),
                   help="hidden width of the head and the BYOL predictor")
    p.add_argument("--head-layers", default=2, type=int, help="Linear layers in the projection head")
    p.add_argument("--tau", default=0.5, type=float, help="SimCLR NT-Xent temperature")
    p.add_argument("--byol-tau", default=0.99, type=float, help="BYOL target momentum at the start (-> 1.0)")
    # Un-Mix
    p.add_argument("--no-unmix", dest="unmix", action="store_false", help="the plain baseline, no mixtures")
    p.add_argument("--prob", default=0.5, type=float,
                   help="probability of the global (λ-blend) mixture; otherwise a region (CutMix) mixture")
    p.add_argument("--beta", default=1.0, type=float, help="λ ~ Beta(beta, beta)")
    p.add_argument("--byol-unmix", default="online", choices=["online", "symmetric"],
                   help="BYOL: the mixture through the online network only, target = target(clean view 2) "
                        "(online); or the README recipe literally with BYOL's symmetric loss (symmetric)")
    p.add_argument("--separate-passes", action="store_true",
                   help="compute each Un-Mix term with its own forward passes, as the authors' snippet (same "
                        "loss and gradients as the default shared passes; BN running statistics then match it)")
    # evaluation (htdt's protocol)
    p.add_argument("--eval-every", default=20, type=int, help="evaluate every N epochs (and after the last)")
    p.add_argument("--eval-every-drop", default=5, type=int, help="evaluation period from the first lr drop on")
    add_eval_args(p)
    # running
    p.add_argument("--crop-size", default=None, type=count(MAX_IMAGE),
                   help="training crop; default 32 CIFAR, 64 imagefolder")
    p.add_argument("--workers", default=8, type=int, help="data loading workers (capped at the CPU count)")
    p.add_argument("--seed", default=None, type=int, help="seed Python, NumPy and torch (htdt: unseeded)")
    p.add_argument("--amp", action="store_true", help="mixed precision with torch.amp (off, as htdt)")
    add_aug_arg(p)
    p.add_argument("--save-every", default=100, type=int,
                   help="also write htdt's {contrastive|byol}_{dataset}_{ep}.pt state_dict every N epochs (0: never)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="model_last.pth to continue from, exactly, with the settings it was trained with (options "
                        "given again override them)")
    add_unsafe_load_arg(p)
    p.add_argument("--stop-after", default=None, type=int, metavar="EPOCH",
                   help="end this session after epoch EPOCH (for time-limited jobs; continue with --resume)")
    p.add_argument("--results-dir", default="", metavar="DIR",
                   help="output folder; default ./results/{method}_{dataset}_{unmix|baseline}, or the resumed "
                        "checkpoint's folder")
    return p


def check_args(args):
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--emb": args.emb,
                "--head-size": args.head_size, "--head-layers": args.head_layers, "--eval-every": args.eval_every,
                "--eval-every-drop": args.eval_every_drop, "--knn-k": args.knn_k, "--monitor-k": args.monitor_k}
    bad = [k for k, v in positive.items() if v < 1]
    if bad:
        raise CLIError(f"{', '.join(bad)} must be positive")
    if args.batch_size < 2:
        raise CLIError("--batch-size must be at least 2 (contrastive negatives, BatchNorm)")
    if not 0.0 <= args.prob <= 1.0 or args.beta <= 0:
        raise CLIError("--prob must be in [0, 1] and --beta positive")
    if args.lr <= 0 or args.tau <= 0 or not 0 <= args.byol_tau <= 1:
        raise CLIError("--lr and --tau must be positive and --byol-tau in [0, 1]")
    if args.crop_size is not None and args.crop_size < 8:
        raise CLIError(f"--crop-size {args.crop_size} is too small (at least 8)")
    if min([args.warmup_iters, args.probe_epochs, args.save_every] + list(args.drop)) < 0:
        raise CLIError("--warmup-iters, --probe-epochs, --save-every and --drop must not be negative")


# ----------------------------------------------------------------------------------------------------------
# Schedules (htdt's)
# ----------------------------------------------------------------------------------------------------------
def learning_rate(step, epoch, iters, args):
    """htdt's lr at global iteration ``step`` of 0-based ``epoch`` (``iters`` per epoch).

    The first ``warmup`` iterations set ``lr * (step + 1) / warmup`` directly on the optimizer. Afterwards
    the lr is ``lr * gamma ** k``, k counting the MultiStepLR milestones ``m = epochs - d`` already reached
    (applied at the end of epoch m - 1; never for m <= 0) whose decay no warmup iteration overwrote
    (epoch m starts at step m * iters >= warmup)."""
    if step < args.warmup_iters:
        return args.lr * (step + 1) / args.warmup_iters
    milestones = [args.epochs - d for d in args.drop]
    return args.lr * args.drop_gamma ** sum(0 < m <= epoch and m * iters >= args.warmup_iters for m in milestones)


def evaluate_now(epoch, args):
    """htdt evaluates when (ep + 1) % period == 0, the period dropping to --eval-every-drop from the first lr
    drop (ep == epochs - drop[0]) on. We also evaluate after the last epoch (htdt's 1000 already is)."""
    first_drop = args.epochs - args.drop[0] if args.drop else -1  # htdt switches at ep == first_drop (never if < 0)
    period = args.eval_every_drop if 0 <= first_drop <= epoch else args.eval_every
    return (epoch + 1) % period == 0 or epoch + 1 == args.epochs


def train_epoch(model, loader, optimizer, scaler, epoch, step, args, device):
    """One epoch of htdt's loop; returns (mean loss, mean base loss, last lr, last target tau, next step)."""
    model.train()
    progress = epoch / args.epochs  # htdt: ep / cfg.epoch, constant within an epoch
    losses, bases, lr, tau = [], [], args.lr, None
    bar = tqdm(loader, dynamic_ncols=True, desc=f"epoch {epoch + 1}/{args.epochs}")
    for i, ((x0, x1), _) in enumerate(bar):
        lr = learning_rate(step, epoch, len(loader), args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        # Un-Mix (issue #5): mix view 1 with its batch reverse; draws from NumPy's global RNG, as upstream
        mixed, lam = unmix_batch(x0, args.prob, args.beta) if args.unmix else (None, None)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            loss, base = model.training_loss(x0, x1, mixed, lam, args.separate_passes)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        tau = model.step(progress)  # BYOL's target EMA after every optimizer step
        step += 1
        losses.append(loss.item())  # read every step for the progress bar anyway: the NaN guard costs no sync
        check_loss(losses[-1], epoch + 1, i, HINT)
        bases.append(base.item())
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", lr=f"{lr:.2e}")
    return float(np.mean(losses)), float(np.mean(bases)), lr, tau, step


def default_results_dir(args):
    return os.path.join("results", f"{args.method}_{args.dataset}_{'unmix' if args.unmix else 'baseline'}")


# Per-session settings; every other argument of a resumed run (the data root included) comes from its
# checkpoint unless given again.
SESSION_ARGS = {"resume", "results_dir", "stop_after", "unsafe_load"}


def snapshot_path(results_dir, args, epoch):
    """htdt's per-epoch snapshot file (0-based ``epoch``)."""
    return results_dir / f"{HTDT_NAME[args.method]}_{args.dataset}_{epoch}.pt"


def write_log(rows, results_dir):
    """``log.csv`` and ``curves.png``: derived from the checkpoint's ``log`` rows (rewritten on every start)."""
    df = write_csv(rows, results_dir / "log.csv")
    plot_runs([(results_dir.name, df.reset_index())], results_dir / "curves.png", title=str(results_dir))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.resume, unsafe=args.unsafe_load) if args.resume else None  # fail early on a bad file
    if ckpt is not None and not (isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict)):
        # without them the run would silently take the defaults (and look for CIFAR in ./data)
        raise CLIError(f"{args.resume} holds no recorded settings ('args'): only a model_last.pth written by "
                       "this script can be resumed (htdt's {method}_{dataset}_{ep}.pt files hold weights only: "
                       "evaluate them with eval.py)")
    resumed = None
    if ckpt is not None:  # --resume PATH alone continues the run with its own settings
        resumed = adopt_recorded_args(args, ckpt["args"], parser, argv, SESSION_ARGS, args.resume)
    with recorded_checks(resumed):
        check_args(args)
    if args.resume and not args.results_dir:
        args.results_dir = os.path.dirname(os.path.abspath(args.resume))
    args.results_dir = args.results_dir or default_results_dir(args)
    args.crop_size = args.crop_size or P.CROP[args.dataset]
    if args.seed is not None:
        seed_everything(args.seed)
    device = get_device()
    print(args)

    # data
    train_data = P.train_set(args.dataset, args.data, args.crop_size)
    if len(train_data) < args.batch_size:
        raise CLIError(f"the training set has {len(train_data)} images, fewer than one batch of {args.batch_size}")
    clf_loader, test_loader = eval_loaders(args.dataset, args.data, args.crop_size, 1000, args.workers, device)
    # checked now, created once the inputs (the checkpoint too) are accepted: a refused run leaves no folder
    results_dir = prepare_output_dir(args.results_dir, resume=args.resume, marker=CHECKPOINT, create=False)
    # htdt: shuffle, drop_last (97 iterations per CIFAR epoch at batch 512)
    if args.aug == "device":
        train_loader = DeviceLoader(train_data, train_data.transform, args.batch_size, device)
    else:
        train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                  num_workers=worker_count(args.workers), pin_memory=device.type == "cuda")

    # model
    model = build_model(args.method, args.arch, maxpool=args.dataset == "imagefolder", emb=args.emb,
                        head_size=args.head_size, head_layers=args.head_layers, tau=args.tau,
                        base_tau=args.byol_tau, unmix_target=args.byol_unmix).to(device)
    # htdt: Adam over all parameters (BYOL's target ones never get a gradient, so Adam skips them)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.adam_l2)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    start_epoch, step, log_rows = 0, 0, []
    if ckpt is not None:
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if state is None:
            raise CLIError(f"{args.resume} has no 'state_dict': not a model_last.pth of this script")
        check_compatible(model, state, what=f"checkpoint {args.resume}")
        model.load_state_dict(state)
        if "optimizer" not in ckpt:
            raise CLIError(f"{args.resume} has no optimizer state: only model_last.pth files can be resumed")
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):  # {} from a run without --amp (or on the CPU): nothing to restore
            scaler.load_state_dict(ckpt["scaler"])
    prepare_output_dir(args.results_dir, resume=args.resume, marker=CHECKPOINT)
    remove_partial_files(results_dir)  # what a kill during an atomic write left
    if ckpt is not None:
        start_epoch = ckpt["epoch"]  # finished epochs
        step = ckpt.get("step", start_epoch * len(train_loader))
        log_rows = ckpt.get("log", [])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        else:
            warnings.warn("checkpoint has no RNG state: training continues, but not bit-for-bit")
        print(f"=> resumed from {args.resume} (epoch {start_epoch})")
        # the files written after the checkpoint, lost or stale after a kill: re-derived, even with nothing to train
        if log_rows:
            write_log(log_rows, results_dir)
        if args.save_every and start_epoch % args.save_every == 0:  # the snapshot of the checkpoint's epoch
            save_atomic(state, snapshot_path(results_dir, args, start_epoch - 1))
    save_args(args, results_dir / "args.json")

    # loop
    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    epoch_line = EpochLine(args.epochs, monitor="linear-probe top-1")
    for epoch in range(start_epoch, last):  # 0-based, as htdt; logs and checkpoints count from 1
        loss, base, lr, tau, step = train_epoch(model, train_loader, optimizer, scaler, epoch, step, args, device)
        row = {"epoch": epoch + 1, "train_loss": loss, "base_loss": base, "lr": lr}
        if tau is not None:
            row["target_tau"] = tau
        if evaluate_now(epoch, args):
            res = evaluate(model.model, clf_loader, test_loader, device, args.knn_k, args.monitor_k, args.knn_t,
                           args.probe_epochs)
            row.update(res)
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
        log_rows.append(row)
        ckpt = {"epoch": epoch + 1, "step": step, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": get_rng_state(),
                "log": log_rows, "args": vars(args)}
        check_finite_state(ckpt, epoch + 1, results_dir / CHECKPOINT, HINT)
        save_atomic(ckpt, results_dir / CHECKPOINT)
        kill_point("checkpoint")  # test hook: the window between the checkpoint and its derived files
        if args.save_every and (epoch + 1) % args.save_every == 0:  # htdt's file name and content
            save_atomic(model.state_dict(), snapshot_path(results_dir, args, epoch))
        write_log(log_rows, results_dir)
        print(epoch_line(epoch + 1, loss, lr, row.get("linear_acc@1")), flush=True)
    return results_dir


if __name__ == "__main__":
    run_main(main)
