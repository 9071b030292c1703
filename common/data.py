"""Datasets: CIFAR-10/100 (torchvision, downloaded when missing) and any ImageFolder tree.

Errors a user can cause (no dataset, no network, a wrong folder layout) become one :class:`CLIError`.
"""
import os
from pathlib import Path

import torchvision
from torchvision.datasets.folder import IMG_EXTENSIONS

from .cli import CLIError
from .safepickle import load_pickle

# Normalisation used by the official CIFAR code for *both* CIFAR-10 and CIFAR-100 (upstream quirk).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# The true CIFAR-100 statistics, for the corrected behaviour.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
             "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


class _LocalCheck:
    """Treats CIFAR batch files that exist as present.

    torchvision's integrity check compares the md5 of every batch file, which rejects CIFAR-format
    subsets (e.g. the tiny datasets the tests build). The archive's md5 is still checked when
    torchvision downloads it.
    """

    def _check_integrity(self):
        root = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(root, name)) for name, _ in self.train_list + self.test_list)

    def _load_meta(self):
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"{path} not found")
        # a plain dict of class names: read allowing no Python global at all (no code can run)
        meta = load_pickle(path, set(), what="CIFAR meta file", encoding="latin1")
        if not isinstance(meta, dict) or self.meta["key"] not in meta:
            raise CLIError(f"{path} is not a CIFAR meta file (no '{self.meta['key']}')")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10(_LocalCheck, torchvision.datasets.CIFAR10):
    pass


class CIFAR100(_LocalCheck, torchvision.datasets.CIFAR100):
    pass


CIFAR_CLASSES = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def cifar(name, root, train, transform=None, download=True, cls=None):
    """``CIFAR10``/``CIFAR100`` (or a subclass ``cls`` of them) under ``root``; downloads when missing."""
    cls = cls or CIFAR_CLASSES[name]
    try:
        return cls(root=root, train=train, transform=transform, download=download)
    except CLIError:
        raise
    except RuntimeError as e:  # "Dataset not found or corrupted"
        raise CLIError(f"{name} not found under {root} ({e}); pass --data DIR holding "
                       f"{cls.base_folder}/ or allow the download") from None
    except OSError as e:  # offline, DNS failure, permission denied...
        raise CLIError(f"could not download {name} to {root}: {e}. Download {CIFAR_URL[name]} yourself, "
                       f"extract it into {root} and run again") from None
    except Exception as e:  # unpickling a corrupt batch file
        raise CLIError(f"cannot read {name} under {root}: {type(e).__name__}: {e}") from None


def check_image_folder(path):
    """Checks that ``path`` is an ImageFolder tree (class sub-folders holding images)."""
    path = Path(path)
    if not path.is_dir():
        raise CLIError(f"image folder {path} does not exist")
    classes = [d for d in sorted(path.iterdir()) if d.is_dir()]
    if not classes:
        raise CLIError(f"{path} has no class sub-folders; expected {path}/<class>/<image>")
    if not any(f.suffix.lower() in IMG_EXTENSIONS for d in classes for f in d.rglob("*")):
        raise CLIError(f"{path} has class folders but no images ({', '.join(IMG_EXTENSIONS)})")
    return path


def image_folder(path, transform=None, cls=torchvision.datasets.ImageFolder):
    """``ImageFolder(path)`` after checking the layout."""
    path = check_image_folder(path)
    try:
        return cls(str(path), transform=transform)
    except FileNotFoundError as e:  # a class folder without images
        raise CLIError(f"{path}: {e}") from None


def split_dir(root, split):
    """``root/split`` for an ImageFolder dataset root holding ``train/`` and ``val/``."""
    return os.path.join(root, split)


def train_val_folders(root, train_transform=None, val_transform=None, train_cls=None):
    """``ImageFolder(root/train)`` and ``ImageFolder(root/val)``, refusing different class folders.

    ImageFolder numbers classes by the sorted folder names of each split, so a class missing from one
    split would silently shift every label after it. ``train_cls(path, transform)`` builds the training
    set instead of ``image_folder`` (e.g. a labelled subset).
    """
    train = (train_cls or image_folder)(split_dir(root, "train"), train_transform)
    val = image_folder(split_dir(root, "val"), val_transform)
    if list(train.classes) != list(val.classes):
        raise CLIError(f"{split_dir(root, 'train')} and {split_dir(root, 'val')} must hold the same class folders "
                       f"({len(train.classes)} vs {len(val.classes)})")
    return train, val


class TwoCrops:
    """Two independent augmentations of one image (MoCo's ``TwoCropsTransform``)."""

    def __init__(self, transform):
        self.transform = transform

    @property
    def views(self):  # one transform per view (common.device_aug)
        return [self.transform, self.transform]

    def __call__(self, x):
        return [self.transform(x), self.transform(x)]
