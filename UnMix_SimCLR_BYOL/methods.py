"""SimCLR and BYOL with Un-Mix, on the protocol of htdt/self-supervised (the W-MSE code the Un-Mix authors
acknowledge and built their SimCLR/BYOL runs on; see docs/faithfulness.md).

Small flat classes in the spirit of solo-learn's methods: each owns its networks and returns its loss.
``state_dict`` keys are htdt's, so an htdt checkpoint loads with ``strict=True`` and ours load into htdt's
``test.py``:

* SimCLR (htdt ``Contrastive``): ``model.module.*`` (ResNet), ``head.{0,1,3}.*``, ``bn_last.*``
* BYOL: ``model.module.*``, ``head.*``, ``pred.{0,1,3}.*``, ``model_t.module.*``, ``head_t.*``
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common.cli import CLIError
from common.mix import unmix_loss
from common.moco import freeze_copy, full_precision, momentum_update


class Encoder(nn.Module):
    """torchvision ResNet with htdt's small-image stem: 3x3 stride-1 conv1; ``fc`` removed (512-d for ResNet-18).

    htdt removes the max-pool for CIFAR only (``maxpool=False``) and keeps it for Tiny ImageNet/STL-10.
    The network lives in ``self.module`` so the keys read ``model.module.*``, the names of htdt's
    ``nn.DataParallel``-wrapped encoder. We do not use DataParallel itself: on several GPUs it would split
    the batch and with it the BatchNorm statistics.
    """

    def __init__(self, arch="resnet18", maxpool=False):
        super().__init__()
        builder = getattr(torchvision.models, arch, None)
        if not arch.startswith("resnet") or builder is None:
            raise CLIError(f"--arch {arch} is not a torchvision ResNet")
        net = builder(weights=None)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if not maxpool:
            net.maxpool = nn.Identity()
        self.out_size = net.fc.in_features
        net.fc = nn.Identity()
        self.module = net

    def forward(self, x):
        return self.module(x)


def mlp(in_size, hidden, out, layers=2, bn=True):
    """htdt's ``get_head``: (layers-1) x [Linear, BatchNorm1d, ReLU], then Linear (indices 0, 1, 3)."""
    mods = []
    for _ in range(layers - 1):
        mods += [nn.Linear(in_size, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU()]
        in_size = hidden
    return nn.Sequential(*mods, nn.Linear(in_size, out))


def nt_xent(z0, z1, tau=0.5, norm=True):
    """SimCLR's NT-Xent for two views [N, D] (htdt's ``contrastive_loss``): each anchor has one positive
    (its other view) and 2N-2 negatives; the mean of both directions. Similarities in float32 at least."""
    with torch.autocast(z0.device.type, enabled=False):
        return _nt_xent(full_precision(z0), full_precision(z1), tau, norm)


def _nt_xent(z0, z1, tau, norm):
    if norm:
        z0, z1 = F.normalize(z0, p=2, dim=1), F.normalize(z1, p=2, dim=1)
    n = z0.size(0)
    target = torch.arange(n, device=z0.device)
    self_mask = torch.eye(n, device=z0.device, dtype=z0.dtype) * 1e9  # removes the anchor itself from the softmax
    logits00 = z0 @ z0.t() / tau - self_mask
    logits11 = z1 @ z1.t() / tau - self_mask
    logits01 = z0 @ z1.t() / tau
    logits10 = z1 @ z0.t() / tau
    return (F.cross_entropy(torch.cat([logits01, logits00], dim=1), target)
            + F.cross_entropy(torch.cat([logits10, logits11], dim=1), target)) / 2


def norm_mse(p, z):
    """BYOL's loss ``2 - 2 * mean cosine(p, z)`` (htdt's ``norm_mse_loss``), in float32 at least."""
    with torch.autocast(p.device.type, enabled=False):
        p, z = F.normalize(full_precision(p), p=2, dim=1), F.normalize(full_precision(z), p=2, dim=1)
        return 2 - 2 * (p * z).sum(dim=-1).mean()


def target_tau(progress, base_tau=0.99):
    """BYOL's cosine target-momentum schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``."""
    return 1 - (1 - base_tau) * (math.cos(math.pi * progress) + 1) / 2


class SimCLR(nn.Module):
    """Encoder -> head (512-1024-BN-ReLU-64) -> ``bn_last`` -> NT-Xent (htdt's ``Contrastive``)."""

    def __init__(self, arch="resnet18", maxpool=False, emb=64, head_size=1024, head_layers=2, tau=0.5):
        super().__init__()
        self.model = Encoder(arch, maxpool)
        self.head = mlp(self.model.out_size, head_size, emb, head_layers)
        self.bn_last = nn.BatchNorm1d(emb)
        self.tau = tau

    def project(self, *h):
        """Head + ``bn_last`` over the concatenated encoder outputs (so their BN sees all of them)."""
        return self.bn_last(self.head(torch.cat(h))).chunk(len(h))

    def forward(self, views):
        """htdt's loss for a list of views: each view encoded separately (encoder BN per view), head over all."""
        z = self.project(*[self.model(x) for x in views])
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        return sum(nt_xent(z[i], z[j], self.tau) for i, j in pairs) / len(pairs)

    def training_loss(self, x0, x1, mixed=None, lam=None, separate_passes=False):
        """Returns ``(loss, base_loss)``. With a mixture of ``x0`` (Un-Mix, the authors' snippet):

        ``base + lam * L([x1, mixed]) + (1 - lam) * L([x1, mixed.flip(0)])``.

        ``separate_passes`` runs the three model calls of the snippet literally. The default encodes x0, x1
        and the mixture once each and reuses them: every encoder BN sees the same batch (the flip only
        permutes it) and the head BN the same set of rows, so loss and gradients are the same (tested);
        only the BN running statistics differ: the encoder's are updated 3 times per step instead of 6, the
        head's and ``bn_last``'s 2 times instead of 3.
        """
        if mixed is None:
            loss = self([x0, x1])
            return loss, loss
        if separate_passes:
            base = self([x0, x1])
            return unmix_loss(base, self([x1, mixed]), self([x1, mixed.flip(0)]), lam), base
        h0, h1, hm = self.model(x0), self.model(x1), self.model(mixed)
        z0, z1 = self.project(h0, h1)
        z1m, zm = self.project(h1, hm)
        base = nt_xent(z0, z1, self.tau)
        loss = unmix_loss(base, nt_xent(z1m, zm, self.tau), nt_xent(z1m, zm.flip(0), self.tau), lam)
        return loss, base

    def step(self, progress):
        """Called after every optimizer step (BYOL's target update); nothing to do for SimCLR."""
        return None


class BYOL(nn.Module):
    """Online encoder -> head -> predictor; target = EMA copy of encoder + head (htdt's ``BYOL``).

    The target parameters have ``requires_grad=False`` and change only through :meth:`step`, the EMA
    ``t = tau * t + (1 - tau) * s`` with the cosine schedule of :func:`target_tau`. Only parameters are
    averaged; the target's BN buffers follow its own forward passes (train mode, under no_grad), as htdt.
    """

    def __init__(self, arch="resnet18", maxpool=False, emb=64, head_size=1024, head_layers=2, base_tau=0.99,
                 unmix_target="online"):
        super().__init__()
        self.model = Encoder(arch, maxpool)
        self.head = mlp(self.model.out_size, head_size, emb, head_layers)
        self.pred = mlp(emb, head_size, emb, 2)
        self.model_t = Encoder(arch, maxpool)
        self.head_t = mlp(self.model.out_size, head_size, emb, head_layers)
        freeze_copy(self.model, self.model_t)  # htdt's update_target(0): an exact copy, no gradients
        freeze_copy(self.head, self.head_t)
        self.base_tau = base_tau
        self.unmix_target = unmix_target

    def online(self, x):
        return self.pred(self.head(self.model(x)))

    @torch.no_grad()
    def target(self, x):
        return self.head_t(self.model_t(x))

    def forward(self, views):
        """htdt's symmetric loss: sum over pairs of f(p_i, t_j) + f(p_j, t_i), divided by the number of pairs."""
        p = [self.online(x) for x in views]
        t = [self.target(x) for x in views]
        pairs = [(i, j) for i in range(len(p)) for j in range(i + 1, len(p))]
        return sum(norm_mse(p[i], t[j]) + norm_mse(p[j], t[i]) for i, j in pairs) / len(pairs)

    def training_loss(self, x0, x1, mixed=None, lam=None, separate_passes=False):
        """Returns ``(loss, base_loss)``. Un-Mix for BYOL, which the authors never specified (docs/faithfulness.md):

        ``online`` (default, as the issue decided): the mixture goes through the online network with the
        predictor; its target is the target network's embedding of the clean other view x1:
        ``base + lam * f(p(mixed), t(x1)) + (1 - lam) * f(p(mixed.flip(0)), t(x1))``.
        ``symmetric``: the README recipe taken literally with htdt's symmetric loss, ``L([x1, mixed])``,
        so the mixture also goes through the target network.

        In ``online`` mode the reverse-order term uses the flipped online embedding of the mixture (same
        loss and gradients, tested); ``separate_passes`` encodes ``mixed.flip(0)`` again instead.
        """
        if mixed is not None and self.unmix_target == "symmetric":
            base = self([x0, x1])
            return unmix_loss(base, self([x1, mixed]), self([x1, mixed.flip(0)]), lam), base
        p0, p1 = self.online(x0), self.online(x1)
        t0, t1 = self.target(x0), self.target(x1)
        base = norm_mse(p0, t1) + norm_mse(p1, t0)
        if mixed is None:
            return base, base
        pm = self.online(mixed)
        pm_flip = self.online(mixed.flip(0)) if separate_passes else pm.flip(0)
        return unmix_loss(base, norm_mse(pm, t1), norm_mse(pm_flip, t1), lam), base

    @torch.no_grad()
    def step(self, progress):
        """EMA update of the target after an optimizer step; ``progress`` = epoch / epochs (0-based epoch)."""
        tau = target_tau(progress, self.base_tau)
        momentum_update(self.model, self.model_t, tau)
        momentum_update(self.head, self.head_t, tau)
        return tau


def build_model(method, arch="resnet18", maxpool=False, emb=64, head_size=1024, head_layers=2, tau=0.5,
                base_tau=0.99, unmix_target="online"):
    if method == "simclr":
        return SimCLR(arch, maxpool, emb, head_size, head_layers, tau)
    if method == "byol":
        return BYOL(arch, maxpool, emb, head_size, head_layers, base_tau, unmix_target)
    raise CLIError(f"unknown method {method!r} (simclr or byol)")
