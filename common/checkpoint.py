"""Atomic checkpoints, RNG state capture, and loading with clear errors.

Files are written to a temporary name in the same directory, flushed to disk, then renamed over the
target, so a run killed mid-write (even ``kill -9``) leaves the previous checkpoint intact.
"""
import os
import random
import tempfile
import zipfile

import numpy as np
import torch

from .cli import CLIError


def save_atomic(obj, path):
    """``torch.save`` to ``path`` via a temp file + ``os.replace``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def get_rng_state():
    """Every RNG a training step draws from: Python, NumPy's global RNG, torch CPU and CUDA.

    NumPy's key array is stored as a tensor so that checkpoints holding this state still load with
    ``torch.load(..., weights_only=True)`` (PyTorch >= 2.6's default, used by upstream's tools).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path, map_location="cpu"):
    """Loads a checkpoint file, turning every way it can be broken into one clear :class:`CLIError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CLIError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise CLIError(f"checkpoint {path} is empty")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise CLIError(f"{path} is an HTML page, not a checkpoint (a failed or quota-limited download?)")
    try:
        # The checkpoints hold tensors, numbers, strings and NumPy RNG state; allow the NumPy types.
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, ImportError,
            AttributeError, KeyError, IndexError, TypeError) as e:
        # torch/pickle raise many kinds of error for truncated or foreign files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CLIError(f"cannot read checkpoint {path} (truncated or not a PyTorch file): {msg}") from None
    except Exception as e:  # unpickling errors from foreign pickles
        raise CLIError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def strip_prefix(state_dict, prefix):
    """Keys starting with ``prefix`` with the prefix removed; other keys are dropped."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def check_compatible(model, state_dict, what="checkpoint", allow_missing=()):
    """Refuses a ``state_dict`` whose keys or shapes do not match ``model`` (beyond ``allow_missing``).

    Raises one :class:`CLIError` naming the first offending keys, e.g. for a checkpoint of another
    architecture.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and k not in allow_missing]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state_dict[k].shape)} "
                        f"in the file vs {tuple(own[k].shape)} in the model)")
    if problems:
        raise CLIError(f"{what} does not match the model: " + "; ".join(problems)
                       + " — wrong architecture or wrong kind of checkpoint?")
