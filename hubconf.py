"""torch.hub entries: torchvision ResNets carrying the released Un-Mix (and baseline) weights.

    model = torch.hub.load("<this repo or its local path>", "unmix_moco_cifar_resnet18", dataset="cifar10")
    model = torch.hub.load(path, "unmix_mocov2_resnet50", source="local")
    model = torch.hub.load(path, "unmix_mocov2_resnet50", source="local", pretrained=False)  # random init

As with torchvision, ``pretrained=False`` gives random initialisation and extra keyword arguments
(e.g. ``num_classes``) go to the torchvision builder. ``fc`` is always freshly initialised (the released
checkpoints hold a self-supervised projection head, not a classifier): train it as a linear probe or set
``model.fc = torch.nn.Identity()`` for features. ``checkpoint=PATH`` loads a local file instead of
downloading; a failed download (offline, say) raises ``tools.released.DownloadError`` (a ConnectionError)
whose one-line message names the URL to fetch by hand, and leaves no empty folder in the cache. Google
Drive files are fetched with gdown, the public HTTPS files with
``torch.hub.download_url_to_file``; both are cached under ``torch.hub.get_dir()/checkpoints``. Every file is
loaded with ``torch.load(weights_only=True)`` and a narrow allow-list (``common.checkpoint.load_checkpoint``):
a file holding anything else is refused; ``unsafe_load=True`` opens one you trust with plain pickle.
The CIFAR models use the 3x3 stride-1 stem without maxpool (see tools/convert_to_torchvision.py).
"""
dependencies = ["torch", "torchvision"]

# imported under private names so that only the model builders below are hub entries
import os as _os  # noqa: E402

import torch as _torch  # noqa: E402

from common.checkpoint import load_checkpoint as _load_checkpoint  # noqa: E402
from tools import layouts as _layouts  # noqa: E402
from tools.convert_to_torchvision import build_torchvision as _build, convert_state_dict as _convert  # noqa: E402
from tools.released import CATALOGUE as _CATALOGUE, download as _download  # noqa: E402
from tools.released import (DownloadError as _DownloadError, created_dirs as _created_dirs,  # noqa: E402
                            manual_hint as _manual_hint, reason as _reason, remove_if_empty as _remove_if_empty)


def _checkpoint(name, progress, unsafe):
    art = _CATALOGUE[name]
    cache = _os.path.join(_torch.hub.get_dir(), "checkpoints", "unmix")
    local = "checkpoint=PATH to this torch.hub entry"
    if art.source == "https":
        path = _os.path.join(cache, art.filename)
        if not _os.path.isfile(path):
            made = _created_dirs(cache)
            try:  # download_url_to_file writes a temp file and renames it: no partial file is left
                _os.makedirs(cache, exist_ok=True)
                _torch.hub.download_url_to_file(art.url, path, progress=progress)
            except OSError as e:  # offline, HTTP error (urllib's URLError / HTTPError): one line, no empty cache
                _remove_if_empty(made)
                raise _DownloadError(f"download of {name} failed ({_reason(e, art.url)}); "
                                     f"{_manual_hint(art, local)}") from None
    else:
        path = _download(art, out=cache, local_option=local)
    return _load_checkpoint(path, unsafe=unsafe)


def _load(kind, name, pretrained, progress, checkpoint, **kwargs):
    unsafe = kwargs.pop("unsafe_load", False)
    model = _build(kind, **kwargs)
    if not (pretrained or checkpoint):
        return model
    obj = _load_checkpoint(checkpoint, unsafe=unsafe) if checkpoint else _checkpoint(name, progress, unsafe)
    sd = _layouts.state_dict_of(obj)
    if sd is None:
        raise ValueError(f"{checkpoint or name} holds no model state_dict")
    sd, found, _ = _convert(sd)
    if found != kind:
        raise ValueError(f"{checkpoint or name} is a {found} checkpoint, not {kind}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected, (missing, unexpected)
    return model


def _moco_cifar(unmix, dataset, loss, pretrained, progress, checkpoint, kwargs):
    if dataset not in ("cifar10", "cifar100") or loss not in ("symmetric", "asymmetric"):
        raise ValueError("dataset must be cifar10/cifar100 and loss symmetric/asymmetric")
    name = f"{'unmix_' if unmix else ''}moco_{'c10' if dataset == 'cifar10' else 'c100'}_{loss}"
    kwargs.setdefault("num_classes", 10 if dataset == "cifar10" else 100)
    return _load("moco_cifar", name, pretrained, progress, checkpoint, **kwargs)


def unmix_moco_cifar_resnet18(pretrained=True, progress=True, dataset="cifar10", loss="symmetric",
                              checkpoint=None, **kwargs):
    """CIFAR ResNet-18 (3x3 stem, no maxpool) from the MoCo + Un-Mix demo, 1000 epochs.

    Published kNN top-1: CIFAR-10 92.25 (symmetric) / 91.34 (asymmetric); CIFAR-100 68.83 / 67.33.
    """
    return _moco_cifar(True, dataset, loss, pretrained, progress, checkpoint, kwargs)


def moco_cifar_resnet18(pretrained=True, progress=True, dataset="cifar10", loss="symmetric", checkpoint=None,
                        **kwargs):
    """CIFAR ResNet-18 from the plain MoCo baseline of the demo, 1000 epochs.

    Published kNN top-1: CIFAR-10 90.49 (symmetric) / 89.11 (asymmetric); CIFAR-100 65.49 / 63.64.
    """
    return _moco_cifar(False, dataset, loss, pretrained, progress, checkpoint, kwargs)


def unmix_mocov2_resnet50(pretrained=True, progress=True, checkpoint=None, **kwargs):
    """ResNet-50 pretrained on ImageNet with MoCo v2 + Un-Mix (the authors' released model).

    Published linear top-1: 68.6 (200 epochs) / 71.8 (800 epochs); the release does not say which.
    """
    return _load("moco_imagenet", "unmix_mocov2_in1k_r50", pretrained, progress, checkpoint, **kwargs)


def mocov2_resnet50(pretrained=True, progress=True, epochs=800, checkpoint=None, **kwargs):
    """The vanilla MoCo v2 ResNet-50 baseline (facebookresearch/moco), 200 or 800 epochs (67.5 / 71.1)."""
    if epochs not in (200, 800):
        raise ValueError("epochs must be 200 or 800")
    return _load("moco_imagenet", f"moco_v2_{epochs}ep", pretrained, progress, checkpoint, **kwargs)


def swav_resnet50(pretrained=True, progress=True, checkpoint=None, **kwargs):
    """The vanilla SwAV 800-epoch ResNet-50 baseline (facebookresearch/swav; linear top-1 75.3)."""
    return _load("swav_imagenet", "swav_800ep", pretrained, progress, checkpoint, **kwargs)


def swav_cifar_resnet18(pretrained=False, progress=True, checkpoint=None, **kwargs):
    """SwAV-CIFAR "resnet18" (Bottleneck [2,2,2,2], 3x3 stem with padding 2, no maxpool) as a torchvision ResNet.

    The released SwAV-CIFAR runs are Google Drive folders holding several runs: download one with
    ``python tools/released.py download swav_c10_weights`` and pass its ``checkpoint.pth.tar`` as
    ``checkpoint=``. ``pretrained=True`` without ``checkpoint`` is therefore an error.
    """
    if pretrained and not checkpoint:
        raise ValueError("the SwAV-CIFAR weights are Drive folders of several runs: pass checkpoint=PATH "
                         "(see `python tools/released.py list --kind folder`)")
    kwargs.setdefault("num_classes", 10)
    return _load("swav_cifar", None, pretrained, progress, checkpoint, **kwargs)
