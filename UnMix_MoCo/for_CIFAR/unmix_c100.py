"""MoCo + Un-Mix on CIFAR-100 (ResNet-18, 1000 epochs, symmetric loss): ``python unmix_c100.py --help``."""
from unmix_cifar import main

from common.cli import run_main

if __name__ == "__main__":
    run_main(main, "cifar100")
