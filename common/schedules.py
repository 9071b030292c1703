"""Schedules of the two-branch (online + EMA) mixup training of SAMix / AutoMix.

All are functions of the iteration ``t`` (0-based) out of ``T`` total iterations, or of the epoch, so a
resumed run recomputes them exactly from its position.
"""
import math

import numpy as np


def cosine(base, final, progress):
    """Cosine annealing from ``base`` (progress 0) to ``final`` (progress 1): ``final + (base-final)(1+cos πp)/2``."""
    return final + (base - final) * (1.0 + math.cos(math.pi * progress)) / 2.0


def ema_momentum(t, T, base=0.999, end=0.99999, start=0.1):
    """EMA momentum of the key/teacher network at iteration ``t`` of ``T`` (OpenMixup's ``CosineScheduleHook``).

    Constant ``base`` while ``t < int(start * T)`` (the hook's integer phase switch: T = 1234 switches at
    t = 123); afterwards ``end - (end - base) * (cos(π t/T) + 1) / 2``. The cosine runs on ``t/T``, not on the
    progress through ``[start*T, T]``, so the momentum jumps from ``base`` to the cosine's value at ``start``
    (0.999 -> ~0.999024 for the defaults); this is what the released runs did.
    """
    if t < int(T * start):
        return base
    return end - (end - base) * (math.cos(math.pi * t / T) + 1.0) / 2.0


MASK_WEIGHT_SCHEDULES = ("compound", "cosine", "constant")


class MaskWeight:
    """Weight of the Mixer's mask loss at iteration ``t`` of ``T``.

    - ``"compound"``: what the ImageNet configs really do. Their per-iteration cosine hook re-applies the
      cosine factor to the *current* weight every iteration, ``w_t = w_{t-1} (1 + cos(π t/T)) / 2`` with
      ``w_{-1} = base``, so the weight collapses within ~2 epochs (below 0.01 after ~1.78 of 100 epochs).
    - ``"cosine"``: the textbook reading of "0.1 to 0 by cosine", ``w_t = base (1 + cos(π t/T)) / 2``.
    - ``"constant"``: ``base`` throughout (the CIFAR-100 and Tiny-ImageNet configs).
    """

    def __init__(self, mode, base, T):
        if mode not in MASK_WEIGHT_SCHEDULES:
            raise ValueError(f"unknown mask weight schedule {mode!r} ({', '.join(MASK_WEIGHT_SCHEDULES)})")
        self.mode, self.base, self.T = mode, float(base), int(T)
        self._table = None

    def __call__(self, t):
        if self.mode == "constant":
            return self.base
        if self.mode == "cosine":
            return self.base * (1.0 + math.cos(math.pi * t / self.T)) / 2.0
        if self._table is None:  # sequential float64 products, as the hook's repeated in-place updates
            factors = (1.0 + np.cos(np.pi * np.arange(self.T + 1) / self.T)) / 2.0
            self._table = np.cumprod(np.concatenate([[self.base], factors[1:]]))
        return float(self._table[min(t, self.T)])
