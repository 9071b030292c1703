"""Multi-crop data for SwAV: CIFAR (Un-Mix for_CIFAR) and an ImageFolder (ImageNet).

Each sample becomes ``sum(nmb_crops)`` crops; resolution group ``i`` uses
``RandomResizedCrop(size_crops[i], scale=(min_scale_crops[i], max_scale_crops[i]))``, a horizontal
flip, the colour distortion, ``ToTensor`` and ``Normalize``. The datasets return ``(crops, label)``; the
training loop ignores the label (upstream's datasets returned the crops only).

Differences between the two variants are upstream's (docs/faithfulness.md, SwAV pretraining):

============== ================================= =========================================
               CIFAR                             ImageNet
============== ================================= =========================================
colour         jitter strength s = 0.5           s = 1.0
blur           none (``--use_pil_blur`` ignored) PIL Gaussian blur, p = 0.5, radius U(0.1, 2)
normalisation  CIFAR-10 mean/std (also C-100)    ImageNet mean, std (0.228, 0.224, 0.225)
============== ================================= =========================================
"""
import random

import numpy as np
from PIL import ImageFilter
from torchvision import transforms

from common.data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN

# upstream SwAV's ImageNet std: 0.228 for the red channel (torchvision/ImageNet use 0.229), kept
SWAV_IMAGENET_STD = (0.228, 0.224, 0.225)


class PILRandomGaussianBlur:
    """SwAV's blur: with probability ``p`` (``np.random.rand() <= p``), a PIL Gaussian blur whose radius is
    ``random.uniform(radius_min, radius_max)``."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if not np.random.rand() <= self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


def color_distortion(s=1.0):
    """``RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8)`` then ``RandomGrayscale(0.2)``."""
    jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    return transforms.Compose([transforms.RandomApply([jitter], p=0.8), transforms.RandomGrayscale(p=0.2)])


class MultiCrop:
    """Transform: one PIL image -> the list of all crops (group 0's crops, then group 1's, ...)."""

    def __init__(self, size_crops, nmb_crops, min_scale_crops, max_scale_crops, mean, std,
                 color_strength=1.0, blur=False):
        if not len(size_crops) == len(nmb_crops) == len(min_scale_crops) == len(max_scale_crops):
            raise ValueError("size_crops, nmb_crops, min_scale_crops and max_scale_crops need equal lengths")
        self.trans = []
        for size, n, smin, smax in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
            color = [color_distortion(color_strength)] + ([PILRandomGaussianBlur()] if blur else [])
            t = transforms.Compose([
                transforms.RandomResizedCrop(size, scale=(smin, smax)),
                transforms.RandomHorizontalFlip(p=0.5),
                transforms.Compose(color),
                transforms.ToTensor(),
                transforms.Normalize(mean=mean, std=std)])
            self.trans.extend([t] * n)

    @property
    def views(self):  # one transform per crop (common.device_aug)
        return self.trans

    def __call__(self, img):
        return [t(img) for t in self.trans]


def cifar_multicrop(args):
    """Un-Mix for_CIFAR's crops: colour strength 0.5, no blur, CIFAR-10 statistics (for CIFAR-100 too)."""
    return MultiCrop(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                     CIFAR10_MEAN, CIFAR10_STD, color_strength=0.5, blur=False)


def imagenet_multicrop(args):
    """Upstream SwAV's ImageNet crops: colour strength 1.0, PIL blur, ImageNet statistics (std 0.228).

    Upstream always blurs here; ``--use_pil_blur false`` turns the blur off (upstream's older cv2 blur is
    not reproduced)."""
    return MultiCrop(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                     IMAGENET_MEAN, SWAV_IMAGENET_STD, color_strength=1.0, blur=args.use_pil_blur)
