"""SimCLR / BYOL + Un-Mix (UnMix_SimCLR_BYOL): losses, Un-Mix composition, target network, schedules, eval.

Facts checked against: the NT-Xent definition and a hand-computed case, BYOL's formulas,
htdt's key names, htdt's schedule loop simulated with torch's MultiStepLR, htdt's
loop kNN, and the Un-Mix objective written out term by term.
"""
import argparse
import math
from itertools import chain

import pytest
import torch
import torch.nn.functional as F

from UnMix_SimCLR_BYOL.eval import knn_majority, linear_probe
from UnMix_SimCLR_BYOL.main_unmix import evaluate_now, learning_rate
from UnMix_SimCLR_BYOL.methods import BYOL, SimCLR, norm_mse, nt_xent, target_tau
from common.mix import mix_with_reverse


# ------------------------------------------------------------------------------------------------ losses
def nt_xent_plain(z0, z1, tau):
    """NT-Xent from its definition: 2N anchors, positive = other view, softmax over the 2N-1 others."""
    z = F.normalize(torch.cat([z0, z1]).double(), dim=1)
    n2 = z.size(0)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [(z[i] @ z[k]).item() / tau for k in range(n2) if k != i]
        total += -(z[i] @ z[pos]).item() / tau + math.log(sum(math.exp(s) for s in sims))
    return total / n2


def test_nt_xent_hand_computed():
    # directions after normalisation: z0 = (1,0), (0,1); z1 = (1,0), (1,0); tau = 0.5 -> sims/tau in {0, 2}
    z0 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z1 = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    e2 = math.exp(2)
    # view-0 anchors: log(2 + e^-2), log 3; view-1 anchors: log(2 + e^-2), log(1 + 2 e^2)
    expected = (2 * math.log(2 + 1 / e2) + math.log(3) + math.log(1 + 2 * e2)) / 4
    assert nt_xent(z0, z1, tau=0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_equals_plain_definition(tau):
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z0, z1, tau).item() == pytest.approx(nt_xent_plain(z0, z1, tau), rel=1e-5)


def test_norm_mse_and_target_tau_formulas():
    assert norm_mse(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])).item() == pytest.approx(2.0)
    assert norm_mse(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])).item() == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    assert norm_mse(p, z).item() == pytest.approx(2 - 2 * F.cosine_similarity(p, z).mean().item(), rel=1e-5)
    # 0.99 -> 1.0 on a cosine, as a function of ep / epochs
    assert target_tau(0.0) == pytest.approx(0.99)
    assert target_tau(0.5) == pytest.approx(0.995)
    assert target_tau(1.0) == pytest.approx(1.0)
    for prog in (0.1, 0.37, 0.9):
        assert target_tau(prog, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi * prog) + 1) / 2)


# ------------------------------------------------------------------------------------------------ models
def tiny(method, **kw):
    torch.manual_seed(0)
    cls = SimCLR if method == "simclr" else BYOL
    return cls("resnet18", emb=8, head_size=16, **kw).train()


def batch(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)
    mixed, lam = mix_with_reverse(x0, 0.3, use_global=True)
    return x0, x1, mixed, lam


def test_state_dict_uses_htdt_key_names():
    sd = SimCLR().state_dict()
    assert sd["model.module.conv1.weight"].shape == (64, 3, 3, 3)  # 3x3 small-image stem
    assert sd["head.0.weight"].shape == (1024, 512) and sd["head.3.weight"].shape == (64, 1024)
    assert "head.1.running_mean" in sd and sd["bn_last.weight"].shape == (64,)
    assert not any(".fc." in k for k in sd)
    sd = BYOL().state_dict()
    assert sd["pred.0.weight"].shape == (1024, 64) and sd["pred.3.weight"].shape == (64, 1024)
    online = {k[len("model."):] for k in sd if k.startswith("model.")}
    target = {k[len("model_t."):] for k in sd if k.startswith("model_t.")}
    assert online == target and {k for k in sd if k.startswith("head_t.")} == {"head_t." + k[5:] for k in sd if k.startswith("head.")}


def htdt_layout(byol):
    """htdt's module tree built from its description, independently of our classes:
    torchvision ResNet-18 with a 3x3 conv1, Identity max-pool and fc, wrapped in nn.DataParallel."""
    import torchvision
    from torch import nn

    def encoder():
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool, net.fc = nn.Identity(), nn.Identity()
        return nn.DataParallel(net)

    def head(i, o):
        return nn.Sequential(nn.Linear(i, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, o))

    m = nn.Module()
    m.model, m.head = encoder(), head(512, 64)
    if byol:
        m.pred, m.model_t, m.head_t = head(64, 64), encoder(), head(512, 64)
    else:
        m.bn_last = nn.BatchNorm1d(64)
    return m


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_htdt_checkpoints_load_strictly_both_ways(method):
    htdt = htdt_layout(method == "byol")
    ours = SimCLR() if method == "simclr" else BYOL()
    sd = htdt.state_dict()
    ours.load_state_dict(sd, strict=True)  # an htdt checkpoint into our model
    htdt.load_state_dict(ours.state_dict(), strict=True)  # ours into htdt's (its test.py)
    assert all(torch.equal(sd[k], v) for k, v in ours.state_dict().items())


def test_simclr_unmix_is_base_plus_weighted_mixture_terms():
    model = tiny("simclr")
    x0, x1, mixed, lam = batch()
    loss, base = model.training_loss(x0, x1, mixed, lam)
    # the authors' snippet, term by term: base + lam * L([x1, mixed]) + (1 - lam) * L([x1, mixed_flip])
    m1, m2 = model([x1, mixed]), model([x1, mixed.flip(0)])
    assert base.item() == pytest.approx(model([x0, x1]).item(), rel=1e-5)
    assert m1.item() != pytest.approx(m2.item(), rel=1e-3)  # the two terms differ, so the weighting matters
    assert loss.item() == pytest.approx((base + lam * m1 + (1 - lam) * m2).item(), rel=1e-5)
    loss_sep, _ = model.training_loss(x0, x1, mixed, lam, separate_passes=True)
    assert loss_sep.item() == pytest.approx(loss.item(), rel=1e-5)


def test_byol_unmix_online_target_is_clean_view_two():
    model = tiny("byol")
    x0, x1, mixed, lam = batch()
    loss, base = model.training_loss(x0, x1, mixed, lam)
    p, t = model.online, model.target
    base_direct = norm_mse(p(x0), t(x1)) + norm_mse(p(x1), t(x0))
    m1, m2 = norm_mse(p(mixed), t(x1)), norm_mse(p(mixed.flip(0)), t(x1))
    assert base.item() == pytest.approx(base_direct.item(), rel=1e-5)
    assert loss.item() == pytest.approx((base_direct + lam * m1 + (1 - lam) * m2).item(), rel=1e-5)


def test_byol_unmix_symmetric_is_readme_recipe():
    model = tiny("byol", unmix_target="symmetric")
    x0, x1, mixed, lam = batch()
    loss, base = model.training_loss(x0, x1, mixed, lam)
    expected = model([x0, x1]) + lam * model([x1, mixed]) + (1 - lam) * model([x1, mixed.flip(0)])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_shared_passes_give_same_loss_and_gradients_as_separate_passes(method):
    # float64 so that summation-order rounding (BN over a permuted batch) stays far below the tolerance
    x0, x1, mixed, lam = (t.double() if torch.is_tensor(t) else t for t in batch(seed=3))
    grads, losses = [], []
    for separate in (False, True):
        model = tiny(method).double()
        loss, _ = model.training_loss(x0, x1, mixed, lam, separate_passes=separate)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-10, msg=n)


def test_byol_target_gets_no_gradient_and_follows_ema():
    model = tiny("byol")
    target_params = list(chain(model.model_t.parameters(), model.head_t.parameters()))
    online_params = list(chain(model.model.parameters(), model.head.parameters()))
    for t, s in zip(target_params, online_params):  # initialised as an exact copy
        assert torch.equal(t, s) and not t.requires_grad
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0, x1, mixed, lam = batch()
    loss, _ = model.training_loss(x0, x1, mixed, lam)
    loss.backward()
    assert all(t.grad is None for t in target_params)
    assert all(s.grad is not None for s in online_params)
    opt.step()
    before_t = [t.detach().clone() for t in target_params]
    online_now = [s.detach().clone() for s in online_params]
    assert any(not torch.equal(a, b) for a, b in zip(before_t, online_now))  # the optimizer moved the online net
    tau = model.step(0.3)
    assert tau == pytest.approx(1 - 0.01 * (math.cos(math.pi * 0.3) + 1) / 2)
    for t, t0, s in zip(target_params, before_t, online_now):
        torch.testing.assert_close(t.detach(), t0 * tau + s * (1 - tau), rtol=0, atol=1e-7)


def test_simclr_step_is_noop():
    model = tiny("simclr")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.step(0.5) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ schedules
def ns(**kw):
    base = dict(lr=3e-3, epochs=60, warmup_iters=25, drop=[50, 25], drop_gamma=0.2, eval_every=20, eval_every_drop=5)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("kw", [{}, {"epochs": 3, "warmup_iters": 4}, {"drop": []}, {"warmup_iters": 0},
                                {"epochs": 6, "drop": [4, 2], "warmup_iters": 25},  # warmup outlasts a drop
                                {"epochs": 6, "drop": [4, 2], "warmup_iters": 20}])  # ends just before it
def test_learning_rate_matches_htdt_loop(kw):
    """htdt: lr set to lr*(w+1)/500 during warmup, MultiStepLR(epochs - d, gamma) stepped per epoch."""
    args, iters = ns(**kw), 10
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=args.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[args.epochs - d for d in args.drop],
                                                 gamma=args.drop_gamma)
    warm, step = (0 if args.warmup_iters else 10 ** 9), 0
    for ep in range(args.epochs):
        for _ in range(iters):
            if warm < args.warmup_iters:
                for g in opt.param_groups:
                    g["lr"] = args.lr * (warm + 1) / args.warmup_iters
                warm += 1
            assert learning_rate(step, ep, iters, args) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), (ep, step)
            opt.step()  # no gradient: a no-op, keeps the scheduler's call-order check quiet
            step += 1
        sched.step()


@pytest.mark.parametrize("kw", [{}, {"epochs": 3, "eval_every": 1}, {"epochs": 1000}, {"drop": []}])
def test_evaluation_epochs_match_htdt_loop(kw):
    args = ns(**kw)
    every, expected = args.eval_every, []
    for ep in range(args.epochs):
        if len(args.drop) and ep == args.epochs - args.drop[0]:
            every = args.eval_every_drop
        if (ep + 1) % every == 0:
            expected.append(ep)
    ours = [ep for ep in range(args.epochs) if evaluate_now(ep, args)]
    # identical, except that we also evaluate after the last epoch when htdt would not
    assert [ep for ep in ours if ep != args.epochs - 1] == [ep for ep in expected if ep != args.epochs - 1]
    assert ours[-1] == args.epochs - 1
    if kw.get("epochs") == 1000:
        # every 20 epochs up to 940, then every 5 from 955 (0-based 954) to 1000
        assert expected[-12:] == [919, 939] + list(range(954, 1000, 5))


# ------------------------------------------------------------------------------------------------ evaluation
def test_knn_majority_matches_htdt_loop():
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)
    x_test = torch.randn(25, 4, generator=g)
    for k in (1, 4, 5):  # k = 4 makes ties frequent
        idx = torch.cdist(x_test, x_train).topk(k=k, dim=1, largest=False).indices
        expected = []
        for row in y_train[idx]:
            vals, counts = row.unique(return_counts=True)
            expected.append(vals[counts.argmax()].item())
        assert knn_majority(x_train, y_train, x_test, k, 3, chunk=7).tolist() == expected


def test_linear_probe_separates_separable_features():
    torch.manual_seed(0)
    y = torch.arange(90) % 3
    x = F.one_hot(y, 3).float() * 5 + 0.1 * torch.randn(90, 3)
    top1, top5 = linear_probe(x[:60], y[:60], x[60:], y[60:], classes=3, epochs=300, batch_size=20)
    assert top1 == 100.0 and top5 == 100.0
