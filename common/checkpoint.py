"""Atomic checkpoints, RNG state capture, and loading with clear errors.

Files are written to a temporary name in the same directory, flushed to disk, then renamed over the
target, so a run killed mid-write (even ``kill -9``) leaves the previous checkpoint intact.
"""
import argparse
import os
import pickle
import random
import re
import shutil
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist

from .cli import CLIError, atomic_write, cannot_write
from .dist import is_dist


def _is_write_failure(e):
    """torch.save's writer reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc ...]
    ... PytorchStreamWriter failed writing file ...``."""
    return isinstance(e, RuntimeError) and ("inline_container" in str(e) or "PytorchStreamWriter" in str(e))


def save_atomic(obj, path):
    """``torch.save`` to ``path`` through :func:`common.cli.atomic_write` (a temp file + ``os.replace``).

    A folder that cannot be written (full disk, quota, read-only, permissions) gives one :class:`CLIError`
    naming ``path``; the temp file is removed and a previous file at ``path`` is left as it was.
    """
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        if not _is_write_failure(e):
            raise
        d = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(d).free
        raise CLIError(cannot_write(path, f"the write failed ({free / 2 ** 20:.0f} MiB free in {d}): "
                                          f"{str(e).splitlines()[0][:120]}")) from None


def get_rng_state():
    """Every RNG a training step draws from: Python, NumPy's global RNG, torch CPU and this process's CUDA
    device (``torch.cuda.get_rng_state()`` of the current device: one state per process, as the gathered
    states are, so that a run resumes under any number of visible GPUs).

    NumPy's key array is stored as a tensor so that checkpoints holding this state still load with
    ``torch.load(..., weights_only=True)`` (PyTorch >= 2.6's default, used by upstream's tools).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _on_cpu(t):
    """A checkpoint loaded with ``map_location="cuda:N"`` holds the RNG states as CUDA tensors: back to the CPU."""
    return t.cpu() if torch.is_tensor(t) else t


def set_rng_state(state):
    """Restores :func:`get_rng_state`'s dict, whatever device its tensors were loaded to.

    ``"cuda"`` is this process's device state; a list (the layout written before: ``get_rng_state_all()``,
    one state per GPU visible then) gives the current device its entry, the last one if fewer were visible.
    """
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = _on_cpu(keys).numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(_on_cpu(state["torch"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):
            if not cuda:
                return
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(_on_cpu(cuda))


def gather_rng_states():
    """The RNG states of every process in rank order (a collective: all processes must call it)."""
    state = get_rng_state()
    if not is_dist():
        return [state]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def restore_rng_states(states, rank, world):
    """Sets this process's RNGs from :func:`gather_rng_states`'s list (a warning if it does not fit); the
    states may have been loaded to any device (:func:`set_rng_state`)."""
    if states is not None and len(states) == world:
        set_rng_state(states[rank])
    else:
        warnings.warn("the checkpoint holds no RNG states for this number of processes: the run resumes "
                      "correctly but not bit-exactly")


def _numpy_globals():
    """NumPy scalars, dtypes and arrays, under the names NumPy 2 and NumPy 1.x write into a pickle."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out = [np.dtype, np.ndarray, core.scalar, core._reconstruct,
           (core.scalar, "numpy.core.multiarray.scalar"), (core._reconstruct, "numpy.core.multiarray._reconstruct")]
    # NumPy >= 1.25 may name a dtype by its class (numpy.dtypes.Float64DType, ...)
    out += sorted({type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                                np.float64)}, key=lambda c: c.__name__)
    return out


def allowed_globals():
    """What a checkpoint may hold beyond torch's own ``weights_only`` allow-list (tensors, containers,
    numbers, strings, ``OrderedDict``, ``Counter``, ``torch.Size``/dtypes/devices).

    Built from the formats this project reads: upstream's and the released checkpoints (MoCo demo and
    ImageNet, SwAV pretraining/linear, htdt SimCLR/BYOL) hold only those plus, in files written by older
    scripts or tools, NumPy scalars/arrays (an accuracy or loss left as ``np.float64``) and an
    ``argparse.Namespace`` of the run's options. Constructing these runs no code of the file's choosing.
    """
    return [argparse.Namespace] + _numpy_globals()


def _refusal(err):
    """(global, detail) from torch's ``UnpicklingError`` text: the ``module.name`` a refused pickle asked
    for (None if it asked for none) and the first line of the loader's own explanation."""
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    detail = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    return (m.group(1) if m else None), detail


def load_checkpoint(path, map_location="cpu", unsafe=False):
    """Loads a checkpoint file, turning every way it can be broken into one clear :class:`CLIError`.

    Loading never runs code from the file: ``torch.load(weights_only=True)`` with :func:`allowed_globals`.
    A file that wants any other Python global is refused with one line naming it. ``unsafe=True`` (the
    scripts' ``--unsafe-load``) opens a file the user trusts with plain pickle (``weights_only=False``).
    """
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
        if unsafe:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(allowed_globals()), warnings.catch_warnings():
            # "Detected pickle protocol 4": harmless, and a user-facing load says one line at most
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name, detail = _refusal(e)
        if name is None and detail.startswith("Unsupported operand"):  # a plain pickle, not a torch file
            raise CLIError(f"cannot read checkpoint {path} (not a PyTorch file): {detail}") from None
        what = (f"it asks for the Python global {name}, which no checkpoint of these formats holds"
                if name else f"the safe loader cannot build it ({detail or type(e).__name__})")
        raise CLIError(f"refused to load {path}: {what}; loading it with plain pickle could run code "
                       "hidden in it: only if you trust the file, pass --unsafe-load") from None
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
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CLIError(f"{what} holds no state_dict (a dict of tensors): wrong kind of file?")
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
