"""The learnable Mixer of SAMix and AutoMix: an attention module that turns backbone features of a pair of
images into a per-pixel mixing mask, plus its mask loss and the λ rescale.

One class serves both methods; they differ only in configuration (see :meth:`Mixer.samix` and
:meth:`Mixer.automix`):

=====================  ==================================  ===================================
setting                SAMix                               AutoMix
=====================  ==================================  ===================================
λ encoding             multiply features (residual)        concatenate a λ / 1-λ channel
                                                           (ImageNet; CIFAR/Tiny: none)
value net              1x1 conv C->C/2, BN, ELU,           one 1x1 conv C(+1)->1 with bias
                       1x1 conv C/2->1, dropout
q / k                  two 1x1 convs, each on the          ONE shared 1x1 conv: q from the
                       concatenated pair [x_a, x_b]        anchor, k from the partner
upsampling             bilinear                            nearest
mask loss              L1 + Variance (margin 0.1)          L1 (margin 0.1)
=====================  ==================================  ===================================

The mask of sample ``i`` is built from the features of ``i`` (the *anchor*) and of its *partner*:
either ``feature[index[i]]`` (pass ``index``) or ``partner[i]`` (pass ``partner`` features directly, e.g. the
features of another view, as the self-supervised variant needs). Output channel 0 weights the anchor,
channel 1 the partner; they sum to 1 at every pixel::

    mixed = x * mask[:, 0:1] + x_partner * mask[:, 1:2]
"""
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F


def rescale_lam(lam, k):
    """λ rescale: the cubic ``(4/3 λ³ - 2 λ² + (k+1) λ) / (k + 1/3)`` for ``k >= 0``; ``λ`` itself for ``k < 0``.

    Odd-symmetric about (½, ½), fixes 0, ½ and 1, and pulls λ toward ½ (slope ``k / (k + 1/3)`` at ½), e.g.
    ``k = 0.25`` maps 0.1 to 0.1823. (:class:`Mixer` clamps ``k`` to at most 10 when it is built, as upstream.)
    """
    if k < 0:
        return lam
    return (4.0 / 3.0 * lam ** 3 - 2.0 * lam ** 2 + (k + 1.0) * lam) / ((k + 1.0) - 2.0 / 3.0)


def upsample_factor(mask_layer, image_width):
    """Upsampling from the Mixer's feature map to the image: ``2**(2+l)`` above 64 px, ``2**l`` otherwise.

    (ImageNet-style ResNets reach stage ``l+1`` at stride ``2**(2+l)``; CIFAR-stem ResNets at ``2**l``.)
    """
    return 2 ** (2 + mask_layer) if image_width > 64 else 2 ** mask_layer


def mask_loss(mask, lam, mode="L1+Variance", margin=0.1):
    """The Mixer's mask regulariser, on the 2-channel ``mask`` [N,2,H,W] (or the partner channel [N,1,H,W]).

    With ``m`` the partner channel and ``m̄`` its mean over the **whole batch** (not per sample):

    - ``"L1"`` (AutoMix): ``max(|1 - m̄ - λ| - margin, 0)``, keeping the anchor's share within ``margin`` of λ;
    - ``"L1+Variance"`` (SAMix): that minus ``2 * mean((m - m̄)²)``, a reward for masks close to 0/1.
    """
    m = mask[:, 1] if mask.dim() == 4 and mask.size(1) == 2 else mask
    m = m.float()
    mean = m.mean()
    loss = torch.clamp((1.0 - mean - lam).abs() - margin, min=0.0)
    if mode == "L1":
        return loss
    if mode == "L1+Variance":
        return loss - 2.0 * ((m - mean) ** 2).mean()
    raise ValueError(f"unknown mask loss mode {mode!r} (L1 or L1+Variance)")


def adjust_mask(mask, lam, margin, eps):
    """Per-sample rescale of a 2-channel mask [N,2,H,W] (channel 0: anchor weight) toward the anchor share ``lam``.

    Upstream's rule (``AutoMixup.pixel_mixup`` with ``margin = eps = 1e-8``; ``MoCoSAMix.mix_mask_adjust``'s
    "auto" mode with ``eps = 1e-10``, ``margin = 0.1``): with ``a`` the anchor channel clamped to
    ``[eps, 1-eps]`` and ``ā`` **each sample's** mean of it,

    - ``ā > lam + margin``: the anchor channel becomes ``a·lam/ā``, the partner channel 1 minus it;
    - ``ā < lam - margin``: the partner channel becomes ``(1-a)·(1-lam)/(1-ā)``, the anchor channel 1 minus it;
    - otherwise the sample's mask is left as it is.

    So every sample beyond the margin ends with an anchor mean of exactly ``lam``. Returns a new tensor; no host
    synchronisation (both candidates are computed and selected on the device).
    """
    a = mask[:, :1].clamp(min=eps, max=1.0 - eps)
    mean = a.mean(dim=(1, 2, 3), keepdim=True)
    down = a * (lam / mean)
    up = (1.0 - a) * ((1.0 - lam) / (1.0 - mean))
    larger, smaller = mean > lam + margin, mean < lam - margin
    anchor = torch.where(larger, down, torch.where(smaller, 1.0 - up, mask[:, :1]))
    partner = torch.where(larger, 1.0 - down, torch.where(smaller, up, mask[:, 1:]))
    return torch.cat([anchor, partner], dim=1)


class Mixer(nn.Module):
    """Attention Mixer (OpenMixup's ``PixelMixBlock`` as SAMix/AutoMix configure it).

    Args:
        in_channels: channels ``C`` of the feature map fed in (ResNet stage ``mask_layer + 1``).
        mask_layer: the stage index the features come from (2 = ResNet layer3); sets the upsampling.
        reduction: q/k channels are ``C // reduction`` (computed on ``C`` even when q/k see ``2C``).
        lam_mul: encode λ by multiplying the features (SAMix); ``lam_residual`` multiplies by ``1 + λ`` /
            ``2 - λ`` instead of ``λ`` / ``1 - λ``.
        lam_concat: encode λ by appending a constant λ (anchor) / 1-λ (partner) channel (AutoMix).
        lam_mul_k: λ rescale parameter(s) ``k`` (a number or a list, one drawn per call with Python's
            ``random.choices``, as upstream); negative = off; values above 10 count as 10 (upstream's clamp).
            Used only with ``lam_mul`` (upstream rescales λ for the multiplication only).
        value_layers: 2 = conv C->C/2 (no bias), BN, ELU, conv C/2->1 (no bias); 1 = one conv ->1 with bias.
        value_dropout: dropout on the value net's 1-channel output.
        qk_concat: q and k from two convs, both on the concatenated pair (SAMix); otherwise ONE conv
            (``query``, no ``key``) gives q from the anchor and k from the partner (AutoMix; upstream's
            ``PixelMixBlock`` builds no key conv without ``x_qk_concat``).
        upsample: ``"bilinear"`` (SAMix) or ``"nearest"`` (AutoMix), or a list; one mode is drawn per call with
            ``random.choices`` (also from a one-element list, so the Python RNG advances as upstream's).
        use_scale: divide the attention logits by ``sqrt(C // reduction)``.
        mask_loss_mode, mask_loss_margin: the regulariser :meth:`mask_loss` computes.
    """

    def __init__(self, in_channels, mask_layer=2, reduction=2, lam_mul=True, lam_residual=True, lam_concat=False,
                 lam_mul_k=-1, value_layers=2, value_dropout=0.1, qk_concat=True, upsample="bilinear",
                 use_scale=True, mask_loss_mode="L1+Variance", mask_loss_margin=0.1):
        super().__init__()
        if lam_mul and lam_concat:
            raise ValueError("lam_mul and lam_concat are exclusive")
        if qk_concat and lam_concat:
            raise ValueError("qk_concat and lam_concat are exclusive (as upstream)")
        if value_layers not in (1, 2):
            raise ValueError("value_layers must be 1 or 2")
        self.in_channels = in_channels
        self.mask_layer = mask_layer
        self.inter_channels = max(in_channels // reduction, 1)
        self.lam_mul, self.lam_residual, self.lam_concat = bool(lam_mul), bool(lam_residual), bool(lam_concat)
        ks = list(lam_mul_k) if isinstance(lam_mul_k, (list, tuple)) else [lam_mul_k]
        self.lam_mul_k = [min(k, 10) if k >= 0 else -1 for k in ks]
        self.qk_concat = bool(qk_concat)
        self.upsample = list(upsample) if isinstance(upsample, (list, tuple)) else [upsample]
        for mode in self.upsample:
            if mode not in ("bilinear", "nearest"):
                raise ValueError(f"unknown upsampling mode {mode!r}")
        self.use_scale = bool(use_scale)
        self.mask_loss_mode, self.mask_loss_margin = mask_loss_mode, mask_loss_margin

        c_in = in_channels + (1 if lam_concat else 0)
        qk_in = 2 * in_channels if qk_concat else c_in
        self.query = nn.Conv2d(qk_in, self.inter_channels, 1)
        self.key = nn.Conv2d(qk_in, self.inter_channels, 1) if qk_concat else None  # else k shares `query`
        if value_layers == 2:
            self.value = nn.Sequential(
                nn.Conv2d(c_in, self.inter_channels, 1, bias=False), nn.BatchNorm2d(self.inter_channels),
                nn.ELU(inplace=True), nn.Conv2d(self.inter_channels, 1, 1, bias=False), nn.Dropout(value_dropout))
        else:
            self.value = nn.Sequential(nn.Conv2d(c_in, 1, 1), nn.Dropout(value_dropout))
        self.reset_parameters()

    @classmethod
    def samix(cls, in_channels, mask_layer=2, lam_mul_k=-1, value_dropout=0.1, **kw):
        """SAMix's configuration (ImageNet: ``lam_mul_k=-1``, dropout 0.1; CIFAR/Tiny: 0.25 / -1, dropout 0)."""
        return cls(in_channels, mask_layer=mask_layer, lam_mul=True, lam_residual=True, lam_concat=False,
                   lam_mul_k=lam_mul_k, value_layers=2, value_dropout=value_dropout, qk_concat=True,
                   upsample="bilinear", mask_loss_mode="L1+Variance", **kw)

    @classmethod
    def automix(cls, in_channels, mask_layer=2, lam_concat=True, **kw):
        """AutoMix's configuration: one shared q/k conv, one-conv value net, nearest upsampling, L1 mask loss;
        λ appended as a channel (``lam_concat=True``, the ImageNet configs) or no λ input at all
        (``lam_concat=False``, the CIFAR-100 and Tiny-ImageNet configs)."""
        return cls(in_channels, mask_layer=mask_layer, lam_mul=False, lam_residual=False, lam_concat=lam_concat,
                   lam_mul_k=-1, value_layers=1, value_dropout=0.0, qk_concat=False, upsample="nearest",
                   mask_loss_mode="L1", **kw)

    def reset_parameters(self):
        """Conv weights ~ N(0, 0.01), biases 0, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode_lam(self, x_a, x_b, lam):
        """λ-encoded anchor and partner features and the λ the features were scaled with.

        ``lam_mul`` draws ``k`` (``random.choices``, one draw per call as upstream) and multiplies by the
        rescaled λ; ``lam_concat`` appends the sampled λ itself (upstream rescales only for ``lam_mul``).
        """
        if self.lam_mul:
            lam = float(rescale_lam(lam, random.choices(self.lam_mul_k, k=1)[0]))
            if self.lam_residual:
                return x_a * (1.0 + lam), x_b * (1.0 + (1.0 - lam)), lam
            return x_a * lam, x_b * (1.0 - lam), lam
        if self.lam_concat:
            n, _, h, w = x_a.shape
            ones = x_a.new_ones(n, 1, h, w)
            return torch.cat([x_a, ones * lam], 1), torch.cat([x_b, ones * (1.0 - lam)], 1), lam
        return x_a, x_b, lam

    def forward(self, feature, lam, index=None, partner=None, image_width=None, upsample=None):
        """Mask for mixing each sample with its partner.

        Args:
            feature: anchor features [N, C, h, w] (sample ``i``).
            lam: the mixing ratio λ (a float): the anchor's intended share.
            index: permutation; the partner of ``i`` is ``feature[index[i]]``. Exactly one of ``index`` and
                ``partner`` must be given.
            partner: partner features [N, C, h, w] aligned with ``feature`` (``partner[i]`` pairs with ``i``).
            image_width: width of the images to mix; sets the upsampling factor (:func:`upsample_factor`).
                ``None`` returns the mask at feature resolution.
            upsample: overrides the upsampling mode for this call (upstream's ``mask_up_override``); otherwise
                one mode is drawn per call.

        Returns:
            dict with ``mask`` [N, 2, H, W] (channel 0: anchor weight, channel 1: partner weight, summing to
            1), ``logits`` [N, 1, h, w] (partner-mask logits before upsampling, fp32), ``attention`` [N, hw, hw]
            (fp32, rows sum to 1), ``x_lam`` / ``x_lam_`` (the anchor / partner features *before* the λ
            encoding, as upstream returns them) and ``lam_encoded`` (the λ the features were encoded with:
            rescaled under ``lam_mul``; labels and the mask loss use the sampled λ itself).
        """
        if (index is None) == (partner is None):
            raise ValueError("pass exactly one of index (a permutation) and partner (features)")
        x_a = feature
        x_b = feature[index] if partner is None else partner
        if x_b.shape != x_a.shape:
            raise ValueError(f"partner features {tuple(x_b.shape)} do not match the anchor's {tuple(x_a.shape)}")
        x_lam, x_lam_, lam = self.encode_lam(x_a, x_b, float(lam))
        n, _, h, w = x_a.shape

        v = self.value(x_lam_).reshape(n, 1, h * w).transpose(1, 2)  # [N, hw, 1]
        if self.qk_concat:
            z = torch.cat([x_lam, x_lam_], dim=1)
            q_in, k_in = z, z
        else:
            q_in, k_in = x_lam, x_lam_
        q = self.query(q_in).reshape(n, self.inter_channels, h * w).transpose(1, 2)  # [N, hw, C']
        key = self.query if self.key is None else self.key
        k = key(k_in).reshape(n, self.inter_channels, h * w)  # [N, C', hw]
        # attention and mask logits in fp32 (upstream forces fp32 here; it overflows in fp16)
        with torch.autocast(device_type=x_a.device.type, enabled=False):
            dt = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
            logits = torch.bmm(q.to(dt), k.to(dt))
            if self.use_scale:
                logits = logits / math.sqrt(self.inter_channels)
            attention = logits.softmax(dim=-1)
            s = torch.bmm(attention, v.to(dt)).transpose(1, 2).reshape(n, 1, h, w)
            up = s
            mode = upsample or random.choices(self.upsample, k=1)[0]  # drawn on every call, as upstream
            if image_width is not None:
                factor = upsample_factor(self.mask_layer, image_width)
                if factor != 1:
                    up = F.interpolate(s, scale_factor=factor, mode=mode)
            m = torch.sigmoid(up)
        mask = torch.cat([1.0 - m, m], dim=1)
        return {"mask": mask, "logits": s, "attention": attention, "x_lam": x_a, "x_lam_": x_b, "lam_encoded": lam}

    def mask_loss(self, mask, lam):
        """:func:`mask_loss` with this Mixer's mode and margin."""
        return mask_loss(mask, lam, self.mask_loss_mode, self.mask_loss_margin)
