"""Convert an Un-Mix pretraining checkpoint into a plain torchvision ResNet ``state_dict``.

    python tools/convert_to_torchvision.py INPUT OUTPUT [--keep-head] [--force]

The input kind is detected from its keys (tools/layouts.py). The query encoder / backbone is kept, the
pretraining heads (MoCo queue and key encoder, projection MLP, SwAV prototypes) are dropped, so the output
loads into the torchvision model below with only ``fc.weight``/``fc.bias`` missing:

| input | torchvision model to load it into |
|---|---|
| MoCo CIFAR demo ``model_last.pth`` | ``resnet18()`` with ``conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)`` and ``maxpool = Identity()`` |
| MoCo v1/v2 ImageNet ``checkpoint_*.pth.tar`` | ``resnet50()`` (unchanged) |
| SwAV CIFAR ``checkpoint.pth.tar`` | ``ResNet(Bottleneck, [2, 2, 2, 2])`` with ``conv1 = Conv2d(3, 64, 3, 1, padding=2, bias=False)``, ``maxpool = Identity()`` |
| SwAV ImageNet ResNet-50 ``checkpoint.pth.tar`` | ``resnet50()`` (unchanged) |
| SimCLR / BYOL ``model_last.pth`` (``model.module.*``; the online encoder for BYOL) | ``resnet18()``/``resnet50()`` with the CIFAR conv1 above and ``maxpool = Identity()`` (a run on ``--dataset imagefolder`` keeps the maxpool, as htdt's Tiny ImageNet / STL-10 models) |

Name mapping of the MoCo CIFAR demo (``ModelBase`` is a ``nn.Sequential`` rebuilt from torchvision's
children, docs/faithfulness.md): ``encoder_q.net.0`` -> ``conv1`` (3x3, stride 1), ``net.1`` -> ``bn1``,
``net.3..6`` -> ``layer1..4``, ``net.9`` -> ``fc`` (the 128-d MoCo projection, dropped unless
``--keep-head``); ``net.2`` (ReLU), ``net.7`` (avgpool), ``net.8`` (Flatten) have no weights and the
maxpool was removed, hence ``maxpool = Identity()``.
SwAV's CIFAR stem is ``ConstantPad2d(1)`` + a 3x3 conv with padding 1, i.e. a 3x3 conv with padding 2
(32x32 input -> 34x34 maps): build torchvision's conv1 with ``padding=2`` to get identical features. SwAV's
ImageNet stem (pad 1 + 7x7 conv with padding 2) equals torchvision's padding-3 conv.
The SplitBatchNorm of the MoCo demo stores plain BatchNorm buffers; its ``num_batches_tracked`` is 0.
"""
import argparse
import sys
from pathlib import Path

import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.checkpoint import load_checkpoint, save_atomic, strip_prefix  # noqa: E402
from common.cli import CLIError, HelpFormatter, add_unsafe_load_arg, run_main  # noqa: E402
from tools import check_output, layouts  # noqa: E402

# kind -> (torchvision architecture, stem) of the converted backbone
TARGETS = {
    "moco_cifar": ("resnet18", "cifar"),
    "moco_imagenet": ("resnet50", "imagenet"),
    "swav_cifar": ("swav_cifar_resnet18", "cifar_pad2"),
    "swav_imagenet": ("resnet50", "imagenet"),
    "simclr_byol": (None, "cifar"),  # arch from the variant: simclr-resnet18, byol-resnet50, ...
}


def target(kind, variant=None):
    """``(torchvision arch, stem)`` of the converted backbone."""
    arch, stem = TARGETS[kind]
    return (arch or variant.split("-")[1]), stem


def convert_state_dict(state_dict, keep_head=False):
    """``(torchvision state_dict, kind, variant)`` for a pretraining ``state_dict`` of a released layout."""
    found = layouts.detect(state_dict)
    if found is None or found[0] not in TARGETS:
        raise CLIError("not an Un-Mix/MoCo/SwAV pretraining checkpoint (kinds: "
                       + ", ".join(TARGETS) + ")" + (f"; it is a {found[0]}" if found else ""))
    kind, variant = found
    out = {}
    if kind == "moco_cifar":
        for k, v in strip_prefix(state_dict, "encoder_q.net.").items():
            idx, rest = k.split(".", 1)
            names = {"0": "conv1", "1": "bn1", "3": "layer1", "4": "layer2", "5": "layer3", "6": "layer4",
                     "9": "fc"}
            out[f"{names[idx]}.{rest}"] = v
    elif kind == "moco_imagenet":
        out = strip_prefix(state_dict, "module.encoder_q.")
        if variant == "v2" and keep_head:
            raise CLIError("the MoCo v2 MLP head (fc.0, fc.2) has no torchvision counterpart; drop --keep-head")
    elif kind == "simclr_byol":
        out = strip_prefix(state_dict, "model.module.")
    else:
        if variant not in ("resnet18", "resnet50"):
            raise CLIError(f"SwAV {variant} widens the stem too; torchvision has no such ResNet "
                           "(use UnMix_SwAV/swav/resnet.py)")
        out = {k: v for k, v in strip_prefix(state_dict, "module.").items()
               if not k.startswith(("projection_head.", "prototypes."))}
    if not keep_head:
        out = {k: v for k, v in out.items() if not k.startswith("fc.")}
    return out, kind, variant


def build_torchvision(kind, variant=None, num_classes=1000, maxpool=False, **kwargs):
    """The torchvision ResNet whose ``state_dict`` names/shapes match :func:`convert_state_dict`'s output.

    ``maxpool`` keeps the max-pool of a small-stem model (SimCLR/BYOL trained on an ImageFolder)."""
    from torchvision.models import resnet18, resnet50
    from torchvision.models.resnet import Bottleneck, ResNet
    arch, stem = target(kind, variant)
    if arch == "resnet18":
        model = resnet18(num_classes=num_classes, **kwargs)
    elif arch == "resnet50":
        model = resnet50(num_classes=num_classes, **kwargs)
    else:
        model = ResNet(Bottleneck, [2, 2, 2, 2], num_classes=num_classes, **kwargs)
    if stem.startswith("cifar"):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2 if stem == "cifar_pad2" else 1,
                                bias=False)
        if not maxpool:
            model.maxpool = nn.Identity()
    return model


def simclr_byol_maxpool(obj):
    """Whether a SimCLR/BYOL checkpoint's encoder kept the max-pool: True for ``--dataset imagefolder``
    (htdt's Tiny ImageNet / STL-10 setting), False for CIFAR, None when not recorded (htdt's bare .pt)."""
    saved = obj.get("args") if isinstance(obj, dict) else None
    if not isinstance(saved, dict) or "dataset" not in saved:
        return None
    return saved["dataset"] == "imagefolder"


def load_instructions(kind, variant, maxpool=False):
    """How to build the torchvision model the converted ``state_dict`` loads into (printed by the CLI).

    ``maxpool``: True keeps the max-pool, False replaces it by Identity, None (unknown) says both."""
    arch, stem = target(kind, variant)
    if stem == "imagenet":
        return f"torchvision.models.{arch}()"
    if stem == "cifar_pad2":
        return ("ResNet(Bottleneck, [2, 2, 2, 2]); conv1 = Conv2d(3, 64, 3, 1, padding=2, bias=False); "
                "maxpool = Identity()")
    pool = {False: "maxpool = Identity()", True: "maxpool kept (trained on an ImageFolder)",
            None: "maxpool = Identity() if trained on CIFAR, kept if trained on an ImageFolder"}[maxpool]
    return f"torchvision.models.{arch}(); conv1 = Conv2d(3, 64, 3, 1, 1, bias=False); {pool}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Un-Mix pretraining checkpoint -> torchvision ResNet state_dict",
                                formatter_class=HelpFormatter)
    p.add_argument("input", help="model_last.pth / checkpoint_XXXX.pth.tar / checkpoint.pth.tar")
    p.add_argument("output", help="where to write the torchvision state_dict (.pth)")
    p.add_argument("--keep-head", action="store_true",
                   help="keep the last projection layer as fc (MoCo only; SwAV heads are always dropped)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    add_unsafe_load_arg(p)
    args = p.parse_args(argv)
    check_output(args.output, args.force)
    obj = load_checkpoint(args.input, unsafe=args.unsafe_load)
    sd = layouts.state_dict_of(obj)
    if sd is None:
        raise CLIError(f"{args.input} holds no model state_dict")
    try:
        out, kind, variant = convert_state_dict(sd, args.keep_head)
    except CLIError as e:
        raise CLIError(f"{args.input}: {e}") from None
    save_atomic(out, args.output)
    how = load_instructions(kind, variant, simclr_byol_maxpool(obj) if kind == "simclr_byol" else False)
    print(f"{args.input} ({kind} [{variant}]) -> {args.output}: {len(out)} tensors; load into {how} "
          "(strict=False: only fc.weight/fc.bias missing)")


if __name__ == "__main__":
    run_main(main)
