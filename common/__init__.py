"""Mechanics shared by every Un-Mix entry script (mixing, data, checkpoints, distributed, logging).

Installed with ``pip install -e .`` (or ``pip install git+<url>``) this package is importable as ``unmix``;
in a plain clone the scripts import it as ``common``. The documented API for your own training loop:

Mixing (``unmix.mix``): each sample ``i`` of a batch is mixed with sample ``N-1-i``.
    ``unmix_batch(x, prob=0.5, beta=1.0, rng=None) -> (mixed, lam)``: one draw, global blend with
    probability ``prob``, otherwise a region (CutMix) box; ``lam`` is the fraction of each sample's own
    pixels. ``draw_mix_params``, ``mix_with_reverse`` and ``rand_bbox`` are its two steps and the box.
Loss (``unmix.mix``):
    ``unmix_loss(loss_clean, loss_mix, loss_mix_flip, lam)`` = ``loss_clean + lam * loss_mix +
    (1 - lam) * loss_mix_flip``, where ``loss_mix_flip`` is the loss of ``mixed.flip(0)`` (or of the flipped
    embeddings of the mixture) against the same targets.
SAMix / AutoMix (``unmix.mixer``): ``Mixer`` (the learnable mixing-mask module), ``mask_loss``,
    ``rescale_lam``.
Augmentation on the training device (``unmix.device_aug``): ``DeviceTransform(torchvision_transform)`` applies
    a torchvision training transform (RandomResizedCrop, flip, ColorJitter, grayscale, normalise) to a whole
    uint8 batch on its device with per-sample draws; ``DeviceLoader`` feeds a data set held on the device.

RNG: by default the mixing draws come from NumPy's *global* RNG in upstream's order, so
``np.random.seed(s)`` replays upstream's λ and boxes; pass ``rng=np.random.RandomState(seed)`` for a
private stream that leaves the global one untouched.

Names are imported on first use, so ``import common.cli`` stays light.
"""
import importlib

_API = {
    "rand_bbox": "mix", "draw_mix_params": "mix", "mix_with_reverse": "mix", "unmix_batch": "mix",
    "unmix_loss": "mix",
    "Mixer": "mixer", "mask_loss": "mixer", "rescale_lam": "mixer",
    "DeviceTransform": "device_aug", "DeviceLoader": "device_aug",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
