"""AutoMix, the mask adjustment, the λ-rescale clamp, the EMA phase switch and the order of random draws against
OpenMixup's numbers and rules (``PixelMixBlock``, ``AutoMixup.pixel_mixup``, ``MoCoSAMix.mix_mask_adjust``,
``CosineScheduleHook``)."""
import copy
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.mixer import Mixer, rescale_lam
from common.schedules import MaskWeight, ema_momentum
from SAMix.main_samix import build_optimizer, build_parser, resolve_defaults, train_step
from SAMix.models import MixerModel, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UnMix_MoCo" / "for_CIFAR"))
from samix_moco import adjust_mask as ssl_adjust_mask  # noqa: E402


def _args(*argv):
    return resolve_defaults(build_parser().parse_args(list(argv)))


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_automix_mixer_sizes_and_one_shared_qk_conv():
    # upstream: ImageNet config (C = 256, λ channel) 33,282 parameters; CIFAR-100 config (no λ input) 33,153
    imagenet, cifar = Mixer.automix(256), Mixer.automix(256, lam_concat=False)
    assert _count(imagenet) == 33_282 and _count(cifar) == 33_153
    for m in (imagenet, cifar):
        assert m.key is None
        convs = [name for name, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)]
        assert convs == ["query", "value.0"]  # one q/k projection, one value conv
    assert imagenet.query.in_channels == 257 and cifar.query.in_channels == 256
    assert Mixer.samix(256).key is not None  # SAMix (x_qk_concat) keeps two convs: 164,480 parameters
    assert _count(Mixer.samix(256)) == 164_480


def test_shared_qk_conv_gets_the_sum_of_two_convs_gradients():
    torch.manual_seed(0)
    shared = Mixer.automix(6).double()
    with torch.no_grad():
        for p in shared.parameters():
            p.normal_(0, 0.3)
    two = copy.deepcopy(shared)
    two.key = copy.deepcopy(two.query)  # the pre-issue design: a separate key conv, here with the same weights
    f, idx = torch.randn(3, 6, 5, 5, dtype=torch.float64), torch.tensor([1, 2, 0])
    out_s = shared(f, 0.4, index=idx, image_width=20)["mask"]
    out_t = two(f, 0.4, index=idx, image_width=20)["mask"]
    assert torch.equal(out_s, out_t)
    w = torch.randn_like(out_s)
    (out_s * w).sum().backward()
    (out_t * w).sum().backward()
    for name in ("weight", "bias"):
        g_shared = getattr(shared.query, name).grad
        g_sum = getattr(two.query, name).grad + getattr(two.key, name).grad
        assert torch.allclose(g_shared, g_sum, rtol=1e-10, atol=1e-14)


def test_automix_command_line_follows_the_dataset_family():
    cifar = build_model(_args("--mix", "automix", "--dataset", "cifar100"), 100).mixer
    assert not cifar.lam_concat and not cifar.lam_mul and _count(cifar) == 33_153
    imagenet = build_model(_args("--mix", "automix", "--dataset", "imagenet"), 1000).mixer
    assert imagenet.lam_concat and _count(imagenet) == 33_282
    # without a λ input the mask does not depend on λ
    torch.manual_seed(0)
    small = Mixer.automix(4, lam_concat=False)
    f, idx = torch.randn(2, 4, 3, 3), torch.tensor([1, 0])
    assert torch.equal(small(f, 0.1, index=idx)["mask"], small(f, 0.8, index=idx)["mask"])
    with_lam = Mixer.automix(4)
    assert not torch.equal(with_lam(f, 0.1, index=idx)["mask"], with_lam(f, 0.8, index=idx)["mask"])


def _hand_made_mask():
    """Anchor channels with per-sample means 0.93, 0.75, 0.5 (checkerboards ±0.05) and 0.2 (uniform)."""
    sign = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2 - 1  # mean 0
    anchor = torch.stack([m + 0.05 * sign.double() for m in (0.93, 0.75, 0.5)] +
                         [torch.full((4, 4), 0.2, dtype=torch.float64)])[:, None]
    return torch.cat([anchor, 1 - anchor], 1)


def test_mask_adjust_is_per_sample():
    mask, lam = _hand_made_mask(), 0.3
    before = mask[:, 0].mean(dim=(1, 2))
    assert torch.allclose(before, torch.tensor([0.93, 0.75, 0.5, 0.2], dtype=torch.float64))
    # supervised (AutoMixup, ε = 1e-8): every sample ends at anchor mean λ
    sup = MixerModel.adjust_mask(mask.clone(), lam)
    assert torch.allclose(sup[:, 0].mean(dim=(1, 2)), torch.full((4,), lam, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(sup.sum(1), torch.ones(4, 4, 4, dtype=torch.float64))
    # above λ the anchor channel is scaled; below λ the partner channel
    assert torch.allclose(sup[0, 0], mask[0, 0] * (lam / 0.93))
    assert torch.allclose(sup[3, 1], mask[3, 1] * ((1 - lam) / 0.8))
    # self-supervised "auto" (ε = 1e-10, margin 0.1): 0.93, 0.75 and 0.5 lie beyond λ ± 0.1, 0.2 does not
    ssl = ssl_adjust_mask(mask.clone(), lam, margin=0.1)
    after = ssl[:, 0].mean(dim=(1, 2))
    assert torch.allclose(after[:3], torch.full((3,), lam, dtype=torch.float64), atol=1e-6)
    assert after[3].item() == pytest.approx(0.2, abs=1e-12) and torch.equal(ssl[3], mask[3])
    assert torch.allclose(ssl.sum(1), torch.ones(4, 4, 4, dtype=torch.float64))


def test_lam_rescale_k_is_clamped_to_10():
    assert Mixer.samix(8, lam_mul_k=25).lam_mul_k == [10]
    assert Mixer.samix(8, lam_mul_k=[25, 0.25, -3]).lam_mul_k == [10, 0.25, -1]
    torch.manual_seed(0)
    a = Mixer.samix(8, lam_mul_k=25, value_dropout=0.0)
    b = Mixer.samix(8, lam_mul_k=10, value_dropout=0.0)
    b.load_state_dict(a.state_dict())
    f, idx = torch.randn(2, 8, 3, 3), torch.tensor([1, 0])
    out_a, out_b = a(f, 0.2, index=idx), b(f, 0.2, index=idx)
    assert out_a["lam_encoded"] == rescale_lam(0.2, 10) != rescale_lam(0.2, 25)
    assert torch.equal(out_a["mask"], out_b["mask"])


def test_ema_phase_switch_is_the_hooks_integer():
    # CosineScheduleHook: min_iter = int(max_iters * 0.1) = 123 for T = 1234; the cosine from t = 123 on
    T, base, end = 1234, 0.999, 0.99999
    ref = end - (end - base) * (math.cos(math.pi * 123 / T) + 1) / 2
    assert ema_momentum(122, T, base, end, 0.1) == base
    assert ema_momentum(123, T, base, end, 0.1) == ref and ref != base


@pytest.mark.parametrize("mix,python_draws", [("samix", 4), ("automix", 2)])
def test_random_draws_follow_upstreams_order(mix, python_draws, monkeypatch):
    """One iteration draws, as ``AutoMixup.forward_train``: NumPy λ pair then one ``rand()`` for the mask-adjust
    test (also when it is off); torch the backbone's permutation, then the Mixer's; Python's ``random`` one
    ``choices`` per Mixer call for the upsampling mode and, with λ multiplication (SAMix), one for k."""
    args = _args("--mix", mix, "-a", "resnet_tiny")
    assert args.mask_adjust == 0
    net = build_model(args, 5)
    opt = build_optimizer(net, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    seen = {}
    real = net.forward
    monkeypatch.setattr(net, "forward", lambda x, y, lam, i_mb, i_bb, w: seen.update(mb=i_mb, bb=i_bb) or
                        real(x, y, lam, i_mb, i_bb, w))
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    train_step(net, net, x, y, 0, opt, scaler, args, MaskWeight("constant", 0.1, 10), 10)
    after = (np.random.rand(), random.random())

    torch.manual_seed(7)
    assert torch.equal(seen["bb"], torch.randperm(4)) and torch.equal(seen["mb"], torch.randperm(4))
    np.random.seed(7)
    np.random.beta(2.0, 2.0, 2)
    np.random.rand()
    random.seed(7)
    for _ in range(python_draws):
        random.random()
    assert after == (np.random.rand(), random.random())
