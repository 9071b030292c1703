"""Shared SwAV + Un-Mix code for ``for_CIFAR`` and ``for_ImageNet``."""
