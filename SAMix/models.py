"""Networks and losses of supervised mixup classification: backbones with a Mixer-stage output, the
SAMix/AutoMix two-branch model (online network q, EMA network k, four heads, the Mixer), and the losses.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from common.cli import CLIError
from common.mixer import Mixer, adjust_mask

# name -> (block, layers, groups, width_per_group, base width)
ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4, 64),
    "resnext101_32x4d": (Bottleneck, [3, 4, 23, 3], 32, 4, 64),
    # a very small ResNet (channels 8-16-32-64) for tests and smoke runs on a CPU; not a published model
    "resnet_tiny": (BasicBlock, [1, 1, 1, 1], 1, 64, 8),
}


def stage_channels(arch, stage):
    """Output channels of ResNet stage ``stage`` (0-based: 2 is ``layer3``, the Mixer's input for ``l2``)."""
    block, _, _, _, base = ARCHS[arch]
    return base * block.expansion * 2 ** stage


class _ResNet(ResNet):
    """torchvision's ResNet with a configurable base width (64 for every real architecture)."""

    def __init__(self, block, layers, base_width=64, **kw):
        self._base = base_width
        super().__init__(block, layers, **kw)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: the stem's width
            self.inplanes = self._base
        return super()._make_layer(block, planes * self._base // 64, blocks, stride, dilate)


class Backbone(nn.Module):
    """ResNet / ResNeXt trunk returning ``(stage feature for the Mixer, pooled last-stage feature)``.

    ``cifar_stem``: 3x3 stride-1 first conv and no max-pool (OpenMixup's ``ResNet_CIFAR``, used for CIFAR and
    Tiny-ImageNet); otherwise torchvision's 7x7 stride-2 conv and max-pool. Key names are torchvision's
    (``conv1``, ``bn1``, ``layer1``-``layer4``), without ``fc``. Kaiming conv init, BN 1/0 and the last BN of
    every residual block at 0 (``zero_init_residual``), as the released configs.
    """

    def __init__(self, arch="resnet18", cifar_stem=False, mask_layer=2):
        super().__init__()
        if arch not in ARCHS:
            raise CLIError(f"unknown --arch {arch} (choose from {', '.join(ARCHS)})")
        block, layers, groups, wpg, base = ARCHS[arch]
        net = _ResNet(block, layers, base_width=base, groups=groups, width_per_group=wpg, zero_init_residual=True)
        if cifar_stem or base != 64:
            net.conv1 = nn.Conv2d(3, base, kernel_size=3 if cifar_stem else 7, stride=1 if cifar_stem else 2,
                                  padding=1 if cifar_stem else 3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.bn1 = nn.BatchNorm2d(base)
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = nn.Identity() if cifar_stem else net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.mask_layer = mask_layer
        self.mask_channels = stage_channels(arch, mask_layer)  # input channels of the Mixer
        self.out_channels = stage_channels(arch, 3)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages[self.mask_layer], torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def linear_head(in_features, num_classes):
    """Classification head after global average pooling: fc with N(0, 0.01) weights and zero bias."""
    fc = nn.Linear(in_features, num_classes)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def mixup_ce(logits, y_a, y_b, lam):
    """``λ CE(logits, y_a) + (1-λ) CE(logits, y_b)`` (hard labels, batch means)."""
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


def mix_target(y_a, y_b, lam, num_classes):
    """Soft target ``λ onehot(y_a) + (1-λ) onehot(y_b)``."""
    return lam * F.one_hot(y_a, num_classes).float() + (1.0 - lam) * F.one_hot(y_b, num_classes).float()


def class_weight(target, eta):
    """1 on the classes present in the mixed target, ``eta`` on all the others (OpenMixup's ``neg_weight``)."""
    return torch.where(target > 0, torch.ones_like(target), torch.full_like(target, float(eta)))


def mixer_loss(logits, y_a, y_b, lam, kind="softce", eta=1.0):
    """The Mixer's classification loss on its own mixed samples (the η-balanced loss).

    - ``"softce"`` (the released configs): ``-Σ_c w_c t_c log softmax(z)_c`` averaged over the batch, with
      ``t = λ onehot(y_a) + (1-λ) onehot(y_b)`` and ``w_c = 1`` on the mixed classes, ``η`` elsewhere. Since
      ``t_c = 0`` wherever ``w_c = η``, **η has no effect**: this equals ``λ CE(y_a) + (1-λ) CE(y_b)``.
    - ``"bce"``: ``Σ_c w_c BCE(σ(z_c), t_c)`` averaged over the batch: the two mixed classes with weight 1 (local
      smoothness between them), the other classes pushed to 0 with weight η (global discrimination). The only
      form in which η changes the loss.
    """
    target = mix_target(y_a, y_b, lam, logits.size(1))
    w = class_weight(target, eta)
    logits = logits.float()
    if kind == "softce":
        return -(w * target * F.log_softmax(logits, dim=1)).sum(1).mean()
    if kind == "bce":
        return (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum(1).mean()
    raise ValueError(f"unknown mixer loss {kind!r} (softce or bce)")


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """One backbone and one head, for ``--mix none|mixup|cutmix`` (OpenMixup's ``MixUpClassification``)."""

    def __init__(self, arch, num_classes, cifar_stem):
        super().__init__()
        self.backbone_q = Backbone(arch, cifar_stem)
        self.head_one_q = linear_head(self.backbone_q.out_channels, num_classes)

    def forward(self, x, y_a=None, y_b=None, lam=1.0):
        """Training loss (``y_a`` given; ``y_b`` for a mixed batch), else logits."""
        logits = self.head_one_q(self.backbone_q(x)[1])
        if y_a is None:
            return logits
        if y_b is None:
            return {"loss": F.cross_entropy(logits, y_a)}
        return {"loss": mixup_ce(logits, y_a, y_b, lam)}

    @torch.no_grad()
    def evaluate(self, x):
        return {"one_q": self(x)}


MASK_ADJUST_EPS = 1e-8  # upstream's clamp and margin of the supervised mask adjust (AutoMixup.pixel_mixup)


class MixerModel(nn.Module):
    """SAMix / AutoMix supervised training (OpenMixup's ``AutoMixup``): online network q, EMA network k, the
    Mixer, and four heads.

    ===============  ==================================================================================
    ``backbone_q``   the classifier being trained (gradient from the two backbone losses)
    ``backbone_k``   EMA of ``backbone_q`` (parameters only); its stage features feed the Mixer, and it
                     scores the Mixer's mixed samples. No parameter gradients.
    ``mixer``        the Mixer; gradient only from the Mixer loss (through k) and the mask loss
    ``head_one_q``   CE on clean images;    ``head_one_k``: its EMA (evaluation only)
    ``head_mix_q``   mixup CE on the backbone's mixed images; ``head_mix_k``: its EMA, computes the Mixer loss
    ===============  ==================================================================================

    ``forward(x, y, lam, index_mb, index_bb, mask_weight)`` runs one training iteration's losses (the
    caller draws λ and the permutations); ``momentum_update(m)`` is the EMA step after the optimiser step.
    """

    def __init__(self, arch, num_classes, cifar_stem, mixer, mixer_loss="softce", eta=1.0, lam_margin=0.08,
                 mask_adjust=0.0):
        super().__init__()
        self.backbone_q = Backbone(arch, cifar_stem)
        self.backbone_k = Backbone(arch, cifar_stem)
        c = self.backbone_q.out_channels
        self.head_one_q, self.head_mix_q = linear_head(c, num_classes), linear_head(c, num_classes)
        self.head_one_k, self.head_mix_k = linear_head(c, num_classes), linear_head(c, num_classes)
        self.mixer = mixer
        self.mixer_loss, self.eta, self.lam_margin, self.mask_adjust = mixer_loss, eta, lam_margin, mask_adjust
        for q, k in self._pairs():
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.data.copy_(pq.data)
                pk.requires_grad = False

    def _pairs(self):
        return ((self.backbone_q, self.backbone_k), (self.head_one_q, self.head_one_k),
                (self.head_mix_q, self.head_mix_k))

    @torch.no_grad()
    def momentum_update(self, m):
        """``θ_k ← m θ_k + (1-m) θ_q`` for the backbone and both heads; parameters only (k's BN buffers
        follow its own train-mode passes)."""
        for q, k in self._pairs():
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @staticmethod
    def adjust_mask(mask, lam):
        """Rescales each sample's backbone mask so that its anchor mean is ``lam`` (``common.mixer.adjust_mask``
        with margin = clamp = 1e-8, as ``AutoMixup``)."""
        return adjust_mask(mask, lam, MASK_ADJUST_EPS, MASK_ADJUST_EPS)

    def masks(self, x, lam_mb, lam_bb, index_mb, index_bb):
        """The Mixer's two masks: ``mask_mb`` (with autograd) and ``mask_bb`` (detached)."""
        with torch.no_grad():
            feature = self.backbone_k(x)[0]  # k in train mode: BN batch statistics, k's buffers update
        width = x.size(-1)
        mask_mb = self.mixer(feature, lam_mb, index=index_mb, image_width=width)["mask"]
        with torch.no_grad():
            mask_bb = self.mixer(feature, lam_bb, index=index_bb, image_width=width)["mask"].clone()
        # one NumPy draw per iteration whether or not mask_adjust is on, as upstream's `mask_adjust > rand()`.
        # Upstream compares and rescales with the Mixer's λ (lam[0]), not the backbone's; kept as released
        if self.mask_adjust > np.random.rand():
            mask_bb = self.adjust_mask(mask_bb, lam_mb)
        if lam_bb <= self.lam_margin or lam_bb >= 1 - self.lam_margin:  # plain Mixup for this iteration
            mask_bb = torch.cat([torch.full_like(mask_bb[:, :1], lam_bb), torch.full_like(mask_bb[:, 1:], 1 - lam_bb)], 1)
        return mask_mb, mask_bb

    @staticmethod
    def mix(x, mask, index):
        return x * mask[:, 0:1] + x[index] * mask[:, 1:2]

    def forward(self, x, y, lam, index_mb, index_bb, mask_weight):
        """One iteration's losses. ``lam = (λ_mb, λ_bb)``; returns a dict whose ``loss`` is
        ``L_mix_q + L_one_q + L_mix_k + mask_weight * L_mask``."""
        lam_mb, lam_bb = float(lam[0]), float(lam[1])
        mask_mb, mask_bb = self.masks(x, lam_mb, lam_bb, index_mb, index_bb)
        loss_mask = self.mixer.mask_loss(mask_mb, lam_mb)
        x_mb, x_bb = self.mix(x, mask_mb, index_mb), self.mix(x, mask_bb, index_bb)
        # Mixer branch: k's parameters are frozen; the gradient reaches the Mixer through x_mb
        logits_k = self.head_mix_k(self.backbone_k(x_mb)[1])
        loss_mix_k = mixer_loss(logits_k, y, y[index_mb], lam_mb, self.mixer_loss, self.eta)
        # classifier branch: mask_bb is detached, so these losses give the Mixer nothing
        loss_one_q = F.cross_entropy(self.head_one_q(self.backbone_q(x)[1]), y)
        loss_mix_q = mixup_ce(self.head_mix_q(self.backbone_q(x_bb)[1]), y, y[index_bb], lam_bb)
        loss = loss_mix_q + loss_one_q + loss_mix_k + mask_weight * loss_mask
        return {"loss": loss, "loss_one_q": loss_one_q, "loss_mix_q": loss_mix_q, "loss_mix_k": loss_mix_k,
                "loss_mask": loss_mask, "mask_mb": mask_mb, "mask_bb": mask_bb}

    @torch.no_grad()
    def evaluate(self, x):
        """Logits of the four heads (each on its own backbone)."""
        f_q, f_k = self.backbone_q(x)[1], self.backbone_k(x)[1]
        return {"one_q": self.head_one_q(f_q), "mix_q": self.head_mix_q(f_q),
                "one_k": self.head_one_k(f_k), "mix_k": self.head_mix_k(f_k)}


def build_model(args, num_classes):
    """The model of ``args.mix`` (``none|mixup|cutmix``: :class:`Classifier`; ``automix|samix``: :class:`MixerModel`)."""
    cifar_stem = args.dataset != "imagenet"
    if args.mix in ("none", "mixup", "cutmix"):
        return Classifier(args.arch, num_classes, cifar_stem)
    channels = stage_channels(args.arch, 2)
    if args.mix == "samix":
        mixer = Mixer.samix(channels, mask_layer=2, lam_mul_k=args.lam_mul_k, value_dropout=args.mixer_dropout)
    else:  # the released AutoMix configs append λ as a channel on ImageNet only (CIFAR-100, Tiny: no λ input)
        mixer = Mixer.automix(channels, mask_layer=2, lam_concat=args.dataset == "imagenet")
    return MixerModel(args.arch, num_classes, cifar_stem, mixer, mixer_loss=args.mixer_loss, eta=args.eta,
                      lam_margin=args.lam_margin, mask_adjust=args.mask_adjust)


