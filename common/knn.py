"""Weighted kNN monitor (the MoCo CIFAR demo protocol, Wu et al. 2018): cosine similarity to a
feature bank of the training set, top-k neighbours weighted by exp(sim / t)."""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .guard import check_eval, nonfinite

HINT = "lower the learning rate"


def knn_predict(feature, feature_bank, feature_labels, classes, knn_k, knn_t):
    """Class ranking [B, classes] for normalised ``feature`` [B, D] against ``feature_bank`` [D, M]."""
    sim_matrix = torch.mm(feature, feature_bank)
    sim_weight, sim_indices = sim_matrix.topk(k=min(knn_k, feature_bank.size(1)), dim=-1)
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / knn_t).exp()
    one_hot = torch.zeros(feature.size(0) * sim_labels.size(1), classes, device=sim_labels.device)
    one_hot = one_hot.scatter(dim=-1, index=sim_labels.reshape(-1, 1), value=1.0)
    scores = torch.sum(one_hot.view(feature.size(0), -1, classes) * sim_weight.unsqueeze(dim=-1), dim=1)
    return scores.argsort(dim=-1, descending=True)


@torch.no_grad()
def extract_features(net, loader, device, desc=None, hint=HINT):
    """L2-normalised ``net`` outputs and labels for a whole loader (``net`` put in eval mode); non-finite
    outputs stop the run (:func:`common.guard.check_eval`)."""
    net.eval()
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        feats.append(F.normalize(net(x.to(device, non_blocking=True)), dim=1))
        labels.append(torch.as_tensor(y))
    feats = torch.cat(feats)
    check_eval(nonfinite(feats), "the features of the model", hint)
    return feats, torch.cat(labels).to(device)


def num_classes(dataset):
    return len(dataset.classes)


@torch.no_grad()
def knn_accuracy(net, memory_loader, test_loader, device, knn_k=200, knn_t=0.1, desc=None, hint=HINT):
    """kNN top-1 accuracy (percent) of ``net``'s features on ``test_loader``, bank from ``memory_loader``.
    Non-finite features stop the run (:func:`common.guard.check_eval`) instead of giving a meaningless score."""
    bank, bank_labels = extract_features(net, memory_loader, device, hint=hint)
    bank = bank.t().contiguous()
    classes = num_classes(memory_loader.dataset)
    correct, total, bad = 0, 0, 0
    bar = tqdm(test_loader, desc=desc, disable=desc is None, leave=False)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        feature = F.normalize(net(x), dim=1)
        bad = bad + nonfinite(feature)
        pred = knn_predict(feature, bank, bank_labels, classes, knn_k, knn_t)
        correct += (pred[:, 0] == y).sum().item()
        total += y.size(0)
        if desc is not None:
            bar.set_description(f"{desc} Acc@1:{correct / total * 100:.2f}%")
    check_eval(bad, "the features of the model (kNN monitor)", hint)
    return correct / total * 100
