"""NaN guard: a run stops at the first non-finite loss and never saves non-finite weights.

Every training loop already reads its loss as a Python number once per step (for its progress bar, meters
or log), which is a device synchronisation it pays anyway; :func:`check_loss` only looks at that number, so
the guard adds no synchronisation per step. Loops that do not read their loss (the linear probes on frozen
features) accumulate a flag on the device with :class:`NonFiniteFlag` and look at it once at the end.
Evaluations (validation, kNN monitors) count non-finite outputs and losses on the device and stop the run with
:func:`check_eval` once per evaluation, before anything of that epoch is saved.
Before anything is saved, :func:`check_finite_state` checks every floating-point tensor of what is about to
be written (weights, buffers, optimizer state) in one reduction.

Mixed precision (``--amp`` / ``--use_fp16`` on CUDA): ``torch.amp.GradScaler`` multiplies the loss by a large
scale before ``backward``; when the *scaled gradients* overflow it skips that optimizer step and lowers the
scale. Those skipped steps are expected, leave the weights untouched and are never reported here: the guard
looks at the *unscaled* loss value of the forward pass (and at the weights before saving), not at gradients.
A non-finite unscaled loss is a diverged run with or without the scaler, so it stops the run.
"""
import math

import torch

from .cli import CLIError

# what to try, by default; each training script passes its own options (e.g. "lower --lr, raise --moco-t, or try
# without --amp")
HINT = "lower the learning rate"


class NonFiniteError(CLIError):
    """The run diverged; printed as one ``error:`` line by :func:`common.cli.run_main` (exit status 2)."""


def check_loss(value, epoch, step, hint=HINT):
    """Raises :class:`NonFiniteError` if ``value`` (a Python number the loop has read already) is NaN or inf."""
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite loss {value} at epoch {epoch}, step {step}: training stopped, the last "
                             f"checkpoint was kept as it was ({hint})")


class NonFiniteFlag:
    """Device-side flag for loops that never read their loss: ``update(loss)`` per step (no synchronisation),
    ``check(...)`` once, e.g. per logging interval or at the end."""

    def __init__(self):
        self.bad = None

    def update(self, loss):
        bad = ~torch.isfinite(loss.detach()).all()
        self.bad = bad if self.bad is None else self.bad | bad

    def check(self, what, hint=HINT):
        if self.bad is not None and bool(self.bad):
            raise NonFiniteError(f"non-finite loss in {what} ({hint})")


def nonfinite(t):
    """The number of NaN / inf entries of ``t``, as a device tensor (no synchronisation)."""
    return (~torch.isfinite(t.detach())).sum()


def check_eval(count, what, hint=HINT):
    """Evaluations (validation, kNN monitors, probes): ``count`` non-finite values (a number or a 0-d tensor
    from :func:`nonfinite`, summed over the processes so that all stop together) in ``what`` stop the run
    before anything is saved: weights that are finite but make the model output NaN never reach a checkpoint."""
    n = int(count)
    if n:
        raise NonFiniteError(f"{n} non-finite value{'s' if n > 1 else ''} (NaN or inf) in {what}: stopped before "
                             f"anything was saved, the last checkpoint was kept as it was ({hint})")


def _float_tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def check_finite_state(obj, epoch, path, hint=HINT):
    """Refuses to save ``obj`` (a checkpoint dict, a state_dict or a module) if any floating-point tensor in it
    holds a NaN or inf; the error names the first such entry and says that ``path`` was left as it was."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    tensors = list(_float_tensors(obj))
    if not tensors:
        return
    by_device = {}
    for i, (_, t) in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    flags = torch.empty(len(tensors), dtype=torch.bool)
    for idx in by_device.values():  # one synchronisation per device for the whole state
        flags[idx] = torch.stack([torch.isfinite(tensors[i][1]).all() for i in idx]).cpu()
    if bool(flags.all()):
        return
    name = tensors[int((~flags).nonzero()[0])][0]
    raise NonFiniteError(f"non-finite values in {name} after epoch {epoch}: not saving, {path} was left as it "
                         f"was ({hint})")
