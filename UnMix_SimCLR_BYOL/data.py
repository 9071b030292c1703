"""htdt's data protocol (docs/faithfulness.md): augmentation, normalisation and the train / clf / test splits.

train: two independent augmentations of each image; clf: the training images without augmentation (the
kNN bank and the linear probe's training set); test: the test images without augmentation.
"""
from torchvision import transforms as T

from common import data as D

# htdt's statistics. CIFAR-10's equal common.data's (upstream's); CIFAR-100's are htdt's own, which differ
# from common.data.CIFAR100_* in the 4th decimal. "imagefolder" follows htdt's Tiny ImageNet settings.
NORMALIZE = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagefolder": ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),
}
CROP = {"cifar10": 32, "cifar100": 32, "imagefolder": 64}


def train_transform(dataset, size):
    """htdt's order: colour jitter and grayscale *before* the crop; bicubic RandomResizedCrop; no blur."""
    mean, std = NORMALIZE[dataset]
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.1),
        T.RandomResizedCrop(size, scale=(0.2, 1.0), ratio=(0.75, 4 / 3),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(mean, std)])


def eval_transform(dataset, size):
    """No augmentation. ImageFolder images are resized and centre-cropped to ``size`` (a no-op for 64-px
    Tiny ImageNet, which htdt feeds as is); CIFAR images are used at their native 32 px, as htdt, unless
    a different --crop-size was chosen (then they are resized to it like the training crops)."""
    mean, std = NORMALIZE[dataset]
    resize = [T.Resize(size), T.CenterCrop(size)] if dataset == "imagefolder" or size != CROP[dataset] else []
    return T.Compose(resize + [T.ToTensor(), T.Normalize(mean, std)])


def eval_sets(dataset, root, size):
    """(clf, test): training images and test images (``root/val`` for an ImageFolder), no augmentation."""
    t = eval_transform(dataset, size)
    if dataset == "imagefolder":
        return D.train_val_folders(root, t, t)
    return D.cifar(dataset, root, True, t), D.cifar(dataset, root, False, t)


def train_set(dataset, root, size):
    """Training images, each returned as two augmented views ``[v0, v1]``."""
    t = D.TwoCrops(train_transform(dataset, size))
    if dataset == "imagefolder":
        return D.image_folder(D.split_dir(root, "train"), t)
    return D.cifar(dataset, root, True, t)
