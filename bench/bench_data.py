"""Augmented views per second: the PIL DataLoader path (--aug pil) vs the device path (--aug device).

    python bench/bench_data.py                               # MoCo demo pipeline, batch 512, 32 px
    python bench/bench_data.py --pipeline simclr --repeats 5
    python bench/bench_data.py --batches 2 --e2e-steps 2 --e2e-batch 16   # a quick look

In one run on the current device (CUDA if present), on synthetic CIFAR-size uint8 images:
  1. data path alone: two views per image with the script's pipeline, PIL in DataLoader workers (the script's
     worker count, capped at the CPUs) vs common.device_aug.DeviceLoader; views per wall-second and per
     CPU-second (the DataLoader workers' CPU time included), ratio median and range over --repeats.
     Target on a CPU: device >= 3x PIL per CPU-second at batch 512.
  2. on CUDA: the data path's time per batch vs the MoCo + Un-Mix training step it feeds (target >= 20x).
  3. end to end: seconds per training step (MoCo + Un-Mix, ResNet-18, symmetric) with each data path, same
     model and batch; the ratio PIL / device is the epoch-time ratio.
"""
import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UnMix_MoCo" / "for_CIFAR"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from common.data import TwoCrops  # noqa: E402
from common.device_aug import DeviceLoader  # noqa: E402
from common.mix import unmix_batch  # noqa: E402
from common.utils import amp_dtype, get_device, worker_count  # noqa: E402

WORKERS = {"moco": 16, "simclr": 8, "swav": 2}  # the scripts' --workers defaults


class FakeCIFAR(Dataset):
    """CIFAR's in-memory layout (``data`` N x H x W x 3 uint8, ``targets``), PIL images through ``transform``."""

    def __init__(self, n, size, transform, seed=0):
        rng = np.random.RandomState(seed)
        low = rng.randint(0, 256, (n, 4, 4, 3)).astype(np.uint8)  # smooth colour fields plus noise
        up = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in low])
        self.data = np.clip(up + rng.normal(0, 12, up.shape), 0, 255).astype(np.uint8)
        self.targets = [int(i % 10) for i in range(n)]
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def pipeline(name, size):
    """The training transform of each script (one view)."""
    from common.data import CIFAR10_MEAN, CIFAR10_STD
    if name == "simclr":
        from UnMix_SimCLR_BYOL.data import train_transform
        return train_transform("cifar10", size)
    if name == "swav":
        from types import SimpleNamespace

        from UnMix_SwAV.swav.multicrop import cifar_multicrop
        return cifar_multicrop(SimpleNamespace(size_crops=[size], nmb_crops=[1], min_scale_crops=[0.14],
                                               max_scale_crops=[1.0])).trans[0]
    from torchvision import transforms
    return transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2), transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds():
    """CPU time of this process and of its finished children (the DataLoader workers once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_loader(make_iter, device):
    """(wall seconds, CPU seconds, views) of one full pass (workers started and joined inside)."""
    sync(device)
    c0, t0 = cpu_seconds(), time.perf_counter()
    views = 0
    it = make_iter()
    for (v1, v2), _ in it:
        views += v1.shape[0] + v2.shape[0]
    sync(device)
    del it
    return time.perf_counter() - t0, cpu_seconds() - c0, views


def spread(values):
    return f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f})"


def make_model(batch, device, amp):
    """The MoCo demo's model, optimiser and GradScaler (``--amp``: fp16 + GradScaler on CUDA as the script)."""
    from unmix_cifar import ModelMoCo
    torch.manual_seed(0)
    model = ModelMoCo(K=batch * 2 * 4, bn_splits=8, symmetric=True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    return model, opt, torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")


def train_step(model, opt, scaler, im1, im2, amp, device):
    """unmix_cifar.train_epoch's step: autocast in the scripts' --amp dtype, the (possibly disabled) scaler."""
    mixed, lam = unmix_batch(im1, 0.5, 1.0)
    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
        loss = model(im1, im2, mixed, lam)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def time_training(loader_iter, model, opt, scaler, steps, amp, device):
    """Seconds per step over ``steps`` steps after one warm-up step, data loading included."""
    it = iter(loader_iter)
    (im1, im2), _ = next(it)
    train_step(model, opt, scaler, im1.to(device), im2.to(device), amp, device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        (im1, im2), _ = next(it)
        train_step(model, opt, scaler, im1.to(device, non_blocking=True), im2.to(device, non_blocking=True), amp,
                   device)
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    del it
    return dt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pipeline", choices=["moco", "simclr", "swav"], default="moco", help="whose training transform")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=6, help="batches per timed pass of the data path")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path (ratio: median and range)")
    p.add_argument("--workers", type=int, default=None, help="PIL DataLoader workers (default: the script's, "
                                                             "capped at the CPU count)")
    p.add_argument("--e2e-steps", type=int, default=3, help="timed training steps per path (0: skip)")
    p.add_argument("--e2e-batch", type=int, default=None,
                   help="training batch for the end-to-end ratio (default: --batch-size on CUDA, 16 on a CPU)")
    p.add_argument("--amp", action="store_true",
                   help="the scripts' --amp in the training steps: float16 autocast + GradScaler on CUDA, bfloat16 "
                        "on a CPU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.batch_size < 8 or args.batches < 1 or args.repeats < 1 or args.e2e_steps < 0:
        p.error("--batch-size >= 8, --batches >= 1, --repeats >= 1, --e2e-steps >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device()
    workers = worker_count(WORKERS[args.pipeline] if args.workers is None else args.workers)
    t = pipeline(args.pipeline, args.image_size)
    data = FakeCIFAR(args.batch_size * args.batches, args.image_size, TwoCrops(t))
    print(f"device {device}, pipeline {args.pipeline}, batch {args.batch_size}, {args.image_size} px, "
          f"PIL workers {workers}, torch threads {torch.get_num_threads()}", flush=True)

    pil = lambda bs=args.batch_size: DataLoader(data, batch_size=bs, shuffle=True, drop_last=True,  # noqa: E731
                                                num_workers=workers, pin_memory=device.type == "cuda")
    dev_loader = DeviceLoader(data, data.transform, args.batch_size, device)
    time_loader(lambda: iter(dev_loader), device)  # warm-up (allocations, CUDA kernels)
    rows = {"pil": [], "device": []}
    for _ in range(args.repeats):  # alternate, so that a load change hits both
        rows["pil"].append(time_loader(lambda: iter(pil()), device))
        rows["device"].append(time_loader(lambda: iter(dev_loader), device))
    print(f"\n{'data path':10s} {'views/s (wall)':>16s} {'views/CPU-s':>14s} {'ms/batch':>10s}")
    for name, r in rows.items():
        wall = [v / w for w, c, v in r]
        cpu = [v / c for w, c, v in r]
        ms = [1000 * w / args.batches for w, c, v in r]
        print(f"{name:10s} {statistics.median(wall):16.0f} {statistics.median(cpu):14.0f} {statistics.median(ms):10.1f}")
    per_cpu = [(d[2] / d[1]) / (q[2] / q[1]) for q, d in zip(rows["pil"], rows["device"])]
    per_wall = [(d[2] / d[0]) / (q[2] / q[0]) for q, d in zip(rows["pil"], rows["device"])]
    print(f"device / PIL, views per CPU-second : {spread(per_cpu)}" + ("  (target >= 3x)" if device.type == "cpu" else ""))
    print(f"device / PIL, views per wall-second: {spread(per_wall)}")
    data_ms = statistics.median(1000 * w / args.batches for w, c, v in rows["device"])

    if args.e2e_steps:
        bs = args.e2e_batch or (args.batch_size if device.type == "cuda" else 16)
        n_needed = bs * (args.e2e_steps + 1)
        e2e_data = FakeCIFAR(max(n_needed, bs), args.image_size, TwoCrops(t), seed=1)
        e2e = {}
        for name in ("pil", "device"):
            model, opt, scaler = make_model(bs, device, args.amp)
            loader = (DataLoader(e2e_data, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
                                 pin_memory=device.type == "cuda") if name == "pil"
                      else DeviceLoader(e2e_data, e2e_data.transform, bs, device))
            e2e[name] = time_training(loader, model, opt, scaler, args.e2e_steps, args.amp, device)
        # the model alone (views already made): what the data path feeds
        model, opt, scaler = make_model(bs, device, args.amp)
        fixed = DeviceLoader(e2e_data, e2e_data.transform, bs, device)
        (im1, im2), _ = next(iter(fixed))
        train_step(model, opt, scaler, im1, im2, args.amp, device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.e2e_steps):
            train_step(model, opt, scaler, im1, im2, args.amp, device)
        sync(device)
        step_ms = 1000 * (time.perf_counter() - t0) / args.e2e_steps
        amp = f", --amp {str(amp_dtype(device)).removeprefix('torch.')}" if args.amp else ""
        print(f"\nend to end (MoCo + Un-Mix ResNet-18 symmetric, batch {bs}{amp}):")
        print(f"  PIL path {1000 * e2e['pil']:.1f} ms/step, device path {1000 * e2e['device']:.1f} ms/step, "
              f"model alone {step_ms:.1f} ms/step")
        print(f"  epoch-time ratio PIL / device: {e2e['pil'] / e2e['device']:.2f}x")
        if bs == args.batch_size:
            print(f"  training step / device data path (batch {bs}): {step_ms / data_ms:.1f}x"
                  + ("  (target >= 20x on a GPU)" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
