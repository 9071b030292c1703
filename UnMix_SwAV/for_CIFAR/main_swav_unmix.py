"""SwAV + Un-Mix pretraining on CIFAR (upstream UnMix_SwAV/for_CIFAR/main_swav_unmix.py).

The implementation is shared with the other variant: see UnMix_SwAV/swav/train.py. This file only
selects the CIFAR defaults, data and Sinkhorn variant. Run `python main_swav_unmix.py --help`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.cli import run_main  # noqa: E402
from UnMix_SwAV.swav.train import main  # noqa: E402

if __name__ == "__main__":
    run_main(main, "cifar")
