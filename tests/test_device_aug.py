"""common/device_aug.py (--aug device) against torchvision: each op for fixed parameters, the parameter
distributions against torchvision's own get_params draws, and the views' statistics against the PIL pipeline."""
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from common import device_aug as A
from common.data import CIFAR10_MEAN, CIFAR10_STD, TwoCrops

N_DRAWS = 20_000  # per distribution and side (>= 10,000); crops: N_CROPS (torchvision's draws are a Python loop)
N_CROPS = 10_000
ALPHA = 1e-3  # same distribution: p > ALPHA; a range off by 10 %: p < ALPHA (both with fixed seeds)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def moco_transform(size=32):  # the MoCo CIFAR demo's (and SwAV CIFAR's colour distortion)
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(p=0.5),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                      T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def htdt_transform(size=32):  # SimCLR/BYOL: jitter before a bicubic crop
    from UnMix_SimCLR_BYOL.data import train_transform
    return train_transform("cifar10", size)


# ----------------------------------------------------------------------------------------------------------
# each op equals torchvision's tensor op for fixed parameters
# ----------------------------------------------------------------------------------------------------------
BOXES = [(0, 0, 20, 24), (3, 2, 7, 9), (1, 7, 19, 17), (5, 1, 3, 20), (0, 0, 10, 5), (2, 3, 15, 21)]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [16, 32, (12, 40)])  # down- and up-sampling, non-square
def test_resized_crop_equals_torchvision(mode, size):
    x = torch.rand(len(BOXES), 3, 20, 24, generator=gen(0))
    i, j, h, w = (torch.tensor(c) for c in zip(*BOXES))
    out = A.resized_crop(x, i, j, h, w, size, mode)
    interp = T.InterpolationMode.BILINEAR if mode == "bilinear" else T.InterpolationMode.BICUBIC
    hw = [size, size] if isinstance(size, int) else list(size)
    ref = torch.stack([TF.resized_crop(x[k], *BOXES[k], hw, interpolation=interp, antialias=True)
                       for k in range(len(BOXES))])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op,ref,factors", [
    (A.adjust_brightness, TF.adjust_brightness, [0.6, 1.4, 1.0, 0.0, 0.9, 1.2]),
    (A.adjust_contrast, TF.adjust_contrast, [0.6, 1.4, 1.0, 0.0, 0.9, 1.2]),
    (A.adjust_saturation, TF.adjust_saturation, [0.6, 1.4, 1.0, 0.0, 0.9, 1.2]),
    (A.adjust_hue, TF.adjust_hue, [-0.1, 0.1, 0.0, 0.05, -0.5, 0.5]),
])
@pytest.mark.parametrize("quantised", [False, True])  # quantised: ties between channels (hue sector choice)
def test_colour_ops_equal_torchvision(op, ref, factors, quantised):
    x = torch.rand(len(factors), 3, 9, 11, generator=gen(1))
    if quantised:
        x = (x * 4).round() / 4
    out = op(x, torch.tensor(factors))
    expected = torch.stack([ref(x[k], f) for k, f in enumerate(factors)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_grayscale_flip_normalise_equal_torchvision():
    x = torch.rand(4, 3, 6, 7, generator=gen(2))
    torch.testing.assert_close(A.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    norm = A._Normalize(T.Normalize(CIFAR10_MEAN, CIFAR10_STD))
    torch.testing.assert_close(norm(x, None), TF.normalize(x, list(CIFAR10_MEAN), list(CIFAR10_STD)))
    flip = A._Flip(1.0)(x, gen(0))
    torch.testing.assert_close(flip, TF.horizontal_flip(x))


def test_color_jitter_applies_each_samples_own_order():
    x = torch.rand(24, 3, 5, 5, generator=gen(3))
    order = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders
    factors = torch.stack([torch.linspace(0.5, 1.5, 24), torch.linspace(1.5, 0.5, 24), torch.linspace(0.2, 1.8, 24),
                           torch.linspace(-0.4, 0.4, 24)], dim=1)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    expected = []
    for k in range(24):
        y = x[k]
        for o in order[k].tolist():
            y = ops[o](y, float(factors[k, o]))
        expected.append(y)
    torch.testing.assert_close(A.color_jitter(x, factors, order), torch.stack(expected), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# parameter distributions against torchvision's get_params (two-sample KS / chi-square)
# ----------------------------------------------------------------------------------------------------------
CROP_CASES = {  # (H, W, scale, ratio): the scripts' crops, and a narrow image that often takes the fallback
    "moco": (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    "swav": (32, 32, (0.14, 1.0), (3 / 4, 4 / 3)),
    "htdt": (32, 32, (0.2, 1.0), (3 / 4, 4 / 3)),
    "fallback": (8, 40, (0.5, 1.0), (3 / 4, 4 / 3)),
}


def tv_crops(H, W, scale, ratio, n=N_CROPS, seed=0):
    torch.manual_seed(seed)
    img = torch.empty(3, H, W)
    return np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


def our_crops(H, W, scale, ratio, n=N_CROPS, seed=1):
    return torch.stack(A.crop_params(n, H, W, scale, ratio, gen(seed)), dim=1).numpy()


def crop_pvalues(ours, ref, H, W):
    """KS p-values of area fraction, aspect ratio, and the box's centre (offsets) in both directions."""
    def feats(c):
        i, j, h, w = c.T.astype(float)
        return {"area": h * w / (H * W), "ratio": w / h, "ci": (i + h / 2) / H, "cj": (j + w / 2) / W}
    a, b = feats(ours), feats(ref)
    return {k: stats.ks_2samp(a[k], b[k]).pvalue for k in a}


@pytest.fixture(scope="module")
def tv_crop_draws():
    return {name: tv_crops(*case) for name, case in CROP_CASES.items()}


@pytest.mark.parametrize("name", list(CROP_CASES))
def test_crop_parameters_match_torchvision(name, tv_crop_draws):
    H, W, scale, ratio = CROP_CASES[name]
    p = crop_pvalues(our_crops(H, W, scale, ratio), tv_crop_draws[name], H, W)
    assert min(p.values()) > ALPHA, p


@pytest.mark.parametrize("what", ["scale", "ratio"])
def test_crop_test_detects_a_range_10_percent_off(what, tv_crop_draws):
    H, W, scale, ratio = CROP_CASES["moco"]
    if what == "scale":  # upper end 10 % lower
        scale = (scale[0], scale[1] * 0.9)
    else:  # log-ratio range 10 % wider
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        ratio = (math.exp(lo * 1.1), math.exp(hi * 1.1))
    p = crop_pvalues(our_crops(H, W, scale, ratio), tv_crop_draws["moco"], H, W)
    assert min(p.values()) < ALPHA, p


JITTER = (0.4, 0.4, 0.4, 0.1)


def jitter_ranges(b, c, s, h):
    t = T.ColorJitter(b, c, s, h)
    return t.brightness, t.contrast, t.saturation, t.hue


@pytest.fixture(scope="module")
def tv_jitter_draws():
    torch.manual_seed(0)
    ranges = jitter_ranges(*JITTER)
    draws = [T.ColorJitter.get_params(*ranges) for _ in range(N_DRAWS)]
    factors = np.array([d[1:] for d in draws])
    orders = np.array([d[0].tolist() for d in draws])
    return factors, orders


def order_counts(orders):
    index = {p: k for k, p in enumerate(itertools.permutations(range(4)))}
    return np.bincount([index[tuple(o)] for o in orders], minlength=24)


def jitter_pvalues(factors, orders, tv):
    tv_factors, tv_orders = tv
    p = {name: stats.ks_2samp(factors[:, k], tv_factors[:, k]).pvalue
         for k, name in enumerate(["brightness", "contrast", "saturation", "hue"])}
    p["order"] = stats.chi2_contingency(np.stack([order_counts(orders), order_counts(tv_orders)])).pvalue
    return p


def our_jitter(ranges, seed=1):
    factors, order = A.jitter_params(N_DRAWS, *ranges, generator=gen(seed))
    return factors.numpy(), order.numpy()


def test_jitter_factors_and_order_match_torchvision(tv_jitter_draws):
    p = jitter_pvalues(*our_jitter(jitter_ranges(*JITTER)), tv_jitter_draws)
    assert min(p.values()) > ALPHA, p


@pytest.mark.parametrize("k", range(4))
def test_jitter_test_detects_a_range_10_percent_off(k, tv_jitter_draws):
    off = list(JITTER)
    off[k] *= 1.1
    p = jitter_pvalues(*our_jitter(jitter_ranges(*off)), tv_jitter_draws)
    assert p[["brightness", "contrast", "saturation", "hue"][k]] < ALPHA, p


def test_jitter_test_detects_a_biased_order(tv_jitter_draws):
    factors, order = our_jitter(jitter_ranges(*JITTER))
    order[: N_DRAWS // 10] = [0, 1, 2, 3]  # 10 % of the samples in torchvision's listed order
    assert jitter_pvalues(factors, order, tv_jitter_draws)["order"] < ALPHA


def tv_rate(module_cls, p, n=N_DRAWS):
    """How often torchvision's own module applies (flip / grayscale), on a marker image."""
    torch.manual_seed(0)
    m = module_cls(p=p)
    x = torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]])  # flip and grayscale both change it
    return sum(not torch.equal(m(x), x) for _ in range(n))


@pytest.mark.parametrize("cls,p", [(T.RandomHorizontalFlip, 0.5), (T.RandomGrayscale, 0.2)])
def test_flip_and_grayscale_rates_match_torchvision(cls, p):
    ref = tv_rate(cls, p)

    def pvalue(ours):
        k = int(A.bernoulli(N_DRAWS, ours, gen(1)).sum())
        return stats.chi2_contingency([[k, N_DRAWS - k], [ref, N_DRAWS - ref]]).pvalue

    assert pvalue(p) > ALPHA
    assert pvalue(p * 1.1) < ALPHA  # a rate 10 % off is detected


def test_random_apply_rate():
    """RandomApply(p) over the batch: applied with probability p (binomial test against p itself)."""
    seen = A._Apply([lambda y, g: y + 1.0], 0.8)(torch.zeros(N_DRAWS, 1, 1, 1), gen(4))
    k = int(seen.sum())
    assert stats.binomtest(k, N_DRAWS, 0.8).pvalue > ALPHA
    assert stats.binomtest(k, N_DRAWS, 0.88).pvalue < ALPHA


# ----------------------------------------------------------------------------------------------------------
# whole pipelines: statistics of 10,000 views against the PIL pipeline
# ----------------------------------------------------------------------------------------------------------
def smooth_images(n, size, seed=0):
    """Natural-ish images: low-frequency colour fields (upsampled 4x4 noise) plus a little pixel noise."""
    g = gen(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


VIEWS = 10_000
# Tolerances in grey levels of [0, 255], per channel. PIL's ColorJitter blends truncate (Image.blend) where
# torchvision's tensor ops do not: measured here ~0.43 grey levels darker per adjustment, so the PIL views are
# ~1 grey level darker on average (3 adjustments, p 0.8); sampling noise of 10,000 views is ~0.2.
MEAN_TOL = 2.0  # |mean difference|, grey levels
STD_TOL = 0.02  # relative std difference


def view_stats(views, norm):
    """Per-channel mean and std of the views in grey levels (the Normalize undone)."""
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    px = (views * std + mean) * 255
    return px.mean(dim=(0, 2, 3)), px.std(dim=(0, 2, 3))


@pytest.mark.parametrize("make", [moco_transform, htdt_transform])
def test_views_statistics_match_pil_pipeline(make):
    """10,000 views of 500 images (32 px, cropped to 16 px: the antialiased downscaling path)."""
    images = smooth_images(500, 32)
    t = make(16)
    norm = [s for s in t.transforms if isinstance(s, T.Normalize)][0]
    reps = VIEWS // len(images)
    torch.manual_seed(0)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in images]
    ref = torch.stack([t(im) for _ in range(reps) for im in pil])
    ours = A.DeviceTransform(t)(images.repeat(reps, 1, 1, 1), gen(0))
    assert ours.shape == ref.shape
    (m1, s1), (m2, s2) = view_stats(ours, norm), view_stats(ref, norm)
    assert (m1 - m2).abs().max() < MEAN_TOL, (m1, m2)
    assert ((s1 - s2).abs() / s2).max() < STD_TOL, (s1, s2)


# ----------------------------------------------------------------------------------------------------------
# conversion, data in memory, loader
# ----------------------------------------------------------------------------------------------------------
def test_unsupported_transform_is_refused():
    with pytest.raises(ValueError, match="GaussianBlur has no device version"):
        A.DeviceTransform(T.Compose([T.RandomResizedCrop(8), T.GaussianBlur(3)]))


def test_dataset_to_uint8_cifar_and_imagefolder(cifar10_root, imagefolder_root, tmp_path):
    from common.data import cifar, image_folder
    ds = cifar("cifar10", cifar10_root, True)
    images, labels = A.dataset_to_uint8(ds)
    assert images.shape == (len(ds), 3, 32, 32) and images.dtype == torch.uint8
    img, label = ds[5]
    assert torch.equal(images[5], TF.pil_to_tensor(img)) and labels[5] == label
    folder = image_folder(imagefolder_root / "train")
    images, labels = A.dataset_to_uint8(folder)
    assert torch.equal(images[3], TF.pil_to_tensor(folder[3][0])) and labels.tolist() == folder.targets
    # images of different sizes cannot be stacked: one clear error
    d = tmp_path / "mixed" / "a"
    d.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(d / "x.png")
    Image.new("RGB", (9, 8)).save(d / "y.png")
    from common.cli import CLIError
    with pytest.raises(CLIError, match="one size"):
        A.dataset_to_uint8(image_folder(tmp_path / "mixed"))


def test_loader_batches_views_and_rng(cifar10_root):
    from common.data import cifar
    ds = cifar("cifar10", cifar10_root, True, TwoCrops(moco_transform(16)))
    loader = A.DeviceLoader(ds, ds.transform, 16, "cpu")
    assert len(loader) == len(ds) // 16
    torch.manual_seed(0)
    batches = list(loader)
    (v1, v2), labels = batches[0]
    assert v1.shape == v2.shape == (16, 3, 16, 16) and labels.shape == (16,)
    assert not torch.equal(v1, v2)  # two independent views
    seen = torch.cat([lab for _, lab in batches])
    assert len(seen) == len(loader) * 16
    # the epoch depends only on the torch RNG state at its start (saved in checkpoints): resume is exact
    torch.manual_seed(0)
    again = list(loader)
    for (a, la), (b, lb) in zip(batches, again):
        assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(a, b))
    # another rank draws another stream from the same RNG state
    other = A.DeviceLoader(ds, ds.transform, 16, "cpu", rank=1)
    torch.manual_seed(0)
    (w1, _), lab1 = next(iter(other))
    assert torch.equal(lab1, labels) and not torch.equal(w1, v1)


def test_loader_multicrop_sizes(cifar10_root):
    from types import SimpleNamespace

    from common.data import cifar
    from UnMix_SwAV.swav.multicrop import cifar_multicrop
    args = SimpleNamespace(size_crops=[16, 8], nmb_crops=[2, 3], min_scale_crops=[0.14, 0.05],
                           max_scale_crops=[1.0, 0.14])
    ds = cifar("cifar10", cifar10_root, True, cifar_multicrop(args))
    crops, _ = next(iter(A.DeviceLoader(ds, ds.transform, 8, "cpu")))
    assert [tuple(c.shape) for c in crops] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 3
