"""tools/released.py + tools/layouts.py: catalogue vs README, layout specs vs independent facts, verification."""
import io
import json
import subprocess
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import ROOT, assert_clean_error, run_script, script_env

from common.cli import CLIError
from tools import layouts, released

SCRIPT = "tools/released.py"


# --- fake checkpoints in every released layout ---------------------------------------------------------------
def fake_state_dict(spec, fill=None):
    """A state_dict of the spec's keys/shapes (wildcards -> 8). Stride-0 tensors keep the files tiny."""
    sd = OrderedDict()
    for k, shape in spec.items():
        shape = tuple(8 if d is None else d for d in shape)
        if k.endswith("num_batches_tracked") or k.endswith("queue_ptr"):
            sd[k] = torch.zeros(shape, dtype=torch.long)
        else:
            v = torch.zeros(1) if fill is None else torch.full((1,), float(fill))
            sd[k] = v.expand(shape) if shape else v[0].clone()
    return sd


def fake_file(path, kind, variant=None, wrap=True):
    variants = layouts.KINDS[kind][1]
    spec = variants[variant or next(iter(variants))]
    sd = fake_state_dict(spec)
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {}} if wrap else sd, path)
    return path


LAYOUTS = [("moco_cifar", None, True), ("moco_imagenet", "v1", True), ("moco_imagenet", "v2", True),
           ("swav_cifar", None, True), ("swav_imagenet", "resnet50", True),
           ("swav_imagenet", "resnet50w2", False),  # the released vanilla SwAV files are raw state_dicts
           ("swav_linear", None, True), ("simclr_byol", "byol-resnet18", True)]


def _import_from(folder, module):
    """Imports ``module`` with ``ROOT/folder`` on the path (skips while that method's code has not landed)."""
    sys.path.insert(0, str(ROOT / folder))
    try:
        return pytest.importorskip(module)
    finally:
        sys.path.pop(0)


# --- the specs against independent facts --------------------------------------------------------------------
def test_resnet_shapes_agree_with_torchvision():
    for builder, block, layers in ((torchvision.models.resnet18, "basic", [2, 2, 2, 2]),
                                   (torchvision.models.resnet50, "bottleneck", [3, 4, 6, 3])):
        tv = OrderedDict((k, tuple(v.shape)) for k, v in builder().state_dict().items() if not k.startswith("fc."))
        assert list(layouts.resnet_shapes(block, layers).items()) == list(tv.items())


def test_moco_cifar_spec_matches_reference_table():
    spec = layouts.moco_cifar_spec(128, 4096)
    # upstream: 246 entries, queue and queue_ptr first, then 122 q keys and 122 k keys
    assert len(spec) == 246
    assert list(spec)[:2] == ["queue", "queue_ptr"] and spec["queue"] == (128, 4096)
    q = [k for k in spec if k.startswith("encoder_q.")]
    assert len(q) == 122 and list(spec)[2:124] == q
    assert spec["encoder_q.net.0.weight"] == (64, 3, 3, 3)
    assert spec["encoder_k.net.4.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert spec["encoder_q.net.9.weight"] == (128, 512)
    assert not any(f".net.{i}." in k for k in spec for i in (2, 7, 8))
    # parameter count per encoder (reference: 11,234,496)
    n = sum(torch.Size(s).numel() for k, s in spec.items() if k.startswith("encoder_q.")
            and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == 11_234_496


def test_swav_cifar_spec_matches_reference():
    spec = layouts.swav_spec("resnet18")
    assert len(spec) == 184  # upstream's resnet18 pretraining layout
    assert all(k.startswith("module.") for k in spec)
    assert spec["module.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert spec["module.layer4.1.conv1.weight"] == (512, 2048, 1, 1)
    assert spec["module.conv1.weight"] == (64, 3, 3, 3)


def test_swav_specs_match_our_swav_models():
    resnet = pytest.importorskip("UnMix_SwAV.swav.resnet")
    for arch, kw in (("resnet18", dict(cifar_stem=True, hidden_mlp=512, output_dim=128, nmb_prototypes=100)),
                     ("resnet50", dict(hidden_mlp=2048, output_dim=128, nmb_prototypes=3000))):
        sd = {"module." + k: v for k, v in resnet.build(arch, **kw).state_dict().items()}
        assert layouts.compare(layouts.swav_spec(arch), sd) == []
        assert list(sd) == list(layouts.swav_spec(arch))
        # and a file in the spec's layout (head wildcards = this model's sizes) loads strictly into the model
        spec = {k: tuple(sd[k].shape) if None in s else s for k, s in layouts.swav_spec(arch).items()}
        model = resnet.build(arch, **kw)
        model.load_state_dict({k[len("module."):]: v for k, v in fake_state_dict(spec).items()}, strict=True)


def test_moco_cifar_spec_matches_our_model_strictly():
    unmix_cifar = _import_from("UnMix_MoCo/for_CIFAR", "unmix_cifar")
    model = unmix_cifar.ModelMoCo()
    own = model.state_dict()
    assert layouts.compare(layouts.moco_cifar_spec(128, 4096), own) == []
    assert list(own) == list(layouts.moco_cifar_spec())
    fake = {k: v.clone() for k, v in fake_state_dict(layouts.moco_cifar_spec(128, 4096), fill=0.5).items()}
    model.load_state_dict(fake, strict=True)
    assert torch.equal(model.encoder_q.net[0].weight, torch.full((64, 3, 3, 3), 0.5))


def test_moco_imagenet_specs_match_the_moco_builder_strictly():
    builder = _import_from("UnMix_MoCo/for_ImageNet", "moco.builder")
    for variant, mlp in (("v1", False), ("v2", True)):
        model = builder.MoCo(torchvision.models.resnet50, dim=128, K=256, mlp=mlp)
        own = {"module." + k: v for k, v in model.state_dict().items()}  # saved through DDP upstream
        assert layouts.match("moco_imagenet", own) == (variant, [])
        assert list(own) == list(layouts.moco_imagenet_specs()[variant])
        spec = {k: tuple(own[k].shape) if None in s else s for k, s in layouts.moco_imagenet_specs()[variant].items()}
        model.load_state_dict({k[len("module."):]: v for k, v in fake_state_dict(spec).items()}, strict=True)


def test_simclr_byol_spec_matches_their_models():
    methods = _import_from("UnMix_SimCLR_BYOL", "methods")
    assert layouts.detect(methods.build_model("simclr").state_dict()) == ("simclr_byol", "simclr-resnet18")
    assert layouts.detect(methods.build_model("byol").state_dict()) == ("simclr_byol", "byol-resnet18")


def test_every_kind_is_detected_and_distinct():
    for kind, (_, variants) in ((k, v[:2]) for k, v in layouts.KINDS.items()):
        for variant, spec in variants.items():
            assert layouts.detect(fake_state_dict(spec)) == (kind, variant)


# --- the catalogue against the README tables ----------------------------------------------------------------
def _readme_tables():
    text = (ROOT / "docs/reproduce.md").read_text()
    m = re.search(r"<!-- reproduce:start -->(.*)<!-- reproduce:end -->", text, re.S)
    assert m, "README has no reproduce block"
    return [line for line in m.group(1).splitlines() if line.lstrip().startswith("|")]


def _links(line):
    urls = re.findall(r"\((https://[^)\s]+)\)", line)
    return [u.split("?")[0].rstrip("/") for u in urls
            if "drive.google.com" in u or "dl.fbaipublicfiles.com" in u]


def test_catalogue_lists_every_link_of_the_readme_tables():
    rows = _readme_tables()
    by_url = {a.url: a for a in released.CATALOGUE.values()}
    seen = set()
    for row in rows:
        last_number = None  # the published number governing the cells to its right
        for cell in row.strip().strip("|").split("|"):
            cell = cell.strip()
            if re.fullmatch(r"\d{2}\.\d{1,2}", cell):
                last_number = cell
            for url in _links(cell):
                assert url in by_url, f"README links {url}, which the catalogue lacks"
                art = by_url[url]
                seen.add(art.name)
                # the link's own cell names it, or (a bare link cell) its row does
                named = f"`{art.name}`" in cell or ("`" not in cell and f"`{art.name}`" in row)
                assert named, f"the cell/row linking {url} should name `{art.name}`: {row}"
                if last_number and re.search(r"\d\d\.\d", art.published):
                    assert last_number in art.published, (row, art.published)
    missing = set(released.CATALOGUE) - seen
    assert not missing, f"catalogue entries absent from the README tables: {sorted(missing)}"


def test_readme_commands_name_existing_scripts():
    text = (ROOT / "docs/reproduce.md").read_text()
    block = text[text.index("<!-- reproduce:start -->"):text.index("<!-- reproduce:end -->")]
    cwd, checked = ROOT, 0
    for code in re.findall(r"```bash\n(.*?)```", block, re.S):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            for part in line.split("&&"):
                toks = part.split()
                if toks[:1] == ["cd"]:
                    cwd = ROOT / toks[1]
                for t in toks:
                    if t.endswith((".py", ".sh")):
                        assert (ROOT / t).is_file() or (cwd / t).is_file(), f"README runs {t}, which is missing"
                        checked += 1
    assert checked >= 20


def test_catalogue_has_the_published_artefacts():
    cat = released.CATALOGUE
    moco = [a for a in cat.values() if a.kind == "moco_cifar"]
    assert len(moco) == 8 and {a.dataset for a in moco} == {"cifar10", "cifar100"}
    assert sum(a.kind in ("moco_cifar_log", "moco_cifar_args") for a in cat.values()) == 16
    assert len({a.where for a in cat.values()}) == len(cat)  # no link listed twice
    assert cat["unmix_mocov2_in1k_r50"].where == "1-t1lgVk6qPBaPRqePPHsEtyf530DfEbt"
    assert cat["unmix_moco_c10_symmetric"].published.endswith("92.25")
    assert cat["moco_c100_asymmetric"].published.endswith("63.64")
    folders = {a.where for a in cat.values() if a.source == "gdrive-folder"}
    assert folders == {"1EHCU100944difnz8eqWpNME-NAHBvkce", "1P4X2aiQ2Wv-YMd_xR62UdfBsp299_9eX",
                       "1pSJKWkgwdeLrigQmEzt_s2Jg__UrQE5d", "1BPQcrmEq9d-5MQ1AXpv0h0ZOBvh3QPxp",
                       "1VUDMlp0NcawRPyPZSIEinSXULufdSmjO", "1ivyarxLdOajpjrLn06CcROdPIz-H74FC"}
    for a in cat.values():
        assert a.kind in layouts.KINDS or a.kind in ("moco_cifar_log", "moco_cifar_args", "folder")
        if a.evaluate:
            cmd = released.eval_command(a, path="/x/ckpt.pth", data="/d")
            script = cmd.split()[1] if cmd.startswith("python") else cmd.split()[2]
            assert (ROOT / script).is_file(), f"{a.name}: {script} does not exist"
            assert "/x/ckpt.pth" in cmd


# --- verification: accepted layouts ------------------------------------------------------------------------
def test_verify_accepts_every_released_layout(tmp_path):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for i, (kind, variant, wrap) in enumerate(LAYOUTS):
        f = fake_file(folder / f"{i}_{kind}.pth.tar", kind, variant, wrap)
        lines = released.verify_path(f, kind)
        assert lines and layouts.KINDS[kind][0] in lines[0]
        if variant:
            assert f"[{variant}]" in lines[0]
    (folder / "log.csv").write_text("epoch,train_loss,test_acc@1\n1,9.5,20.0\n2,8.0,31.5\n")
    (folder / "args.json").write_text(json.dumps({"arch": "resnet18", "lr": 0.06, "epochs": 1000,
                                                  "batch_size": 512, "moco_dim": 128, "moco_k": 4096,
                                                  "moco_m": 0.99, "moco_t": 0.1, "symmetric": True}))
    # the CLI, auto-detecting the kind of every file of a downloaded folder
    p = run_script([SCRIPT, "verify", folder])
    assert p.stdout.count("OK ") == len(LAYOUTS) + 2, p.stdout
    assert "test_acc@1 31.50" in p.stdout and "epochs 1000" in p.stdout
    p = run_script([SCRIPT, "verify", folder / "0_moco_cifar.pth.tar", "--name", "unmix_moco_c10_symmetric"])
    assert "OK" in p.stdout and "epoch 3" in p.stdout


# --- verification: rejections, each one clear error line ----------------------------------------------------
def test_verify_rejects_truncated_file(tmp_path):
    good = fake_file(tmp_path / "model_last.pth", "moco_cifar")
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_error(run_script([SCRIPT, "verify", bad, "--kind", "moco_cifar"], check=False),
                       "truncated")


def test_verify_rejects_html_page(tmp_path):
    page = tmp_path / "model_last.pth"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
                    "<body>Too many users have viewed or downloaded this file recently.</body></html>")
    assert_clean_error(run_script([SCRIPT, "verify", page, "--name", "moco_c10_symmetric"], check=False),
                       "HTML page")
    log = tmp_path / "log.csv"
    log.write_text(page.read_text())
    with pytest.raises(CLIError, match="HTML page"):
        released.verify_path(log)


def test_verify_rejects_checkpoint_of_another_architecture(tmp_path):
    swav = fake_file(tmp_path / "checkpoint.pth.tar", "swav_cifar")
    p = run_script([SCRIPT, "verify", swav, "--kind", "moco_cifar"], check=False)
    assert_clean_error(p, "not a moco_cifar checkpoint", "missing keys", "looks like a swav_cifar")
    # same names, other shapes: a SwAV ImageNet ResNet-50 offered as SwAV CIFAR (7x7 vs 3x3 stem, more blocks)
    r50 = fake_file(tmp_path / "r50.pth.tar", "swav_imagenet", "resnet50")
    with pytest.raises(CLIError, match=r"not a swav_cifar checkpoint.*shape mismatches.*looks like a swav_imagenet"):
        released.verify_path(r50, "swav_cifar")
    # a ResNet-18 MoCo CIFAR file whose encoder is a ResNet-34 (extra blocks, same names otherwise)
    sd = fake_state_dict(layouts.moco_cifar_spec())
    sd["encoder_q.net.3.2.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    sd["encoder_q.net.0.weight"] = torch.zeros(64, 3, 7, 7)
    torch.save({"state_dict": sd}, tmp_path / "r34.pth")
    with pytest.raises(CLIError, match=r"1 unexpected keys.*1 shape mismatches.*encoder_q\.net\.0\.weight"):
        released.verify_path(tmp_path / "r34.pth", "moco_cifar")


def test_verify_rejects_md5_mismatch_and_non_checkpoints(tmp_path):
    f = fake_file(tmp_path / "moco_v2_800ep_pretrain.pth.tar", "moco_imagenet", "v2")
    with pytest.raises(CLIError, match="does not match the published a04e12f8"):
        released.main(["verify", str(f), "--name", "moco_v2_800ep"])
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "nostate.pth")
    with pytest.raises(CLIError, match="holds no model state_dict"):
        released.verify_path(tmp_path / "nostate.pth")
    (tmp_path / "bad.csv").write_text("epoch,loss\n1,2\n")
    with pytest.raises(CLIError, match="not a MoCo CIFAR log.csv"):
        released.verify_path(tmp_path / "bad.csv")


# --- download (network replaced by fakes) and eval-cmd --------------------------------------------------------
def test_download_https_verifies_and_is_idempotent(tmp_path, monkeypatch):
    src = fake_file(tmp_path / "src.pth.tar", "swav_imagenet", "resnet50", wrap=False)
    payload = src.read_bytes()
    calls = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return Response(payload)

    monkeypatch.setattr(released.urllib.request, "urlopen", fake_urlopen)
    art = released.CATALOGUE["swav_800ep"]
    dest = released.download(art, out=tmp_path / "dl")
    assert dest == tmp_path / "dl" / "swav_800ep" / "swav_800ep_pretrain.pth.tar"
    assert dest.read_bytes() == payload and calls == [art.url]
    released.download(art, out=tmp_path / "dl")  # present: verified, not fetched again
    assert len(calls) == 1


def test_download_gdrive_file_html_quota_page_is_refused(tmp_path, monkeypatch):
    def fake_download(id=None, output=None, quiet=False):
        Path(output).write_text("<html><body>Google Drive - Quota exceeded</body></html>")
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_download))
    with pytest.raises(CLIError, match="HTML page"):
        released.download(released.CATALOGUE["unmix_moco_c100_symmetric"], out=tmp_path)


def test_download_gdrive_folder_uses_gdown_folder(tmp_path, monkeypatch):
    asked = {}

    def fake_folder(id=None, output=None, quiet=False):
        asked["id"] = id
        run = Path(output) / "unmix_400ep"
        run.mkdir(parents=True)
        fake_file(run / "checkpoint.pth.tar", "swav_cifar")
        return [str(run / "checkpoint.pth.tar")]

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download_folder=fake_folder))
    dest = released.download(released.CATALOGUE["swav_c10_weights"], out=tmp_path)
    assert asked["id"] == "1EHCU100944difnz8eqWpNME-NAHBvkce"
    assert (dest / "unmix_400ep" / "checkpoint.pth.tar").is_file()


def test_cli_list_eval_cmd_and_errors(tmp_path, capsys):
    p = run_script([SCRIPT, "list", "--json"])  # `list` and `eval-cmd` run without importing torch
    rows = json.loads(p.stdout)
    assert {r["name"] for r in rows} == set(released.CATALOGUE)
    released.main(["eval-cmd", "unmix_moco_c100_symmetric", "--path", str(tmp_path / "m.pth")])
    out = capsys.readouterr().out
    assert out.split()[:3] == ["python", "UnMix_MoCo/for_CIFAR/eval_knn.py", str(tmp_path / "m.pth")]
    assert "--dataset cifar100" in out
    assert_clean_error(run_script([SCRIPT, "eval-cmd", "no_such_model"], check=False), "no released artefact")
    assert_clean_error(run_script([SCRIPT, "list", "--kind", "no_such_kind"], check=False), "invalid choice")
    with pytest.raises(CLIError, match="no evaluation command"):
        released.main(["eval-cmd", "moco_c10_symmetric_args"])
    with pytest.raises(CLIError, match="does not exist"):
        released.main(["verify", str(tmp_path / "absent.pth")])
    with pytest.raises(CLIError, match="download it first"):
        released.main(["eval-cmd", "moco_c10_symmetric", "--path", str(tmp_path / "absent.pth"), "--run"])
    with pytest.raises(SystemExit):
        released.main(["download", "--help"])
    assert "released_checkpoints" in capsys.readouterr().out


def test_eval_cmd_run_from_another_directory_keeps_the_users_paths(tmp_path, monkeypatch):
    """--run executes in the repo root; relative paths (given, or where `download` put the file in the
    user's directory) must still point at the user's files, and --out is where the evaluation writes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "released_checkpoints" / "unmix_mocov2_in1k_r50").mkdir(parents=True)
    (tmp_path / "released_checkpoints" / "unmix_mocov2_in1k_r50" / "unmix_mocov2_r50.pth.tar").write_bytes(b"x")
    (tmp_path / "m.pth").write_bytes(b"x")
    calls = []
    monkeypatch.setattr(released.subprocess, "call", lambda argv, cwd=None: calls.append((argv, cwd)) or 0)
    released.main(["eval-cmd", "unmix_moco_c10_symmetric", "--path", "m.pth", "--data", "d", "--run"])
    released.main(["eval-cmd", "unmix_mocov2_in1k_r50", "--data", "imnet", "--out", "lin", "--run"])
    (argv1, cwd1), (argv2, cwd2) = calls
    assert cwd1 == cwd2 == ROOT
    assert argv1[2] == str(tmp_path / "m.pth") and argv1[argv1.index("--data") + 1] == str(tmp_path / "d")
    pre = Path(argv2[argv2.index("--pretrained") + 1])
    assert pre.is_absolute() and pre.is_file()
    assert argv2[argv2.index("--output-dir") + 1] == str(tmp_path / "lin") and argv2[-1] == str(tmp_path / "imnet")


def test_every_eval_command_is_accepted_by_its_script():
    """The printed / --run evaluation commands only pass options their scripts accept."""
    helps = {}
    for a in released.CATALOGUE.values():
        if not a.evaluate:
            continue
        toks = released.eval_command(a, path="/x/ckpt.pth", data="/d", out="/o").split()
        script = next(t for t in toks if t.endswith(".py"))
        if script not in helps:
            helps[script] = run_script([script, "--help"]).stdout
        for opt in (t.split("=")[0] for t in toks[toks.index(script) + 1:] if t.startswith("--")):
            assert re.search(rf"(^|[\s\[,]){re.escape(opt)}([\s=\],]|$)", helps[script], re.M), \
                f"{a.name}: {script} does not accept {opt}"


# --- offline and failed downloads, pipes, --kind -------------------------------------------------------------
OFFLINE = dict(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")  # a closed local port: no network


@pytest.mark.parametrize("name", ["swav_800ep", "unmix_moco_c10_symmetric", "swav_c10_weights"])
def test_offline_download_says_what_failed_in_one_line_and_leaves_no_folder(tmp_path, name):
    (tmp_path / "kept" / "other").mkdir(parents=True)  # an existing download folder with something in it
    art = released.CATALOGUE[name]
    for out in ("new/dl", "kept"):
        p = run_script([ROOT / SCRIPT, "download", name, "--out", out], cwd=tmp_path, check=False,
                       env=script_env(**OFFLINE))
        assert_clean_error(p, f"download of {name} failed", "no connection", art.url, "by hand", "--name " + name)
        assert len([ln for ln in p.stderr.splitlines() if "error" in ln.lower()]) == 1, p.stderr
    # nothing created is left behind; what was there stays
    assert sorted(str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*")) == ["kept", "kept/other"]


def test_offline_hub_entry_says_what_failed_and_leaves_no_cache_folder(tmp_path):
    code = ("import torch\n"
            "for entry in ('mocov2_resnet50', 'unmix_moco_cifar_resnet18'):\n"
            "    try:\n"
            f"        torch.hub.load({str(ROOT)!r}, entry, source='local')\n"
            "    except ConnectionError as e:\n"
            "        print('FAILED', e)\n")
    p = run_script(["-c", code], cwd=tmp_path, env=script_env(TORCH_HOME=tmp_path / "th", **OFFLINE))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED")]
    assert len(lines) == 2, p.stdout + p.stderr
    for ln, art in zip(lines, (released.CATALOGUE["moco_v2_800ep"], released.CATALOGUE["unmix_moco_c10_symmetric"])):
        assert art.url in ln and "checkpoint=PATH" in ln and "no connection" in ln, ln
    assert not (tmp_path / "th").exists() or not any(q.is_dir() for q in (tmp_path / "th").rglob("*"))


def test_list_into_a_closed_pipe_exits_quietly():
    """`released.py list --json | head`: the reader is gone before anything is written."""
    proc = subprocess.Popen([sys.executable, str(ROOT / SCRIPT), "list", "--json"], cwd=ROOT, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its lines
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err and b"Exception ignored" not in err, err


def test_kind_options_take_every_kind_that_list_prints(tmp_path, capsys):
    released.main(["list"])
    printed = {line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"folder", "moco_cifar", "moco_cifar_log", "moco_imagenet"} <= printed
    for kind in printed:
        released.main(["list", "--kind", kind])
        rows = capsys.readouterr().out.splitlines()[1:]
        assert rows and all(r.split()[3] == kind for r in rows)
        with pytest.raises(CLIError, match="does not exist"):  # the kind is accepted; the file is missing
            released.main(["verify", str(tmp_path / "absent.pth"), "--kind", kind])
    with pytest.raises(CLIError, match="no released artefact of kind simclr_byol"):
        released.main(["list", "--kind", "simclr_byol"])  # a layout verify knows, with nothing released
