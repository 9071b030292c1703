"""The Mixer's masks as a figure: anchor, partner, mask and mixture for a few images (OpenMixup plots the
same during training)."""
import os

import torch


@torch.no_grad()
def plot_masks(net, x, mean_std, path, lam=0.5, title=None):
    """Saves a figure of the Mixer's masks for the images ``x`` [n, 3, H, W] (normalised).

    Each image is paired with the next one (``i -> i+1``, cyclic) at ``lam``; the EMA network and the Mixer run
    in eval mode, so nothing of the training state changes and no random number is drawn. Rows: anchor,
    partner, partner weight of the mask (1 = partner), mixture.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = net.training
    net.eval()
    index = torch.roll(torch.arange(x.size(0), device=x.device), -1)
    feature = net.backbone_k(x)[0]
    mask = net.mixer(feature.float(), lam, index=index, image_width=x.size(-1))["mask"].to(x.dtype)
    mixed = x * mask[:, 0:1] + x[index] * mask[:, 1:2]
    net.train(was_training)
    mean = torch.tensor(mean_std[0], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(mean_std[1], device=x.device).view(1, 3, 1, 1)

    def show(t):
        return (t * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    rows = [("anchor", show(x)), ("partner", show(x[index])), ("mask", mask[:, 1].cpu().numpy()),
            ("mixture", show(mixed))]
    n = x.size(0)
    fig, axes = plt.subplots(4, n, figsize=(1.6 * n, 6.6), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            if name == "mask":
                ax.imshow(imgs[c], cmap="viridis", vmin=0, vmax=1)
            else:
                ax.imshow(imgs[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(title or f"Mixer masks (λ = {lam})")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
