"""Supervised SAMix (SAMix/models.py, SAMix/main_samix.py): η, gradient flow, EMA, schedules, options."""
import pytest
import torch
import torch.nn.functional as F

from common.cli import CLIError
from common.mixer import Mixer
from SAMix.main_samix import build_optimizer, build_parser, resolve_defaults, set_epoch_lr
from SAMix.models import MixerModel, mixer_loss, mixup_ce


def _logits_and_labels(seed=0, n=6, c=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g),
            torch.randint(0, c, (n,), generator=g))


def test_softce_mixer_loss_ignores_eta_and_is_the_mixup_ce():
    z, ya, yb = _logits_and_labels()
    a = mixer_loss(z, ya, yb, 0.3, "softce", eta=0.5)
    b = mixer_loss(z, ya, yb, 0.3, "softce", eta=1.0)
    assert torch.equal(a, b)
    assert a.item() == pytest.approx(mixup_ce(z, ya, yb, 0.3).item(), rel=1e-6)


def test_bce_mixer_loss_weights_only_the_non_mixed_classes():
    z, ya, yb = _logits_and_labels(1)
    z = z.requires_grad_()
    lam = 0.3
    half = mixer_loss(z, ya, yb, lam, "bce", eta=0.5)
    one = mixer_loss(z, ya, yb, lam, "bce", eta=1.0)
    assert half.item() < one.item()
    # the formula by hand: sum over classes of w_c * BCE(sigmoid(z_c), t_c), mean over the batch
    t = lam * F.one_hot(ya, 7).float() + (1 - lam) * F.one_hot(yb, 7).float()
    p = torch.sigmoid(z.detach())
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    mixed = t > 0
    assert half.item() == pytest.approx(((bce * mixed).sum(1) + 0.5 * (bce * ~mixed).sum(1)).mean().item(), rel=1e-5)
    # gradients: equal on the two mixed classes, scaled by η on every other class
    g_half, = torch.autograd.grad(half, z)
    g_one, = torch.autograd.grad(one, z)
    assert torch.allclose(g_half[mixed], g_one[mixed])
    assert torch.allclose(g_half[~mixed], 0.5 * g_one[~mixed])


def _model(**kw):
    torch.manual_seed(0)
    return MixerModel("resnet_tiny", 5, True, Mixer.samix(32, lam_mul_k=0.25), **kw)


def _step_inputs(n=6):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), torch.randint(0, 5, (n,)), torch.randperm(n), torch.randperm(n)


def test_gradient_flow():
    net = _model()
    x, y, i_mb, i_bb = _step_inputs()
    out = net(x, y, (0.4, 0.3), i_mb, i_bb, 0.1)
    mixer = list(net.mixer.parameters())
    q_side = [p for n, p in net.named_parameters() if n.startswith(("backbone_q.", "head_one_q.", "head_mix_q."))]
    backbone_loss = out["loss_one_q"] + out["loss_mix_q"]
    # the backbone's losses give the Mixer exactly nothing (its mask is detached)
    for g in torch.autograd.grad(backbone_loss, mixer, allow_unused=True, retain_graph=True):
        assert g is None or torch.count_nonzero(g) == 0
    # the Mixer's losses give the online network nothing, and the Mixer something
    mixer_side = out["loss_mix_k"] + 0.1 * out["loss_mask"]
    for g in torch.autograd.grad(mixer_side, q_side, allow_unused=True, retain_graph=True):
        assert g is None or torch.count_nonzero(g) == 0
    g_mix = torch.autograd.grad(out["loss_mix_k"], mixer, allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_mix)
    out["loss"].backward()
    for name, p in net.named_parameters():
        if name.startswith(("backbone_k.", "head_one_k.", "head_mix_k.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name


def test_lam_margin_gives_plain_mixup_to_the_backbone():
    net = _model()
    x, y, i_mb, i_bb = _step_inputs()
    out = net(x, y, (0.4, 0.95), i_mb, i_bb, 0.1)
    assert torch.all(out["mask_bb"][:, 0] == 0.95) and torch.allclose(out["mask_bb"][:, 1], torch.tensor(0.05))
    out = net(x, y, (0.4, 0.5), i_mb, i_bb, 0.1)
    assert out["mask_bb"][:, 1].std() > 0


def test_momentum_update_parameters_only():
    net = _model()
    with torch.no_grad():
        for p in net.backbone_q.parameters():
            p.add_(1.0)
        net.backbone_q.bn1.running_mean.fill_(3.0)
    k_before = {n: p.clone() for n, p in net.backbone_k.named_parameters()}
    net.momentum_update(0.9)
    for n, p in net.backbone_k.named_parameters():
        q = dict(net.backbone_q.named_parameters())[n]
        assert torch.allclose(p, 0.9 * k_before[n] + 0.1 * q), n
    assert torch.all(net.backbone_k.bn1.running_mean == 0)


def _args(*argv):
    return resolve_defaults(build_parser().parse_args(list(argv)))


def test_per_dataset_defaults_and_mixer_lr_schedule():
    a = _args("--dataset", "imagenet")
    assert (a.epochs, a.batch_size, a.lr, a.min_lr, a.mixer_lr, a.mixer_min_lr) == (100, 64, 0.1, 0.0, 0.1, 1e-3)
    assert (a.ema_end, a.lam_mul_k, a.mixer_dropout, a.eta, a.mask_weight_schedule) == (0.99999, -1, 0.1, 1.0, "compound")
    c = _args("--dataset", "cifar100")
    assert (c.epochs, c.batch_size, c.min_lr, c.mixer_lr, c.mixer_min_lr, c.lam_mul_k, c.eta) == \
        (400, 100, 0.05, 0.1, 0.05, 0.25, 0.5)
    assert c.mask_weight_schedule == "constant" and c.ema_end == 0.999999 and c.alpha == 2.0
    t = _args("--dataset", "tiny", "-a", "resnext50_32x4d")
    assert (t.lr, t.mixer_lr, t.lam_mul_k) == (0.2, 0.1, 0.25) and _args("--dataset", "tiny").lam_mul_k == -1
    assert _args("--mix", "mixup").alpha == 1.0
    net = torch.nn.Module()
    net.mixer = torch.nn.Linear(2, 2)
    net.backbone_q = torch.nn.Linear(2, 2)
    opt = build_optimizer(net, a)
    lrs = set_epoch_lr(opt, 50, a)
    assert lrs["backbone"] == pytest.approx(0.05)
    assert lrs["mixer"] == pytest.approx(1e-3 + 0.5 * (0.1 - 1e-3))
    assert [g["lr"] for g in opt.param_groups] == [lrs["backbone"], lrs["mixer"]]
    assert set_epoch_lr(opt, 0, a)["mixer"] == pytest.approx(0.1)


def test_help_names_the_schedules_and_defaults():
    text = " ".join(build_parser().format_help().split())
    assert "(default: None)" not in text
    for word in ("compound", "cosine", "constant", "softce", "bce", "imagenet: 100", "cifar: 400"):
        assert word in text, word


@pytest.mark.parametrize("argv,fragment", [
    (["--dataset", "imagenet", "--image-size", "32"], "above 64"),
    (["--image-size", "96"], "at most 64"),
    (["--alpha", "0"], "--alpha"),
    (["--lam-margin", "0.6"], "--lam-margin"),
])
def test_bad_values_are_refused(argv, fragment):
    with pytest.raises(CLIError, match=fragment):
        _args(*argv)



def test_summarize_protocols():
    import pandas as pd
    from SAMix.summarize import deployment, openmixup_median
    df = pd.DataFrame({"epoch": [1, 2, 3, 4], "acc1_one_q": [10, 20, 30, 40], "acc5_one_q": [50, 60, 70, 80],
                       "acc1_one_k": [12, 22, 32, 33], "acc5_one_k": [52, 62, 72, 74],
                       "acc1_mix_q": [11, 21, 31, 41.5], "acc1_mix_k": [0, 0, 0, 0]})
    assert deployment(df) == (33.0, 74.0, "one_k")
    # medians of the last 2: one_q 35, one_k 32.5, mix_q 36.25 -> mix_q
    assert openmixup_median(df, 2) == (36.25, "mix_q", 2)
    # with the window search, N = 1 gives mix_q's last value
    assert openmixup_median(df, 2, search_window=True) == (41.5, "mix_q", 1)


def test_bench_runs_and_reports_a_ratio(capsys):
    from bench.bench_samix import main
    med = main(["-a", "resnet_tiny", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--classes", "3"])
    assert set(med) == {"none", "samix"} and all(v > 0 for v in med.values())
    assert "samix / vanilla" in capsys.readouterr().out


def test_mask_adjust_rescales_the_mean_toward_lam():
    net = _model()
    m = torch.full((2, 32, 32), 0.2)  # partner weight 0.2 -> anchor mean 0.8
    mask = torch.stack([1 - m, m], 1)
    out = net.adjust_mask(mask, 0.5)  # 0.8 > 0.5 + 0.1: the anchor channel is scaled to mean 0.5
    assert out[:, 0].mean().item() == pytest.approx(0.5) and torch.allclose(out.sum(1), torch.ones(2, 32, 32))
    out = net.adjust_mask(mask, 0.9)  # 0.8 < 0.9 (upstream's margin is 1e-8): the partner channel to mean 0.1
    assert out[:, 0].mean().item() == pytest.approx(0.9) and out[:, 1].mean().item() == pytest.approx(0.1)
    out = net.adjust_mask(mask, 0.95)  # 0.8 < 0.85: the partner channel is scaled to mean 0.05
    assert out[:, 1].mean().item() == pytest.approx(0.05)


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint():
    from common.schedules import MaskWeight
    from SAMix.main_samix import train_step
    from SAMix.models import build_model
    args = _args("--mix", "samix", "-a", "resnet_tiny")
    net = build_model(args, 5)
    opt = build_optimizer(net, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y, _, _ = _step_inputs()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CLIError, match="nan"):
        train_step(net, net, x, y, 0, opt, scaler, args, MaskWeight("constant", 0.1, 10), 10)


def test_iteration_losses_equal_a_step_by_step_computation():
    torch.manual_seed(0)
    net = MixerModel("resnet_tiny", 5, True, Mixer.samix(32, lam_mul_k=0.25, value_dropout=0.0))
    x, y, i_mb, i_bb = _step_inputs()
    lam_mb, lam_bb, w = 0.35, 0.6, 0.07
    out = net(x, y, (lam_mb, lam_bb), i_mb, i_bb, w)
    # train-mode BN normalises with batch statistics, so recomputing gives the same activations
    with torch.no_grad():
        f = net.backbone_k(x)[0]
        m_mb = net.mixer(f, lam_mb, index=i_mb, image_width=32)["mask"]
        m_bb = net.mixer(f, lam_bb, index=i_bb, image_width=32)["mask"]
        x_mb = m_mb[:, :1] * x + m_mb[:, 1:] * x[i_mb]
        x_bb = m_bb[:, :1] * x + m_bb[:, 1:] * x[i_bb]
        z_k = net.head_mix_k(net.backbone_k(x_mb)[1])
        l_k = lam_mb * F.cross_entropy(z_k, y) + (1 - lam_mb) * F.cross_entropy(z_k, y[i_mb])
        z_q = net.head_mix_q(net.backbone_q(x_bb)[1])
        l_mix_q = lam_bb * F.cross_entropy(z_q, y) + (1 - lam_bb) * F.cross_entropy(z_q, y[i_bb])
        l_one_q = F.cross_entropy(net.head_one_q(net.backbone_q(x)[1]), y)
        m = m_mb[:, 1]
        l_mask = max(abs(1 - m.mean().item() - lam_mb) - 0.1, 0.0) - 2 * ((m - m.mean()) ** 2).mean().item()
    assert out["loss_mix_k"].item() == pytest.approx(l_k.item(), rel=1e-5)
    assert out["loss_mix_q"].item() == pytest.approx(l_mix_q.item(), rel=1e-5)
    assert out["loss_one_q"].item() == pytest.approx(l_one_q.item(), rel=1e-5)
    assert out["loss_mask"].item() == pytest.approx(l_mask, rel=1e-5, abs=1e-7)
    total = l_mix_q + l_one_q + l_k + w * l_mask
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)


def test_backbone_keys_are_torchvisions():
    import torchvision
    from SAMix.models import Backbone
    tv = torchvision.models.resnet18()
    missing, unexpected = tv.load_state_dict(Backbone("resnet18").state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    b = Backbone("resnet50", mask_layer=2)
    assert (b.mask_channels, b.out_channels) == (1024, 2048)
    x = torch.randn(1, 3, 64, 64)
    assert b(x)[0].shape == (1, 1024, 4, 4)  # stride 16 at stage 3 with the ImageNet stem
