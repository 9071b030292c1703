"""The vocabulary table (docs/vocabulary.md) is true: every training script's --help lists the options of its column."""
import re

import pytest

from conftest import ROOT
from test_readme import help_text  # the same cached --help runs as the README check


def table():
    """{script: {concept: [option, ...]}} from the table."""
    section = (ROOT / "docs/vocabulary.md").read_text().split("## One vocabulary across the scripts", 1)[1]
    rows = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    header, body = cells[0], cells[2:]
    columns = [re.findall(r"`([^`]+\.py)`", h) for h in header[1:]]
    out = {}
    for scripts, col in zip(columns, range(1, len(header))):
        for script in scripts:
            out[script] = {row[0]: [tok.split()[0] for tok in re.findall(r"`([^`]+)`", row[col])] for row in body}
    return out


def test_table_covers_every_training_script_and_every_shared_concept():
    t = table()
    assert set(t) == {"UnMix_MoCo/for_CIFAR/unmix_c10.py", "UnMix_MoCo/for_CIFAR/unmix_c100.py",
                      "UnMix_MoCo/for_ImageNet/main_moco_unmix.py", "UnMix_SwAV/for_CIFAR/main_swav_unmix.py",
                      "UnMix_SwAV/for_ImageNet/main_swav_unmix.py", "UnMix_SimCLR_BYOL/main_unmix.py",
                      "SAMix/main_samix.py"}
    for script, concepts in t.items():
        for concept in ("data", "output folder", "baseline switch", "resume exactly", "seed",
                        "mixed precision"):
            key = next(k for k in concepts if k.startswith(concept))
            assert concepts[key], f"{script} has nothing for {concept}"


@pytest.mark.parametrize("script", sorted(table()))
def test_help_lists_the_shared_options(script):
    text = help_text(script)
    usage = text.split("\n\n", 1)[0]
    for concept, options in table()[script].items():
        for opt in options:
            if opt.startswith("-"):
                assert re.search(rf"(^|[\s\[,]){re.escape(opt)}([\s=\],]|$)", text, re.M), (concept, opt)
            elif opt.isupper():  # a positional argument, named in the usage line
                assert re.search(rf"\s{re.escape(opt)}\s*$", usage), (concept, opt, usage)
