"""Datasets: CIFAR-10/100 (torchvision, downloaded when missing) and any ImageFolder tree.

Errors a user can cause (no dataset, no network, a wrong folder layout, an unreadable image) become one
:class:`CLIError`.

Image files are checked before training, once, here: every ImageFolder loader goes through
:func:`image_folder` / :func:`train_val_folders`, which open the header of every image (PIL, as the
loader will) and refuse a tree holding an empty, corrupt or non-image file, naming it. A header check
cannot see a truncated image body; decoding one later stops the run with one line naming the file
(:func:`read_image`) instead of a DataLoader traceback.
"""
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .cli import CLIError, recorded_data_root
from .safepickle import NUMPY, load_pickle

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
    """torchvision's CIFAR data set, reading its pickle files without running code from them.

    torchvision reads the batch files with plain ``pickle.load``, which runs any code a file holds; here they are
    read with the restricted unpickler (NumPy arrays and plain containers only), so a CIFAR folder from
    elsewhere is data, not code. CIFAR batch files that exist count as present: torchvision's integrity check
    compares the md5 of every batch file, which rejects CIFAR-format subsets (e.g. the tiny data sets the tests
    build); the archive's md5 is still checked when torchvision downloads it.
    """
    # what a CIFAR batch file holds: NumPy arrays (Python 2 pickles), bytes as Python 3's protocol 2 writes them
    BATCH_GLOBALS = NUMPY | {"_codecs.encode"}

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        # torchvision's CIFAR10.__init__, step for step, with the batch files read by load_pickle
        torchvision.datasets.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        data, self.targets = [], []
        what = f"{type(self).__name__} batch file"  # e.g. "CIFAR10 batch file": names the data set
        for name, _ in self.train_list if train else self.test_list:
            path = os.path.join(self.root, self.base_folder, name)
            entry = load_pickle(path, self.BATCH_GLOBALS, what=what, encoding="latin1")
            if not isinstance(entry, dict) or "data" not in entry:
                raise CLIError(f"{path} is not a {what} (no 'data')")
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
        self._load_meta()

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


def _first_missing(path):
    """The outermost folder of ``path`` that does not exist yet (``None`` if ``path`` exists)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def cifar(name, root, train, transform=None, download=True, cls=None):
    """``CIFAR10``/``CIFAR100`` (or a subclass ``cls`` of them) under ``root``; downloads when missing.

    A folder this call created for the download is removed again when the download fails. A root whose path a
    resumed run took from its checkpoint (:func:`common.cli.recorded_data_root`) is only read: a crafted
    checkpoint cannot make a run create folders or download anywhere."""
    cls = cls or CIFAR_CLASSES[name]
    recorded = recorded_data_root(root)
    download = download and recorded is None
    created = _first_missing(root)
    try:
        return cls(root=root, train=train, transform=transform, download=download)
    except CLIError:
        raise
    except RuntimeError as e:  # "Dataset not found or corrupted"
        if recorded is not None:
            raise CLIError(f"{name} not found under {root}, the data folder recorded in {recorded}: a resumed "
                           "run only reads a recorded folder; name the data folder on the command line (CIFAR is "
                           "downloaded there when missing)") from None
        raise CLIError(f"{name} not found under {root} ({e}); pass --data DIR holding "
                       f"{cls.base_folder}/ or allow the download") from None
    except OSError as e:  # offline, DNS failure, permission denied...
        raise CLIError(f"could not download {name} to {root}: {e}. Download {CIFAR_URL[name]} yourself, "
                       f"extract it into {root} and run again") from None
    except Exception as e:  # unpickling a corrupt batch file
        raise CLIError(f"cannot read {name} under {root}: {type(e).__name__}: {e}") from None
    finally:
        if created is not None and os.path.isdir(created) and not _has_cifar(created, cls):
            shutil.rmtree(created, ignore_errors=True)  # made by this call: at most a partial archive


def _has_cifar(folder, cls):
    return os.path.isdir(os.path.join(folder, cls.base_folder)) or any(
        os.path.isdir(os.path.join(d, cls.base_folder)) for d, _, _ in os.walk(folder))


class ImageReadError(CLIError):
    """An image that cannot be decoded. Raised in a DataLoader worker, it is re-raised in the main process
    as ``ImageReadError(<the worker's traceback>)``: keep only the original message, one line."""

    def __init__(self, msg):
        text = str(msg)
        if "Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(text)


def read_image(path):
    """ImageFolder's loader (``torchvision.datasets.folder.pil_loader``: PIL, RGB) with one clear error."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot decode image {path}: {e} (a corrupt or truncated file: remove or "
                             "replace it)") from None


def _header_error(path):
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 (parsed from the header)
        return None
    except Exception as e:  # PIL raises many types for foreign files
        return f"{type(e).__name__}: {e}"


_CHECKED = set()  # trees this process has checked already (e.g. train/ read by two loaders)


def check_images(paths, root, rank=None):
    """Opens the header of every image in ``paths`` (PIL's format detection and size, no decoding), with a
    progress bar on large trees; one :class:`CLIError` naming the first unreadable file and the count.

    Cost: ~0.15 ms per file on this project's 2-core machine (ImageNet's 1.28M images: a few minutes on one
    core, faster with the threads used here on a machine with more). In a multi-process run only rank 0
    checks; the others read the same files. ``rank`` is this process's rank, or ``None`` for the launcher's
    (``$RANK``/``$SLURM_PROCID``); pass it where no launcher sets them (``mp.spawn``, a manual ``--rank``).
    """
    key = str(Path(root).resolve())
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)
    if key in _CHECKED or rank != 0:
        return
    paths = list(paths)
    chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    bad = []
    from tqdm import tqdm
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as ex, \
            tqdm(total=len(paths), desc=f"checking images in {root}", unit="img", file=sys.stderr,
                 disable=len(paths) < 20000) as bar:
        for chunk, errs in zip(chunks, ex.map(lambda c: [_header_error(p) for p in c], chunks)):
            bad += [(p, e) for p, e in zip(chunk, errs) if e]
            bar.update(len(chunk))
    if bad:
        raise CLIError(f"{len(bad)} of the {len(paths)} images under {root} cannot be read, e.g. {bad[0][0]} "
                       f"({bad[0][1]}); remove or replace them")
    _CHECKED.add(key)


def check_image_folder(path, images=False, rank=None):
    """Checks that ``path`` is an ImageFolder tree (class sub-folders holding images) and, with ``images``,
    every image's header (:func:`check_images`, on ``rank`` 0 only): for a parent process that checks before
    it spawns."""
    path = Path(path)
    if not path.is_dir():
        raise CLIError(f"image folder {path} does not exist")
    classes = [d for d in sorted(path.iterdir()) if d.is_dir()]
    if not classes:
        raise CLIError(f"{path} has no class sub-folders; expected {path}/<class>/<image>")
    if not any(f.suffix.lower() in IMG_EXTENSIONS for d in classes for f in d.rglob("*")):
        raise CLIError(f"{path} has class folders but no images ({', '.join(IMG_EXTENSIONS)})")
    if images:
        _, class_to_idx = find_classes(str(path))
        try:
            samples = make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as e:  # a class folder without images
            raise CLIError(f"{path}: {e}") from None
        check_images((p for p, _ in samples), path, rank)
    return path


def image_folder(path, transform=None, cls=torchvision.datasets.ImageFolder, check=True):
    """``ImageFolder(path)`` after checking the layout and (``check``) every image's header; images are
    read with :func:`read_image`."""
    path = check_image_folder(path)
    try:
        ds = cls(str(path), transform=transform, loader=read_image)
    except FileNotFoundError as e:  # a class folder without images
        raise CLIError(f"{path}: {e}") from None
    if check:
        check_images((p for p, _ in ds.samples), path)
    return ds


def split_dir(root, split):
    """``root/split`` for an ImageFolder dataset root holding ``train/`` and ``val/``."""
    return os.path.join(root, split)


def train_val_folders(root, train_transform=None, val_transform=None, train_cls=None, check=True):
    """``ImageFolder(root/train)`` and ``ImageFolder(root/val)``, refusing different class folders.

    ImageFolder numbers classes by the sorted folder names of each split, so a class missing from one
    split would silently shift every label after it. ``train_cls(path, transform)`` builds the training
    set instead of ``image_folder`` (e.g. a labelled subset).
    """
    train = (train_cls(split_dir(root, "train"), train_transform) if train_cls
             else image_folder(split_dir(root, "train"), train_transform, check=check))
    val = image_folder(split_dir(root, "val"), val_transform, check=check)
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
