"""Un-Mix with SwAV (CIFAR and ImageNet)."""
