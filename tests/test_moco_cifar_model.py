"""MoCo CIFAR demo model: SplitBatchNorm, state_dict layout, loss formulas, single vs two-pass symmetric path."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UnMix_MoCo" / "for_CIFAR"))
from unmix_cifar import (ModelBase, ModelMoCo, SplitBatchNorm, build_datasets, build_parser, check_args,  # noqa: E402
                         learning_rate)

from common.cli import CLIError  # noqa: E402


# ---------------------------------------------------------------------------------------------------- SplitBN
def test_split_bn_groups_are_strided_and_running_stats_averaged():
    torch.manual_seed(0)
    S, N, C = 4, 16, 3
    bn = SplitBatchNorm(C, S)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(N, C, 5, 5) * 3 + 1
    out = bn(x)
    for j in range(S):  # group j = samples j, j+S, j+2S, ...
        g = x[j::S]
        ref = F.batch_norm(g, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        assert torch.allclose(out[j::S], ref, atol=1e-5)
    groups = [x[j::S] for j in range(S)]
    mean = torch.stack([g.mean(dim=(0, 2, 3)) for g in groups]).mean(0)
    var = torch.stack([g.transpose(0, 1).reshape(C, -1).var(dim=1, unbiased=True) for g in groups]).mean(0)
    assert torch.allclose(bn.running_mean, 0.9 * torch.zeros(C) + 0.1 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 * torch.ones(C) + 0.1 * var, atol=1e-5)
    assert bn.num_batches_tracked.item() == 0


def test_split_bn_eval_is_plain_bn_and_grads_sum_over_splits():
    torch.manual_seed(1)
    bn = SplitBatchNorm(3, 2)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    plain = torch.nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    bn.eval(), plain.eval()
    assert torch.allclose(bn(x), plain(x), atol=1e-6)
    bn.train()
    bn(x).pow(2).sum().backward()
    manual_w = torch.zeros(3)
    for j in range(2):
        w = bn.weight.detach().clone().requires_grad_()
        F.batch_norm(x[j::2], None, None, w, bn.bias.detach(), training=True).pow(2).sum().backward()
        manual_w += w.grad
    assert torch.allclose(bn.weight.grad, manual_w, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- layout
def layout_spec():
    """The released model_last.pth layout (upstream's), written out independently."""
    enc = {"net.0.weight": (64, 3, 3, 3)}
    bn = lambda p, c: {f"{p}.{n}": ((c,) if n != "num_batches_tracked" else ())  # noqa: E731
                       for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    enc.update(bn("net.1", 64))
    cin = 64
    for layer, c in zip((3, 4, 5, 6), (64, 128, 256, 512)):
        for b in (0, 1):
            i = cin if b == 0 else c
            enc[f"net.{layer}.{b}.conv1.weight"] = (c, i, 3, 3)
            enc.update(bn(f"net.{layer}.{b}.bn1", c))
            enc[f"net.{layer}.{b}.conv2.weight"] = (c, c, 3, 3)
            enc.update(bn(f"net.{layer}.{b}.bn2", c))
            if b == 0 and layer > 3:
                enc[f"net.{layer}.0.downsample.0.weight"] = (c, cin, 1, 1)
                enc.update(bn(f"net.{layer}.0.downsample.1", c))
        cin = c
    enc["net.9.weight"], enc["net.9.bias"] = (128, 512), (128,)
    spec = {"queue": (128, 4096), "queue_ptr": (1,)}
    spec.update({f"encoder_q.{k}": v for k, v in enc.items()})
    spec.update({f"encoder_k.{k}": v for k, v in enc.items()})
    return spec


def test_state_dict_matches_released_layout_key_for_key():
    model = ModelMoCo()  # the published configuration
    sd = model.state_dict()
    spec = layout_spec()
    assert len(sd) == 246 == len(spec)
    assert list(sd)[:2] == ["queue", "queue_ptr"]
    assert [k for k in sd if k.startswith("encoder_q.")][0] == "encoder_q.net.0.weight"
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec
    assert sd["queue_ptr"].dtype == torch.int64
    assert sum(p.numel() for p in model.encoder_q.parameters()) == 11_234_496
    assert torch.allclose(sd["queue"].norm(dim=0), torch.ones(4096), atol=1e-5)
    # a checkpoint in this layout loads strictly into a fresh model
    ModelMoCo().load_state_dict(sd, strict=True)


def test_key_encoder_starts_as_copy_without_grad():
    model = ModelMoCo(K=64, bn_splits=2)
    for q, k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(q, k) and not k.requires_grad


# ---------------------------------------------------------------------------------------------------- loss
def ref_ce(q, k, queue, T):
    """-log softmax of the positive, computed term by term in float64."""
    q, k, queue = q.double(), k.double(), queue.double()
    pos = (q * k).sum(1) / T
    neg = q @ queue / T
    return (-(pos - torch.logsumexp(torch.cat([pos[:, None], neg], 1), dim=1))).mean()


def small_model(symmetric, two_pass=False, bn_splits=1, K=32, seed=0):
    torch.manual_seed(seed)
    model = ModelMoCo(dim=16, K=K, m=0.9, T=0.2, bn_splits=bn_splits, symmetric=symmetric, two_pass=two_pass)
    with torch.no_grad():  # make q and k encoders differ so the momentum update matters
        for p in model.encoder_q.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def inputs(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    im1, im2 = torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)
    lam = 0.3
    mixed = lam * im1 + (1 - lam) * im1.flip(0)
    return im1, im2, mixed, lam


def reference_loss(model, im1, im2, mixed, lam, symmetric):
    """Straightforward Un-Mix MoCo loss: momentum update, keys without shuffle (plain BN is order-free),
    the reverse mixture encoded explicitly from the flipped images."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for q, k in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            k.copy_(0.9 * k + 0.1 * q)
    enc = lambda x: F.normalize(ref.encoder_q(x), dim=1)  # noqa: E731
    key = lambda x: F.normalize(ref.encoder_k(x), dim=1).detach()  # noqa: E731
    qm, qm_rev = enc(mixed), enc(mixed.flip(0))
    k1, k2 = key(im1), key(im2)
    T, queue = ref.T, ref.queue
    total = ref_ce(enc(im1), k2, queue, T) + lam * ref_ce(qm, k2, queue, T) + (1 - lam) * ref_ce(qm_rev, k2, queue, T)
    if symmetric:
        total = total + ref_ce(enc(im2), k1, queue, T) + lam * ref_ce(qm, k1, queue, T) \
            + (1 - lam) * ref_ce(qm_rev, k1, queue, T)
    return total, (k1, k2)


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_equals_straightforward_formula_and_queue_update(symmetric):
    model = small_model(symmetric)
    im1, im2, mixed, lam = inputs()
    expected, (k1, k2) = reference_loss(model, im1, im2, mixed, lam, symmetric)
    loss = model(im1, im2, mixed, lam)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    enq = torch.cat([k1, k2]) if symmetric else k2
    assert torch.allclose(model.queue[:, :enq.size(0)].t(), enq.float(), atol=1e-5)
    assert model.queue_ptr.item() == enq.size(0)


def test_plain_moco_symmetric_loss():
    model = small_model(True)
    im1, im2, _, _ = inputs()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for q, k in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            k.copy_(0.9 * k + 0.1 * q)
    enc = lambda x: F.normalize(ref.encoder_q(x), dim=1)  # noqa: E731
    key = lambda x: F.normalize(ref.encoder_k(x), dim=1)  # noqa: E731
    expected = ref_ce(enc(im1), key(im2), ref.queue, ref.T) + ref_ce(enc(im2), key(im1), ref.queue, ref.T)
    assert model(im1, im2).item() == pytest.approx(expected.item(), rel=1e-4)


def test_single_encoding_equals_two_pass_in_loss_and_gradients():
    """The default symmetric path (mixture encoded once) vs upstream's two passes: same loss and gradients;
    only encoder_q's BN running statistics differ (one update fewer)."""
    runs = {}
    for two_pass in (False, True):
        model = small_model(True, two_pass=two_pass, bn_splits=2)
        im1, im2, mixed, lam = inputs()
        torch.manual_seed(123)  # same shuffle permutations
        loss = model(im1, im2, mixed, lam)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs[two_pass] = (loss.item(), grads, model)
    (l1, g1, m1), (l2, g2, m2) = runs[False], runs[True]
    assert l1 == pytest.approx(l2, rel=1e-6)
    assert g1.keys() == g2.keys() and len(g1) == 62
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n
    assert torch.equal(m1.queue, m2.queue)
    assert not torch.allclose(m1.encoder_q.net[1].running_mean, m2.encoder_q.net[1].running_mean)
    assert torch.equal(m1.encoder_k.net[1].running_mean, m2.encoder_k.net[1].running_mean)


def test_cosine_schedule_per_epoch_one_based():
    args = build_parser().parse_args([])
    assert learning_rate(1, args) == pytest.approx(0.06 * 0.5 * (1 + math.cos(math.pi / 1000)))
    assert learning_rate(500, args) == pytest.approx(0.03)
    assert learning_rate(1000, args) == pytest.approx(0.0, abs=1e-12)
    args = build_parser().parse_args(["--no-cos", "--schedule", "600", "900"])
    assert [learning_rate(e, args) for e in (599, 600, 900)] == pytest.approx([0.06, 0.006, 0.0006])
    # bit for bit as upstream's adjust_learning_rate: lr *= 0.1 once per milestone passed
    args = build_parser().parse_args(["--no-cos", "--schedule", "10", "20", "30"])
    for epoch in (5, 10, 20, 30):
        lr = args.lr
        for milestone in args.schedule:
            lr *= 0.1 if epoch >= milestone else 1.
        assert learning_rate(epoch, args) == lr


def test_defaults_are_the_published_configuration():
    a = build_parser().parse_args([])
    assert (a.arch, a.lr, a.epochs, a.cos, a.batch_size, a.wd, a.moco_dim, a.moco_k, a.moco_m, a.moco_t, a.prob,
            a.bn_splits, a.symmetric, a.knn_k, a.knn_t, a.beta, a.unmix, a.amp) == \
        ("resnet18", 0.06, 1000, True, 512, 5e-4, 128, 4096, 0.99, 0.1, 0.5, 8, True, 200, 0.1, 1.0, True, False)


def test_model_base_stem_and_feature_dim():
    enc = ModelBase(feature_dim=128, arch="resnet18", bn_splits=8)
    assert isinstance(enc.net[1], SplitBatchNorm) and enc.net[1].num_splits == 8
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in enc.modules())
    assert enc.net[:-1](torch.randn(8, 3, 32, 32)).shape == (8, 512)


@pytest.mark.parametrize("bad", [["--bn-splits", "0"], ["--moco-k", "0"], ["--moco-k", "-16"], ["--lr", "-1"],
                                 ["--image-size", "0"], ["--knn-k", "0"], ["--moco-t", "0"], ["--moco-dim", "0"],
                                 ["--knn-t", "0"]])
def test_nonsense_sizes_are_one_clear_error(bad):
    with pytest.raises(CLIError):
        check_args(build_parser().parse_args(["--batch-size", "8", "--bn-splits", "2", "--moco-k", "16"] + bad))


def test_help_text_is_true_for_each_entry_point():
    for dataset, tag in (("cifar10", "C10"), ("cifar100", "C100")):
        text = " ".join(build_parser(dataset).format_help().split())
        assert f"_{tag} " in text and "(default: 512)" in text and f"(default: {dataset})" in text
        assert "asymmetric loss (the 'w/ asymmetric' rows) (default" not in text
        assert "the baseline rows) (default" not in text


def test_imagefolder_val_classes_must_match_train(tmp_path):
    from fakedata import make_image_folder
    make_image_folder(tmp_path, classes=3, per_class=2, size=8)
    for f in (tmp_path / "val" / "class_1").iterdir():
        f.unlink()
    (tmp_path / "val" / "class_1").rmdir()  # val holds class_0 and class_2: ImageFolder would number them 0, 1
    args = build_parser().parse_args(["--dataset", "imagefolder", "--data", str(tmp_path), "--image-size", "8"])
    with pytest.raises(CLIError, match="class"):
        build_datasets(args)
