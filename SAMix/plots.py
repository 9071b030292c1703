"""The Mixer's masks as a figure (anchor, partner, mask, mixture), drawn with common.mask_figure."""
import random

import torch

from common.mask_figure import save_mask_figure


@torch.no_grad()
def plot_masks(net, x, mean_std, path, lam=0.5, title=None):
    """Saves a figure of the Mixer's masks for the images ``x`` [n, 3, H, W] (normalised).

    Each image is paired with the next one (``i -> i+1``, cyclic) at ``lam``; the EMA network and the Mixer run
    in eval mode, so nothing of the training state changes; the Python RNG the Mixer draws its k and upsampling
    mode from is put back as it was, so the figure consumes no random number (a resumed run stays bit-identical).
    OpenMixup plots a training batch instead.
    """
    was_training = net.training
    rng = random.getstate()
    net.eval()
    index = torch.roll(torch.arange(x.size(0), device=x.device), -1)
    feature = net.backbone_k(x)[0]
    mask = net.mixer(feature.float(), lam, index=index, image_width=x.size(-1))["mask"].to(x.dtype)
    mixed = x * mask[:, 0:1] + x[index] * mask[:, 1:2]
    net.train(was_training)
    random.setstate(rng)
    return save_mask_figure(path, x, x[index], mask[:, 1], mixed, lam=lam, mean=mean_std[0], std=mean_std[1],
                            title=title, samples=x.size(0))
