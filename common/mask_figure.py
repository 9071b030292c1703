"""The figure people look at to see what a learnable Mixer does: for a few samples, the anchor image, its
partner, the partner's per-pixel weight (the mask) and the resulting mixture, side by side."""

import torch

from .logs import save_figure


def _displayable(images, mean=None, std=None):
    """[n, 3, H, W] normalised tensors -> [n, H, W, 3] floats in [0, 1] for ``imshow``.

    With ``mean``/``std`` the normalisation is undone; without, each image is min-max scaled on its own.
    """
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def save_mask_figure(path, anchor, partner, mask, mixed, lam=None, mean=None, std=None, title=None, samples=6):
    """Saves a grid, one row per sample: anchor | partner | mask (partner weight, 0 black .. 1 white) | mixture.

    Args:
        anchor, partner, mixed: image batches [n, 3, H, W] (normalised as fed to the network).
        mask: the partner's weight [n, H, W] or [n, 1, H, W] (channel 1 of a Mixer's 2-channel mask).
        lam: the sampled λ (the anchor's intended share), shown in the title with each mask's realised share.
        mean, std: the normalisation to undo for display (per-image min-max scaling without them).
    The file is written atomically (a temporary file renamed over ``path``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(samples, anchor.shape[0])
    m = mask.detach().float().cpu()
    m = m[:, 0] if m.dim() == 4 else m
    columns = [("anchor", _displayable(anchor[:n], mean, std)), ("partner", _displayable(partner[:n], mean, std)),
               ("mask (partner weight)", m[:n].numpy()), ("mixture", _displayable(mixed[:n], mean, std))]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
    for row in range(n):
        for col, (name, images) in enumerate(columns):
            ax = axes[row][col]
            if col == 2:
                ax.imshow(images[row], cmap="gray", vmin=0, vmax=1)
                ax.set_xlabel(f"anchor share {1 - float(m[row].mean()):.2f}", fontsize=7)
            else:
                ax.imshow(images[row])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    head = title or "Mixer masks"
    if lam is not None:
        head += f"  (λ = {float(lam):.2f})"
    fig.suptitle(head, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
