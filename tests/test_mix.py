"""common/mix.py against the reference's formulas and RNG test vectors (draws recorded from upstream's code)."""
import numpy as np
import pytest
import torch

from common.mix import draw_mix_params, mix_with_reverse, rand_bbox, unmix_batch, unmix_loss


def batch(n=4, c=3, h=224, w=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g)


# MoCo-style vectors: np.random.seed(0), one 224 batch, prob 0.5, beta 1 (draws recorded from upstream).
MOCO_VECTORS = [  # (region?, beta draw, box or None, lambda used)
    (True, 0.562583, (0, 0, 95, 110), 0.791733),
    (False, 0.172187, None, 0.172187),
    (False, 0.342337, None, 0.342337),
    (False, 0.877496, None, 0.877496),
]


def test_moco_reference_vectors_through_global_numpy_rng():
    x = batch()
    np.random.seed(0)
    for region, _, box, lam_used in MOCO_VECTORS:
        mixed, lam = unmix_batch(x, prob=0.5, beta=1.0)
        assert lam == pytest.approx(lam_used, abs=1e-6)
        if region:
            x1, y1, x2, y2 = box
            expected = x.clone()
            expected[:, :, x1:x2, y1:y2] = x.flip(0)[:, :, x1:x2, y1:y2]
            assert torch.equal(mixed, expected)
            assert lam == 1 - (x2 - x1) * (y2 - y1) / (224 * 224)
        else:
            assert torch.equal(mixed, lam * x + (1 - lam) * x.flip(0))


def test_draw_order_is_rand_beta_then_two_randints():
    np.random.seed(0)
    r, lam0 = np.random.rand(1), np.random.beta(1.0, 1.0)
    cx, cy = np.random.randint(224), np.random.randint(224)
    after = np.random.rand()
    np.random.seed(0)
    use_global, lam = draw_mix_params(0.5, 1.0)
    assert (use_global, lam) == (bool(r[0] < 0.5), lam0)
    half = int(224 * np.sqrt(1 - lam)) // 2
    assert rand_bbox((4, 3, 224, 224), lam) == (max(cx - half, 0), max(cy - half, 0),
                                                 min(cx + half, 224), min(cy + half, 224))
    assert np.random.rand() == after


def test_global_branch_makes_no_box_draws():
    np.random.seed(5)
    unmix_batch(batch(h=8, w=8), prob=1.0)  # always global: exactly rand(1) and beta
    state = np.random.rand()
    np.random.seed(5)
    np.random.rand(1), np.random.beta(1.0, 1.0)
    assert np.random.rand() == state


def test_private_rng_matches_seeded_global_rng():
    x = batch(h=16, w=16)
    np.random.seed(3)
    expected = [unmix_batch(x, 0.5, 0.7) for _ in range(6)]
    rng = np.random.RandomState(3)
    got = [unmix_batch(x, 0.5, 0.7, rng=rng) for _ in range(6)]
    for (m1, l1), (m2, l2) in zip(expected, got):
        assert l1 == l2 and torch.equal(m1, m2)


def test_box_first_draw_indexes_dim2():
    rng = np.random.RandomState(1)
    x1, y1, x2, y2 = rand_bbox((2, 3, 8, 64), 0.0, rng)  # full cut: cut_w = 8, cut_h = 64
    rng = np.random.RandomState(1)
    cx, cy = rng.randint(8), rng.randint(64)
    assert (x1, x2) == (max(cx - 4, 0), min(cx + 4, 8))
    assert (y1, y2) == (max(cy - 32, 0), min(cy + 32, 64))


@pytest.mark.parametrize("lam_in", [0.0, 0.01, 0.3, 0.77, 0.99])
def test_region_lambda_is_own_pixel_fraction(lam_in):
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 32, 32).contiguous()
    rng = np.random.RandomState(int(lam_in * 100))
    mixed, lam = mix_with_reverse(x, lam_in, use_global=False, rng=rng)
    own = (mixed == x).float().mean(dim=(1, 2, 3))  # each sample has its own constant value
    assert torch.allclose(own, torch.full((6,), lam, dtype=torch.float32))
    partner = (mixed == x.flip(0)).float().mean(dim=(1, 2, 3))
    assert torch.allclose(partner, torch.full((6,), 1 - lam, dtype=torch.float32))


def test_lambda_near_one_gives_empty_box_and_identity():
    x = batch(h=32, w=32)
    mixed, lam = mix_with_reverse(x, 0.9999, use_global=False, rng=np.random.RandomState(0))
    assert lam == 1.0 and torch.equal(mixed, x)


def test_global_lambda_edges():
    x = batch(h=8, w=8)
    m0, l0 = mix_with_reverse(x, 0.0, use_global=True)
    m1, l1 = mix_with_reverse(x, 1.0, use_global=True)
    assert (l0, l1) == (0.0, 1.0)
    assert torch.equal(m0, x.flip(0)) and torch.equal(m1, x)


def test_reverse_mixture_is_batch_flip_and_input_untouched():
    x = batch(n=6, h=16, w=16)
    before = x.clone()
    np.random.seed(11)
    for _ in range(4):
        mixed, lam = unmix_batch(x, 0.5)
        # mixture i is sample i (weight lam) with sample N-1-i; its flip is the reverse-order mixture
        flipped = mixed.flip(0)
        if lam not in (0.0, 1.0):
            assert not torch.equal(flipped, mixed)
        assert torch.equal(x, before)
        assert mixed.dtype == x.dtype and mixed.shape == x.shape


def test_unmix_loss_formula():
    a, b, c = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert unmix_loss(a, b, c, 0.25).item() == pytest.approx(2 + 0.75 + 3.75)
