"""hubconf.py and tools/convert_to_torchvision.py: the right torchvision models, the weights really transferred."""
import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from conftest import ROOT, assert_clean_error, run_script

from common.cli import CLIError
from tools import convert_to_torchvision as conv
from tools import layouts
from test_released import _import_from, fake_state_dict

SCRIPT = "tools/convert_to_torchvision.py"


def _randomise(model, seed=0):
    """Non-trivial weights and BN statistics, so equal outputs mean the weights really moved."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def hub(name, **kw):
    return torch.hub.load(str(ROOT), name, source="local", **kw)


# --- torch.hub ---------------------------------------------------------------------------------------------
def test_hub_lists_entries_and_builds_random_models():
    import importlib.util  # torch.hub.list only knows GitHub repos: list the entries as it would
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert names == {"unmix_moco_cifar_resnet18", "moco_cifar_resnet18", "unmix_mocov2_resnet50", "mocov2_resnet50",
                     "swav_resnet50", "swav_cifar_resnet18"}

    m = hub("unmix_moco_cifar_resnet18", pretrained=False)
    assert isinstance(m, torchvision.models.ResNet) and isinstance(m.layer1[0], BasicBlock)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, torch.nn.Identity)
    assert m.fc.out_features == 10
    assert m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert hub("moco_cifar_resnet18", pretrained=False, dataset="cifar100").fc.out_features == 100

    m = hub("unmix_mocov2_resnet50", pretrained=False)
    assert isinstance(m.layer1[0], Bottleneck) and m.conv1.kernel_size == (7, 7)
    assert [len(m.layer1), len(m.layer2), len(m.layer3), len(m.layer4)] == [3, 4, 6, 3]
    assert m.fc.in_features == 2048 and m.fc.out_features == 1000

    m = hub("swav_cifar_resnet18", pretrained=False)
    assert isinstance(m.layer1[0], Bottleneck) and [len(m.layer1), len(m.layer4)] == [2, 2]
    assert m.conv1.padding == (2, 2) and m.fc.in_features == 2048
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        hub("swav_cifar_resnet18", pretrained=True)


def test_hub_loads_released_weights_from_the_cache(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        unmix_cifar = _import_from("UnMix_MoCo/for_CIFAR", "unmix_cifar")
        moco = _randomise(unmix_cifar.ModelMoCo())
        cache = tmp_path / "checkpoints" / "unmix"
        (cache / "unmix_moco_c10_symmetric").mkdir(parents=True)
        torch.save({"epoch": 1000, "state_dict": moco.state_dict(), "optimizer": {}},
                   cache / "unmix_moco_c10_symmetric" / "model_last.pth")
        m = hub("unmix_moco_cifar_resnet18")  # pretrained=True: found in the cache, verified, no network
        assert torch.equal(m.conv1.weight, moco.encoder_q.net[0].weight)
        assert torch.equal(m.layer4[1].bn2.running_var, moco.encoder_q.net[6][1].bn2.running_var)
        # an HTTPS artefact (MoCo v2 800ep) already in the torch.hub cache
        torch.save({"epoch": 800, "state_dict": fake_state_dict(layouts.moco_imagenet_specs()["v2"], fill=0.25)},
                   cache / "moco_v2_800ep_pretrain.pth.tar")
        m = hub("mocov2_resnet50")
        assert torch.all(m.layer3[5].conv2.weight == 0.25) and not torch.all(m.fc.weight == 0.25)
    finally:
        torch.hub.set_dir(old)


def test_hub_checkpoint_argument_and_wrong_kind(tmp_path):
    f = tmp_path / "swav.pth.tar"
    torch.save({"state_dict": fake_state_dict(layouts.swav_spec("resnet18"), fill=0.5)}, f)
    m = hub("swav_cifar_resnet18", checkpoint=str(f))
    assert torch.all(m.conv1.weight == 0.5)
    with pytest.raises(ValueError, match="swav_cifar checkpoint, not moco_cifar"):
        hub("unmix_moco_cifar_resnet18", checkpoint=str(f))


# --- converter ---------------------------------------------------------------------------------------------
def assert_same_trunk(tv, state, reference, size=32, n=2):
    """``state`` loads into the torchvision model ``tv`` with only fc missing, and the trunk's features
    equal ``reference`` (the original model's backbone, eval-mode BatchNorm)."""
    missing, unexpected = tv.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    tv.fc = torch.nn.Identity()
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), reference(x), rtol=1e-4, atol=1e-5)


def test_convert_moco_cifar_loads_into_torchvision_resnet18_and_gives_same_features(tmp_path):
    unmix_cifar = _import_from("UnMix_MoCo/for_CIFAR", "unmix_cifar")
    moco = _randomise(unmix_cifar.ModelMoCo())
    src, dst = tmp_path / "model_last.pth", tmp_path / "tv.pth"
    torch.save({"epoch": 5, "state_dict": moco.state_dict(), "optimizer": {}}, src)
    p = run_script([SCRIPT, src, dst])
    assert "moco_cifar" in p.stdout
    sd = torch.load(dst, weights_only=True)
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the documented CIFAR stem
    tv.maxpool = torch.nn.Identity()
    # same trunk: torchvision features == the MoCo encoder_q up to its Flatten
    assert_same_trunk(tv, sd, moco.encoder_q.net[:9], n=4)
    # refuses to overwrite, and one clear line for a file that is no checkpoint
    assert_clean_error(run_script([SCRIPT, src, dst], check=False), "exists")
    html = tmp_path / "page.pth"
    html.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    assert_clean_error(run_script([SCRIPT, html, tmp_path / "o.pth"], check=False), "HTML page")


def test_convert_swav_cifar_matches_swav_backbone_with_padding_2(tmp_path):
    resnet = pytest.importorskip("UnMix_SwAV.swav.resnet")
    swav = _randomise(resnet.build("resnet18", cifar_stem=True, hidden_mlp=512, output_dim=128,
                                   nmb_prototypes=100))
    src, dst = tmp_path / "checkpoint.pth.tar", tmp_path / "tv.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in swav.state_dict().items()}}, src)
    conv.main([str(src), str(dst)])
    tv = conv.build_torchvision("swav_cifar")
    assert_same_trunk(tv, torch.load(dst, weights_only=True), swav.forward_backbone)


def test_convert_moco_imagenet_and_simclr_byol(tmp_path):
    for variant in ("v1", "v2"):
        sd = fake_state_dict(layouts.moco_imagenet_specs()[variant], fill=0.125)
        out, kind, found = conv.convert_state_dict(sd)
        assert (kind, found) == ("moco_imagenet", variant)
        missing, unexpected = torchvision.models.resnet50().load_state_dict(out, strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    with pytest.raises(CLIError, match="MLP head"):
        conv.convert_state_dict(sd, keep_head=True)
    with pytest.raises(CLIError, match="widens the stem"):
        conv.convert_state_dict(fake_state_dict(layouts.swav_spec("resnet50w2")))
    out, kind, _ = conv.convert_state_dict(fake_state_dict(layouts.swav_spec("resnet50")))
    missing, _ = torchvision.models.resnet50().load_state_dict(out, strict=False)
    assert kind == "swav_imagenet" and set(missing) == {"fc.weight", "fc.bias"}

    methods = _import_from("UnMix_SimCLR_BYOL", "methods")
    byol = _randomise(methods.build_model("byol"))
    out, kind, variant = conv.convert_state_dict(byol.state_dict())
    assert (kind, variant) == ("simclr_byol", "byol-resnet18")
    tv = conv.build_torchvision(kind, variant)
    assert_same_trunk(tv, out, byol.model)


def test_convert_simclr_byol_prints_the_right_arch_and_maxpool(tmp_path):
    """The printed recipe is the model the features came from: resnet50 stays resnet50, and a run on an
    ImageFolder (htdt's Tiny ImageNet setting) keeps its max-pool (the keys alone cannot tell)."""
    methods = _import_from("UnMix_SimCLR_BYOL", "methods")
    simclr50 = methods.build_model("simclr", "resnet50", emb=8, head_size=16)
    src = tmp_path / "simclr50.pth"
    torch.save({"state_dict": simclr50.state_dict(), "args": {"dataset": "cifar10"}}, src)
    p = run_script([SCRIPT, src, tmp_path / "tv50.pth"])
    assert "torchvision.models.resnet50()" in p.stdout and "resnet18" not in p.stdout, p.stdout

    byol = _randomise(methods.build_model("byol", maxpool=True, emb=8, head_size=16))
    src = tmp_path / "byol_if.pth"
    torch.save({"state_dict": byol.state_dict(), "args": {"dataset": "imagefolder"}}, src)
    p = run_script([SCRIPT, src, tmp_path / "tv_if.pth"])
    assert "maxpool kept" in p.stdout and "maxpool = Identity()" not in p.stdout, p.stdout
    tv = conv.build_torchvision("simclr_byol", "byol-resnet18", maxpool=True)
    assert_same_trunk(tv, torch.load(tmp_path / "tv_if.pth"), byol.model)

    torch.save(byol.state_dict(), tmp_path / "byol_imagefolder_99.pt")  # htdt's bare state_dict: unknown
    p = run_script([SCRIPT, tmp_path / "byol_imagefolder_99.pt", tmp_path / "tv_htdt.pth"])
    assert "kept if trained on an ImageFolder" in p.stdout, p.stdout
