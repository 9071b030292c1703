"""LARC (layer-wise adaptive rate control) with the exact semantics of NVIDIA apex's ``apex.parallel.LARC``.

apex is no longer installable (``apex.parallel`` was removed in 2025 and the PyPI ``apex`` is another
project), so SwAV's optimiser is written here (docs/faithfulness.md, SwAV pretraining). For every param
group, ``step()``:

1. reads the group's ``weight_decay`` (wd) and sets it to 0 for the inner step;
2. for every parameter with a gradient, with ``pn = ||p||`` and ``gn = ||grad||``:
   if ``pn != 0`` and ``gn != 0``: ``a = trust * pn / (gn + pn * wd + eps)``; with ``clip``,
   ``a = min(a / lr, 1)``; then ``grad <- (grad + wd * p) * a``.
   Otherwise the gradient is left alone *and gets no weight decay* (zero-initialised biases on the
   first step);
3. runs the inner optimiser's ``step()`` and restores every group's ``weight_decay``.

Step 2 is computed on the parameters' device with ``torch.where`` (apex tested ``pn != 0 and gn != 0`` on
the host: two device-to-host syncs per parameter and step); the arithmetic is apex's, bit for bit.

``param_groups``, ``state``, ``state_dict()``, ``load_state_dict()`` and ``zero_grad()`` delegate to the
inner optimiser (stored as ``.optim``), so checkpoints hold the inner SGD's state_dict as upstream's do.
It is a duck-typed optimiser that ``torch.amp.GradScaler.step`` accepts (it unscales through
``param_groups`` and skips ``step()`` on inf/NaN).
"""
import torch


class LARC:
    def __init__(self, optimizer, trust_coefficient=0.02, clip=True, eps=1e-8):
        self.optim = optimizer
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        self.eps = eps

    def __getstate__(self):
        return self.optim.__getstate__()

    def __setstate__(self, state):
        self.optim.__setstate__(state)

    @property
    def state(self):
        return self.optim.state

    @property
    def param_groups(self):
        return self.optim.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optim.param_groups = value

    def __repr__(self):
        return self.optim.__repr__()

    def state_dict(self):
        return self.optim.state_dict()

    def load_state_dict(self, state_dict):
        self.optim.load_state_dict(state_dict)

    def zero_grad(self, set_to_none=True):
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group):
        self.optim.add_param_group(param_group)

    def step(self, closure=None):
        with torch.no_grad():
            weight_decays = []
            for group in self.optim.param_groups:
                wd = group.get("weight_decay", 0)
                weight_decays.append(wd)
                group["weight_decay"] = 0
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    # on the device, without a host sync: where a norm is 0 the gradient is kept as it was
                    param_norm = torch.norm(p.data)
                    grad_norm = torch.norm(p.grad.data)
                    adaptive_lr = self.trust_coefficient * param_norm / (grad_norm + param_norm * wd + self.eps)
                    if self.clip:
                        adaptive_lr = torch.clamp(adaptive_lr / group["lr"], max=1)
                    scaled = (p.grad.data + wd * p.data) * adaptive_lr
                    p.grad.data.copy_(torch.where((param_norm != 0) & (grad_norm != 0), scaled, p.grad.data))
        try:
            return self.optim.step(closure) if closure is not None else self.optim.step()
        finally:
            for group, wd in zip(self.optim.param_groups, weight_decays):
                group["weight_decay"] = wd
