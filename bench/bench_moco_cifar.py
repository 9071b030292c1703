"""Times training steps of the MoCo CIFAR demo and prints cost ratios measured in this run.

    python bench/bench_moco_cifar.py                      # ResNet-18, 32x32, batch 128, on CUDA if present
    python bench/bench_moco_cifar.py --batch-size 32 --steps 3

Compared, on the same device and data, with the same optimizer step:
  - plain MoCo, symmetric loss                  (the baseline rows)
  - Un-Mix, symmetric, mixture encoded once     (our default)
  - Un-Mix, symmetric, upstream's two passes    (--two-pass)
  - SAMix, symmetric                            (--mix samix: + 2 Mixer calls, 2 mixture passes)
  - Un-Mix, the loss read each step as the training loop does (its progress bar), without and with the NaN
    guard's check of that value (common/guard.check_loss), and the guard's check of a whole checkpoint before a
    save (check_finite_state, once per epoch)
Goal: Un-Mix symmetric <= 1.4x plain MoCo symmetric (upstream's structure costs about 1.75x); the NaN guard ~1.00x.
Each row is the median step time with its range (min-max) over the timed steps.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UnMix_MoCo" / "for_CIFAR"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.guard import check_finite_state, check_loss  # noqa: E402
from common.mix import unmix_batch  # noqa: E402
from common.utils import get_device  # noqa: E402
from samix_moco import MoCoSAMix  # noqa: E402
from unmix_cifar import ModelMoCo  # noqa: E402


def time_steps(model, batches, unmix, steps, warmup, device, loss_read=None):
    """Step times in seconds. ``loss_read``: None (the loss stays on the device), "read" (``loss.item()`` each
    step, as the training loop's progress bar) or "guard" (that value checked by the NaN guard)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        im1, im2 = batches[i % len(batches)]
        sync()
        t0 = time.perf_counter()
        mixed, lam = unmix_batch(im1, 0.5, 1.0) if unmix else (None, None)
        loss = model(im1, im2, mixed, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss_read is not None:
            value = loss.item()
            if loss_read == "guard":
                check_loss(value, 0, i)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return np.array(times)


def time_state_check(model, device, repeats=5):
    """Seconds for the NaN guard's check of a checkpoint (weights, buffers, optimizer state), median of repeats."""
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    ckpt = {"state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        check_finite_state(ckpt, 0, "x.pth")
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bn-splits", type=int, default=8)
    args = p.parse_args()
    if args.batch_size < 2 or args.batch_size % args.bn_splits or args.steps < 1 or args.warmup < 0:
        p.error("--batch-size must be at least 2 and divisible by --bn-splits; --steps >= 1, --warmup >= 0")
    device = get_device()
    torch.manual_seed(0)
    np.random.seed(0)
    K = args.batch_size * 2 * 4
    batches = [tuple(torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
                     for _ in range(2)) for _ in range(2)]
    configs = [("plain MoCo symmetric", False, False, None), ("Un-Mix symmetric (single encoding)", True, False, None),
               ("Un-Mix symmetric (upstream two passes)", True, True, None), ("SAMix symmetric", False, None, None),
               ("Un-Mix, loss read each step", True, False, "read"),
               ("Un-Mix, loss read + NaN guard", True, False, "guard")]
    results = {}
    for name, unmix, two_pass, loss_read in configs:
        torch.manual_seed(0)
        if two_pass is None:
            model = MoCoSAMix(K=K, bn_splits=args.bn_splits, symmetric=True).to(device)
        else:
            model = ModelMoCo(K=K, bn_splits=args.bn_splits, symmetric=True, two_pass=two_pass).to(device)
        times = time_steps(model, batches, unmix, args.steps, args.warmup, device, loss_read)
        results[name] = float(np.median(times))
        print(f"{name:42s} {results[name] * 1000:9.1f} ms/step  (range {times.min() * 1000:.1f}-"
              f"{times.max() * 1000:.1f})", flush=True)
    state_check = time_state_check(model, device)
    base = results["plain MoCo symmetric"]
    single = results["Un-Mix symmetric (single encoding)"]
    two = results["Un-Mix symmetric (upstream two passes)"]
    print(f"\ndevice {device}, batch {args.batch_size}, {args.image_size}x{args.image_size}")
    print(f"Un-Mix single encoding / plain MoCo : {single / base:.2f}x  (goal <= 1.40x)")
    print(f"Un-Mix two passes      / plain MoCo : {two / base:.2f}x  (upstream structure)")
    print(f"single encoding        / two passes : {single / two:.2f}x")
    samix = results["SAMix symmetric"]
    print(f"step time SAMix / Un-Mix / plain MoCo : {samix / base:.2f} / {single / base:.2f} / 1.00")
    read, guarded = results["Un-Mix, loss read each step"], results["Un-Mix, loss read + NaN guard"]
    print(f"NaN guard / loss read only          : {guarded / read:.2f}x  (goal ~1.00x; the check looks at a number "
          "the loop reads anyway)")
    print(f"NaN guard on a checkpoint           : {state_check * 1000:.1f} ms once per save "
          f"({100 * state_check / single:.2f} % of one Un-Mix step)")


if __name__ == "__main__":
    main()
