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


def make_cifar(root, name="cifar10", n_train=80, n_test=40, seed=0):
    """Writes ``root/cifar-10-batches-py`` (5 train batches + test) or ``root/cifar-100-python``."""
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
            pickle.dump({"data": _images(rng, labels).reshape(len(idx), -1), label_key: labels}, f)
    labels = [int(i % classes) for i in range(n_test)]
    with open(d / test_file, "wb") as f:
        pickle.dump({"data": _images(rng, labels).reshape(n_test, -1), label_key: labels}, f)
    return root


def make_image_folder(root, classes=3, per_class=8, size=32, splits=("train", "val"), seed=0):
    """Writes ``root/{train,val}/class_k/img_j.png``."""
    rng = np.random.RandomState(seed)
    root = Path(root)
    for split in splits:
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            imgs = _images(rng, [c] * per_class, size)
            for j, im in enumerate(imgs):
                Image.fromarray(im.transpose(1, 2, 0)).save(d / f"img_{j}.png")
    return root
