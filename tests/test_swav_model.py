"""SwAV ResNets (UnMix_SwAV/swav/resnet.py) against upstream's documented layout and behaviour.

Independent facts used: upstream's state_dict table (written out by hand below),
the parameter counts measured on upstream's code, torchvision's ResNet-50 (the ImageNet stem
pads 1 + 2 = torchvision's 3), and plain re-computations of the grouped forward.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from UnMix_SwAV.swav.resnet import Bottleneck, ResNet, build, resnet18, resnet50, resnet50w2, resnet50w5


def upstream_cifar_resnet18_keys():
    """Upstream: the 184 (name, shape) entries of a for_CIFAR resnet18 pretraining checkpoint, in order."""
    def bn(prefix, c):
        return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
                (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]

    keys = [("module.conv1.weight", (64, 3, 3, 3))] + bn("module.bn1", 64)
    table = {1: (64, [64, 256]), 2: (128, [256, 512]), 3: (256, [512, 1024]), 4: (512, [1024, 2048])}
    for layer, (w, ins) in table.items():
        for b, cin in enumerate(ins):
            p = f"module.layer{layer}.{b}"
            keys += [(f"{p}.conv1.weight", (w, cin, 1, 1))] + bn(f"{p}.bn1", w)
            keys += [(f"{p}.conv2.weight", (w, w, 3, 3))] + bn(f"{p}.bn2", w)
            keys += [(f"{p}.conv3.weight", (4 * w, w, 1, 1))] + bn(f"{p}.bn3", 4 * w)
            if b == 0:
                keys += [(f"{p}.downsample.0.weight", (4 * w, cin, 1, 1))] + bn(f"{p}.downsample.1", 4 * w)
    keys += [("module.projection_head.0.weight", (512, 2048)), ("module.projection_head.0.bias", (512,))]
    keys += bn("module.projection_head.1", 512)
    keys += [("module.projection_head.3.weight", (128, 512)), ("module.projection_head.3.bias", (128,)),
             ("module.prototypes.weight", (100, 128))]
    return keys


def cifar_pretrain_model():
    return resnet18(normalize=True, hidden_mlp=512, output_dim=128, nmb_prototypes=100, cifar_stem=True)


def tiny(**kw):
    """A narrow Bottleneck network for behaviour tests (same code path, 8 channels in the stem)."""
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8, **kw)


def test_cifar_resnet18_state_dict_matches_upstream_key_for_key():
    expected = upstream_cifar_resnet18_keys()
    assert len(expected) == 184
    sd = cifar_pretrain_model().state_dict()
    got = [("module." + k, tuple(t.shape)) for k, t in sd.items()]
    assert got == expected
    # an upstream-format checkpoint (DDP prefix) loads with strict=True
    upstream = {k[len("module."):]: torch.randn(s) if s else torch.tensor(3) for k, s in expected}
    m = cifar_pretrain_model()
    m.load_state_dict(upstream, strict=True)
    assert torch.equal(m.prototypes.weight, upstream["prototypes.weight"])


def test_parameter_counts_match_upstream():
    m = cifar_pretrain_model()
    total = sum(p.numel() for p in m.parameters())
    backbone = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("projection_head", "prototypes")))
    assert (total, backbone) == (15_067_072, 13_938_496)
    r50 = resnet50(normalize=True, hidden_mlp=2048, output_dim=128, nmb_prototypes=3000, cifar_stem=True)
    assert sum(p.numel() for p in r50.parameters()) == 28_347_072
    # the ImageNet stem differs only by conv1: 64*3*(7*7 - 3*3) more weights
    r50i = resnet50(normalize=True, hidden_mlp=2048, output_dim=128, nmb_prototypes=3000)
    assert sum(p.numel() for p in r50i.parameters()) == 28_347_072 + 64 * 3 * 40


def test_cifar_stem_gives_34px_maps_and_5x5_output():
    m = resnet18(output_dim=0, eval_mode=True, cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    stem = m.relu(m.bn1(m.conv1(m.padding(x))))
    assert stem.shape[-2:] == (34, 34)
    assert m.maxpool is None
    with torch.no_grad():
        assert m(x).shape == (2, 2048, 5, 5)
    assert m.num_features == 2048
    with torch.device("meta"):  # wide nets: shapes only, no memory or init cost
        assert resnet50w2(output_dim=0).num_features == 4096
        assert resnet50w5(output_dim=0).num_features == 10240


def test_imagenet_stem_equals_torchvision_resnet50():
    torch.manual_seed(0)
    ours = resnet50(output_dim=0).eval()
    tv = torchvision.models.resnet50(weights=None).eval()
    sd = ours.state_dict()
    missing, unexpected = tv.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
            tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
        assert torch.allclose(ours(x), ref, atol=1e-5)


def test_upstream_init():
    torch.manual_seed(0)
    m = resnet50(output_dim=128, hidden_mlp=2048, nmb_prototypes=10)
    w = m.layer4[0].conv2.weight  # 512x512x3x3, kaiming fan_out: std = sqrt(2 / (512*9))
    assert abs(w.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.02
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    # Linear layers keep PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    lin = m.projection_head[0].weight
    assert lin.abs().max().item() <= 1 / math.sqrt(2048) + 1e-7
    assert lin.abs().max().item() > 0.9 / math.sqrt(2048)


def test_head_variants():
    m = tiny(output_dim=16, hidden_mlp=0, nmb_prototypes=0)
    assert isinstance(m.projection_head, nn.Linear) and m.prototypes is None
    assert set(k for k in m.state_dict() if "head" in k) == {"projection_head.weight", "projection_head.bias"}
    m = tiny(output_dim=16, hidden_mlp=32, nmb_prototypes=[5, 7])
    keys = [k for k in m.state_dict() if k.startswith("prototypes")]
    assert keys == ["prototypes.prototypes0.weight", "prototypes.prototypes1.weight"]
    m.eval()
    emb, outs = m(torch.randn(3, 3, 16, 16))
    assert [o.shape for o in outs] == [(3, 5), (3, 7)]
    assert tiny(output_dim=0)(torch.randn(2, 3, 16, 16)).shape == (2, 256)


def test_forward_normalizes_and_scores_with_prototypes():
    torch.manual_seed(0)
    m = tiny(normalize=True, output_dim=16, hidden_mlp=32, nmb_prototypes=10).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        emb, out = m(x)
        h = m.projection_head(torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(
            m.maxpool(m.relu(m.bn1(m.conv1(m.padding(x)))))))))), 1))
    assert torch.allclose(emb, F.normalize(h, dim=1), atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out, emb @ m.prototypes.weight.t(), atol=1e-6)


def test_forward_groups_consecutive_crops_of_one_resolution():
    """In train mode BN sees one batch per run of equal-size crops: [a32, b32, c16, d16] = 2 batches."""
    torch.manual_seed(0)
    m = tiny(normalize=True, output_dim=16, hidden_mlp=32, nmb_prototypes=10, cifar_stem=True).train()
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    c, d = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        emb, out = m([a, b, c, d])
        feats = torch.cat([m.forward_backbone(torch.cat([a, b])), m.forward_backbone(torch.cat([c, d]))])
        emb_ref, out_ref = m.forward_head(feats)
        assert torch.allclose(emb, emb_ref, atol=1e-5) and torch.allclose(out, out_ref, atol=1e-5)
        # and it is not four separate batches (the BN statistics would differ)
        sep = torch.cat([m.forward_backbone(t) for t in (a, b, c, d)])
        assert not torch.allclose(feats, sep, atol=1e-3)
        # a single tensor is treated as a one-crop list
        m.eval()
        assert torch.allclose(m(a)[1], m([a])[1])


def test_build_rejects_unknown_arch():
    with pytest.raises(KeyError, match="resnet50w2"):
        build("resnet1000")
