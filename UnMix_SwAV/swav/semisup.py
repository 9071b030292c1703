"""Semi-supervised fine-tuning on 1% / 10% of ImageNet labels (upstream SwAV ``eval_semisup.py``).

Kept from upstream: the whole network ``<arch>(output_dim=num_classes)`` (head = ``projection_head``,
a Linear on the 2048-d pooled features, freshly initialised) is fine-tuned in ``train()`` mode with
SyncBN when distributed; SGD(momentum 0.9, wd 0) with the trunk at ``--lr`` and every parameter whose
name contains "head" at ``--lr_last_layer``; MultiStepLR([12, 16], 0.2) stepped per epoch; 20 epochs;
the reported number is the (top-1, top-5) of the epoch with the best validation top-1; dump layout
as eval_linear (``checkpoint.pth.tar`` = {epoch, state_dict (``module.*``), optimizer, scheduler,
best_acc}; ``--resume`` continues with the run's recorded settings, as eval_linear).

Changed: upstream downloaded the SimCLR subset lists at run time (``urllib``, fails offline). Here the
list is read from a local file, ``--subset_file`` or ``<data_path>/{1,10}percent.txt`` by default;
get it once from https://github.com/google-research/simclr/tree/master/imagenet_subsets
(``1percent.txt`` / ``10percent.txt``: one ``<wnid>_<n>.JPEG`` file name per line).
Pretrained weights are checked key by key like eval_linear.
"""
import argparse
import os

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets.folder import find_classes

from common.cli import MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, CLIError, HelpFormatter, count
from common.data import check_images, read_image
from common.dist import cleanup
from common.utils import seed_everything

from .linear import (VARIANTS, add_common_args, check_positive, fit, imagenet_datasets, imagenet_transforms,
                     load_backbone, loader, parse_run_args, start_run)
from .resnet import build

SUBSET_URL = "https://github.com/google-research/simclr/tree/master/imagenet_subsets"


def build_parser():
    parser = argparse.ArgumentParser(description="Evaluate models: fine-tuning with 1% or 10% labels on ImageNet",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--labels_perc", type=str, default="10", choices=["1", "10"],
                        help="fine-tune on either 1%% or 10%% of the labels")
    parser.add_argument("--subset_file", type=str, default="",
                        help="local SimCLR subset list (one <wnid>_<n>.JPEG per line); default: "
                             "<data_path>/<labels_perc>percent.txt. Get it from " + SUBSET_URL)
    add_common_args(parser, VARIANTS["imagenet"])
    parser.add_argument("--epochs", type=count(MAX_EPOCHS), default=20, help="number of total epochs to run")
    parser.add_argument("--batch_size", type=count(MAX_BATCH), default=32, help="batch size per process")
    parser.add_argument("--crop_size", type=count(MAX_IMAGE), default=224, help="training / validation crop size")
    parser.add_argument("--val_resize", type=count(MAX_IMAGE), default=256, help="validation Resize before CenterCrop")
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate - trunk")
    parser.add_argument("--lr_last_layer", type=float, default=0.2, help="initial learning rate - head")
    parser.add_argument("--decay_epochs", type=int, nargs="+", default=[12, 16],
                        help="epochs at which to decay the learning rate")
    parser.add_argument("--gamma", type=float, default=0.2, help="lr decay factor")
    return parser


class SubsetImageFolder(Dataset):
    """The images of ``root`` named in a SimCLR subset list, labelled as ``ImageFolder(root)`` would.

    Builds the samples from the list (``<class>/<file>`` with class = the file name's prefix before
    ``_``, as upstream) without scanning the whole training tree.
    """

    def __init__(self, root, names, transform=None):
        self.classes, self.class_to_idx = find_classes(root)
        self.samples, missing, unknown = [], [], set()
        for name in names:
            cls = name.split("_")[0]
            if cls not in self.class_to_idx:
                unknown.add(cls)
                continue
            path = os.path.join(root, cls, name)
            if not os.path.isfile(path):
                missing.append(path)
            self.samples.append((path, self.class_to_idx[cls]))
        if unknown:
            raise CLIError(f"the subset list names {len(unknown)} classes that are not folders of {root} "
                           f"(e.g. {sorted(unknown)[0]})")
        if missing:
            raise CLIError(f"{len(missing)} images of the subset list are missing (e.g. {missing[0]})")
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        check_images((p for p, _ in self.samples), root)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        img = read_image(path)
        return (self.transform(img) if self.transform else img), target


def read_subset(path):
    if not os.path.isfile(path):
        raise CLIError(f"subset list {path} not found; download 1percent.txt / 10percent.txt from "
                       f"{SUBSET_URL} and pass --subset_file (no network access is attempted)")
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise CLIError(f"subset list {path} is empty")
    return names


def main(argv=None):
    args, ckpt, recorded = parse_run_args(  # --resume: the run's own settings
        build_parser(), argv, lambda a: check_positive(a, "epochs", "batch_size", "crop_size", "val_resize", "lr",
                                                       "lr_last_layer"))
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise CLIError(f"--pretrained {args.pretrained} does not exist "
                       "(pass '' to fine-tune random weights deliberately)")
    names = read_subset(args.subset_file or os.path.join(args.data_path, f"{args.labels_perc}percent.txt"))
    train_dir = os.path.join(args.data_path, "train")
    if not os.path.isdir(train_dir):
        raise CLIError(f"--data_path {args.data_path} has no train/ folder (expected {train_dir}/<class>/<image>)")

    # ---- model: backbone + Linear head (``projection_head``) over the classes, checked before
    # anything is written
    seed_everything(args.seed)
    model = build(args.arch, output_dim=len(find_classes(train_dir)[0]), cifar_stem=False)
    head_keys = [k for k in model.state_dict() if k.startswith("projection_head.")]
    loaded = (load_backbone(model, args.pretrained, allow_missing=head_keys, unsafe=args.unsafe_load)
              if args.pretrained else None)

    # ---- data: the labelled subset of train/, the whole of val/ (checked before anything is written)
    train_tf, val_tf = imagenet_transforms(args.crop_size, args.val_resize)
    train_set, val_set = imagenet_datasets(
        args.data_path, train_tf, val_tf, train_cls=lambda root, tf: SubsetImageFolder(root, names, tf))

    rank, world, device, logger, stats = start_run(
        args, loaded or "No pretrained weights given => fine-tuning random weights")

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank)
    train_loader = loader(train_set, args.batch_size, args.workers, sampler=sampler)
    val_loader = loader(val_set, args.batch_size, args.workers)
    logger.info(f"Building data done with {len(train_set)} labelled images ({args.labels_perc}%), "
                f"{len(val_set)} val images, {len(train_set.classes)} classes")

    model.to(device)
    if world > 1:
        if device.type == "cuda":  # SyncBatchNorm does not run on CPU (gloo): per-process BN there
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("SyncBatchNorm needs CUDA: each process normalises its own batch")
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    trunk = [p for n, p in model.named_parameters() if "head" not in n]
    head = [p for n, p in model.named_parameters() if "head" in n]
    optimizer = torch.optim.SGD([{"params": trunk}, {"params": head, "lr": args.lr_last_layer}],
                                lr=args.lr, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma)

    best_acc = fit(model, None, optimizer, scheduler, sampler, train_loader, val_loader, args, stats, device,
                   logger, rank, ckpt, recorded)
    logger.info(f"Fine-tuning with {args.labels_perc}% of labels completed.\n"
                f"Test accuracies: top-1 {best_acc[0]:.1f}, top-5 {best_acc[1]:.1f}")
    cleanup()
    return best_acc
