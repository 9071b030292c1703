"""Linear probe on frozen, pre-computed features (the W-MSE / "Whitening" codebase's ``eval_sgd``).

``nn.Linear`` trained with Adam (lr 1e-2, weight decay 5e-6), the learning rate decayed exponentially to
1e-6 over the run, random mini-batches of 1000 raw (un-normalised) features, no augmentation.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .guard import NonFiniteFlag


def linear_probe(train_x, train_y, test_x, test_y, classes, epochs=500, lr=1e-2, final_lr=1e-6, wd=5e-6,
                 batch_size=1000, seed=0):
    """Trains the probe; returns ``(top1, top5)`` on the test features, in percent."""
    gen = torch.Generator().manual_seed(seed)
    clf = nn.Linear(train_x.size(1), classes).to(train_x.device)
    with torch.no_grad():  # deterministic init from the private generator
        bound = 1.0 / train_x.size(1) ** 0.5
        clf.weight.copy_(torch.empty_like(clf.weight, device="cpu").uniform_(-bound, bound, generator=gen))
        clf.bias.copy_(torch.empty_like(clf.bias, device="cpu").uniform_(-bound, bound, generator=gen))
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=wd)
    gamma = (final_lr / lr) ** (1.0 / max(1, epochs))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    nonfinite = NonFiniteFlag()  # the loss is never read: a device-side flag, checked once at the end
    for _ in range(epochs):
        for idx in torch.randperm(train_x.size(0), generator=gen).split(batch_size):
            idx = idx.to(train_x.device)
            loss = F.cross_entropy(clf(train_x[idx]), train_y[idx])
            nonfinite.update(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    nonfinite.check("the linear probe (non-finite features?)", hint="check the evaluated checkpoint")
    with torch.no_grad():
        top = clf(test_x).topk(min(5, classes), dim=1).indices
        hit = top == test_y[:, None]
        return hit[:, 0].float().mean().item() * 100, hit.any(1).float().mean().item() * 100
