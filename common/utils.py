"""Device, seeding, meters and accuracy."""
import os
import random

import numpy as np
import torch


def get_device(local_rank=None):
    """CUDA when present (``cuda:local_rank``), CPU otherwise."""
    if torch.cuda.is_available():
        idx = 0 if local_rank is None else local_rank % torch.cuda.device_count()
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return torch.device("cpu")


def amp_dtype(device):
    """The autocast dtype of ``--amp``: float16 on CUDA (with a GradScaler), bfloat16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def seed_everything(seed, deterministic=False):
    """Seeds Python, NumPy's global RNG and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def worker_count(requested):
    """Caps DataLoader workers to the CPUs available (a 16-worker default on a 2-core box only thrashes)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(requested, cpus))


class AverageMeter:
    """Running average, as in the upstream scripts."""

    def __init__(self, name="", fmt=":f"):
        self.name, self.fmt = name, fmt
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


@torch.no_grad()
def accuracy(output, target, topk=(1,)):
    """Top-k accuracy in percent. ``.reshape`` where upstream's ``.view`` fails on modern PyTorch."""
    maxk = min(max(topk), output.size(1))
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [correct[:min(k, maxk)].reshape(-1).float().sum().mul_(100.0 / target.size(0)) for k in topk]
