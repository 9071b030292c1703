"""The repository's docs are self-contained: nothing cites a document a user of the repository does not have."""
import re
import subprocess

from conftest import ROOT, source_files

TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".toml", ".ini", ".cfg", ".yaml", ".yml", ""}
# Notes kept beside the project for its developers, never shipped: citing them sends a user nowhere.
PRIVATE_NOTES = re.compile(r"upstream_cifar\.md|upstream_imagenet\.md|simclr_byol\.md|samix\.md|ecosystem\.md"
                           r"|shared/reference|\breference (Part|§)|§")


def repo_files():
    """Tracked and new (not ignored) text files of the working tree (:func:`conftest.source_files`)."""
    files = []
    for name in source_files():
        path = ROOT / name
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.name != "test_docs.py":
            files.append(path)
    return files


def test_no_citation_of_private_notes():
    hits = []
    for path in repo_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PRIVATE_NOTES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "cites documents that are not in the repository (write it into docs/ instead):\n" + \
        "\n".join(hits)


# markdown files the tools write (tools/reproduce.py report: DIR/results.md), named but not cited
WRITTEN_MARKDOWN = {"results.md"}


def test_every_cited_markdown_file_exists():
    """Every `something.md` named in the repository (outside URLs and other repositories' `owner/repo:path`)
    is a file of the repository, relative to the citing file or to the repository root."""
    missing = []
    for path in repo_files():
        text = path.read_text(errors="replace")
        for token in re.findall(r"[\w:/.#-]*?[\w./-]+\.md\b", text):
            if "://" in token or ":" in token:
                continue
            if token.rsplit("/", 1)[-1] in WRITTEN_MARKDOWN and not token.startswith("docs/"):
                continue  # an output of a tool; the committed example under docs/ must exist
            name = token.lstrip("./") if token.startswith("./") else token
            if not ((path.parent / name).is_file() or (ROOT / name).is_file()):
                missing.append(f"{path.relative_to(ROOT)}: {token}")
    assert not missing, "names markdown files that are not in the repository:\n" + "\n".join(missing)


def test_markdown_links_resolve():
    """Relative links `[text](path)` in the READMEs and docs/ point at files or folders of the repository."""
    broken = []
    for path in repo_files():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_docstrings_cite_the_faithfulness_page_that_exists():
    cited = [p for p in repo_files() if p.suffix == ".py" and "docs/faithfulness.md" in p.read_text()]
    assert cited, "no docstring points at docs/faithfulness.md"
    assert (ROOT / "docs" / "faithfulness.md").is_file()


def test_default_outputs_of_the_readme_commands_are_ignored_by_git():
    """`git status` stays clean after the quick start and the READMEs' commands with default outputs."""
    outputs = [
        "data/cifar-10-batches-py/data_batch_1",  # CIFAR downloads
        "UnMix_symmetric_C10/model_last.pth", "UnMix_asymmetric_C100/log.csv", "MoCo_symmetric_C10/curves.png",
        "MoCo_asymmetric_ImageFolder/args.json",  # MoCo CIFAR demo
        "checkpoint_0199.pth.tar", "log.csv", "args.json", "curves.png",  # MoCo ImageNet (--output-dir .)
        "runs/unmix_c10_sym/model_last.pth",  # the README's explicit --results-dir / --output-dir
        "results/simclr_cifar10_unmix/model_last.pth", "results/byol_cifar100_baseline/byol_cifar100_99.pt",
        "experiments/unmix_swav_cifar_128_resnet18_400ep_100prot_cifar10/checkpoint.pth.tar",  # SwAV
        "stats0.pkl", "train.log", "params.pkl", "checkpoints/ckp-0.pth",  # SwAV evaluation (--dump_path .)
        "released_checkpoints/unmix_moco_c10_symmetric/model_last.pth", "eval_unmix_moco_c10_symmetric/x.txt",
        "figure2.png", "figure2_moco.png",
    ]
    p = subprocess.run(["git", "check-ignore", "--no-index", "-v", "-n", *outputs], cwd=ROOT, capture_output=True,
                       text=True)
    not_ignored = [line.split("\t")[-1] for line in p.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f"git status would show: {not_ignored}"
    # and the repository's own files are not ignored
    tracked = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert not tracked, f"tracked files matched by .gitignore: {tracked}"
