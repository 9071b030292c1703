"""Distributed setup for every launcher: torchrun, ``python -m torch.distributed.launch``, ``srun``
under Slurm, and ``mp.spawn``. NCCL with CUDA, gloo on CPU-only machines (so DDP runs and is tested
without a GPU).

The launch plans of the scripts that follow upstream MoCo's command line (``add_dist_args``, ``plan_launch``,
``setup_worker``, ``launch``; MoCo ImageNet, supervised SAMix):

1. ``--multiprocessing-distributed``: upstream's ``mp.spawn`` of one process per GPU. As upstream,
   ``--world-size``/``--rank`` then count *nodes* (``-1`` means one node, rank 0; under ``srun`` with one
   task per node they default to the Slurm task count/id). Without GPUs ``--nproc`` CPU processes are
   spawned (default 1) and talk over gloo.
2. ``torchrun`` / ``python -m torch.distributed.launch`` (``--local_rank`` or ``--local-rank``) /
   ``srun``: one process per launcher task; RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS) count
   processes. torchrun and launch rendezvous through ``env://``; under srun ``--dist-url`` is used
   (``tcp://<first node>:<port>``).
3. ``--world-size N --rank R --dist-url tcp://...`` by hand (upstream's non-spawn mode), N processes.
4. Otherwise a single process with a world of 1 (upstream raised NotImplementedError; the same code
   runs, with an identity all-gather).

MoCo ImageNet's ``-b`` and ``-j`` keep upstream's meaning with every launcher: totals over the processes of
**one node** (:func:`per_process`, :func:`per_process_workers`), so the same command line gives the same
per-process batch whatever the launcher.
"""
import inspect
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .cli import CLIError, add_local_rank_arg, user_error


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


# torch >= 2.3: init_process_group(device_id=...) binds the group to one GPU
BINDS_DEVICE = "device_id" in inspect.signature(dist.init_process_group).parameters


def default_backend():
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(rank, world_size, dist_url="env://", backend=None, local_rank=0, timeout=None):
    """Initialises the default process group (if ``world_size`` > 1) and returns the device to use.

    On CUDA the group is bound to this process's device (``device_id``): NCCL then never guesses the GPU
    from the rank (wrong under a Slurm placement that is not block-wise). ``timeout`` (a ``timedelta``): how
    long a collective waits for a peer (torch's default: 10 minutes for NCCL, 30 for gloo).
    """
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if dist_url == "env://":
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
        backend = backend or default_backend()
        bound = {"device_id": device} if backend == "nccl" and device.type == "cuda" and BINDS_DEVICE else {}
        dist.init_process_group(backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout,
                                **bound)
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


def add_dist_args(parser):
    parser.add_argument("--world-size", default=-1, type=int,
                        help="number of nodes with --multiprocessing-distributed (-1: one node); number of "
                             "processes for a manual launch; ignored under torchrun/launch/srun")
    parser.add_argument("--rank", default=-1, type=int,
                        help="node rank with --multiprocessing-distributed, process rank for a manual launch")
    parser.add_argument("--dist-url", default="tcp://localhost:10002", type=str,
                        help="rendezvous URL (torchrun/launch always use env://)")
    parser.add_argument("--dist-backend", default="auto", choices=["auto", "nccl", "gloo"],
                        help="auto: nccl with CUDA, gloo on CPU")
    parser.add_argument("--gpu", default=None, type=int, help="GPU id for a single-process run")
    parser.add_argument("--multiprocessing-distributed", action="store_true",
                        help="spawn one process per GPU (per --nproc on CPU) and run DDP, as upstream")
    parser.add_argument("--nproc", default=None, type=int,
                        help="processes per node for --multiprocessing-distributed "
                             "(default: the number of GPUs, or 1 without GPUs)")
    add_local_rank_arg(parser)


@dataclass
class Plan:
    mode: str            # spawn | launcher | manual | single
    world: int           # processes in the job
    procs_per_node: int  # divides -b and -j
    node_rank: int = 0   # spawn mode: rank = node_rank * procs_per_node + local index
    dist_url: str = "env://"


def plan_launch(args):
    """Decides how this invocation runs (before any process group exists); raises CLIError on bad input."""
    env = launcher_env()
    ngpus = torch.cuda.device_count()
    if args.dist_backend == "nccl" and ngpus == 0:
        raise CLIError("--dist-backend nccl needs CUDA GPUs; use gloo (or auto) on this machine")
    if args.multiprocessing_distributed:
        nproc = args.nproc if args.nproc is not None else max(ngpus, 1)
        if nproc < 1 or (ngpus and nproc > ngpus):
            raise CLIError(f"--nproc {nproc}: must be between 1 and the {ngpus} visible GPUs" if ngpus
                           else f"--nproc must be >= 1, got {nproc}")
        nodes, node_rank = args.world_size, args.rank
        if nodes == -1 and env is not None:  # e.g. srun with one task per node, as upstream's env://
            node_rank, nodes = env[0], env[1]
        nodes, node_rank = max(nodes, 1), max(node_rank, 0)
        if node_rank >= nodes:
            raise CLIError(f"--rank {node_rank} must be smaller than --world-size {nodes} (nodes)")
        return Plan("spawn", nodes * nproc, nproc, node_rank, args.dist_url)
    if env is not None:
        rank, world, _ = env
        if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun / launch
            per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        elif "SLURM_NTASKS_PER_NODE" in os.environ:
            per_node = slurm_tasks_per_node(os.environ["SLURM_NTASKS_PER_NODE"])
        elif "SLURM_TASKS_PER_NODE" in os.environ:
            per_node = slurm_tasks_per_node(os.environ["SLURM_TASKS_PER_NODE"])
        else:
            per_node = world
        url = "env://" if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ else args.dist_url
        return Plan("launcher", world, max(1, min(per_node, world)), 0, url)
    if args.world_size > 1:
        if not 0 <= args.rank < args.world_size:
            raise CLIError(f"a manual launch with --world-size {args.world_size} needs --rank in "
                           f"[0, {args.world_size - 1}], got {args.rank}")
        return Plan("manual", args.world_size, max(ngpus, 1), 0, args.dist_url)
    return Plan("single", 1, 1, 0, args.dist_url)


def first_rank(plan, args):
    """The rank of the first process this invocation runs; ``None``: the launcher's (``$RANK``), which neither
    ``mp.spawn`` nor a manual ``--rank`` sets. For the checks a parent process does once per job before it
    spawns (``common.data.check_image_folder(..., rank=first_rank(plan, args))``)."""
    return {"spawn": plan.node_rank * plan.procs_per_node, "manual": args.rank, "single": 0}.get(plan.mode)


def per_process(total, plan):
    """Upstream's split of the per-node ``-b`` (floor) ... """
    return int(total / plan.procs_per_node)


def per_process_workers(total, plan):
    """... and of the per-node ``-j`` (ceil)."""
    return int(math.ceil(total / plan.procs_per_node))


def setup_worker(local_index, args, plan):
    """Joins the process group (if any); returns ``(device, rank, world)``."""
    if plan.mode == "spawn":
        rank, local = plan.node_rank * plan.procs_per_node + local_index, local_index
    elif plan.mode == "launcher":
        rank, _, local = launcher_env()
    elif plan.mode == "manual":
        rank, local = args.rank, args.gpu if args.gpu is not None else args.rank
    else:
        rank, local = 0, args.gpu or 0
    backend = None if args.dist_backend == "auto" else args.dist_backend
    try:
        device = init_distributed(rank, plan.world, plan.dist_url, backend, local)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"cannot join the process group at {plan.dist_url} as rank {rank}/{plan.world}: "
                       f"{str(e).splitlines()[0]}") from None
    return device, rank, plan.world


def _spawned(local_index, worker, args, plan):
    try:
        worker(local_index, args, plan)
    except (CLIError, OSError) as e:  # a full or read-only output folder (log.csv, curves.png): one line too
        message = user_error(e)
        if message is None:
            raise
        if local_index != 0:  # the same error usually hits every process: let process 0 say it once
            time.sleep(2.0)  # (mp.spawn terminates the others as soon as one exits)
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")
        sys.stderr.flush()
        os._exit(2)  # at once: tearing down a half-used process group can block on the peers


def launch(worker, args, plan):
    """Runs ``worker(local_index, args, plan)``: spawned ``procs_per_node`` times, or here once."""
    if plan.mode != "spawn":
        return worker(0, args, plan)
    try:
        mp.spawn(_spawned, nprocs=plan.procs_per_node, args=(worker, args, plan))
    except mp.ProcessExitedException as e:  # the worker already printed its one error line
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)
