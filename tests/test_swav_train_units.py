"""SwAV + Un-Mix pieces against independent facts: Sinkhorn marginals and dense re-computations (also
across 2 gloo processes), the Un-Mix SwAV loss against the reference formula, the queue as upstream's
three calls fill it, upstream's RNG test vectors, and the LR schedule (upstream's
behaviour as docs/faithfulness.md describes it)."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.dist import free_port
from UnMix_SwAV.swav.loss import SwAVLoss, flip_mixture_slots, make_unmix_inputs, regroup, unmix_swav_loss
from UnMix_SwAV.swav.sinkhorn import distributed_sinkhorn_old, shoot_infs, sinkhorn_cifar, sinkhorn_imagenet
from common.mix import draw_mix_params


# ---------------------------------------------------------------- dense references (float64, [B, K])
def dense_sinkhorn(scores, eps=0.05, iters=3):
    """Plain Sinkhorn-Knopp: alternately give every prototype mass 1/K and every sample mass 1/B;
    return the codes with rows (samples) summing to 1."""
    P = torch.exp(scores.double() / eps)
    B, K = P.shape
    P = P / P.sum()
    for _ in range(iters):
        for k in range(K):
            P[:, k] = P[:, k] / P[:, k].sum() / K
        for b in range(B):
            P[b, :] = P[b, :] / P[b, :].sum() / B
    return P * B


def dense_sinkhorn_old(P, iters=3):
    """The old variant written out on P = exp(scores/eps) [B, K] (infs already replaced)."""
    P = P.double() / P.double().sum()
    B, K = P.shape
    for _ in range(iters):
        P = P * ((1.0 / K) / P.sum(0, keepdim=True))
        P = P * ((1.0 / B) / P.sum(1, keepdim=True))
    return P / P.sum(1, keepdim=True)


def H(q, scores, T=0.1):
    """-mean over rows of sum_k q log softmax(scores / T), with explicit loops."""
    total = 0.0
    for n in range(q.shape[0]):
        logp = scores[n] / T - torch.logsumexp(scores[n] / T, 0)
        total = total - (q[n] * logp).sum()
    return total / q.shape[0]


# ---------------------------------------------------------------- Sinkhorn
def test_imagenet_sinkhorn_equals_dense_and_has_the_right_marginals():
    torch.manual_seed(0)
    scores = torch.randn(12, 5) * 0.3
    codes = sinkhorn_imagenet(scores, 0.05, 3)
    assert torch.allclose(codes.double(), dense_sinkhorn(scores), rtol=1e-5, atol=1e-7)
    assert torch.allclose(codes.sum(1), torch.ones(12), atol=1e-6)  # each sample's code sums to 1
    many = sinkhorn_imagenet(scores, 0.05, 300)  # converged: every prototype gets B/K samples
    assert torch.allclose(many.sum(0), torch.full((5,), 12 / 5), atol=1e-3)


def test_old_sinkhorn_equals_dense_and_marginals():
    torch.manual_seed(1)
    scores = torch.randn(10, 4) * 0.3
    codes = sinkhorn_cifar(scores, 0.05, 3)
    assert torch.allclose(codes.double(), dense_sinkhorn_old(torch.exp(scores.double() / 0.05)), rtol=1e-5)
    assert torch.allclose(codes.sum(1), torch.ones(10), atol=1e-6)
    many = sinkhorn_cifar(scores, 0.05, 300)
    assert torch.allclose(many.sum(0), torch.full((4,), 10 / 4), atol=1e-3)
    # the max subtraction changes nothing where nothing overflows
    assert torch.allclose(sinkhorn_cifar(scores, 0.05, 3, True), codes, rtol=1e-5)


def test_shoot_infs_and_old_sinkhorn_with_overflow():
    t = torch.tensor([[1.0, float("inf")], [-float("inf"), 3.0]])
    assert torch.equal(shoot_infs(t), torch.tensor([[1.0, 3.0], [3.0, 3.0]]))  # infs -> max of the rest
    assert torch.equal(shoot_infs(torch.tensor([2.0, float("inf"), 5.0])), torch.tensor([2.0, 5.0, 5.0]))
    # exp(4.6 / 0.05) = exp(92) overflows float32: upstream replaces it by the largest finite entry
    scores = torch.tensor([[4.6, 2.0, 2.1], [2.0, 2.05, 2.0], [2.2, 2.0, 4.6]])
    P = torch.exp(scores / 0.05)
    assert torch.isinf(P).sum() == 2
    P_fixed = torch.where(torch.isinf(P), P[torch.isfinite(P)].max(), P)
    codes = sinkhorn_cifar(scores, 0.05, 3)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.double(), dense_sinkhorn_old(P_fixed), rtol=1e-5)
    # with --improve_numerical_stability the global max is subtracted first: no inf at all
    stable = sinkhorn_cifar(scores, 0.05, 3, improve_numerical_stability=True)
    assert torch.allclose(stable.double(), dense_sinkhorn_old(torch.exp((scores.double() - 4.6) / 0.05)),
                          rtol=1e-4, atol=1e-12)
    # the inner function takes Q = exp(scores / eps).T as upstream and is float32 out
    assert distributed_sinkhorn_old(P.t().clone(), 3).dtype == torch.float32


def _sinkhorn_worker(rank, world, port, scores, clean, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = scores.shape[0] // world
    mine, mine_clean = scores[rank * n:(rank + 1) * n], clean[rank * n:(rank + 1) * n]
    res = {"old": sinkhorn_cifar(mine, 0.05, 3), "old_stable": sinkhorn_cifar(mine, 0.05, 3, True),
           "new": sinkhorn_imagenet(mine_clean, 0.05, 3), "old_clean": sinkhorn_cifar(mine_clean, 0.05, 3)}
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_both_sinkhorns_agree_across_two_processes(tmp_path):
    torch.manual_seed(2)
    clean = torch.randn(8, 6) * 0.4
    scores = clean.clone()
    scores[5, 2] = 4.6  # an overflow on rank 1 only (old variant; the new one has no inf handling)
    mp.start_processes(_sinkhorn_worker, args=(2, free_port(), scores, clean, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = {"old": sinkhorn_cifar(scores, 0.05, 3), "old_stable": sinkhorn_cifar(scores, 0.05, 3, True),
              "new": sinkhorn_imagenet(clean, 0.05, 3), "old_clean": sinkhorn_cifar(clean, 0.05, 3)}
    assert torch.isfinite(single["old"]).all()
    for k, full in single.items():
        assert torch.allclose(torch.cat([p[k] for p in parts]), full, rtol=1e-5, atol=1e-7), k


# ---------------------------------------------------------------- the Un-Mix SwAV loss
def _scores(bs=4, K=6, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(bs, K, generator=g, dtype=torch.float64) * 0.5 for _ in range(3)]  # s1, s2, sm
    e = [torch.nn.functional.normalize(torch.randn(bs, D, generator=g, dtype=torch.float64), dim=1)
         for _ in range(3)]
    return s, e


@pytest.mark.parametrize("reverse", ["codes", "full"])
def test_unmix_swav_loss_equals_the_reference_formula(reverse):
    (s1, s2, sm), (e1, e2, em) = _scores()
    lam = 0.3
    leaves = [t.clone().requires_grad_(True) for t in (s1, s2, sm)]
    sw = SwAVLoss(4, [2], [0, 1], 0.1, dense_sinkhorn)  # codes tested above; here the composition
    loss, queue, used = unmix_swav_loss(sw, torch.cat([e1, e2, em]), torch.cat(leaves), None, lam, 1,
                                        reverse=reverse)
    assert queue is None and used is False

    ref_leaves = [t.clone().requires_grad_(True) for t in (s1, s2, sm)]
    r1, r2, rm = ref_leaves
    q = lambda s: dense_sinkhorn(s.detach())  # noqa: E731
    ori = 0.5 * (H(q(r1), r2) + H(q(r2), r1))
    unmix = 0.5 * (H(q(rm), r2) + H(q(r2), rm))
    # upstream: only the mixture's codes are reversed, it still predicts with its own scores
    pred = rm if reverse == "codes" else rm.flip(0)
    flip = 0.5 * (H(q(rm.flip(0)), r2) + H(q(r2), pred))
    ref = ori + lam * unmix + (1 - lam) * flip
    assert torch.allclose(loss, ref, rtol=1e-9)
    loss.backward()
    ref.backward()
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-12)


def test_cifar_log_of_softmax_equals_log_softmax():
    (s1, s2, sm), (e1, e2, em) = _scores(seed=3)
    sink = lambda out: sinkhorn_cifar(out, 0.05, 3).double()  # noqa: E731
    a = SwAVLoss(4, [2], [0, 1], 0.1, sink, softmax_then_log=True)(torch.cat([e1, e2]), torch.cat([s1, s2]), None)
    b = SwAVLoss(4, [2], [0, 1], 0.1, sink)(torch.cat([e1, e2]), torch.cat([s1, s2]), None)
    assert torch.allclose(a[0], b[0], rtol=1e-10)


def test_regroup_pairs_each_mixture_with_the_other_view():
    bs = 2
    blocks = ["c0", "c1", "m0", "c2", "c3", "m2"]
    x = torch.cat([torch.full((bs, 1), float(i)) for i in range(len(blocks))])
    ori, mix = regroup(x, bs, 2)
    name = lambda t: [blocks[int(v)] for v in t[::bs, 0]]  # noqa: E731
    assert name(ori) == ["c0", "c1", "c2", "c3"]
    assert name(mix) == ["m0", "c1", "m2", "c3"]
    rows = torch.arange(8.0)[:, None]
    flipped = flip_mixture_slots(rows, bs, 2)[:, 0].tolist()
    assert flipped == [1, 0, 2, 3, 5, 4, 6, 7]


def test_queue_fills_as_upstreams_three_calls_and_is_then_used():
    bs, K, D = 2, 6, 5
    (s1, s2, sm), (e1, e2, em) = _scores(bs=bs, K=K, D=D, seed=4)
    W = torch.nn.functional.normalize(torch.randn(K, D, dtype=torch.float64), dim=1)
    sw = SwAVLoss(bs, [2], [0, 1], 0.1, dense_sinkhorn)
    queue = torch.zeros(2, 3 * bs, D, dtype=torch.float64)
    _, queue, used = unmix_swav_loss(sw, torch.cat([e1, e2, em]), torch.cat([s1, s2, sm]), W, 0.5, 1, queue)
    # newest first: slot 0 got c0, then m0, then flip(m0); slot 1 got c1 three times
    assert torch.equal(queue[0], torch.cat([em.flip(0), em, e1]))
    assert torch.equal(queue[1], torch.cat([e2, e2, e2]))
    assert used is False  # the last row was still empty at each call's check

    # the queue is full now: its scores (queue @ W.T, current prototypes) are prepended for Sinkhorn
    filled = queue.clone()
    loss, queue, used = sw(torch.cat([e1, e2]), torch.cat([s1, s2]), W, queue, False)
    assert used is True
    qa = dense_sinkhorn(torch.cat([filled[0] @ W.t(), s1]))[-bs:]
    qb = dense_sinkhorn(torch.cat([filled[1] @ W.t(), s2]))[-bs:]
    assert torch.allclose(loss, 0.5 * (H(qa, s2) + H(qb, s1)), rtol=1e-9)
    assert torch.equal(queue[0], torch.cat([e1, filled[0][:-bs]]))  # shifted by bs, newest first


# ---------------------------------------------------------------- upstream's RNG test vectors (Part 6)
def _crops(sizes, bs=2):
    # row 0 all zeros, row 1 all ones: the box pasted from the reversed batch shows as ones in row 0
    return [torch.stack([torch.zeros(1, s, s), torch.ones(1, s, s)]) for s in sizes]


def _box(mixed):
    nz = mixed[0, 0].nonzero()
    if len(nz) == 0:
        return None
    return (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


def test_swav_rng_vectors_with_lambda_chaining():
    expected = [  # (lam, [(box, lam after pair) for the 4 pairs])
        (0.476752, [((0, 0, 106, 162), 0.657765), ((0, 0, 51, 56), 0.690104), ((0, 58, 36, 96), 0.851562),
                    ((26, 57, 62, 93), 0.859375)]),
        (0.173747, [((10, 19, 212, 221), 0.186783), ((0, 22, 74, 96), 0.405816), ((0, 15, 64, 89), 0.486111),
                    ((54, 24, 96, 92), 0.690104)]),
        (0.432055, [((0, 35, 108, 203), 0.638393), ((0, 61, 34, 96), 0.870877), ((15, 72, 49, 96), 0.911458),
                    ((73, 63, 96, 91), 0.930122)]),
    ]
    sizes = [224, 224] + [96] * 6
    np.random.seed(31)
    for lam_beta, pairs in expected:
        use_global, lam = draw_mix_params(0.0, 1.0)  # unmix_prob 0: region only
        assert not use_global and lam == pytest.approx(lam_beta, abs=1e-6)
        crops = _crops(sizes)
        out, lam_loss = make_unmix_inputs(crops, lam, use_global)
        assert len(out) == 12 and all(out[3 * j] is crops[2 * j] for j in range(4))
        for j, (box, lam_after) in enumerate(pairs):
            mixed = out[3 * j + 2]
            assert _box(mixed) == box
            x1, y1, x2, y2 = box
            assert 1 - (x2 - x1) * (y2 - y1) / mixed.shape[-1] ** 2 == pytest.approx(lam_after, abs=1e-6)
            assert torch.equal(mixed[1, :, x1:x2, y1:y2], torch.zeros(1, x2 - x1, y2 - y1))
        assert lam_loss == pytest.approx(pairs[-1][1], abs=1e-6)  # the last pair's λ weights the loss


def test_unchained_lambda_uses_the_beta_draw_for_every_box():
    np.random.seed(31)
    use_global, lam = draw_mix_params(0.0, 1.0)
    out, lam_loss = make_unmix_inputs(_crops([224, 224] + [96] * 6), lam, use_global, chain_lambda=False)
    assert _box(out[2]) == (0, 0, 106, 162) and lam_loss == pytest.approx(0.657765, abs=1e-6)
    cut = int(96 * np.sqrt(1 - lam))  # 69: every 96-px box is drawn from the Beta λ
    for j in (1, 2, 3):
        x1, y1, x2, y2 = _box(out[3 * j + 2])
        assert x2 - x1 <= cut and y2 - y1 <= cut and max(x2 - x1, y2 - y1) >= cut // 2


def test_global_branch_blends_every_pair_with_the_same_lambda():
    np.random.seed(0)
    use_global, lam = draw_mix_params(1.0, 1.0)
    crops = _crops([8, 8, 8, 8])
    out, lam_loss = make_unmix_inputs(crops, lam, use_global)
    assert use_global and lam_loss == lam
    assert torch.allclose(out[2][0], torch.full((1, 8, 8), 1 - lam))
    assert torch.allclose(out[5][1], torch.full((1, 8, 8), lam))


# ---------------------------------------------------------------- schedule
def test_lr_schedule_matches_upstream_values():
    from UnMix_SwAV.swav.train import lr_schedule  # (heavier import, kept out of the spawned workers)

    s = lr_schedule(0.6, 0.0006, 400, 5, 0.0, 390)  # the CIFAR scripts, 390 iterations per epoch
    assert len(s) == 156000
    assert s[0] == 0.0 and s[1949] == pytest.approx(0.6) and s[1950] == pytest.approx(0.6)
    assert s[1] == pytest.approx(0.6 / 1949)
    assert s[-1] == pytest.approx(0.0006000001, abs=1e-9)
    short = lr_schedule(0.6, 0.0006, 1, 5, 0.0, 4)  # shorter than the warmup: warmup only, long enough
    assert len(short) == 20


# ---------------------------------------------------------------- one training epoch vs a plain re-computation
def test_train_one_epoch_equals_a_plain_upstream_order_computation():
    """Two iterations of train.train_one_epoch (Un-Mix, CIFAR variant) against the same steps written out in
    upstream's order: prototype normalisation, rand(1) then beta, the mixture and box drawn by hand, one
    forward on [c0, c1, m], the formula of the loss, freezing, LARC.

    (hidden_mlp=0: a Linear bias in front of a BatchNorm1d has a mathematically zero gradient, and LARC
    rescales that float noise to a full-size step, so no two implementations agree on it.)"""
    import copy

    from common.larc import LARC
    from UnMix_SwAV.swav.resnet import build
    from UnMix_SwAV.swav.train import build_parser, make_sinkhorn, train_one_epoch

    torch.manual_seed(0)
    # float64, so the comparison does not depend on the thread count's summation order (Sinkhorn's
    # exp(s / 0.05) and LARC's normalised steps amplify float32 rounding to ~1e-3 with 2 threads)
    model = build("resnet18", normalize=True, hidden_mlp=0, output_dim=4, nmb_prototypes=5, cifar_stem=True).double()
    plain = copy.deepcopy(model)
    torch_state0 = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [([torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
                 torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)], torch.zeros(4)) for _ in range(2)]
    args = build_parser("cifar").parse_args(["--batch_size", "4", "--freeze_prototypes_niters", "1"])
    args.rank = 0
    schedule = np.array([0.5, 0.25])
    larc = lambda m: LARC(torch.optim.SGD(m.parameters(), lr=9.0, momentum=0.9, weight_decay=1e-6),  # noqa
                          0.001, False)
    opt = larc(model)
    sw = SwAVLoss(4, [2], [0, 1], 0.1, make_sinkhorn(args, "cifar"), softmax_then_log=True)
    np.random.seed(5)
    train_one_epoch(batches, model, model, opt, torch.amp.GradScaler("cuda", enabled=False), 0, schedule,
                    None, sw, args, torch.device("cpu"), False)
    draws_left = np.random.rand()

    np.random.seed(5)
    opt2 = larc(plain)
    q = lambda s: sinkhorn_cifar(s, 0.05, 3)  # noqa: E731
    for it, ((c0, c1), _) in enumerate(batches):
        with torch.no_grad():
            plain.prototypes.weight.copy_(torch.nn.functional.normalize(plain.prototypes.weight, dim=1))
        r, lam = np.random.rand(1), np.random.beta(1.0, 1.0)
        if r < 0.5:
            m = lam * c0 + (1 - lam) * c0.flip(0)
        else:
            cut = int(8 * np.sqrt(1.0 - lam))
            cx, cy = np.random.randint(8), np.random.randint(8)
            x1, x2 = np.clip(cx - cut // 2, 0, 8), np.clip(cx + cut // 2, 0, 8)
            y1, y2 = np.clip(cy - cut // 2, 0, 8), np.clip(cy + cut // 2, 0, 8)
            m = c0.clone()
            m[:, :, x1:x2, y1:y2] = c0.flip(0)[:, :, x1:x2, y1:y2]
            lam = 1 - (x2 - x1) * (y2 - y1) / 64
        _, out = plain([c0, c1, m])
        s1, s2, sm = out[:4], out[4:8], out[8:]
        loss = 0.5 * (H(q(s1), s2) + H(q(s2), s1)) + lam * 0.5 * (H(q(sm), s2) + H(q(s2), sm)) \
            + (1 - lam) * 0.5 * (H(q(sm.flip(0)), s2) + H(q(s2), sm))
        opt2.zero_grad()
        loss.backward()
        if it < 1:
            plain.prototypes.weight.grad = None
        for group in opt2.param_groups:
            group["lr"] = schedule[it]
        opt2.step()
    assert np.random.rand() == draws_left  # the same number of NumPy draws
    init = build("resnet18", normalize=True, hidden_mlp=0, output_dim=4, nmb_prototypes=5, cifar_stem=True).double()
    init.load_state_dict(copy.deepcopy(torch_state0))
    worst = 0.0
    for name, a in model.state_dict().items():
        if not a.is_floating_point():
            assert torch.equal(a, plain.state_dict()[name]), name
            continue
        step = plain.state_dict()[name] - init.state_dict()[name]  # what the two steps changed
        diff = (a - plain.state_dict()[name]).norm() / step.norm().clamp_min(1e-12)
        worst = max(worst, float(diff))
        assert diff < 1e-9, (name, float(diff))  # float64 rounding only, far below any logic difference
    print("worst relative difference of the updates", worst)
    assert not torch.equal(model.prototypes.weight, torch.nn.functional.normalize(model.prototypes.weight, dim=1))
