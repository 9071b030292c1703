"""Times SAMix training steps against vanilla training steps on this device, in one run, and prints the ratio.

    python bench/bench_samix.py                                   # CIFAR setting: R-18, 32x32, batch 100
    python bench/bench_samix.py --imagenet --batch-size 64        # ImageNet setting: R-18, 224x224
    python bench/bench_samix.py --mix automix --steps 10

Both use the training step of SAMix/main_samix.py (``train_step``: forward, backward, SGD step and, for SAMix,
the EMA update) on the same random batches. The two kinds of step alternate (vanilla, SAMix, vanilla, ...)
so that drifts of the machine's speed hit both alike; the median and the 10th-90th percentile spread of each
are printed, and the ratio of the medians. OpenMixup's own table (CIFAR-100, ViT backbones on GPUs) puts
AutoMix and SAMix at 2.1-2.9x the time of vanilla training.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.schedules import MaskWeight  # noqa: E402
from common.utils import get_device  # noqa: E402
from SAMix.main_samix import build_optimizer, build_parser, resolve_defaults, train_step  # noqa: E402
from SAMix.models import ARCHS, build_model  # noqa: E402


def setup(mix, opts, device, num_classes):
    argv = ["--mix", mix, "--dataset", "imagenet" if opts.imagenet else "cifar100", "-a", opts.arch,
            "-b", str(opts.batch_size), "--image-size", str(opts.image_size)] + (["--amp"] if opts.amp else [])
    args = resolve_defaults(build_parser().parse_args(argv))
    torch.manual_seed(0)
    net = build_model(args, num_classes).to(device).train()
    opt = build_optimizer(net, args)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    return args, net, opt, scaler


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mix", default="samix", choices=["automix", "samix"], help="the method timed against vanilla")
    p.add_argument("-a", "--arch", default="resnet18", choices=list(ARCHS))
    p.add_argument("--imagenet", action="store_true", help="ImageNet stem and sizes (default: the CIFAR stem)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--image-size", type=int, default=None, help="default: 224 with --imagenet, else 32")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    p.add_argument("--amp", action="store_true", help="torch.amp autocast (fp16 on CUDA, bf16 on CPU)")
    opts = p.parse_args(argv)
    opts.image_size = opts.image_size or (224 if opts.imagenet else 32)
    if opts.batch_size < 2 or opts.steps < 1 or opts.warmup < 0 or opts.classes < 2:
        p.error("--batch-size >= 2, --steps >= 1, --warmup >= 0 and --classes >= 2 are needed")
    device = get_device()
    np.random.seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(opts.batch_size, 3, opts.image_size, opts.image_size, generator=g).to(device),
                torch.randint(0, opts.classes, (opts.batch_size,), generator=g).to(device)) for _ in range(2)]
    runs = {name: setup(name, opts, device, opts.classes) for name in ("none", opts.mix)}
    total = opts.warmup + opts.steps
    weights = MaskWeight("constant", 0.1, total)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in runs}
    for i in range(total):
        for name, (args, net, opt, scaler) in runs.items():
            x, y = batches[i % len(batches)]
            sync()
            t0 = time.perf_counter()
            train_step(net, net, x, y, i, opt, scaler, args, weights, total)
            sync()
            if i >= opts.warmup:
                times[name].append(time.perf_counter() - t0)
    print(f"device {device}, {opts.arch}, batch {opts.batch_size}, {opts.image_size}x{opts.image_size}, "
          f"{'ImageNet' if opts.imagenet else 'CIFAR'} stem{', amp' if opts.amp else ''}, {opts.steps} steps each")
    med = {}
    for name, ts in times.items():
        med[name] = float(np.median(ts))
        lo, hi = np.percentile(ts, [10, 90])
        label = "vanilla" if name == "none" else name
        print(f"{label:8s} {med[name] * 1000:9.1f} ms/step  (10th-90th percentile {lo * 1000:.1f}-{hi * 1000:.1f})")
    print(f"{opts.mix} / vanilla: {med[opts.mix] / med['none']:.2f}x  (OpenMixup's table: 2.1-2.9x)")
    return med


if __name__ == "__main__":
    main()
