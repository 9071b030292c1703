"""Checkpoint layouts of every released artefact kind, as ``{key: shape}`` specs of upstream's layouts.

A spec is derived from the documented upstream layouts (docs/faithfulness.md,
"Released checkpoints"), not from our model classes, so verification works before (and
independently of) the model code. ``None`` in a shape is a wildcard (a head size a user may change).

Kinds:

* ``moco_cifar``    MoCo CIFAR demo ``model_last.pth``: ``{'epoch','state_dict','optimizer'}``, 246 keys
  ``queue``/``queue_ptr``/``encoder_{q,k}.net.*`` (BasicBlock ResNet-18, 3x3 stem, no ``module.``).
* ``moco_imagenet`` MoCo v1/v2 (+Un-Mix) ImageNet ``checkpoint_XXXX.pth.tar``: ``module.queue``,
  ``module.encoder_{q,k}.*`` torchvision ResNet-50, head ``fc`` (v1) or ``fc.0``/``fc.2`` (v2 ``--mlp``).
* ``swav_cifar``    SwAV CIFAR ``checkpoint.pth.tar``: ``module.*`` Bottleneck [2,2,2,2] "resnet18", 3x3 stem,
  ``projection_head`` + ``prototypes``.
* ``swav_imagenet`` SwAV ImageNet ``checkpoint.pth.tar`` or the raw released state_dict (``module.*``),
  ResNet-50 / -w2 / -w4 / -w5, 7x7 stem.
* ``swav_linear``   SwAV ``eval_linear`` checkpoint: ``module.linear.{weight,bias}``.
* ``simclr_byol``   our SimCLR / BYOL ``model_last.pth`` (or htdt's ``{method}_{dataset}_{ep}.pt``): htdt's
  names ``model.module.*`` (torchvision ResNet, 3x3 stem, no fc), BYOL also ``model_t.module.*``; the heads
  (``head``, ``bn_last``, ``pred``, ``head_t``) are free-form and not checked.
"""
from collections import OrderedDict


def _bn(sd, name, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{name}.{s}"] = (c,)
    sd[f"{name}.num_batches_tracked"] = ()


def resnet_shapes(block, layers, stem_kernel=7, widen=1):
    """torchvision-named ResNet trunk (no fc): ``{key: shape}`` in ``state_dict`` order.

    ``block`` is ``"basic"`` or ``"bottleneck"``; ``widen`` multiplies every width including the stem
    (SwAV's ``resnet50wN``; torchvision's wide_resnet only widens the bottleneck, which is not this).
    """
    exp = 1 if block == "basic" else 4
    sd = OrderedDict()
    inplanes = 64 * widen
    sd["conv1.weight"] = (inplanes, 3, stem_kernel, stem_kernel)
    _bn(sd, "bn1", inplanes)
    for li, n in enumerate(layers, start=1):
        planes = 64 * widen * 2 ** (li - 1)
        for b in range(n):
            stride = 2 if (li > 1 and b == 0) else 1
            p = f"layer{li}.{b}."
            if block == "basic":
                sd[p + "conv1.weight"] = (planes, inplanes, 3, 3)
                _bn(sd, p + "bn1", planes)
                sd[p + "conv2.weight"] = (planes, planes, 3, 3)
                _bn(sd, p + "bn2", planes)
            else:
                sd[p + "conv1.weight"] = (planes, inplanes, 1, 1)
                _bn(sd, p + "bn1", planes)
                sd[p + "conv2.weight"] = (planes, planes, 3, 3)
                _bn(sd, p + "bn2", planes)
                sd[p + "conv3.weight"] = (planes * exp, planes, 1, 1)
                _bn(sd, p + "bn3", planes * exp)
            if b == 0 and (stride != 1 or inplanes != planes * exp):
                sd[p + "downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                _bn(sd, p + "downsample.1", planes * exp)
            inplanes = planes * exp
    return sd


def _prefixed(sd, prefix):
    return OrderedDict((prefix + k, v) for k, v in sd.items())


# MoCo CIFAR demo: ModelBase rebuilds the torchvision trunk as nn.Sequential, so the torchvision names map
# to Sequential indices (docs/faithfulness.md): conv1->net.0, bn1->net.1, layer1..4->net.3..6, fc->net.9
MOCO_CIFAR_TO_TV = (("conv1.", "net.0."), ("bn1.", "net.1."), ("layer1.", "net.3."), ("layer2.", "net.4."),
                    ("layer3.", "net.5."), ("layer4.", "net.6."), ("fc.", "net.9."))


def moco_cifar_encoder(feature_dim=128):
    sd = OrderedDict()
    for k, v in resnet_shapes("basic", [2, 2, 2, 2], stem_kernel=3).items():
        for tv, ours in MOCO_CIFAR_TO_TV:
            if k.startswith(tv):
                sd[ours + k[len(tv):]] = v
                break
    sd["net.9.weight"] = (feature_dim, 512)
    sd["net.9.bias"] = (feature_dim,)
    return sd


def moco_cifar_spec(dim=None, K=None):
    enc = moco_cifar_encoder(dim)
    sd = OrderedDict([("queue", (dim, K)), ("queue_ptr", (1,))])
    sd.update(_prefixed(enc, "encoder_q."))
    sd.update(_prefixed(enc, "encoder_k."))
    return sd


def moco_imagenet_specs():
    """MoCo v1 (``fc``) and v2 (``--mlp``: ``fc.0``, ``fc.2``) ResNet-50 layouts, ``module.`` prefixed."""
    trunk = resnet_shapes("bottleneck", [3, 4, 6, 3], stem_kernel=7)
    heads = {"v1": OrderedDict([("fc.weight", (None, 2048)), ("fc.bias", (None,))]),
             "v2": OrderedDict([("fc.0.weight", (2048, 2048)), ("fc.0.bias", (2048,)),
                                ("fc.2.weight", (None, 2048)), ("fc.2.bias", (None,))])}
    out = {}
    for name, head in heads.items():
        enc = OrderedDict(trunk)
        enc.update(head)
        sd = OrderedDict([("module.queue", (None, None)), ("module.queue_ptr", (1,))])
        sd.update(_prefixed(enc, "module.encoder_q."))
        sd.update(_prefixed(enc, "module.encoder_k."))
        out[name] = sd
    return out


def _swav_head(feat):
    """SwAV head with hidden_mlp > 0 and an int number of prototypes (every released/ scripted config)."""
    sd = OrderedDict([("projection_head.0.weight", (None, feat)), ("projection_head.0.bias", (None,))])
    _bn(sd, "projection_head.1", None)
    sd["projection_head.3.weight"] = (None, None)
    sd["projection_head.3.bias"] = (None,)
    sd["prototypes.weight"] = (None, None)
    return sd


def swav_spec(arch):
    """``module.``-prefixed SwAV layout; ``arch`` in resnet18 (CIFAR, 3x3 stem), resnet50, resnet50w{2,4,5}."""
    if arch == "resnet18":
        trunk = resnet_shapes("bottleneck", [2, 2, 2, 2], stem_kernel=3)
        feat = 2048
    else:
        widen = {"resnet50": 1, "resnet50w2": 2, "resnet50w4": 4, "resnet50w5": 5}[arch]
        trunk = resnet_shapes("bottleneck", [3, 4, 6, 3], stem_kernel=7, widen=widen)
        feat = 2048 * widen
    sd = OrderedDict(trunk)
    sd.update(_swav_head(feat))
    return _prefixed(sd, "module.")


def swav_linear_spec():
    return OrderedDict([("module.linear.weight", (None, None)), ("module.linear.bias", (None,))])


def simclr_byol_specs():
    out = {}
    for arch, block, layers in (("resnet18", "basic", [2, 2, 2, 2]), ("resnet50", "bottleneck", [3, 4, 6, 3])):
        trunk = resnet_shapes(block, layers, stem_kernel=3)
        out[f"simclr-{arch}"] = _prefixed(trunk, "model.module.")
        byol = _prefixed(trunk, "model.module.")
        byol.update(_prefixed(trunk, "model_t.module."))
        out[f"byol-{arch}"] = byol
    return out


# kind -> (description, {variant name: spec}, key prefixes whose keys are free-form)
KINDS = {
    "moco_cifar": ("MoCo CIFAR demo model_last.pth (ResNet-18, 3x3 stem)", {"resnet18": moco_cifar_spec()}),
    "moco_imagenet": ("MoCo ImageNet checkpoint_XXXX.pth.tar (ResNet-50)", moco_imagenet_specs()),
    "swav_cifar": ("SwAV CIFAR checkpoint.pth.tar (Bottleneck resnet18, 3x3 stem)",
                   {"resnet18": swav_spec("resnet18")}),
    "swav_imagenet": ("SwAV ImageNet checkpoint (ResNet-50 / w2 / w4 / w5)",
                      {a: swav_spec(a) for a in ("resnet50", "resnet50w2", "resnet50w4", "resnet50w5")}),
    "swav_linear": ("SwAV eval_linear checkpoint.pth.tar (linear classifier)", {"linear": swav_linear_spec()}),
    "simclr_byol": ("SimCLR/BYOL CIFAR model_last.pth (htdt names)", simclr_byol_specs()),
}
FREE_PREFIXES = {"simclr_byol": ("head.", "bn_last.", "pred.", "head_t.")}


def compare(spec, state_dict, free=()):
    """Problems (a list of short strings) between a spec and a ``state_dict``; empty when it matches.

    Keys starting with one of the ``free`` prefixes are not checked.
    """
    missing = [k for k in spec if k not in state_dict]
    unexpected = [k for k in state_dict if k not in spec and not (free and k.startswith(free))]
    shapes = []
    for k, want in spec.items():
        if k in state_dict:
            got = tuple(getattr(state_dict[k], "shape", ()))
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                shapes.append((k, got, want))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:2])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:2])})")
    if shapes:
        k, got, want = shapes[0]
        want_s = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(got)}, expected {want_s})")
    return problems


def state_dict_of(obj):
    """The model ``state_dict`` inside a checkpoint object (``obj['state_dict']``, or ``obj`` itself)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj
    return None


def match(kind, state_dict):
    """``(variant, [])`` for the first matching variant of ``kind``, else ``(closest variant, problems)``."""
    best = None
    for variant, spec in KINDS[kind][1].items():
        problems = compare(spec, state_dict, FREE_PREFIXES.get(kind, ()))
        if not problems:
            return variant, []
        score = sum(int(p.split()[0]) for p in problems)
        if best is None or score < best[0]:
            best = (score, variant, problems)
    return best[1], best[2]


def detect(state_dict):
    """``(kind, variant)`` of the first kind whose layout ``state_dict`` matches exactly, else ``None``."""
    for kind in KINDS:
        variant, problems = match(kind, state_dict)
        if not problems:
            return kind, variant
    return None
