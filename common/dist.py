"""Distributed setup for every launcher: torchrun, ``python -m torch.distributed.launch``, ``srun``
under Slurm, and ``mp.spawn``. NCCL with CUDA, gloo on CPU-only machines (so DDP runs and is tested
without a GPU)."""
import os
import re
import socket

import torch
import torch.distributed as dist


def slurm_tasks_per_node(value):
    """Parses SLURM_TASKS_PER_NODE such as ``16``, ``8(x2)`` or ``4(x2),3``; returns the first node's count.

    Upstream read only the first *character* (wrong for >= 10 tasks per node).
    """
    m = re.match(r"^(\d+)", value.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_TASKS_PER_NODE={value!r}")
    return int(m.group(1))


def launcher_env():
    """Returns ``(rank, world_size, local_rank)`` as set by the launcher, or ``None`` if not launched.

    torchrun / torch.distributed.launch set RANK/WORLD_SIZE/LOCAL_RANK; srun sets SLURM_PROCID,
    SLURM_NTASKS (or SLURM_NNODES x SLURM_TASKS_PER_NODE) and SLURM_LOCALID.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        if "SLURM_NTASKS" in env:
            world = int(env["SLURM_NTASKS"])
        else:
            world = int(env.get("SLURM_NNODES", 1)) * slurm_tasks_per_node(env.get("SLURM_TASKS_PER_NODE", "1"))
        return int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0))
    return None


def default_backend():
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(rank, world_size, dist_url="env://", backend=None, local_rank=0):
    """Initialises the default process group (if ``world_size`` > 1) and returns the device to use."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if dist_url == "env://":
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend or default_backend(), init_method=dist_url,
                                world_size=world_size, rank=rank)
    return device


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


@torch.no_grad()
def concat_all_gather(tensor):
    """All-gathers ``tensor`` along dim 0 in rank order (no gradient). Identity without a process group."""
    if not is_dist():
        return tensor
    out = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(tensor):
    """In-place sum over processes (identity without a process group)."""
    if is_dist():
        dist.all_reduce(tensor)
    return tensor


def free_port():
    """A free TCP port on localhost (for single-node launches and tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cleanup():
    if is_dist():
        dist.destroy_process_group()
