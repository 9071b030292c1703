"""The CUDA-only mechanisms, reproduced on a CPU with stand-ins (no GPU needed):

* a checkpoint's RNG states loaded onto another device (``map_location="cuda:N"``): a tensor subclass that, like
  a CUDA tensor, refuses ``.numpy()`` and ``torch.set_rng_state`` until it is copied to the CPU;
* one RNG state per visible GPU saved, fewer GPUs visible on resume: ``torch.cuda``'s RNG API replaced by a fake
  with N devices that raises IndexError for a device it does not have, as torch's does;
* the similarity products under autocast (bf16 on the CPU stands for CUDA's fp16);
* LARC's trust ratio computed on the device (no host sync), against apex's formula;
* the NCCL process group bound to its device, with the timeout the MoCo CIFAR kNN monitor needs;
* ``--aug device`` under DDP refused above its size limit.
"""
import random
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common.dist as cdist
from common import device_aug
from common.checkpoint import gather_rng_states, get_rng_state, restore_rng_states, set_rng_state
from common.cli import CLIError
from common.larc import LARC
from common.moco import contrastive_logits
from UnMix_SimCLR_BYOL.methods import norm_mse, nt_xent


class Elsewhere(torch.Tensor):
    """A tensor on a device other than the CPU (reported as 'meta'), holding its values: like a CUDA tensor it
    refuses ``.numpy()`` and every operation except a copy to the CPU (``.cpu()``, ``.to("cpu")``)."""

    @staticmethod
    def __new__(cls, data):
        t = torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device="meta")
        t.values = data.clone()
        return t

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
            return args[0].values.clone()
        raise TypeError(f"{func} on a tensor that is not on the CPU")

    def __repr__(self):
        return f"Elsewhere({self.values!r})"


def elsewhere(obj):
    """``obj`` with every tensor in it moved 'elsewhere' (what ``torch.load(map_location="cuda:0")`` does)."""
    if torch.is_tensor(obj):
        return Elsewhere(obj)
    if isinstance(obj, dict):
        return {k: elsewhere(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(elsewhere(v) for v in obj)
    return obj


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_the_stand_in_fails_as_a_cuda_tensor_does():
    t = Elsewhere(torch.get_rng_state())
    assert not t.is_cpu
    with pytest.raises((TypeError, RuntimeError)):
        t.numpy()
    with pytest.raises((TypeError, RuntimeError)):
        torch.set_rng_state(t)
    assert torch.equal(t.cpu(), torch.get_rng_state())


def test_rng_states_loaded_onto_another_device_are_restored():
    """Issue: MoCo ImageNet loaded its checkpoint to cuda:N, then ``.numpy()`` / ``torch.set_rng_state`` on
    CUDA tensors raised TypeError in every worker."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = gather_rng_states()
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_states(elsewhere(saved), rank=0, world=1)
    assert draws() == expected


class FakeCuda:
    """torch.cuda's RNG API on ``n`` visible devices: one state per device (a tensor holding its index and a
    counter), the current device ``current``; a device index >= n raises IndexError as torch's
    ``default_generators[idx]`` does."""

    def __init__(self, n, current=0):
        self.states = [torch.tensor([i, 0], dtype=torch.uint8) for i in range(n)]
        self.current = current

    def index(self, device):
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def get_rng_state(self, device="cuda"):
        return self.states[self.index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        assert new_state.device.type == "cpu" and new_state.dtype == torch.uint8  # as torch's
        self.states[self.index(device)] = new_state.clone()

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, new_states):
        for i, s in enumerate(new_states):
            self.set_rng_state(s, i)

    def install(self, monkeypatch):
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        return self


def test_a_run_saved_with_4_visible_gpus_resumes_with_1(monkeypatch):
    """Issue: the checkpoint held get_rng_state_all() (one state per visible GPU) and set_rng_state_all failed
    with IndexError under fewer visible GPUs. The process on GPU 2 of 4 resumes on the only GPU it now sees,
    with its own device's state."""
    four = FakeCuda(4, current=2).install(monkeypatch)
    four.states[2] = torch.tensor([2, 7], dtype=torch.uint8)  # this process's device advanced
    saved = gather_rng_states()
    one = FakeCuda(1).install(monkeypatch)
    restore_rng_states(elsewhere(saved), rank=0, world=1)  # (loaded onto the device, as well)
    assert one.states[0].tolist() == [2, 7]


@pytest.mark.parametrize("visible,current", [(1, 0), (4, 2)])
def test_the_earlier_layout_one_state_per_visible_gpu_still_loads(monkeypatch, visible, current):
    FakeCuda(1).install(monkeypatch)
    state = get_rng_state()
    state["cuda"] = [torch.tensor([i, 5], dtype=torch.uint8) for i in range(4)]  # saved with 4 visible
    fake = FakeCuda(visible, current).install(monkeypatch)
    set_rng_state(state)
    assert fake.states[current].tolist() == [current, 5]  # its device's entry


def test_contrastive_logits_are_float32_under_autocast():
    """common.moco.contrastive_logits: float32, the same values as without autocast (bf16 on the CPU stands
    for CUDA's fp16 autocast, which casts matmul/einsum alike)."""
    g = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(8, 16, generator=g), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(16, 32, generator=g), dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = contrastive_logits(q, k, queue, 0.07)
    assert logits.dtype == torch.float32
    # the formula in float64: [q.k, q.queue] / T
    want = torch.cat([(q.double() * k.double()).sum(1, keepdim=True), q.double() @ queue.double()], 1) / 0.07
    assert torch.allclose(logits.double(), want, rtol=0, atol=1e-4), (logits.double() - want).abs().max()
    # half-precision inputs (the encoder's output under autocast) are upcast before the products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = contrastive_logits(q.bfloat16(), k.bfloat16(), queue, 0.07)
    want = torch.cat([(q.bfloat16().double() * k.bfloat16().double()).sum(1, keepdim=True),
                      q.bfloat16().double() @ queue.double()], 1) / 0.07
    assert half.dtype == torch.float32 and torch.allclose(half.double(), want, rtol=0, atol=1e-4)


def test_simclr_and_byol_losses_are_float32_under_autocast(monkeypatch):
    """NT-Xent's similarity logits (what cross_entropy receives) are float32 and the loss is the one computed
    without autocast; BYOL's cosine loss likewise."""
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    seen = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy",
                        lambda logits, *a, **kw: seen.append(logits.dtype) or real(logits, *a, **kw))
    plain = nt_xent(z0, z1, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nt_xent(z0, z1, 0.5)
        byol = norm_mse(z0, z1)
    assert set(seen) == {torch.float32} and mixed.dtype == byol.dtype == torch.float32
    assert torch.allclose(mixed, plain, rtol=0, atol=1e-6), (mixed - plain).abs()
    assert torch.allclose(byol, norm_mse(z0, z1), rtol=0, atol=1e-6)


def apex_larc_step(larc):
    """The previous implementation (apex's code, with a host-side test per parameter): the reference."""
    with torch.no_grad():
        weight_decays = []
        for group in larc.optim.param_groups:
            wd = group.get("weight_decay", 0)
            weight_decays.append(wd)
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                param_norm = torch.norm(p.data)
                grad_norm = torch.norm(p.grad.data)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = larc.trust_coefficient * param_norm / (grad_norm + param_norm * wd + larc.eps)
                    if larc.clip:
                        adaptive_lr = torch.clamp(adaptive_lr / group["lr"], max=1)
                    p.grad.data += wd * p.data
                    p.grad.data *= adaptive_lr
    try:
        return larc.optim.step()
    finally:
        for group, wd in zip(larc.optim.param_groups, weight_decays):
            group["weight_decay"] = wd


def larc_params(seed):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(5, 4, generator=g)), torch.nn.Parameter(torch.zeros(4)),
          torch.nn.Parameter(torch.randn(3, generator=g)), torch.nn.Parameter(torch.randn(2, generator=g))]
    return ps, [torch.randn(5, 4, generator=g) * 3, torch.randn(4, generator=g), torch.zeros(3), None]


class NoHostSync:
    """Turning a tensor into a Python bool or number (a device-to-host sync on CUDA) raises."""

    def __init__(self, monkeypatch):
        for name in ("__bool__", "item", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, self.refuse)

    @staticmethod
    def refuse(*_):
        raise AssertionError("a host sync")


@pytest.mark.parametrize("clip", [True, False])
def test_larc_matches_the_apex_formula_without_host_syncs(monkeypatch, clip):
    results = []
    for impl in ("reference", "larc"):
        ps, grads = larc_params(0)
        larc = LARC(torch.optim.SGD(ps, lr=0.3, momentum=0.9, weight_decay=1e-2), trust_coefficient=0.02,
                    clip=clip)
        for step in range(3):
            for p, gr in zip(ps, grads):
                p.grad = None if gr is None else gr * (step + 1)
            if impl == "reference":
                apex_larc_step(larc)
            else:
                with monkeypatch.context() as m:
                    NoHostSync(m)
                    larc.step()
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not torch.equal(results[1][0], larc_params(0)[0][0])  # it trained


def test_nccl_group_is_bound_to_its_device_with_the_given_timeout(monkeypatch):
    """init_process_group gets device_id (the local GPU) and the timeout; gloo on a CPU gets no device."""
    calls = []
    monkeypatch.setattr(cdist.dist, "init_process_group", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setattr(cdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[-1])
    device = cdist.init_distributed(5, 8, "tcp://127.0.0.1:1", "nccl", local_rank=5, timeout=timedelta(hours=2))
    (args, kw), = calls
    assert device == torch.device("cuda", 1) and args[0] == "nccl"
    assert kw["device_id"] == device and kw["timeout"] == timedelta(hours=2)
    assert (kw["rank"], kw["world_size"]) == (5, 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cdist.init_distributed(1, 2, "tcp://127.0.0.1:1", local_rank=1)
    assert "device_id" not in calls[-1][1] and calls[-1][0][0] == "gloo" and calls[-1][1]["timeout"] is None


def test_moco_cifar_sets_the_timeout_its_monitor_needs(monkeypatch, cifar10_root):
    """MoCo CIFAR's DDP collectives wait longer than NCCL's default 10 minutes (rank 0's kNN monitor)."""
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "UnMix_MoCo" / "for_CIFAR"))
    import unmix_cifar
    assert unmix_cifar.MONITOR_TIMEOUT >= timedelta(hours=1)
    seen = {}

    def stop(*a, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(unmix_cifar, "init_distributed", stop)
    monkeypatch.setattr(unmix_cifar, "launcher_env", lambda: (0, 2, 0))
    with pytest.raises(SystemExit):
        unmix_cifar.main(argv=["--data", str(cifar10_root), "--batch-size", "16", "--bn-splits", "2", "--moco-k", "32"])
    assert seen["timeout"] == unmix_cifar.MONITOR_TIMEOUT


class ManyImages:
    """A CIFAR-layout data set of ``n`` images that occupies no memory (a broadcast array)."""

    def __init__(self, n, size=32):
        self.data = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (n, size, size, 3))
        self.targets = [0] * n


def test_device_aug_under_ddp_refuses_a_data_set_above_the_limit():
    limit = device_aug.DDP_LIMIT_BYTES
    big = ManyImages(limit // (32 * 32 * 3) + 1)
    sampler = torch.utils.data.DistributedSampler(range(len(big.targets)), num_replicas=2, rank=0)
    with pytest.raises(CLIError) as e:
        device_aug.DeviceLoader(big, None, 8, "cpu", sampler=sampler)
    assert "--aug pil" in str(e.value) and "\n" not in str(e.value) and "4 GiB" in str(e.value)
    # one process, or a set within the limit: no refusal at this check
    device_aug.check_fits_every_process(big, 1)
    device_aug.check_fits_every_process(ManyImages(limit // (32 * 32 * 3)), 8)


def test_device_aug_size_of_an_image_folder_is_known_before_decoding(imagefolder_root):
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(imagefolder_root / "train")
    w, h = ds.loader(ds.samples[0][0]).size
    assert device_aug.uint8_bytes(ds) == len(ds) * w * h * 3 == device_aug.dataset_to_uint8(ds)[0].numel()
