"""The SAMix / AutoMix Mixer (common/mixer.py) against independent computations, and the SAMix schedules."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.mixer import Mixer, mask_loss, rescale_lam, upsample_factor
from common.schedules import MaskWeight, cosine, ema_momentum


def _randomise(mixer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in mixer.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return mixer


def test_mask_shape_and_channels_sum_to_one():
    torch.manual_seed(0)
    for mixer, width in ((Mixer.samix(16), 224), (Mixer.automix(16), 224), (Mixer.samix(16), 32)):
        f = torch.randn(4, 16, 14, 14) if width == 224 else torch.randn(4, 16, 8, 8)
        out = mixer(f, 0.3, index=torch.randperm(4), image_width=width)
        assert out["mask"].shape == (4, 2, width, width)
        assert torch.allclose(out["mask"].sum(1), torch.ones(4, width, width), atol=1e-6)
        assert (out["mask"] > 0).all() and (out["mask"] < 1).all()
        assert torch.allclose(out["attention"].sum(-1), torch.ones(4, f.shape[2] * f.shape[3]), atol=1e-5)


def test_upsample_factor_rule():
    assert upsample_factor(2, 224) == 16 and upsample_factor(2, 32) == 4 and upsample_factor(2, 64) == 4
    assert upsample_factor(1, 96) == 8


def _reference_samix(m, f, lam, idx, width):
    """SAMix's Mixer written out with einsum (eval mode: BN running stats, no dropout)."""
    xa, xb = f * (1 + lam), f[idx] * (2 - lam)
    z = torch.cat([xa, xb], 1)
    q = torch.einsum("oc,nchw->nhwo", m.query.weight[:, :, 0, 0], z) + m.query.bias
    k = torch.einsum("oc,nchw->nhwo", m.key.weight[:, :, 0, 0], z) + m.key.bias
    n, _, h, w = f.shape
    q, k = q.reshape(n, h * w, -1), k.reshape(n, h * w, -1)
    att = torch.softmax(torch.einsum("nic,njc->nij", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    conv1, bn, _, conv2, _ = m.value
    hid = torch.einsum("oc,nchw->nohw", conv1.weight[:, :, 0, 0], xb)
    hid = (hid - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    hid = F.elu(hid * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    v = torch.einsum("oc,nchw->nhw", conv2.weight[:, :, 0, 0], hid).reshape(n, h * w)
    s = torch.einsum("nij,nj->ni", att, v).reshape(n, 1, h, w)
    m_up = torch.sigmoid(F.interpolate(s, scale_factor=upsample_factor(m.mask_layer, width), mode="bilinear"))
    return att, torch.cat([1 - m_up, m_up], 1)


def _reference_automix(m, f, lam, idx, width):
    """AutoMix's Mixer written out with einsum."""
    n, c, h, w = f.shape
    xa = torch.cat([f, torch.full((n, 1, h, w), lam)], 1)
    xb = torch.cat([f[idx], torch.full((n, 1, h, w), 1 - lam)], 1)
    q = (torch.einsum("oc,nchw->nhwo", m.query.weight[:, :, 0, 0], xa) + m.query.bias).reshape(n, h * w, -1)
    # one conv for both sides: upstream's PixelMixBlock has no key conv without x_qk_concat
    k = (torch.einsum("oc,nchw->nhwo", m.query.weight[:, :, 0, 0], xb) + m.query.bias).reshape(n, h * w, -1)
    att = torch.softmax(torch.einsum("nic,njc->nij", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    v = (torch.einsum("oc,nchw->nhw", m.value[0].weight[:, :, 0, 0], xb) + m.value[0].bias).reshape(n, h * w)
    s = torch.einsum("nij,nj->ni", att, v).reshape(n, 1, h, w)
    m_up = torch.sigmoid(F.interpolate(s, scale_factor=upsample_factor(m.mask_layer, width), mode="nearest"))
    return att, torch.cat([1 - m_up, m_up], 1)


@pytest.mark.parametrize("kind", ["samix", "automix"])
def test_attention_and_mask_equal_einsum(kind):
    torch.manual_seed(1)
    m = _randomise(getattr(Mixer, kind)(12)).double().eval()
    f, idx, lam = torch.randn(3, 12, 7, 7), torch.tensor([2, 0, 1]), 0.37
    ref = _reference_samix if kind == "samix" else _reference_automix
    att, mask = ref(m, f.double(), lam, idx, 112)
    out = m(f.double(), lam, index=idx, image_width=112)
    assert torch.allclose(out["attention"], att, atol=1e-10)
    assert torch.allclose(out["mask"], mask, atol=1e-10)
    # the partner given as features is the same as given by index
    out2 = m(f.double(), lam, partner=f.double()[idx], image_width=112)
    assert torch.equal(out2["mask"], out["mask"])


def test_parameter_counts_of_samix_mixer():
    # q, k: 2 x (2C * C/2 + C/2); value: C * C/2 + 2 * C/2 (BN) + C/2
    assert sum(p.numel() for p in Mixer.samix(256).parameters()) == 164_480
    assert sum(p.numel() for p in Mixer.samix(1024).parameters()) == 2_624_000


def test_initialisation():
    m = Mixer.samix(256)
    assert abs(m.query.weight.std().item() - 0.01) < 1e-3 and m.query.bias.abs().max() == 0
    assert abs(m.value[0].weight.std().item() - 0.01) < 1e-3
    assert torch.equal(m.value[1].weight, torch.ones(128)) and torch.equal(m.value[1].bias, torch.zeros(128))


def test_lam_rescale():
    assert rescale_lam(0.1, 0.25) == pytest.approx(0.1823, abs=1e-4)
    assert rescale_lam(0.25, 0.25) == pytest.approx(0.3571, abs=1e-4)
    for lam in np.linspace(0, 1, 11):
        assert rescale_lam(lam, 0.25) + rescale_lam(1 - lam, 0.25) == pytest.approx(1.0)
        assert rescale_lam(lam, -1) == lam
    assert rescale_lam(0.5, 0.25) == pytest.approx(0.5) and rescale_lam(1.0, 0.25) == pytest.approx(1.0)


def test_mask_loss_on_hand_made_mask():
    # partner channel of 2 samples of 1x2 pixels: values 0, 1, 0.5, 0.5 -> mean 0.5, var 0.125
    m = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.5]]]])
    mask = torch.cat([1 - m, m], 1)
    # |1 - 0.5 - 0.2| - 0.1 = 0.2 ; L1+Var = 0.2 - 2 * 0.125 = -0.05
    assert mask_loss(mask, 0.2, "L1").item() == pytest.approx(0.2)
    assert mask_loss(mask, 0.2, "L1+Variance").item() == pytest.approx(-0.05)
    # inside the margin the hinge is 0
    assert mask_loss(mask, 0.45, "L1").item() == 0.0
    assert Mixer.samix(4).mask_loss(mask, 0.2).item() == pytest.approx(-0.05)
    assert Mixer.automix(4).mask_loss(mask, 0.2).item() == pytest.approx(0.2)


def test_ema_momentum_reference_values():
    T = 100_000
    assert ema_momentum(0, T) == 0.999 and ema_momentum(int(0.1 * T) - 1, T) == 0.999
    for frac, ref in ((0.1, 0.999024), (0.25, 0.999145), (0.5, 0.999495), (0.75, 0.999845), (1.0, 0.99999)):
        assert ema_momentum(int(frac * T), T) == pytest.approx(ref, abs=1e-6)


def test_mask_weight_schedules():
    T = 100 * 5004
    w = MaskWeight("compound", 0.1, T)
    below = next(t for t in range(T) if w(t) < 0.01)
    assert below / 5004 == pytest.approx(1.78, abs=0.01)
    assert next(t for t in range(T) if w(t) < 1e-3) / 5004 == pytest.approx(2.24, abs=0.01)
    # the recurrence, applied step by step
    v = 0.1
    for t in range(1, 50):
        v = v * (1 + math.cos(math.pi * t / T)) / 2
    assert w(49) == pytest.approx(v, rel=1e-12)
    c = MaskWeight("cosine", 0.1, T)
    assert c(0) == 0.1 and c(T // 2) == pytest.approx(0.05) and c(T) == pytest.approx(0.0, abs=1e-15)
    assert MaskWeight("constant", 0.1, T)(T // 3) == 0.1
    assert cosine(0.1, 1e-3, 0.5) == pytest.approx(1e-3 + 0.5 * 0.099)


def test_readme_mixer_example_runs():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs/samix_supervised.md").read_text()
    section = text.split("## SAMix (supervised)", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from unmix import Mixer" in code
    scope = {}
    exec(code.replace("from unmix import", "from common import"), scope)
    assert scope["mixed"].shape == (8, 3, 224, 224) and scope["out"]["mask"].shape == (8, 2, 224, 224)
    assert torch.isfinite(scope["loss_mask"])
