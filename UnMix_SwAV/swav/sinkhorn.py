"""The two Sinkhorn-Knopp variants of the Un-Mix SwAV code.

Both take the prototype scores ``out`` [n, K] of this process (queue rows first, then the batch) and return
codes [n, K] whose rows sum to 1; the sums over samples are all-reduced, so a multi-process run gives the
single-process result on the concatenated batch. Both run in float32 whatever ``out``'s dtype: under fp16
autocast, ``exp(out / 0.05)`` of fp16 scores would overflow to inf (docs/faithfulness.md).

* :func:`sinkhorn_cifar`: Un-Mix ``for_CIFAR``, i.e. SwAV before April 2021 (docs/faithfulness.md):
  optional global-max subtraction (``--improve_numerical_stability``), ``shoot_infs``, explicit marginals
  r = 1/K and c = 1/(world * n).
* :func:`sinkhorn_imagenet`: Un-Mix ``for_ImageNet``, the April-2021 simplified version
  (docs/faithfulness.md).
"""
import torch
import torch.distributed as dist

from common.dist import all_reduce_sum, get_world_size, is_dist


@torch.no_grad()
def shoot_infs(t):
    """Upstream's ``shoot_infs``: every +-inf of ``t`` is set to 0, then all of them get ``max(t)``
    (the largest value once the infs are zeroed). In place; returns ``t``."""
    mask = torch.isinf(t)
    if mask.any():
        t[mask] = 0
        t[mask] = t.max()
    return t


@torch.no_grad()
def distributed_sinkhorn_old(Q, nmb_iters):
    """Old SwAV Sinkhorn on ``Q = exp(scores / eps).T`` [K, n]; returns codes [n, K] (float32)."""
    Q = shoot_infs(Q)
    sum_Q = all_reduce_sum(torch.sum(Q))
    Q /= sum_Q
    K, n = Q.shape
    r = torch.ones(K, device=Q.device, dtype=Q.dtype) / K
    c = torch.ones(n, device=Q.device, dtype=Q.dtype) / (get_world_size() * n)
    for _ in range(nmb_iters):
        u = all_reduce_sum(torch.sum(Q, dim=1))
        u = shoot_infs(r / u)
        Q *= u.unsqueeze(1)
        Q *= (c / torch.sum(Q, dim=0)).unsqueeze(0)  # column sums are local (columns are samples)
    return (Q / torch.sum(Q, dim=0, keepdim=True)).t().float()


@torch.no_grad()
def sinkhorn_cifar(out, epsilon=0.05, nmb_iters=3, improve_numerical_stability=False):
    """Codes for scores ``out`` [n, K] as Un-Mix for_CIFAR computes them."""
    q = out.detach().float() / epsilon
    if improve_numerical_stability:
        M = torch.max(q)
        if is_dist():
            dist.all_reduce(M, op=dist.ReduceOp.MAX)
        q -= M
    return distributed_sinkhorn_old(torch.exp(q).t(), nmb_iters)


@torch.no_grad()
def sinkhorn_imagenet(out, epsilon=0.05, nmb_iters=3):
    """Codes for scores ``out`` [n, K] as Un-Mix for_ImageNet (SwAV after April 2021) computes them."""
    Q = torch.exp(out.detach().float() / epsilon).t()  # [K, n]
    B = Q.shape[1] * get_world_size()
    K = Q.shape[0]
    Q /= all_reduce_sum(torch.sum(Q))
    for _ in range(nmb_iters):
        sum_of_rows = all_reduce_sum(torch.sum(Q, dim=1, keepdim=True))
        Q /= sum_of_rows
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


SINKHORN = {"cifar": sinkhorn_cifar, "imagenet": sinkhorn_imagenet}
