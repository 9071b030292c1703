"""Semi-supervised evaluation (fine-tuning on 1% / 10% of the labels) of SwAV / SwAV+Un-Mix on ImageNet.

Upstream's ``UnMix_SwAV/for_ImageNet/eval_semisup.py``; implementation in ``UnMix_SwAV/swav/semisup.py``.
The subset list is read from a local file (``--subset_file``, default ``<data_path>/<1|10>percent.txt``),
never downloaded.

    python UnMix_SwAV/for_ImageNet/eval_semisup.py --help
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.cli import run_main  # noqa: E402
from UnMix_SwAV.swav.semisup import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
