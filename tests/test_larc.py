"""common.larc.LARC against apex's LARC formula on hand-made tensors."""
import math

import pytest
import torch

from common.larc import LARC


def _params():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))          # ||p|| = 5
    zero_p = torch.nn.Parameter(torch.zeros(3))                 # ||p|| = 0 (a zero-initialised bias)
    zero_g = torch.nn.Parameter(torch.tensor([1.0, -2.0]))      # gets a zero gradient
    no_g = torch.nn.Parameter(torch.tensor([5.0]))              # grad None (frozen prototypes)
    p.grad = torch.tensor([0.6, 0.8])                           # ||g|| = 1
    zero_p.grad = torch.tensor([1.0, 2.0, 2.0])
    zero_g.grad = torch.zeros(2)
    return p, zero_p, zero_g, no_g


def test_scaling_mode_matches_formula_including_zero_norms():
    p, zero_p, zero_g, no_g = _params()
    lr, wd, trust = 0.5, 0.1, 0.001
    opt = LARC(torch.optim.SGD([p, zero_p, zero_g, no_g], lr=lr, momentum=0.9, weight_decay=wd),
               trust_coefficient=trust, clip=False)
    opt.step()
    # a = trust * ||p|| / (||g|| + ||p|| * wd + eps) = 0.001 * 5 / 1.5; step = lr * a * (g + wd * p)
    a = trust * 5 / (1 + 5 * wd + 1e-8)
    expected = torch.tensor([3.0, 4.0]) - lr * a * torch.tensor([0.6 + 0.3, 0.8 + 0.4])
    assert torch.allclose(p.data, expected, atol=1e-7)
    assert torch.allclose(p.data, torch.tensor([2.9985, 3.998]), atol=1e-6)  # by hand
    # zero-norm parameter: raw gradient, no LARC scaling and no weight decay
    assert torch.allclose(zero_p.data, torch.tensor([-0.5, -1.0, -1.0]))
    # zero gradient: left alone, and no weight decay either (SGD runs with wd=0)
    assert torch.equal(zero_g.data, torch.tensor([1.0, -2.0]))
    assert torch.equal(no_g.data, torch.tensor([5.0])) and no_g not in opt.state
    # weight decay restored on the inner optimiser
    assert opt.param_groups[0]["weight_decay"] == wd

    # second step: momentum on the LARC-scaled gradient, buf = 0.9 * buf + g'
    g1 = a * torch.tensor([0.9, 1.2])
    p_before = p.data.clone()
    p.grad = torch.tensor([0.0, 1.0])
    pn = p_before.norm().item()
    a2 = trust * pn / (1.0 + pn * wd + 1e-8)
    g2 = a2 * (torch.tensor([0.0, 1.0]) + wd * p_before)
    zero_p.grad = zero_g.grad = None
    opt.step()
    assert torch.allclose(p.data, p_before - lr * (0.9 * g1 + g2), atol=1e-7)


def test_clip_mode_caps_the_local_rate_at_the_global_one():
    p, *_ = _params()
    lr, wd = 0.5, 0.1
    opt = LARC(torch.optim.SGD([p], lr=lr, momentum=0.0, weight_decay=wd), trust_coefficient=0.02, clip=True)
    opt.step()
    a = min(0.02 * 5 / (1 + 0.5 + 1e-8) / lr, 1.0)  # 0.0667 / 0.5 = 0.1333
    assert math.isclose(a, 0.13333333, rel_tol=1e-6)
    assert torch.allclose(p.data, torch.tensor([3.0, 4.0]) - lr * a * torch.tensor([0.9, 1.2]), atol=1e-7)
    # a large trust ratio is capped at 1: plain SGD with weight decay
    q = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    q.grad = torch.tensor([0.6, 0.8])
    LARC(torch.optim.SGD([q], lr=lr, weight_decay=wd), trust_coefficient=100.0, clip=True).step()
    assert torch.allclose(q.data, torch.tensor([3.0, 4.0]) - lr * torch.tensor([0.9, 1.2]))


def test_delegates_state_dict_to_the_inner_sgd():
    p, zero_p, zero_g, no_g = _params()
    sgd = torch.optim.SGD([p, zero_p, zero_g, no_g], lr=0.1, momentum=0.9, weight_decay=1e-6)
    opt = LARC(sgd, trust_coefficient=0.001, clip=False)
    opt.step()
    sd = opt.state_dict()
    assert sd.keys() == sgd.state_dict().keys() == {"state", "param_groups"}
    assert opt.optim is sgd and opt.param_groups is sgd.param_groups
    assert torch.equal(sd["state"][0]["momentum_buffer"], sgd.state[p]["momentum_buffer"])
    other = LARC(torch.optim.SGD([torch.nn.Parameter(t.data.clone()) for t in (p, zero_p, zero_g, no_g)],
                                 lr=0.1, momentum=0.9, weight_decay=1e-6), 0.001, False)
    other.load_state_dict(sd)
    assert torch.equal(other.state_dict()["state"][0]["momentum_buffer"], sd["state"][0]["momentum_buffer"])


def test_works_with_grad_scaler_and_skips_on_inf():
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    except Exception:  # pragma: no cover - older torch without CPU GradScaler
        pytest.skip("torch.amp.GradScaler('cpu') unavailable")
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARC(torch.optim.SGD([w], lr=0.5, momentum=0.0, weight_decay=0.0), 0.001, False)
    scaler.scale((w * torch.tensor([0.6, 0.8])).sum()).backward()
    scaler.step(opt)  # unscaled grad (0.6, 0.8): a = 0.001 * 5 / 1
    scaler.update()
    assert torch.allclose(w.data, torch.tensor([3.0, 4.0]) - 0.5 * 0.005 * torch.tensor([0.6, 0.8]), atol=1e-7)
    before = w.data.clone()
    opt.zero_grad()
    w.grad = torch.tensor([float("inf"), 0.0])
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w.data, before) and scaler.get_scale() == 2.0  # skipped, scale halved
