"""Un-Mix batch mixing: each sample i is mixed with sample N-1-i of the same batch.

The draw order follows upstream exactly (docs/faithfulness.md, "The Un-Mix mixing"):
``rand(1)`` (global vs region), ``beta(β, β)`` (λ), then, in the region branch only, ``randint`` for the
box centre on dim 2 and then on dim 3. By default every draw comes from NumPy's *global* legacy RNG, as
upstream, so ``np.random.seed(s)`` replays upstream's λ and boxes. Pass a ``np.random.RandomState`` as
``rng`` to use a private stream instead.

Upstream used ``np.int`` (removed in NumPy 1.24); ``int`` truncates the same way.
"""
import numpy as np
import torch


def _rng(rng):
    return np.random if rng is None else rng


def rand_bbox(size, lam, rng=None):
    """CutMix box for a tensor of ``size`` (N, C, H, W), covering about a fraction ``1 - lam``.

    Returns ``(x1, y1, x2, y2)``: ``x`` indexes dim 2 and ``y`` dim 3, as ``t[:, :, x1:x2, y1:y2]``.
    The centre is drawn on dim 2 first, then on dim 3 (upstream calls them W and H).
    """
    rng = _rng(rng)
    w, h = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx = rng.randint(w)
    cy = rng.randint(h)
    x1 = int(np.clip(cx - cut_w // 2, 0, w))
    y1 = int(np.clip(cy - cut_h // 2, 0, h))
    x2 = int(np.clip(cx + cut_w // 2, 0, w))
    y2 = int(np.clip(cy + cut_h // 2, 0, h))
    return x1, y1, x2, y2


def draw_mix_params(prob=0.5, beta=1.0, rng=None):
    """Draws ``(use_global, lam)``: ``rand(1) < prob`` selects the global blend, then ``lam ~ Beta(β, β)``."""
    rng = _rng(rng)
    r = rng.rand(1)
    lam = rng.beta(beta, beta)
    return bool(r[0] < prob), float(lam)


def mix_with_reverse(x, lam, use_global, rng=None):
    """Mixes batch ``x`` [N, C, H, W] with ``x.flip(0)``; returns ``(mixed, lam)``.

    Global: ``mixed = lam * x + (1 - lam) * x.flip(0)`` and ``lam`` is returned unchanged.
    Region: the CutMix box of ``rand_bbox(x.size(), lam)`` is pasted from the reversed batch and the
    returned ``lam`` is the exact fraction of each sample's own pixels, ``1 - box_area / (H * W)``
    (1.0 for an empty box). The mixture of the reverse order is ``mixed.flip(0)``.
    """
    if use_global:
        # Same operations, in the same order, as upstream: lam*x + (1-lam)*x_rev (bit-identical).
        mixed = torch.flip(x, (0,)).mul_(1.0 - lam).add_(x * lam)
        return mixed, lam
    x1, y1, x2, y2 = rand_bbox(x.size(), lam, rng)
    mixed = x.clone()
    mixed[:, :, x1:x2, y1:y2] = torch.flip(x[:, :, x1:x2, y1:y2], (0,))
    lam = 1.0 - ((x2 - x1) * (y2 - y1)) / (x.size(-1) * x.size(-2))
    return mixed, float(lam)


def unmix_batch(x, prob=0.5, beta=1.0, rng=None):
    """One Un-Mix draw for the batch ``x``: returns ``(mixed, lam)``.

    ``prob`` is the probability of the global (λ-blend) mixture; otherwise a region (CutMix) mixture.
    """
    use_global, lam = draw_mix_params(prob, beta, rng)
    return mix_with_reverse(x, lam, use_global, rng)


def unmix_loss(loss_clean, loss_mix, loss_mix_flip, lam):
    """The Un-Mix objective: ``loss_clean + lam * loss_mix + (1 - lam) * loss_mix_flip``."""
    return loss_clean + lam * loss_mix + (1.0 - lam) * loss_mix_flip
