"""Linear evaluation of SwAV / SwAV+Un-Mix pretraining on CIFAR-10/100.

Upstream's ``UnMix_SwAV/for_CIFAR/eval_linear.py``; the implementation is shared with the other variant in
``UnMix_SwAV/swav/linear.py`` (see there for what is kept from upstream and what is fixed).

    python UnMix_SwAV/for_CIFAR/eval_linear.py --help
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.cli import run_main  # noqa: E402
from UnMix_SwAV.swav.linear import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "cifar")
