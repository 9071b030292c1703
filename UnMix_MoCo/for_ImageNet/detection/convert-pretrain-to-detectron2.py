#!/usr/bin/env python
"""Converts a MoCo / Un-Mix pretraining checkpoint to detectron2's ResNet format (upstream
``detection/convert-pretrain-to-detectron2.py``, see docs/faithfulness.md).

    python convert-pretrain-to-detectron2.py checkpoint_0199.pth.tar output.pkl

Keeps ``module.encoder_q.*``, renames torchvision ResNet names to detectron2's (``stem.``, ``res2-5``,
``convN.norm``, ``shortcut``) and writes ``{"model": {name: ndarray}, "__author__": "MOCO",
"matching_heuristics": True}`` as a pickle. The head (``stem.fc.*``) is kept, as upstream, and ignored by
detectron2. Refuses to overwrite OUTPUT unless ``--force``.
"""
import argparse
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # repo root

from common.checkpoint import load_checkpoint  # noqa: E402
from common.cli import CLIError, HelpFormatter, add_unsafe_load_arg, run_main  # noqa: E402

PREFIX = "module.encoder_q."


def detectron2_name(k):
    """torchvision ResNet name (without ``module.encoder_q.``) -> detectron2 name, in upstream's order."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in [1, 2, 3]:
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


def convert(state_dict):
    """MoCo pretraining ``state_dict`` -> detectron2 ``model`` dict (NumPy arrays)."""
    out = {}
    for k, v in state_dict.items():
        if not k.startswith(PREFIX):
            continue
        name = detectron2_name(k[len(PREFIX):])
        print(k[len(PREFIX):], "->", name)
        out[name] = v.detach().cpu().numpy()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("input", help="MoCo / Un-Mix checkpoint (*.pth.tar with module.encoder_q.* keys)")
    p.add_argument("output", help="detectron2 weights to write (*.pkl)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    add_unsafe_load_arg(p)
    args = p.parse_args(argv)
    if Path(args.output).exists() and not args.force:
        raise CLIError(f"{args.output} exists; pass --force to overwrite it")
    ckpt = load_checkpoint(args.input, "cpu", unsafe=args.unsafe_load)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CLIError(f"{args.input} has no 'state_dict': not a MoCo pretraining checkpoint")
    model = convert(ckpt["state_dict"])
    if not model:
        raise CLIError(f"{args.input} holds no '{PREFIX}*' weights (expects a MoCo / Un-Mix pretraining "
                       "checkpoint saved through DDP)")
    tmp = Path(str(args.output) + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"model": model, "__author__": "MOCO", "matching_heuristics": True}, f)
    tmp.replace(args.output)


if __name__ == "__main__":
    run_main(main)
