"""Augmentation on the training device (``--aug device``): whole batches, per-sample parameters.

The PIL pipelines of the CIFAR-size scripts augment one image at a time in DataLoader workers, which bounds a
CIFAR epoch by the CPU. Here the data set is decoded once into one uint8 tensor on the training device
(:func:`dataset_to_uint8`) and :class:`DeviceLoader` yields the same batch structure as the script's
DataLoader, each view made by :class:`DeviceTransform`: the *same* torchvision transform, converted op by op
(:func:`from_torchvision`), applied to the whole batch with parameters drawn per sample.

Same distribution as torchvision, op by op (tests/test_device_aug.py checks each against torchvision):

* ``RandomResizedCrop``: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), ``round`` to pixels, ten
  tries, the first valid one kept, else the centre-crop fallback; offsets uniform integers
  (``get_params``, vectorised: :func:`crop_params`). The resize is torch's antialiased bilinear/bicubic
  (``F.interpolate(..., antialias=True)``, the filter PIL uses) written as two per-sample interpolation
  matrices, because every sample has its own box (:func:`resized_crop`).
* ``RandomHorizontalFlip(p)``, ``RandomGrayscale(p)`` (ITU-R 601 weights 0.2989/0.587/0.114),
  ``RandomApply(ts, p)`` (applied with probability p), ``Normalize``.
* ``ColorJitter``: each factor ~ U(its range), the four adjustments in a random order *per sample* (uniform over
  the 24 orders, as ``torch.randperm(4)``); brightness/contrast/saturation are torchvision's blends, hue goes
  through HSV as torchvision's ``adjust_hue`` (:func:`jitter_params`, :func:`adjust_hue`, ...).

Written here rather than taken from a library: torchvision's functional ops (``transforms.v2.functional``)
take one scalar factor per call, so they cannot give every sample its own factor, crop box or op order without
a Python loop over the batch; kornia is not a dependency of the project (its ColorJitter also differs from
torchvision's in how it orders the adjustments). The formulas are torchvision's; the tests compare every op
with torchvision's tensor op for fixed parameters.

Departure from the PIL pipeline (by design, documented in the README): the views stay in float32 from the
start, where PIL rounds to uint8 after each op (crop, each jitter adjustment), and PIL's hue shift works on
8-bit HSV. The differences are below one grey level per op; the per-channel statistics of the views agree
(test).

RNG: each :class:`DeviceLoader` iteration (one epoch) seeds its own ``torch.Generator`` on the data's device
from one draw of the process's torch RNG (as a DataLoader draws its base seed), plus the process rank. Every
checkpoint of the scripts saves that RNG state, so ``--resume`` at an epoch boundary continues bit-exactly;
in DDP every process augments its own shard (the script's DistributedSampler) with its own stream.
"""

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler
from torchvision import transforms as T

from .cli import CLIError

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


# ----------------------------------------------------------------------------------------------------------
# Parameter draws, vectorised over n samples (torchvision's get_params semantics)
# ----------------------------------------------------------------------------------------------------------
def _uniform(n, lo, hi, generator, shape=()):
    u = torch.rand((n, *shape), generator=generator, device=generator.device)
    return lo + (hi - lo) * u


def crop_params(n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None, tries=10):
    """``RandomResizedCrop.get_params`` for ``n`` samples at once: ``(i, j, h, w)``, int64 tensors of shape (n,).

    Each sample makes ``tries`` (10) attempts: area ``H*W*U(scale)``, aspect ratio ``exp(U(log ratio))``,
    ``w = round(sqrt(area*ratio))``, ``h = round(sqrt(area/ratio))``; the first attempt with ``0 < w <= W`` and
    ``0 < h <= H`` is used, with ``i ~ U{0..H-h}``, ``j ~ U{0..W-w}``; when none fits, the central crop of the
    largest box whose aspect ratio is within ``ratio``.
    """
    generator = generator if generator is not None else torch.default_generator
    area = float(height * width)
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float32))
    target = area * _uniform(n, scale[0], scale[1], generator, (tries,)).double()
    aspect = torch.exp(_uniform(n, float(log_ratio[0]), float(log_ratio[1]), generator, (tries,))).double()
    w = torch.round(torch.sqrt(target * aspect)).long()  # torch.round: half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # index of the first valid try (0 if none)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # fallback: the central crop (torchvision's branch on the image's own aspect ratio)
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    # offsets: uniform integers in [0, H-h] and [0, W-w] (torch.randint's distribution)
    u = torch.rand((n, 2), generator=generator, device=generator.device, dtype=torch.float64)
    i = torch.minimum((u[:, 0] * (height - h + 1)).floor().long(), height - h)
    j = torch.minimum((u[:, 1] * (width - w + 1)).floor().long(), width - w)
    i = torch.where(any_ok, i, torch.full_like(i, (height - fh) // 2))
    j = torch.where(any_ok, j, torch.full_like(j, (width - fw) // 2))
    return i, j, h, w


def jitter_params(n, brightness, contrast, saturation, hue, generator=None):
    """``ColorJitter.get_params`` for ``n`` samples: ``(factors, order)``.

    Each range is ``(lo, hi)`` or None (that adjustment is skipped), as the attributes of a ``ColorJitter``.
    ``factors`` (n, 4): brightness, contrast, saturation, hue, each ~ U(range) (identity where None);
    ``order`` (n, 4): a uniformly random permutation of 0..3 per sample (``torch.randperm(4)``).
    """
    generator = generator if generator is not None else torch.default_generator
    cols = []
    for rng, identity in zip((brightness, contrast, saturation, hue), (1.0, 1.0, 1.0, 0.0)):
        if rng is None:
            cols.append(torch.full((n,), identity, device=generator.device))
        else:
            cols.append(_uniform(n, float(rng[0]), float(rng[1]), generator))
    order = torch.argsort(torch.rand((n, 4), generator=generator, device=generator.device), dim=1)
    return torch.stack(cols, dim=1), order


def bernoulli(n, p, generator=None):
    """n draws of ``torch.rand(1) < p``."""
    generator = generator if generator is not None else torch.default_generator
    return torch.rand((n,), generator=generator, device=generator.device) < p


# ----------------------------------------------------------------------------------------------------------
# Ops on float batches in [0, 1], shape (n, C, H, W), with per-sample parameters
# ----------------------------------------------------------------------------------------------------------
def _bilinear_filter(x):
    return (1.0 - x.abs()).clamp_(min=0.0)


def _bicubic_filter(x, a=-0.5):  # the antialiasing cubic of PIL and torch (a = -0.5)
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


FILTERS = {"bilinear": (_bilinear_filter, 1.0), "bicubic": (_bicubic_filter, 2.0)}


def interpolation_matrix(start, length, in_size, out_size, interpolation="bilinear"):
    """(n, out_size, in_size) weights resizing the span ``[start, start+length)`` of each sample to ``out_size``
    pixels: torch's antialiased interpolation (``F.interpolate(..., antialias=True)``, PIL's filters), whose
    weights are ``filter((j - center + 0.5) / max(scale, 1))`` over the support, normalised per output pixel."""
    filt, half_support = FILTERS[interpolation]
    start, length = start.double(), length.double()
    scale = (length / out_size)[:, None, None]  # in/out, per sample
    support = torch.where(scale >= 1.0, half_support * scale, torch.full_like(scale, half_support))
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    o = torch.arange(out_size, device=start.device, dtype=torch.float64)[None, :, None]
    center = scale * (o + 0.5)
    lo = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
    hi = torch.minimum(torch.floor(center + support + 0.5), length[:, None, None])
    j = torch.arange(in_size, device=start.device, dtype=torch.float64)[None, None, :] - start[:, None, None]
    w = filt((j - center + 0.5) * invscale)
    w = torch.where((j >= lo) & (j < hi), w, torch.zeros_like(w))
    return (w / w.sum(dim=2, keepdim=True)).float()


def resized_crop(x, i, j, h, w, size, interpolation="bilinear"):
    """Per-sample ``torchvision.transforms.functional.resized_crop(x[k], i[k], j[k], h[k], w[k], size)``
    (antialiased): ``out = Wy @ x @ Wx^T`` with one pair of interpolation matrices per sample."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    wy = interpolation_matrix(i, h, x.shape[-2], out_h, interpolation).to(x.dtype)
    wx = interpolation_matrix(j, w, x.shape[-1], out_w, interpolation).to(x.dtype)
    return torch.matmul(torch.matmul(wy.unsqueeze(1), x), wx.transpose(1, 2).unsqueeze(1))


def _per_sample(f, x):
    return f.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def rgb_to_grayscale(x):
    """(n, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x, y, f):  # torchvision's _blend for float images: f*x + (1-f)*y, clamped to [0, 1]
    f = _per_sample(f, x)
    return (f * x + (1.0 - f) * y).clamp_(0.0, 1.0)


def adjust_brightness(x, f):
    return _blend(x, torch.zeros((), dtype=x.dtype, device=x.device), f)


def adjust_contrast(x, f):
    return _blend(x, rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def adjust_saturation(x, f):
    return _blend(x, rgb_to_grayscale(x), f)


def adjust_hue(x, f):
    """torchvision's ``adjust_hue`` with one shift per sample: RGB -> HSV (PIL's/colorsys' hue), hue + f mod 1,
    HSV -> RGB. The way back uses the closed form ``v - c * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + 6 h) mod 6`` (n = 5, 3, 1 for R, G, B; c = v - min = v * s), which equals torchvision's
    sector table (test)."""
    r, g, b = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    c = maxc - minc
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    # sector of the maximum, ties as colorsys/torchvision: red first, then green
    h6 = torch.where(maxc == r, (g - b) / safe_c,
                     torch.where(maxc == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = torch.remainder(h6 / 6.0 + 1.0 + _per_sample(f, h6), 1.0)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                        + 6.0 * h.unsqueeze(-3), 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(-3) - c.unsqueeze(-3) * weight


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x, factors, order):
    """The four adjustments of each sample in its own order (``order[k]`` is a permutation of 0..3)."""
    x = x.clone()
    for step in range(4):
        for op in range(4):
            rows = torch.nonzero(order[:, step] == op).squeeze(1)
            if rows.numel():
                x.index_copy_(0, rows, JITTER_OPS[op](x.index_select(0, rows), factors.index_select(0, rows)[:, op]))
    return x


# ----------------------------------------------------------------------------------------------------------
# Pipelines: torchvision transforms converted op by op
# ----------------------------------------------------------------------------------------------------------
class _Crop:
    def __init__(self, t):
        size = t.size if isinstance(t.size, int) else tuple(t.size)
        mode = {T.InterpolationMode.BILINEAR: "bilinear", T.InterpolationMode.BICUBIC: "bicubic"}.get(t.interpolation)
        if mode is None:
            raise ValueError(f"RandomResizedCrop with {t.interpolation} is not supported on the device")
        if t.antialias is False:
            raise ValueError("RandomResizedCrop(antialias=False) is not supported on the device (PIL antialiases)")
        self.size, self.scale, self.ratio, self.mode = size, tuple(t.scale), tuple(t.ratio), mode

    def __call__(self, x, g):
        i, j, h, w = crop_params(x.shape[0], x.shape[-2], x.shape[-1], self.scale, self.ratio, g)
        return resized_crop(x, i.to(x.device), j.to(x.device), h.to(x.device), w.to(x.device), self.size,
                            self.mode)


class _Flip:
    def __init__(self, p):
        self.p = p

    def __call__(self, x, g):
        m = bernoulli(x.shape[0], self.p, g).to(x.device).view(-1, 1, 1, 1)
        return torch.where(m, x.flip(-1), x)


class _Gray:
    def __init__(self, p):
        self.p = p

    def __call__(self, x, g):
        m = bernoulli(x.shape[0], self.p, g).to(x.device).view(-1, 1, 1, 1)
        return torch.where(m, rgb_to_grayscale(x).expand_as(x), x)


class _Jitter:
    def __init__(self, t):
        self.ranges = (t.brightness, t.contrast, t.saturation, t.hue)

    def __call__(self, x, g):
        factors, order = jitter_params(x.shape[0], *self.ranges, generator=g)
        return color_jitter(x, factors.to(x.device), order.to(x.device))


class _Apply:  # RandomApply: the inner ops on the samples drawn with probability p
    def __init__(self, ops, p):
        self.ops, self.p = ops, p

    def __call__(self, x, g):
        rows = torch.nonzero(bernoulli(x.shape[0], self.p, g)).squeeze(1).to(x.device)
        y = x.index_select(0, rows)
        for op in self.ops:
            y = op(y, g)
        return x.index_copy(0, rows, y)


class _Normalize:
    def __init__(self, t):
        self.mean, self.std = tuple(t.mean), tuple(t.std)

    def __call__(self, x, g):
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _convert(t, out):
    if isinstance(t, T.Compose):
        for s in t.transforms:
            _convert(s, out)
    elif isinstance(t, T.RandomApply):
        inner = []
        for s in t.transforms:
            _convert(s, inner)
        out.append(_Apply(inner, t.p))
    elif isinstance(t, T.RandomResizedCrop):
        out.append(_Crop(t))
    elif isinstance(t, T.RandomHorizontalFlip):
        out.append(_Flip(t.p))
    elif isinstance(t, T.ColorJitter):
        out.append(_Jitter(t))
    elif isinstance(t, T.RandomGrayscale):
        out.append(_Gray(t.p))
    elif isinstance(t, T.Normalize):
        out.append(_Normalize(t))
    elif isinstance(t, T.ToTensor):
        pass  # the device path is float in [0, 1] from the start
    else:
        raise ValueError(f"{type(t).__name__} has no device version (supported: RandomResizedCrop, "
                         "RandomHorizontalFlip, ColorJitter, RandomGrayscale, RandomApply, ToTensor, Normalize)")


class DeviceTransform:
    """A torchvision training transform applied to a uint8 batch (n, C, H, W) on its device, per-sample draws.

    ``DeviceTransform(transform)(images, generator)`` returns float32 views, like ``transform`` applied to each
    image as a PIL image followed by stacking.
    """

    def __init__(self, transform):
        self.transform = transform
        self.ops = []
        _convert(transform, self.ops)

    def __call__(self, images, generator):
        threads = torch.get_num_threads()
        if images.device.type == "cpu":
            # One thread on a CPU: the many small ops gain little from intra-op threads and, on a shared machine,
            # lose much (measured on a loaded 2-core CPU: 2 threads took 8x the CPU time of 1).
            torch.set_num_threads(1)
        try:
            x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
            for op in self.ops:
                x = op(x, generator)
            return x
        finally:
            torch.set_num_threads(threads)


from_torchvision = DeviceTransform


def views_of(transform):
    """The per-view transforms of a multi-view transform: ``views`` of TwoCrops/MultiCrop, else ``[transform]``."""
    return list(getattr(transform, "views", [transform]))


# ----------------------------------------------------------------------------------------------------------
# Data on the device, and the loader
# ----------------------------------------------------------------------------------------------------------
# --aug device under DDP: every process holds the whole data set on its GPU and, while an image folder is
# decoded, twice in host memory (the arrays and their stack): 8 processes of a 4 GiB set need ~64 GiB of RAM
DDP_LIMIT_BYTES = 4 * 2 ** 30


def uint8_bytes(dataset):
    """The size of :func:`dataset_to_uint8`'s images, known before decoding (an image folder: its first image's
    size times the number of images)."""
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:
        return data.nbytes
    if getattr(dataset, "samples", None) and hasattr(dataset, "loader"):
        w, h = dataset.loader(dataset.samples[0][0]).size
        return len(dataset.samples) * w * h * 3
    return 0


def check_fits_every_process(dataset, world):
    """Refuses ``--aug device`` under DDP (``world`` > 1) for a data set above :data:`DDP_LIMIT_BYTES`."""
    size = uint8_bytes(dataset)
    if world > 1 and size > DDP_LIMIT_BYTES:
        raise CLIError(f"--aug device with {world} processes holds the whole data set ({size / 2 ** 30:.1f} GiB "
                       f"as uint8) on every process's GPU and twice in host memory while decoding, above the "
                       f"{DDP_LIMIT_BYTES / 2 ** 30:.0f} GiB limit: use --aug pil")


def dataset_to_uint8(dataset):
    """``(images, labels)``: the whole data set as one uint8 (N, C, H, W) tensor and an int64 (N,) tensor, on CPU.

    CIFAR (``.data`` array N x H x W x 3) is taken as is; an ImageFolder is decoded once (RGB) and must hold
    images of one size (PIL's RandomResizedCrop on images of other sizes would change the crops' scale).
    """
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)
    if hasattr(dataset, "samples") and hasattr(dataset, "loader"):
        arrays, sizes = [], set()
        for path, _ in dataset.samples:
            a = np.asarray(dataset.loader(path).convert("RGB"))
            sizes.add(a.shape[:2])
            if len(sizes) > 1:
                raise CLIError(f"--aug device needs images of one size; {dataset.root} holds {sorted(sizes)} "
                               "(resize them once, or use --aug pil)")
            arrays.append(a)
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)
    raise CLIError(f"--aug device cannot read {type(dataset).__name__} into memory (CIFAR or ImageFolder)")


class DeviceLoader:
    """Drop-in for the training DataLoader: yields ``(views, labels)`` with ``views`` a list of float batches.

    ``transform``: the script's training transform (TwoCrops, MultiCrop or one torchvision transform); the
    data set's images live on ``device`` as uint8. Batches follow ``sampler`` (a RandomSampler, or the
    script's DistributedSampler: each process augments its own shard). Views made by the same transform are
    augmented together in one call (independent draws per sample).
    """

    def __init__(self, dataset, transform, batch_size, device, sampler=None, drop_last=True, rank=0):
        check_fits_every_process(dataset, getattr(sampler, "num_replicas", 1))  # a DistributedSampler: DDP
        images, labels = dataset_to_uint8(dataset)
        self.images, self.labels = images.to(device), labels.to(device)
        self.device, self.rank = torch.device(device), rank
        views = views_of(transform)
        converted = {}
        self.views = [converted.setdefault(id(t), DeviceTransform(t)) for t in views]
        self.sampler = sampler if sampler is not None else RandomSampler(range(len(self.images)))
        self.batches = BatchSampler(self.sampler, batch_size, drop_last)
        self.generator = None
        print(f"=> --aug device: {len(self.images)} images ({self.images.numel() / 2 ** 20:.0f} MiB uint8) on "
              f"{self.device}, {len(self.views)} views per image augmented there", flush=True)

    def __len__(self):
        return len(self.batches)

    def new_generator(self):
        """The epoch's augmentation stream: seeded by one draw of the process's torch RNG (saved in every
        checkpoint, so a resumed run draws the same seed) plus the rank."""
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        g = torch.Generator(device=self.device)
        g.manual_seed((seed + self.rank) % (2 ** 63))
        return g

    def augment(self, images, generator):
        """All views of one uint8 batch, in the transform's view order."""
        out = [None] * len(self.views)
        for t in dict.fromkeys(self.views):  # distinct transforms, in order
            slots = [k for k, v in enumerate(self.views) if v is t]
            x = t(images.repeat(len(slots), 1, 1, 1) if len(slots) > 1 else images, generator)
            for k, part in zip(slots, x.chunk(len(slots))):
                out[k] = part
        return out

    def __iter__(self):
        self.generator = g = self.new_generator()
        for idx in self.batches:
            idx = torch.as_tensor(idx, device=self.device)
            yield self.augment(self.images.index_select(0, idx), g), self.labels.index_select(0, idx)


def add_aug_arg(parser, flag="--aug"):
    """The scripts' ``--aug pil|device`` option."""
    parser.add_argument(flag, default="pil", choices=["pil", "device"],
                        help="where training views are augmented: 'pil' (torchvision's PIL transforms in DataLoader "
                             "workers, as upstream) or 'device' (the data set held as uint8 on the training device, "
                             "the same transforms applied to whole batches with per-sample draws; much faster when "
                             "the CPU is the bottleneck)")
