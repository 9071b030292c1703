"""Self-supervised SAMix in the MoCo CIFAR demo (--mix samix): losses against straightforward computations,
the fixed partner pairing, gradient flow, and the script run as a user would (resume, DDP, ImageFolder)."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UnMix_MoCo" / "for_CIFAR"))
import samix_moco  # noqa: E402
from samix_moco import MoCoSAMix, adjust_mask, mixup_info_nce, mixup_two_way  # noqa: E402
from unmix_cifar import ModelMoCo  # noqa: E402

from common.utils import seed_everything  # noqa: E402


def unit(n, d, g):
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ---------------------------------------------------------------------------------------------------- losses
def test_mixup_info_nce_equals_term_by_term_computation():
    g = torch.Generator().manual_seed(0)
    n, d, K, T, lam = 5, 8, 12, 0.2, 0.3
    z, pa, pb, queue = unit(n, d, g), unit(n, d, g), unit(n, d, g), unit(K, d, g).t()
    expected = 0.0
    for i in range(n):  # -log softmax of each positive against itself + the K queue entries, sample by sample
        for w, p in ((lam, pa[i]), (1 - lam, pb[i])):
            logits = [float(z[i] @ p) / T] + [float(z[i] @ queue[:, j]) / T for j in range(K)]
            expected += w * -(logits[0] - torch.logsumexp(torch.tensor(logits), 0).item()) / n
    got = mixup_info_nce(z.float(), pa.float(), pb.float(), queue.float(), lam, T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # λ = 1 is plain InfoNCE against the anchor's positive; the queue is shared by both terms
    assert mixup_info_nce(z, pa, pb, queue, 1.0, T).item() == pytest.approx(
        F.cross_entropy(torch.cat([(z * pa).sum(1, keepdim=True), z @ queue], 1) / T,
                        torch.zeros(n, dtype=torch.long)).item(), rel=1e-6)


def test_two_way_local_objective_is_a_softmax_over_the_two_sources():
    g = torch.Generator().manual_seed(1)
    z, pa, pb = unit(4, 8, g), unit(4, 8, g), unit(4, 8, g)
    lam, T = 0.7, 0.1
    sa, sb = (z * pa).sum(1) / T, (z * pb).sum(1) / T
    # λ·(-log σ(s_a - s_b)) + (1-λ)·(-log σ(s_b - s_a)): the queue plays no part
    expected = (lam * -F.logsigmoid(sa - sb) + (1 - lam) * -F.logsigmoid(sb - sa)).mean()
    assert mixup_two_way(z, pa, pb, lam, T).item() == pytest.approx(expected.item(), rel=1e-6)


def test_auto_mask_adjust_rescales_toward_lambda_only_beyond_the_margin():
    m = torch.full((2, 1, 4, 4), 0.2)  # partner weight 0.2: anchor share 0.8
    mask = torch.cat([1 - m, m], 1)
    out = adjust_mask(mask, lam=0.5)  # 0.8 > 0.5 + 0.1: anchor scaled by 0.5 / 0.8
    assert torch.allclose(out[:, 0], torch.full((2, 4, 4), 0.5)) and torch.allclose(out.sum(1), torch.ones(2, 4, 4))
    out = adjust_mask(mask, lam=0.95)  # 0.8 < 0.95 - 0.1: partner scaled by 0.05 / 0.2
    assert torch.allclose(out[:, 1], torch.full((2, 4, 4), 0.05))
    assert torch.allclose(adjust_mask(mask, lam=0.75), mask)  # within ±0.1: unchanged


# ---------------------------------------------------------------------------------------------------- model
def small_model(symmetric=True, seed=0, **kw):
    torch.manual_seed(seed)
    model = MoCoSAMix(dim=16, K=32, m=0.9, T=0.2, bn_splits=1, symmetric=symmetric, **kw)
    with torch.no_grad():  # make q and k differ, and the Mixer not ~constant
        for p in model.encoder_q.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for p in model.mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def images(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)


def test_clean_term_is_plain_moco_and_state_dict_adds_only_the_mixer():
    model = small_model()
    plain = ModelMoCo(dim=16, K=32, m=0.9, T=0.2, bn_splits=1)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mixer.")})
    assert set(model.state_dict()) - set(plain.state_dict()) == {k for k in model.state_dict() if
                                                                 k.startswith("mixer.")}
    im1, im2 = images()
    torch.manual_seed(5)  # same key-shuffle draws
    expected = plain(im1, im2)
    torch.manual_seed(5)
    terms = model.losses(im1, im2)
    assert terms["clean"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(model.queue, plain.queue)  # the same clean keys enqueued; mixtures never are


@pytest.mark.parametrize("symmetric", [True, False])
def test_mask_is_built_from_the_partner_it_mixes_in(monkeypatch, symmetric):
    """Known permutations π_bb, π_mb: the Mixer's partner features are those of view 2 of π(i), the very sample
    whose pixels the mask mixes in and whose view-1 key is the second positive (upstream used π_bb∘π_mb)."""
    model = small_model(symmetric)
    n = 8
    pi_bb, pi_mb = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4]), torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])
    perms = iter([pi_bb, pi_mb])
    monkeypatch.setattr(samix_moco, "global_partners", lambda n_local, device: next(perms))
    calls = []
    real = model.mixer.forward
    monkeypatch.setattr(model.mixer, "forward", lambda f, lam, partner=None, **kw: calls.append(
        (f, partner, lam)) or real(f, lam, partner=partner, **kw))
    im1, im2 = images(n)
    ref = copy.deepcopy(model)
    terms = model.losses(im1, im2)

    # independent features of the updated key encoder (plain BN: the shuffle does not change them)
    with torch.no_grad():
        for q, k in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            k.copy_(0.9 * k + 0.1 * q)
        f1, f2 = ref.encoder_k.net[:6](im1), ref.encoder_k.net[:6](im2)
        k1 = F.normalize(ref.encoder_k(im1), dim=1)
        k2 = F.normalize(ref.encoder_k(im2), dim=1)
    assert len(calls) == 2
    for (anchor, partner, _), pi in zip(calls, (pi_bb, pi_mb)):
        assert torch.allclose(anchor, f1, atol=1e-5)
        assert torch.allclose(partner, f2[pi], atol=1e-5)  # the partner i is paired with ...
    assert not torch.allclose(calls[1][1], f2[pi_bb][pi_mb], atol=1e-3)  # (upstream's double shuffle used these)
    m = model.last["mask"][:, None]
    assert torch.allclose(model.last["mixed"], im1 * (1 - m) + im2[pi_mb] * m, atol=1e-6)  # ... is mixed in
    # and its positives: view 2 of i (λ) and view 1 of π(i) (1-λ), the queue as negatives, through the key encoder
    with torch.no_grad():
        z = F.normalize(ref.encoder_k(model.last["mixed"]), dim=1)
    expected = mixup_info_nce(z, k2, k1[pi_mb], ref.queue, calls[1][2], ref.T)
    assert terms["mixer"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_gradient_flow():
    """The Mixer learns only from its own objective (here with the auxiliary term) and the mask loss; the key
    encoder learns nothing; the Mixer's objective and the mask loss do not train the query encoder."""
    model = small_model(eta=0.5)
    terms = model.losses(*images())
    mixer, enc_q = list(model.mixer.parameters()), list(model.encoder_q.parameters())

    def grads(loss, params):
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]

    for name in ("clean", "mix_backbone"):
        assert all(torch.count_nonzero(g) == 0 for g in grads(terms[name], mixer)), name
    for name in ("mixer", "mask"):
        assert sum(g.abs().sum() for g in grads(terms[name], mixer)) > 0, name
        assert all(torch.count_nonzero(g) == 0 for g in grads(terms[name], enc_q)), name
    assert sum(g.abs().sum() for g in grads(terms["mix_backbone"], enc_q)) > 0
    total = terms["clean"] + terms["mix_backbone"] + terms["mixer"] + 0.1 * terms["mask"]
    total.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder_k.parameters())


def test_auxiliary_term_adds_eta_times_global_objective():
    base, aux = small_model(mixer_loss="bce"), small_model(mixer_loss="bce", eta=0.5)
    im1, im2 = images()
    seed_everything(3)
    t0 = base.losses(im1, im2)
    seed_everything(3)
    t1 = aux.losses(im1, im2)
    assert t1["clean"].item() == t0["clean"].item() and t1["mix_backbone"].item() == t0["mix_backbone"].item()
    assert t1["mixer"].item() > t0["mixer"].item()  # + η · (a positive InfoNCE term)


# ---------------------------------------------------------------------------------------------------- options
def test_mix_option_and_its_no_unmix_alias():
    from unmix_cifar import build_parser, check_args, default_results_dir

    from common.cli import CLIError
    for argv, mix, unmix in ((["--no-unmix"], "none", False), (["--mix", "none"], "none", False),
                             ([], "unmix", True), (["--mix", "samix"], "samix", False),
                             (["--mix", "samix", "--no-unmix"], "samix", False)):  # (as a recorded SAMix run)
        a = build_parser().parse_args(argv)
        check_args(a)
        assert (a.mix, a.unmix) == (mix, unmix), argv
    a = build_parser().parse_args(["--mix", "samix", "--asymmetric"])
    check_args(a)
    assert default_results_dir(a) == "./SAMix_asymmetric_C10"
    for bad in (["--mix", "samix", "--two-pass"], ["--samix-alpha", "0"],
                ["--eta", "-1"], ["--mask-every", "0"]):
        with pytest.raises(CLIError):
            check_args(build_parser().parse_args(bad))


# ---------------------------------------------------------------------------------------------------- as a user
from conftest import assert_clean_error, kill_9_after, run_script  # noqa: E402

C10 = "UnMix_MoCo/for_CIFAR/unmix_c10.py"
TINY = ["--batch-size", "16", "--bn-splits", "2", "--moco-k", "32", "--image-size", "16", "--workers", "0",
        "--seed", "0", "--knn-k", "10", "--mix", "samix"]


def test_samix_run_outputs_and_exact_resume_after_kill_9(cifar10_root, tmp_path):
    import pandas as pd
    full, part = tmp_path / "full", tmp_path / "part"
    tiny = TINY + ["--no-cos"]  # a constant lr: the resumed epoch 2 really trains (the cosine's would be 0)
    p = run_script([C10, "--data", cifar10_root, "--results-dir", full, "--epochs", 2, *tiny])
    assert {"args.json", "log.csv", "model_last.pth", "curves.png", "masks.png"} <= {f.name for f in full.iterdir()}
    assert "Acc@1" in p.stdout and (full / "masks.png").stat().st_size > 5000
    log = pd.read_csv(full / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "test_acc@1"] and list(log.epoch) == [1, 2]
    ckpt = torch.load(full / "model_last.pth", weights_only=True)  # torch's safe loader reads it
    mixer_keys = [k for k in ckpt["state_dict"] if k.startswith("mixer.")]
    assert mixer_keys and ckpt["args"]["mix"] == "samix"
    n_params = sum(1 for k in ckpt["state_dict"] if not k.endswith(("running_mean", "running_var", "_tracked"))
                   and k not in ("queue", "queue_ptr"))
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == n_params  # the Mixer is in the optimizer

    ckpt = part / "model_last.pth"
    kill_9_after("checkpoint", [C10, "--data", cifar10_root, "--results-dir", part, "--epochs", 2, *tiny])
    assert torch.load(ckpt, weights_only=False)["epoch"] < 2, "run finished before it could be killed"
    run_script([C10, "--data", cifar10_root, "--resume", part / "model_last.pth", "--epochs", 2, *tiny])
    a, b = torch.load(full / "model_last.pth", weights_only=False), torch.load(part / "model_last.pth",
                                                                                 weights_only=False)
    assert b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (full / "log.csv").read_text() == (part / "log.csv").read_text()
    # a SAMix checkpoint is not an Un-Mix run: resuming it as one is refused in one line
    p = run_script([C10, "--data", cifar10_root, "--resume", part / "model_last.pth", "--epochs", 3, *tiny,
                    "--mix", "unmix"], check=False)
    assert_clean_error(p, "does not match")


def test_samix_imagefolder_asymmetric_local_objective_with_global_term(imagefolder_root, tmp_path):
    out = tmp_path / "imf"
    run_script([C10, "--dataset", "imagefolder", "--data", imagefolder_root, "--results-dir", out, "--epochs", 1,
                *TINY, "--batch-size", "8", "--moco-k", "16", "--asymmetric", "--mixer-loss", "bce",
                "--eta", "0.5"])
    ckpt = torch.load(out / "model_last.pth", weights_only=False)
    assert (ckpt["args"]["mixer_loss"], ckpt["args"]["eta"], ckpt["args"]["symmetric"]) == ("bce", 0.5, False)
    assert (out / "masks.png").exists() and torch.isfinite(ckpt["state_dict"]["mixer.query.weight"]).all()


def test_samix_two_process_gloo_run(cifar10_root, tmp_path):
    """torchrun, 2 CPU processes: DDP, partners drawn across both processes' samples, keys of both enqueued."""
    from common.dist import free_port
    out = tmp_path / "ddp"
    run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), C10,
                "--data", cifar10_root, "--results-dir", out, "--epochs", 1, *TINY, "--moco-k", "64"])
    ckpt = torch.load(out / "model_last.pth", weights_only=False)
    assert ckpt["epoch"] == 1 and (out / "masks.png").exists()
    # 80 images / global batch 16 = 5 steps of 2 x 16 gathered keys: 160 % 64 = 32 (one process alone: 16)
    assert ckpt["state_dict"]["queue_ptr"].item() == 32
