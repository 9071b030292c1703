"""MoCo building blocks shared by the CIFAR demo and the ImageNet model (He et al. 2020).

Each function does what upstream's ``builder.py`` does, in the same arithmetic order, so results match
upstream to the last bit on the same device.
"""
import torch
import torch.nn.functional as F


def new_queue(dim, K):
    """The initial queue: ``randn(dim, K)`` with unit-norm columns (draws from the global torch RNG)."""
    return F.normalize(torch.randn(dim, K), dim=0)


@torch.no_grad()
def momentum_update(encoder_q, encoder_k, m):
    """``param_k = param_k * m + param_q * (1 - m)`` for every parameter pair (buffers untouched)."""
    for param_q, param_k in zip(encoder_q.parameters(), encoder_k.parameters()):
        param_k.data.copy_(param_k.data * m + param_q.data * (1.0 - m))


def freeze_copy(encoder_q, encoder_k):
    """Initialises the key encoder's parameters from the query encoder and excludes them from autograd."""
    for param_q, param_k in zip(encoder_q.parameters(), encoder_k.parameters()):
        param_k.data.copy_(param_q.data)
        param_k.requires_grad = False


@torch.no_grad()
def dequeue_and_enqueue(queue, queue_ptr, keys):
    """Writes ``keys`` [n, dim] into the ``queue`` [dim, K] at ``queue_ptr`` and advances the pointer."""
    n = keys.shape[0]
    K = queue.shape[1]
    ptr = int(queue_ptr)
    assert K % n == 0, f"queue size {K} is not a multiple of the key batch {n}"
    queue[:, ptr:ptr + n] = keys.t()
    queue_ptr[0] = (ptr + n) % K


def full_precision(t):
    """Half-precision (autocast) tensors upcast to float32; others as they are. The similarity products below
    (and SimCLR/BYOL's) take upcast inputs with autocast off, which would cast them back to half precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def contrastive_logits(q, k, queue, T):
    """Logits ``[q·k, q·queue] / T`` with the positive in column 0 (targets are all zero), float32 at least
    (under ``--amp`` too: the products run outside autocast)."""
    with torch.autocast(q.device.type, enabled=False):
        return _logits(full_precision(q), full_precision(k), full_precision(queue), T)


def _logits(q, k, queue, T):
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1)
    logits /= T
    return logits
