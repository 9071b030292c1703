"""Evaluate a MoCo (+ Un-Mix) CIFAR checkpoint: kNN accuracy and a linear probe on frozen features.

Reads any ``model_last.pth`` of ``unmix_c10.py`` / ``unmix_c100.py``, ours or a released one.

- kNN: the training monitor's protocol (normalised 128-d encoder_q outputs, k=200, t=0.1, weighted vote).
- Linear probe (the upstream demo has none): the W-MSE protocol of ``common/probe.py`` on the frozen 512-d
  pooled features of the un-augmented training images, evaluated on the test set.
"""
import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch.utils.data import DataLoader  # noqa: E402

from common.checkpoint import check_compatible, load_checkpoint, strip_prefix  # noqa: E402
from common.cli import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGE, CLIError, HelpFormatter, add_unsafe_load_arg,  # noqa: E402
                        count, run_main)
from common.knn import extract_features, knn_accuracy  # noqa: E402
from common.probe import linear_probe  # noqa: E402
from common.utils import get_device, seed_everything, worker_count  # noqa: E402
from unmix_cifar import ModelBase, build_datasets  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="model_last.pth of the MoCo CIFAR demo")
    add_unsafe_load_arg(p)
    p.add_argument("--dataset", default=None, choices=["cifar10", "cifar100", "imagefolder"],
                   help="default: the one recorded in the checkpoint, else cifar10")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset root (default: the recorded one, else ./data)")
    p.add_argument("-a", "--arch", default=None, help="default: the recorded one, else resnet18")
    p.add_argument("--cifar100-stats", action="store_true", help="as in training (see unmix_c100.py --help)")
    p.add_argument("--image-size", default=None, type=count(MAX_IMAGE), help="default: the recorded one, else 32")
    p.add_argument("--mode", default="both", choices=["knn", "linear", "both"])
    p.add_argument("--knn-k", default=200, type=int)
    p.add_argument("--knn-t", default=0.1, type=float)
    p.add_argument("--linear-epochs", default=500, type=count(MAX_EPOCHS),
                   help="linear probe epochs (Adam, lr 1e-2 -> 1e-6)")
    p.add_argument("--batch-size", default=512, type=count(MAX_BATCH), help="feature extraction batch size")
    p.add_argument("--workers", default=16, type=int)
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--output", default="", help="also write the results to this JSON file")
    return p


def encoder_from_checkpoint(ckpt, arch, path="checkpoint"):
    """encoder_q of a loaded MoCo CIFAR checkpoint (key names of upstream's model_last.pth)."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "queue" not in state:
        raise CLIError(f"{path} is not a MoCo CIFAR checkpoint (no 'state_dict' with a 'queue')")
    state = strip_prefix(state, "module.") or state
    encoder_state = strip_prefix(state, "encoder_q.")
    # SplitBatchNorm and BatchNorm2d share parameter names and agree in eval mode: plain BN suffices here.
    encoder = ModelBase(feature_dim=state["queue"].shape[0], arch=arch, bn_splits=1)
    check_compatible(encoder, encoder_state, what=f"encoder_q of {path} (--arch {arch})")
    encoder.load_state_dict(encoder_state)
    return encoder


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.knn_k < 1 or args.knn_t <= 0 or args.linear_epochs < 0:
        raise CLIError("--batch-size and --knn-k must be at least 1, --knn-t positive, --linear-epochs >= 0")
    seed_everything(args.seed)
    ckpt = load_checkpoint(args.checkpoint, unsafe=args.unsafe_load)
    recorded = ckpt.get("args") if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict) else {}
    args.arch = args.arch or recorded.get("arch", "resnet18")
    args.dataset = args.dataset or recorded.get("dataset", "cifar10")
    args.data = args.data or recorded.get("data", "data")
    args.image_size = args.image_size or recorded.get("image_size", 32)
    args.cifar100_stats = args.cifar100_stats or recorded.get("cifar100_stats", False)
    device = get_device()
    encoder = encoder_from_checkpoint(ckpt, args.arch, args.checkpoint)
    encoder.to(device).eval()
    _, memory_data, test_data = build_datasets(args)
    loader = partial(DataLoader, batch_size=args.batch_size, shuffle=False, num_workers=worker_count(args.workers))
    memory_loader, test_loader = loader(memory_data), loader(test_data)
    results = {"checkpoint": str(args.checkpoint), "epoch": ckpt.get("epoch"), "dataset": args.dataset}
    if args.mode in ("knn", "both"):
        results["knn_top1"] = knn_accuracy(encoder, memory_loader, test_loader, device, args.knn_k, args.knn_t)
        print(f"kNN (k={args.knn_k}, t={args.knn_t}) top-1: {results['knn_top1']:.2f}%")
    if args.mode in ("linear", "both"):
        backbone = encoder.net[:-1]  # up to the pooled, flattened 512-d features
        train_f, train_y = extract_features(backbone, memory_loader, device)
        test_f, test_y = extract_features(backbone, test_loader, device)
        results["linear_top1"], results["linear_top5"] = linear_probe(
            train_f, train_y, test_f, test_y, len(memory_data.classes), epochs=args.linear_epochs, seed=args.seed)
        print(f"linear probe ({args.linear_epochs} epochs) top-1: {results['linear_top1']:.2f}%")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run_main(main)
