"""Tiny datasets in the real on-disk formats: CIFAR-10/100 python pickles and ImageFolder trees."""
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _images(rng, labels, size=32):
    # class-dependent mean colour plus noise, so features carry some label information
    base = (np.asarray(labels)[:, None] * 37 % 256).astype(np.float32)
    imgs = rng.normal(0, 40, size=(len(labels), 3, size, size)) + base[:, :, None, None]
    return np.clip(imgs, 0, 255).astype(np.uint8)


def make_cifar(root, name="cifar10", n_train=80, n_test=40, seed=0, images=None):
    """Writes ``root/cifar-10-batches-py`` (5 train batches + test) or ``root/cifar-100-python``; ``images``
    (default: class colour + noise) makes the uint8 [N, 3, 32, 32] images of a list of labels."""
    images = images or _images
    rng = np.random.RandomState(seed)
    root = Path(root)
    classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        label_key, meta_name, meta = "labels", "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file = "test_batch"
    else:
        d = root / "cifar-100-python"
        label_key, meta_name = "fine_labels", "meta"
        meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
        train_files, test_file = ["train"], "test"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / meta_name, "wb") as f:
        pickle.dump(meta, f)
    chunks = np.array_split(np.arange(n_train), len(train_files))
    for fname, idx in zip(train_files, chunks):
        labels = [int(i % classes) for i in idx]
        with open(d / fname, "wb") as f:
            pickle.dump({"data": images(rng, labels).reshape(len(idx), -1), label_key: labels}, f)
    labels = [int(i % classes) for i in range(n_test)]
    with open(d / test_file, "wb") as f:
        pickle.dump({"data": images(rng, labels).reshape(n_test, -1), label_key: labels}, f)
    return root


def make_image_folder(root, classes=3, per_class=8, size=32, splits=("train", "val"), seed=0, images=None,
                      per_split=None):
    """Writes ``root/{train,val}/class_k/img_j.png`` (``per_split``: images per class of each split, default
    ``per_class``); ``images(rng, labels, size)`` as in :func:`make_cifar`."""
    images = images or _images
    rng = np.random.RandomState(seed)
    root = Path(root)
    for split in splits:
        n = (per_split or {}).get(split, per_class)
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            imgs = images(rng, [c] * n, size)
            for j, im in enumerate(imgs):
                Image.fromarray(im.transpose(1, 2, 0)).save(d / f"img_{j}.png")
    return root


def structured_images(rng, labels, size=32, classes=10, spread=1.0):
    """Images with structure to learn from, [N, 3, size, size] uint8: stripes at an orientation within the
    class's bin (``pi * (label + U(0, spread)) / classes``; ``spread=0``: one orientation per class), a random period, phase and pair of colours, with a solid
    rectangle of a random colour at a random place. Every image is a distinct instance (orientation, period,
    colours, rectangle), so two augmented views of one image can be told from those of another; the class is a
    shape cue (the orientation bin), not a colour."""
    labels = np.asarray(labels)
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.pi * (labels + rng.uniform(0, spread, n)) / classes
    period = rng.uniform(4, 12, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    proj = xx[None] * np.cos(angle)[:, None, None] + yy[None] * np.sin(angle)[:, None, None]
    stripe = (np.sin(2 * np.pi * proj / period[:, None, None] + phase[:, None, None]) > 0)[:, None]
    fg, bg, box = (rng.randint(0, 256, (n, 3, 1, 1)) for _ in range(3))
    imgs = np.where(stripe, fg, bg).astype(np.float32)
    for i in range(n):
        h, w = rng.randint(size // 4, size // 2 + 1, 2)
        y, x = rng.randint(0, size - h + 1), rng.randint(0, size - w + 1)
        imgs[i, :, y:y + h, x:x + w] = box[i]
    imgs += rng.normal(0, 8, imgs.shape)
    return np.clip(imgs, 0, 255).astype(np.uint8)
