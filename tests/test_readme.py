"""The READMEs and the pages under docs/ stay true: every script they run exists and accepts every option they pass it."""
import re
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import ROOT, run_script

READMES = ["README.md", "UnMix_MoCo/for_ImageNet/README.md", "UnMix_SwAV/README.md", "UnMix_SimCLR_BYOL/README.md",
           "tools/README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
SUBCOMMAND_SCRIPTS = {"released.py", "reproduce.py", "paper_figures.py"}
NEEDS_DETECTRON2 = {"UnMix_MoCo/for_ImageNet/detection/train_net.py"}


def commands():
    """(readme, script path, [options]) for every `python/torchrun ... script.py --opt ...` line."""
    found = []
    for readme in READMES:
        text = (ROOT / readme).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            cwd = ROOT
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                toks = line.split()
                if toks[:1] == ["cd"]:
                    cwd = ROOT / toks[1]
                scripts = [t for t in toks if t.endswith(".py")]
                if not scripts or not {"python", "torchrun", "srun"} & set(toks):
                    continue
                script = scripts[0]
                path = (cwd / script) if (cwd / script).is_file() else ROOT / script
                rest = toks[toks.index(script) + 1:]
                # a sub-command (tools/released.py list|download|..., reproduce.py run|..., paper_figures.py figureN)
                # has its own options
                sub = rest[0] if rest and re.fullmatch(r"[a-z][a-z0-9-]*", rest[0]) \
                    and Path(script).name in SUBCOMMAND_SCRIPTS else None
                opts = [t.split("=")[0] for t in rest if t.startswith("--")]
                found.append((readme, path.relative_to(ROOT).as_posix(), sub, opts))
    return found


@lru_cache(maxsize=None)
def help_text(script, sub=None):
    return run_script([script] + ([sub] if sub else []) + ["--help"]).stdout


def test_readme_commands_were_found():
    assert len(commands()) >= 40


@pytest.mark.parametrize("script", sorted({c[1] for c in commands()} - NEEDS_DETECTRON2))
def test_every_readme_option_is_accepted(script):
    assert (ROOT / script).is_file(), f"a README runs {script}, which does not exist"
    for readme, s, sub, opts in commands():
        if s != script:
            continue
        text = help_text(script, sub)
        for opt in opts:
            assert re.search(rf"(^|[\s\[,]){re.escape(opt)}([\s=\],]|$)", text, re.M), \
                f"{readme}: {script} does not accept {opt}"
