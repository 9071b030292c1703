"""Evaluate a SimCLR / BYOL checkpoint on frozen 512-d encoder features (htdt's protocol):

* kNN, k = 5: Euclidean distance on the raw features, unweighted majority vote (ties -> smallest label);
* kNN, k = 200, cosine similarity weighted by exp(sim / 0.1): the MoCo CIFAR demo's monitor (common.knn);
* linear probe: Linear(512, classes), Adam lr 1e-2 -> 1e-6 (exponential) over 500 epochs, weight decay 5e-6,
  random mini-batches of 1000 pre-computed features, no augmentation; top-1 and top-5.

Reads our ``model_last.pth`` and htdt's ``{method}_{dataset}_{ep}.pt`` (a bare state_dict). Usage:
    python UnMix_SimCLR_BYOL/eval.py results/byol_cifar10_unmix/model_last.pth --data ./data
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common.checkpoint import check_compatible, load_checkpoint, strip_prefix  # noqa: E402
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, CLIError, HelpFormatter, add_unsafe_load_arg,  # noqa: E402
                        count, run_main)
from common.guard import NonFiniteFlag, check_eval, nonfinite  # noqa: E402
from common.knn import knn_predict  # noqa: E402
from common.utils import accuracy, get_device, seed_everything, worker_count  # noqa: E402
from UnMix_SimCLR_BYOL import data as P  # noqa: E402
from UnMix_SimCLR_BYOL.methods import Encoder  # noqa: E402

ENCODER_PREFIX = "model.module."  # the online encoder in both methods (htdt's key names)


@torch.no_grad()
def embed(encoder, loader, device):
    """Raw encoder features and labels of a whole loader, in eval mode (the previous mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(encoder(x.to(device, non_blocking=True)).float())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels).to(device)


@torch.no_grad()
def knn_majority(x_train, y_train, x_test, k=5, classes=None, chunk=1000):
    """htdt's ``eval_knn`` predictions: k nearest by Euclidean distance, most frequent label, ties to the
    smallest label (``torch.unique`` is sorted and ``argmax`` takes the first maximum). Chunked over the test
    set so 10k x 50k distances never sit in memory at once; the result is the same."""
    classes = classes or int(y_train.max()) + 1
    preds = []
    for xt in x_test.split(chunk):
        idx = torch.cdist(xt, x_train).topk(k=min(k, len(x_train)), dim=1, largest=False).indices
        votes = F.one_hot(y_train[idx], classes).sum(dim=1)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


@torch.no_grad()
def knn_weighted(x_train, y_train, x_test, classes, k=200, t=0.1, chunk=1000):
    """The MoCo demo's weighted kNN (``common.knn.knn_predict``) on L2-normalised features; top-1 labels."""
    bank = F.normalize(x_train, dim=1).t().contiguous()
    return torch.cat([knn_predict(F.normalize(xt, dim=1), bank, y_train, classes, k, t)[:, 0]
                      for xt in x_test.split(chunk)])


def linear_probe(x_train, y_train, x_test, y_test, classes, epochs=500, batch_size=1000):
    """htdt's ``eval_sgd``; returns (top-1, top-5) in percent. Draws from the global torch RNG (init, batches).

    htdt reshapes a permutation into rows of 1000 (its clf loader drops the last partial batch, a no-op for
    CIFAR's 50k images); ``split`` gives the same batches and also handles sizes that are not multiples."""
    lr_start, lr_end = 1e-2, 1e-6
    clf = nn.Linear(x_train.size(1), classes).to(x_train.device)
    optimizer = torch.optim.Adam(clf.parameters(), lr=lr_start, weight_decay=5e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(lr_end / lr_start) ** (1 / epochs))
    nonfinite = NonFiniteFlag()  # the loss is never read: a device-side flag, checked once at the end
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(x_train)).split(batch_size):
                optimizer.zero_grad()
                loss = F.cross_entropy(clf(x_train[idx]), y_train[idx])
                nonfinite.update(loss)
                loss.backward()
                optimizer.step()
            scheduler.step()
    nonfinite.check("the linear probe (non-finite features?)", hint="check the evaluated encoder")
    with torch.no_grad():
        top1, top5 = accuracy(clf(x_test), y_test, topk=(1, 5))
    return top1.item(), top5.item()


def percent(pred, target):
    return (pred == target).sum().item() * 100.0 / len(target)


def evaluate(encoder, clf_loader, test_loader, device, knn_k=5, monitor_k=200, knn_t=0.1, probe_epochs=500):
    """All three evaluations on one feature extraction; accuracies in percent."""
    classes = len(clf_loader.dataset.classes)
    x_train, y_train = embed(encoder, clf_loader, device)
    x_test, y_test = embed(encoder, test_loader, device)
    check_eval(nonfinite(x_train) + nonfinite(x_test), "the encoder's features", "lower the learning rate (--lr)")
    res = {}
    if probe_epochs > 0:
        res["linear_acc@1"], res["linear_acc@5"] = linear_probe(x_train, y_train, x_test, y_test, classes,
                                                                probe_epochs)
    res[f"knn{knn_k}_acc@1"] = percent(knn_majority(x_train, y_train, x_test, knn_k, classes), y_test)
    res[f"knn{monitor_k}w_acc@1"] = percent(knn_weighted(x_train, y_train, x_test, classes, monitor_k, knn_t), y_test)
    return res


def eval_loaders(dataset, root, size, batch_size=1000, workers=8, device=None):
    clf, test = P.eval_sets(dataset, root, size)
    pin = device is not None and device.type == "cuda"
    return (DataLoader(clf, batch_size=batch_size, shuffle=False, num_workers=worker_count(workers), pin_memory=pin),
            DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=worker_count(workers), pin_memory=pin))


def encoder_from_checkpoint(ckpt, path, arch, maxpool):
    """The online encoder of our ``model_last.pth`` or of an htdt ``.pt`` state_dict (``ckpt``, loaded from
    ``path``), checked key by key."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(k, str) and k.startswith(ENCODER_PREFIX) for k in sd):
        raise CLIError(f"{path} holds no SimCLR/BYOL encoder weights ({ENCODER_PREFIX}*): "
                       "not a checkpoint of main_unmix.py or htdt/self-supervised")
    encoder = Encoder(arch, maxpool)
    enc_sd = strip_prefix(sd, ENCODER_PREFIX)
    check_compatible(encoder.module, enc_sd, what=f"encoder in {path}")
    encoder.module.load_state_dict(enc_sd)
    return encoder


def add_eval_args(p):
    """The evaluation options, shared with main_unmix.py."""
    p.add_argument("--knn-k", default=5, type=int, help="k of the majority-vote kNN (htdt)")
    p.add_argument("--monitor-k", default=200, type=int, help="k of the weighted kNN (the MoCo monitor)")
    p.add_argument("--knn-t", default=0.1, type=float, help="temperature of the weighted kNN")
    p.add_argument("--probe-epochs", default=500, type=count(MAX_EPOCHS),
                   help="linear-probe epochs (0 skips the probe)")


def build_parser():
    p = argparse.ArgumentParser(description="kNN (k=5, k=200 weighted) and linear probe of a SimCLR/BYOL checkpoint",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="model_last.pth of main_unmix.py, or htdt's {method}_{dataset}_{ep}.pt")
    add_unsafe_load_arg(p)
    p.add_argument("--dataset", default=None, choices=["cifar10", "cifar100", "imagefolder"],
                   help="default: the dataset recorded in the checkpoint (required for htdt files)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset root (imagefolder: DIR/train, DIR/val); default: the checkpoint's, else ./data")
    p.add_argument("--arch", default=None, help="default: the checkpoint's, else resnet18")
    p.add_argument("--crop-size", default=None, type=count(MAX_IMAGE),
                   help="default: the checkpoint's, else 32 CIFAR / 64 imagefolder")
    add_eval_args(p)
    p.add_argument("--batch-size", default=1000, type=count(MAX_BATCH), help="feature-extraction batch size")
    p.add_argument("--workers", default=8, type=int, help="data loading workers (capped at the CPU count)")
    p.add_argument("--seed", default=0, type=int, help="seeds the linear probe's initialisation and batches")
    p.add_argument("--out", default=None, metavar="JSON", help="also write the results to this file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.knn_k < 1 or args.monitor_k < 1 or args.probe_epochs < 0 or args.batch_size < 1:
        raise CLIError("--knn-k, --monitor-k and --batch-size must be positive, --probe-epochs >= 0")
    ckpt = load_checkpoint(args.checkpoint, unsafe=args.unsafe_load)
    saved = ckpt["args"] if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict) else {}
    dataset = args.dataset or saved.get("dataset")
    if dataset is None:
        raise CLIError(f"{args.checkpoint} does not record its dataset; pass --dataset")
    data = args.data or saved.get("data") or "data"
    arch = args.arch or saved.get("arch", "resnet18")
    size = args.crop_size or saved.get("crop_size") or P.CROP[dataset]
    encoder = encoder_from_checkpoint(ckpt, args.checkpoint, arch, maxpool=dataset == "imagefolder")
    seed_everything(args.seed)
    device = get_device()
    encoder.to(device)
    clf_loader, test_loader = eval_loaders(dataset, data, size, args.batch_size, args.workers, device)
    res = evaluate(encoder, clf_loader, test_loader, device, args.knn_k, args.monitor_k, args.knn_t,
                   args.probe_epochs)
    res = {"checkpoint": str(args.checkpoint), "dataset": dataset, **res}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    run_main(main)
