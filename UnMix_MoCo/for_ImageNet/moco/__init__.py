"""MoCo v1/v2 + Un-Mix on ImageNet: the model (builder), augmentations (loader), launching (distributed)."""
