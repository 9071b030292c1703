"""Runs an entry script as ``python SCRIPT ARGS...`` would, with test-only breakages of learning applied from
outside the script (no hook in the scripts themselves); used by tests/test_learning.py.

    python tests/learnrun.py SCRIPT ARGS...

Environment (all optional):

``LEARN_INIT=PATH``     save the model's ``state_dict`` just before the first optimizer step (its initial weights)
``LEARN_BREAK=lr0``     every optimizer step runs with learning rate 0 (all parameter groups)
``LEARN_BREAK=frozen``  parameters whose name matches ``LEARN_FREEZE`` (a regex) get no update (a frozen encoder)
``LEARN_BREAK=stale_queue``  MoCo's queue is never updated (``common.moco.dequeue_and_enqueue`` does nothing)

The hook is a global optimizer step pre-hook: it sees every torch optimizer's step (SwAV's LARC is a wrapper whose
inner SGD steps through it). The model is the largest ``nn.Module`` holding the optimizer's first parameter (found
once, at the first step); ``LEARN_FREEZE`` matches its ``named_parameters`` names.
"""
import gc
import os
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402

BREAK = os.environ.get("LEARN_BREAK", "")
_model = {}


def model_of(optimizer):
    """(model, {id(param): name}) of the largest module that holds the optimizer's first parameter."""
    if "model" not in _model:
        first = optimizer.param_groups[0]["params"][0]
        owners = [m for m in gc.get_objects() if isinstance(m, nn.Module)
                  and any(p is first for p in m.parameters())]
        model = max(owners, key=lambda m: sum(1 for _ in m.parameters()))
        _model["model"] = model
        _model["names"] = {id(p): n for n, p in model.named_parameters()}
    return _model["model"], _model["names"]


def pre_step(optimizer, args, kwargs):
    model, names = model_of(optimizer)
    init = os.environ.get("LEARN_INIT")
    if init and not os.path.exists(init):
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, init)
    if BREAK == "lr0":
        for group in optimizer.param_groups:
            group["lr"] = 0.0
    elif BREAK == "frozen":
        frozen = re.compile(os.environ["LEARN_FREEZE"])
        for group in optimizer.param_groups:
            for p in group["params"]:
                if frozen.search(names.get(id(p), "")):
                    p.grad = None  # SGD and Adam skip a parameter without a gradient: no decay, no momentum


register_optimizer_step_pre_hook(pre_step)
if BREAK == "stale_queue":
    import common.moco

    common.moco.dequeue_and_enqueue = lambda *a, **k: None  # before the scripts import it by name
elif BREAK not in ("", "lr0", "frozen"):
    raise SystemExit(f"unknown LEARN_BREAK {BREAK!r}")

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
