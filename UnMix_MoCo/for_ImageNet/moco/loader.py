"""MoCo v1 / v2 augmentations (upstream ``moco/loader.py`` and the transforms of ``main_moco.py``; see docs/faithfulness.md).

The two-view wrapper is :class:`common.data.TwoCrops` (upstream's ``TwoCropsTransform``).
"""
import random

import torchvision.transforms as T
from PIL import ImageFilter

from common.data import IMAGENET_MEAN, IMAGENET_STD


class GaussianBlur:
    """SimCLR's blur: sigma ~ U(sigma[0], sigma[1]) from Python's ``random`` (PIL radius = std)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        sigma = random.uniform(self.sigma[0], self.sigma[1])
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def pretrain_transform(aug_plus, crop_size=224):
    """MoCo v2 (``aug_plus``) or v1 augmentation of one view. ``crop_size`` 224 is upstream's."""
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if aug_plus:  # MoCo v2, as SimCLR
        ops = [T.RandomResizedCrop(crop_size, scale=(0.2, 1.0)),
               T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
               T.RandomGrayscale(p=0.2),
               T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
               T.RandomHorizontalFlip()]
    else:  # MoCo v1, as InstDisc: grayscale *before* an always-on jitter with hue 0.4
        ops = [T.RandomResizedCrop(crop_size, scale=(0.2, 1.0)),
               T.RandomGrayscale(p=0.2),
               T.ColorJitter(0.4, 0.4, 0.4, 0.4),
               T.RandomHorizontalFlip()]
    return T.Compose(ops + [T.ToTensor(), normalize])
