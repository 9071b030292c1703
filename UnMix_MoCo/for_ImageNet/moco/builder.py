"""MoCo with Un-Mix query mixtures (upstream ``moco/builder.py``, see docs/faithfulness.md).

State dict (saved through DDP, so every key gains ``module.``): ``queue`` (dim, K), ``queue_ptr`` (1,)
long, ``encoder_q.*``, ``encoder_k.*`` with torchvision names and the head ``fc`` (or ``fc.0``/``fc.2``
with ``mlp``) -- identical to upstream, so the released checkpoints load with ``strict=True``.

Queue, momentum update and logits come from :mod:`common.moco` (shared with the CIFAR demo).
Without a process group (a single process, which upstream refused with NotImplementedError) the same
code runs with a world of 1: the gather is the identity and the "shuffle" permutes the local batch.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common.dist import concat_all_gather, get_rank, is_dist
from common.moco import contrastive_logits, dequeue_and_enqueue, freeze_copy, momentum_update, new_queue


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and a queue of ``K`` negative keys.

    ``T_m`` is stored but never used, as upstream (``--moco-tm`` has no effect): all three logits
    tensors are divided by ``T``.
    """

    def __init__(self, base_encoder, dim=128, K=65536, m=0.999, T=0.07, T_m=0.07, mlp=False):
        super().__init__()
        self.K, self.m, self.T, self.T_m = K, m, T, T_m
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:  # MoCo v2 head: fc.0 Linear, fc.1 ReLU, fc.2 the original Linear
            dim_mlp = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_q.fc)
            self.encoder_k.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_k.fc)
        freeze_copy(self.encoder_q, self.encoder_k)  # parameters only; BN buffers keep their init
        self.register_buffer("queue", new_queue(dim, K))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        """Enqueues the keys of *all* processes (gathered in rank order)."""
        dequeue_and_enqueue(self.queue, self.queue_ptr, concat_all_gather(keys))

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x):
        """Shuffle-BN: a random permutation of the global batch; this process gets its slice.

        Every process draws ``randperm`` from its CPU generator (so every RNG advances, as upstream)
        and rank 0's permutation is broadcast. Returns ``(x_shuffled_local, idx_unshuffle)``.
        """
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        batch_size_all = x_gather.shape[0]
        num_gpus = batch_size_all // batch_size_this
        idx_shuffle = torch.randperm(batch_size_all).to(x.device)
        if is_dist():
            dist.broadcast(idx_shuffle, src=0)
        idx_unshuffle = torch.argsort(idx_shuffle)
        idx_this = idx_shuffle.view(num_gpus, -1)[get_rank()]
        return x_gather[idx_this], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x, idx_unshuffle):
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        num_gpus = x_gather.shape[0] // batch_size_this
        idx_this = idx_unshuffle.view(num_gpus, -1)[get_rank()]
        return x_gather[idx_this]

    @torch.no_grad()
    def _keys(self, im_k):
        """Momentum update, then the shuffled key pass (no gradient), in the original order."""
        momentum_update(self.encoder_q, self.encoder_k, self.m)
        im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
        k = F.normalize(self.encoder_k(im_k), dim=1)
        return self._batch_unshuffle_ddp(k, idx_unshuffle)

    def forward(self, im_q, im_k, im_qm=None, im_qm_flip=None, lam=None):
        """Returns ``(logits, labels, logits_m, logits_m_flip)``; the last two are None without ``im_qm``.

        As upstream, ``im_qm_flip`` and ``lam`` are accepted and unused: the reverse mixture's features
        are the batch flip of the mixed features (BN batch statistics do not depend on sample order).
        The clean and mixed queries go through ``encoder_q`` in two separate passes (two BN
        batch-statistics, two running-stat updates), never concatenated. Only clean keys are enqueued.
        """
        q = self.encoder_q(im_q)
        q_mixed = self.encoder_q(im_qm) if im_qm is not None else None
        q = F.normalize(q, dim=1)
        k = self._keys(im_k)
        logits = contrastive_logits(q, k, self.queue, self.T)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        logits_m = logits_m_flip = None
        if q_mixed is not None:
            q_mixed_flip = torch.flip(q_mixed, (0,))
            logits_m = contrastive_logits(F.normalize(q_mixed, dim=1), k, self.queue, self.T)
            logits_m_flip = contrastive_logits(F.normalize(q_mixed_flip, dim=1), k, self.queue, self.T)
        self._dequeue_and_enqueue(k)
        return logits, labels, logits_m, logits_m_flip
