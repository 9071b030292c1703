"""MoCo + SAMix for the CIFAR demo (``--mix samix``): a learnable Mixer in self-supervised learning.

One iteration (OpenMixup's ``MoCoSAMix`` order, on the demo's MoCo):

1. Two ratios λ_bb (backbone) and λ_mb (Mixer) ~ Beta(α, α), one NumPy draw of size 2.
2. MoCo's clean InfoNCE exactly as ``--mix none`` computes it (symmetric or asymmetric); the key passes
   also return the key encoder's stage features (ResNet ``layer3`` with ``mask_layer=2``) of both views.
3. Two partner permutations π_bb and π_mb of the (global) batch. The Mixer sees the view-1 features of
   sample i (anchor) and the view-2 features of its partner π(i), and returns the partner's per-pixel
   weight m; the mixture is ``view1_i * (1 - m) + view2_{π(i)} * m``. The backbone's mask is computed
   without gradient (and each sample's rescaled to an anchor mean of λ when that mean strays more than 0.1,
   "auto" mask adjust).
4. The backbone's mixup-InfoNCE: the mixture is a query with two positives, the key of view 2 of i
   (weight λ) and the key of view 1 of π(i) (weight 1-λ); the queue is the negatives of both.
5. The Mixer's loss: its own mixture through the *key* encoder (frozen: no parameter gradient, but the
   gradient flows through its activations back to the mask), with the same mixup-InfoNCE (default), or the
   two-way "local" form (``bce``), plus optionally the "global" auxiliary term weighted by η; and the mask loss.
6. Total = clean + mixup(backbone) + Mixer objective + w_mask * mask loss; mixtures are never enqueued.

Fixed relative to ``MoCoSAMix``: there, the Mixer's mask is computed from the features of partner
π_bb(π_mb(i)) (the view-2 features were shuffled by π_bb, then again by π_mb) but applied to the pixels of
π_mb(i). Here each mask is computed from the unshuffled features indexed by the same permutation that picks
the pixels (and the positives), so the Mixer sees the partner it mixes in.
"""
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common.dist import concat_all_gather, get_rank, is_dist
from common.mask_figure import save_mask_figure
from common.mixer import Mixer
from common.mixer import adjust_mask as common_adjust_mask
from common.moco import contrastive_logits, dequeue_and_enqueue, momentum_update
from unmix_cifar import ModelMoCo

MIXER_LOSSES = ("infonce", "bce")


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def info_nce(q, k, queue, T):
    """Mean InfoNCE of queries ``q`` [n, d] with positives ``k`` [n, d] and the ``queue`` [d, K] as negatives."""
    logits = contrastive_logits(q, k, queue, T)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


def mixup_info_nce(z, pos_a, pos_b, queue, lam, T):
    """Mixup-InfoNCE: ``λ·NCE(z, pos_a | queue) + (1-λ)·NCE(z, pos_b | queue)``.

    ``z`` are the mixtures' embeddings; ``pos_a`` the positives of the anchor's part (weight λ), ``pos_b`` those of
    the partner's part; both terms share the queue as negatives.
    """
    return lam * info_nce(z, pos_a, queue, T) + (1.0 - lam) * info_nce(z, pos_b, queue, T)


def mixup_two_way(z, pos_a, pos_b, lam, T):
    """The "local" (``BCE``) objective: a softmax over the two sources' positives only, no queue.

    ``λ·CE([s_a, s_b]/T -> a) + (1-λ)·CE([s_a, s_b]/T -> b)`` with ``s = z·pos``.
    """
    logits = torch.stack([(z * pos_a).sum(1), (z * pos_b).sum(1)], dim=1).float() / T
    zeros = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    return lam * F.cross_entropy(logits, zeros) + (1.0 - lam) * F.cross_entropy(logits, zeros + 1)


def extend_positives(e_a, e_b):
    """Positives extended in feature space (upstream's ``feat_pos_extend="both"``) for the auxiliary term.

    A per-element weight B ~ Beta(2, 2) (with probability ½, B + 1: extrapolation beyond the pair) gives
    ``normalize(B·e_a + (1-B)·e_b)`` and ``normalize(B·e_b + (1-B)·e_a)``. As upstream, the coin is one NumPy
    ``rand(1) > 0.5`` (extrapolation), drawn before B, which comes from the torch CPU RNG.
    """
    extrapolate = bool(np.random.rand(1) > 0.5)
    b = torch.distributions.Beta(2.0, 2.0).sample(e_a.shape)
    if extrapolate:
        b = b + 1.0
    b = b.to(e_a.device, e_a.dtype)
    return F.normalize(b * e_a + (1 - b) * e_b, dim=1), F.normalize(b * e_b + (1 - b) * e_a, dim=1)


def adjust_mask(mask, lam, margin=0.1):
    """Upstream's "auto" mask adjust (``MoCoSAMix.mix_mask_adjust``) for the backbone's mask [n, 2, H, W]:
    ``common.mixer.adjust_mask`` with clamp 1e-10 and ``margin``, **per sample**: each sample whose anchor mean is
    more than ``margin`` from λ is rescaled to an anchor mean of exactly λ; the others are left as they are."""
    return common_adjust_mask(mask, lam, margin, 1e-10)


def global_partners(n_local, device):
    """π for this process: the partners' indices into the gathered batch (length ``n_local``).

    One ``randperm`` of the global batch from the CPU generator of every process; rank 0's is broadcast.
    """
    n_all = n_local * (dist.get_world_size() if is_dist() else 1)
    perm = torch.randperm(n_all).to(device)
    if is_dist():
        dist.broadcast(perm, src=0)
    rank = get_rank()
    return perm[rank * n_local:(rank + 1) * n_local]


def stage_channels(stage):
    """Output channels of a ResNet stage (the last BatchNorm's width)."""
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class MoCoSAMix(ModelMoCo):
    """The demo's MoCo (same encoders, queue and ``state_dict`` keys) plus a ``mixer`` (keys ``mixer.*``).

    ``forward(im1, im2)`` returns the total loss; ``last`` holds the last step's loss terms and a few samples of
    the Mixer's mixture (for the mask figure), detached.
    """

    def __init__(self, dim=128, K=4096, m=0.99, T=0.1, arch="resnet18", bn_splits=8, symmetric=True, alpha=2.0,
                 mixer_loss="infonce", eta=0.0, mask_weight=0.1, mask_adjust=True, mask_layer=2, lam_mul_k=0.25,
                 mixer_dropout=0.0):
        super().__init__(dim=dim, K=K, m=m, T=T, arch=arch, bn_splits=bn_splits, symmetric=symmetric)
        if mixer_loss not in MIXER_LOSSES:
            raise ValueError(f"mixer_loss must be one of {MIXER_LOSSES}")
        self.alpha, self.mixer_loss, self.eta = alpha, mixer_loss, eta
        self.mask_weight, self.mask_adjust = mask_weight, mask_adjust
        # No self-supervised SAMix configuration was ever released: the Mixer takes the settings of OpenMixup's
        # CIFAR-100 SAMix configs (λ rescale k = 0.25, no value-net dropout), the other values MoCoSAMix's defaults.
        # ModelBase.net: 0 conv1, 1 bn1, 2 relu, 3..6 layer1..layer4; the Mixer reads layer(mask_layer + 1)
        self.split = 3 + mask_layer + 1
        self.mixer = Mixer.samix(stage_channels(self.encoder_q.net[self.split - 1]), mask_layer=mask_layer,
                                 lam_mul_k=lam_mul_k, value_dropout=mixer_dropout)
        self.last = {}

    @torch.no_grad()
    def encode_key_stage(self, im):
        """``encode_key`` (same shuffle-BN, same draw) that also returns the stage features, unshuffled."""
        idx_shuffle = torch.randperm(im.shape[0]).to(im.device)
        idx_unshuffle = torch.argsort(idx_shuffle)
        f = self.encoder_k.net[:self.split](im[idx_shuffle])
        k = F.normalize(self.encoder_k.net[self.split:](f), dim=1)
        return k[idx_unshuffle], f[idx_unshuffle]

    def mixer_mask(self, f_anchor, f_partner, lam, width):
        # Our CIFAR-stem ResNet reaches layer3 at stride 4 at every image size; the Mixer's upsampling rule
        # (x16 above 64 px) assumes an ImageNet stem, so the width passed caps at 64 to keep the x4 factor.
        return self.mixer(f_anchor, lam, partner=f_partner, image_width=min(width, 64))["mask"]

    def forward(self, im1, im2, mixed=None, lam=None):
        """The training loss. ``mixed`` and ``lam`` (Un-Mix's) are ignored: SAMix builds its own mixtures."""
        terms = self.losses(im1, im2)
        return terms["clean"] + terms["mix_backbone"] + terms["mixer"] + self.mask_weight * terms["mask"]

    def losses(self, im1, im2):
        """One step's four loss terms (with their graphs); enqueues the keys and fills ``last``."""
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.m)
        lam_bb, lam_mb = (float(v) for v in np.random.beta(self.alpha, self.alpha, size=2))

        # 1. clean MoCo, in the order of ModelMoCo (query 1, keys 2, then query 2, keys 1)
        q1 = F.normalize(self.encoder_q(im1), dim=1)
        k2, f2 = self.encode_key_stage(im2)
        loss_clean = self.ce(q1, k2)
        if self.symmetric:
            q2 = F.normalize(self.encoder_q(im2), dim=1)
            k1, f1 = self.encode_key_stage(im1)
            loss_clean = loss_clean + self.ce(q2, k1)
        else:  # view 1's keys serve the partners' positives and its features the Mixer; never enqueued
            k1, f1 = self.encode_key_stage(im1)

        # 2. partners across the global batch: pixels, features and positives all picked by the same π
        im2_all, f2_all = concat_all_gather(im2), concat_all_gather(f2)
        k1_all = concat_all_gather(k1)
        width = im1.shape[-1]

        # 3. backbone: mask without gradient, mixup-InfoNCE through the query encoder (π_bb drawn, the mask made
        # and adjusted before π_mb is drawn: upstream's order of random draws)
        pi_bb = global_partners(im1.shape[0], im1.device)
        with torch.no_grad():
            mask_bb = self.mixer_mask(f1, f2_all[pi_bb], lam_bb, width)
            if self.mask_adjust:
                mask_bb = adjust_mask(mask_bb, lam_bb)
            mix_bb = im1 * mask_bb[:, :1] + im2_all[pi_bb] * mask_bb[:, 1:]
        pi_mb = global_partners(im1.shape[0], im1.device)
        z_bb = F.normalize(self.encoder_q(mix_bb), dim=1)
        loss_bb = mixup_info_nce(z_bb, k2, k1_all[pi_bb], self.queue, lam_bb, self.T)

        # 4. Mixer: its mixture through the frozen key encoder (gradient reaches the mask through activations)
        mask_mb = self.mixer_mask(f1, f2_all[pi_mb], lam_mb, width)
        mix_mb = im1 * mask_mb[:, :1] + im2_all[pi_mb] * mask_mb[:, 1:]
        z_mb = F.normalize(self.encoder_k(mix_mb), dim=1)
        pos_a, pos_b = k2, k1_all[pi_mb]
        if self.mixer_loss == "infonce":
            loss_mb = mixup_info_nce(z_mb, pos_a, pos_b, self.queue, lam_mb, self.T)
        else:
            loss_mb = mixup_two_way(z_mb, pos_a, pos_b, lam_mb, self.T)
        if self.eta > 0:  # the "global" auxiliary term: extended positives against the queue
            ext_a, ext_b = extend_positives(k2, k1)
            ext_b = concat_all_gather(ext_b)[pi_mb]
            loss_mb = loss_mb + self.eta * mixup_info_nce(z_mb, ext_a, ext_b, self.queue, lam_mb, self.T)
        loss_mask = self.mixer.mask_loss(mask_mb, lam_mb)

        terms = {"clean": loss_clean, "mix_backbone": loss_bb, "mixer": loss_mb, "mask": loss_mask}
        self.last = {"lam": lam_mb, "anchor": im1.detach(), "partner": im2_all[pi_mb].detach(),
                     "mask": mask_mb[:, 1].detach(), "mixed": mix_mb.detach(),
                     "losses": {k: v.detach() for k, v in terms.items()}}
        keys = torch.cat([k1, k2], dim=0) if self.symmetric else k2
        dequeue_and_enqueue(self.queue, self.queue_ptr, concat_all_gather(keys))
        return terms

    def save_mask_figure(self, path, title=None, samples=6):
        """The last step's Mixer mixtures: anchor (view 1), partner (view 2 of π(i)), mask, mixture."""
        if self.last:
            last = self.last
            save_mask_figure(path, last["anchor"], last["partner"], last["mask"], last["mixed"], lam=last["lam"],
                             title=title, samples=samples)
