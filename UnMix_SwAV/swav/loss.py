"""The Un-Mix SwAV objective: building the mixed inputs, regrouping the outputs, the swapped-prediction
loss with its queue, and the three-call composition (docs/faithfulness.md,
SwAV pretraining).

For one crop pair the model sees ``[view 1, view 2, mixture of view 1]``; the mixture then takes view 1's
place, so it is paired with the OTHER view. With ``q`` the Sinkhorn codes, ``p = softmax(scores / T)`` and
``H(q, p) = -mean_rows sum_k q log p``, upstream computes (one pair, no queue)::

    loss_ori        = 1/2 [H(q(s1), p(s2)) + H(q(s2), p(s1))]
    loss_unmix      = 1/2 [H(q(sm), p(s2)) + H(q(s2), p(sm))]
    loss_unmix_flip = 1/2 [H(q(flip sm), p(s2)) + H(q(s2), p(sm))]
    loss = loss_ori + lam * loss_unmix + (1 - lam) * loss_unmix_flip

Only the mixture's *codes* are reversed in the flip term (``reverse="codes"``, the default, which produced
the published numbers); ``reverse="full"`` reverses the mixture's scores and embeddings everywhere (the
formula of the paper's explanation figure: the reversed mixture also predicts).
"""
import numpy as np
import torch
import torch.nn.functional as F

from common.mix import mix_with_reverse, unmix_loss


def make_unmix_inputs(inputs, lam, use_global, chain_lambda=True, rng=None):
    """``[c0, c1, m0, c2, c3, m2, ...]`` from the crops ``[c0, c1, c2, c3, ...]``; returns ``(list, lam)``.

    Each mixture ``m_k`` mixes crop ``k`` with its batch-reversed copy (``common.mix.mix_with_reverse``;
    the region box is drawn per pair from NumPy's global RNG, as upstream).

    ``chain_lambda=True`` (upstream): in the region branch each pair's box is drawn from the λ left by the
    previous pair (its pixel ratio), and the λ returned (used in the loss) is the last pair's.
    ``chain_lambda=False`` (corrected): every pair's box is drawn from the Beta draw ``lam``, and the λ
    returned is the first pair's ratio, i.e. that of ``m0``, the only mixture whose codes λ weights.
    With one crop pair both give the same result.
    """
    if len(inputs) % 2:
        raise ValueError("Un-Mix pairs consecutive crops: the number of crops must be even")
    out, lam_loss = [], None
    for k in range(0, len(inputs), 2):
        mixed, lam_k = mix_with_reverse(inputs[k], lam, use_global, rng)
        if chain_lambda:
            lam = lam_k
        elif lam_loss is None:
            lam_loss = lam_k
        out += [inputs[k], inputs[k + 1], mixed]
    return out, (lam if chain_lambda else lam_loss)


def regroup(x, bs, n_pairs):
    """Splits the model's rows for ``[c0, c1, m0, c2, c3, m2, ...]`` (``bs`` rows per crop) into
    ``(originals, unmix)``: ``[c0, c1, c2, c3, ...]`` and ``[m0, c1, m2, c3, ...]``."""
    ori, mix = [], []
    for t in range(0, 3 * n_pairs, 3):
        c_even, c_odd, m = (x[bs * (t + j):bs * (t + j + 1)] for j in range(3))
        ori += [c_even, c_odd]
        mix += [m, c_odd]
    return torch.cat(ori), torch.cat(mix)


def flip_mixture_slots(x, bs, n_pairs):
    """Batch-reverses the mixture blocks (even crop slots) of an ``unmix`` tensor from :func:`regroup`."""
    blocks = list(x.split(bs))
    for j in range(n_pairs):
        blocks[2 * j] = blocks[2 * j].flip(0)
    return torch.cat(blocks)


class SwAVLoss:
    """Upstream's ``swav_loss`` (one call = one swapped-prediction loss over all crops).

    ``sinkhorn``: a callable scores [n, K] -> codes [n, K] (see :mod:`.sinkhorn`).
    ``softmax_then_log``: CIFAR computes ``log(softmax(x / T))``, ImageNet ``log_softmax(x / T)``.
    """

    def __init__(self, batch_size, nmb_crops, crops_for_assign, temperature, sinkhorn,
                 softmax_then_log=False):
        self.bs = batch_size
        self.n_crops = int(sum(nmb_crops)) if isinstance(nmb_crops, (list, tuple)) else int(nmb_crops)
        self.crops_for_assign = list(crops_for_assign)
        self.temperature = temperature
        self.sinkhorn = sinkhorn
        self.softmax_then_log = softmax_then_log

    def log_prob(self, x):
        x = x / self.temperature
        return torch.log(F.softmax(x, dim=1)) if self.softmax_then_log else F.log_softmax(x, dim=1)

    def __call__(self, embedding, output, prototypes, queue=None, use_the_queue=False, reverse=False):
        """Returns ``(loss, queue, use_the_queue)``.

        ``prototypes``: the prototype weight [K, D] that scores the queue (upstream referenced an
        undefined global ``model`` here: a NameError as soon as the queue was used).
        ``reverse``: batch-reverse crop 0's codes (and its queue push), upstream's one-sided reverse.
        The queue is shifted and filled in place, newest rows first, at every call.
        """
        bs, loss = self.bs, 0
        for i, crop_id in enumerate(self.crops_for_assign):
            flip = reverse and crop_id == 0
            with torch.no_grad():
                out = output[bs * crop_id:bs * (crop_id + 1)].detach()
                if flip:
                    out = out.flip(0)
                if queue is not None:
                    if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                        use_the_queue = True
                        out = torch.cat((torch.mm(queue[i], prototypes.detach().t()).to(out.dtype), out))
                    queue[i, bs:] = queue[i, :-bs].clone()
                    emb = embedding[crop_id * bs:(crop_id + 1) * bs].detach()
                    queue[i, :bs] = emb.flip(0) if flip else emb
                q = self.sinkhorn(out)[-bs:]
            subloss = 0
            for v in np.delete(np.arange(self.n_crops), crop_id):
                subloss -= torch.mean(torch.sum(q * self.log_prob(output[bs * v:bs * (v + 1)]), dim=1))
            loss += subloss / (self.n_crops - 1)
        return loss / len(self.crops_for_assign), queue, use_the_queue


def unmix_swav_loss(swav_loss, embedding_unmix, output_unmix, prototypes, lam, n_pairs, queue=None,
                    use_the_queue=False, reverse="codes"):
    """The whole Un-Mix objective for the model's outputs on ``[c0, c1, m0, ...]``.

    Three :class:`SwAVLoss` calls, in upstream's order (ori, unmix, unmix-flip), sharing the queue:
    ``loss_ori + lam * loss_unmix + (1 - lam) * loss_unmix_flip``. Returns ``(loss, queue, use_the_queue)``.
    """
    bs = swav_loss.bs
    embedding_unmix = embedding_unmix.detach()
    embedding, emb_unmix = regroup(embedding_unmix, bs, n_pairs)
    output, out_unmix = regroup(output_unmix, bs, n_pairs)
    loss_ori, queue, use_the_queue = swav_loss(embedding, output, prototypes, queue, use_the_queue)
    loss_unmix, queue, use_the_queue = swav_loss(emb_unmix, out_unmix, prototypes, queue, use_the_queue)
    if reverse == "codes":
        loss_flip, queue, use_the_queue = swav_loss(emb_unmix, out_unmix, prototypes, queue, use_the_queue,
                                                    reverse=True)
    elif reverse == "full":
        loss_flip, queue, use_the_queue = swav_loss(
            flip_mixture_slots(emb_unmix, bs, n_pairs), flip_mixture_slots(out_unmix, bs, n_pairs),
            prototypes, queue, use_the_queue)
    else:
        raise ValueError(f"reverse must be 'codes' or 'full', not {reverse!r}")
    return unmix_loss(loss_ori, loss_unmix, loss_flip, lam), queue, use_the_queue
