"""The per-epoch console line every training script prints (common.logs.EpochLine) and the lr-0 warning."""
import warnings

import pytest

from common import logs
from conftest import EPOCH_LINE


def test_epoch_line_shape_timing_and_eta(monkeypatch):
    clock = iter([100.0, 112.5, 137.5])  # created at 100 s; epochs end after 12.5 s and 25 s
    monkeypatch.setattr(logs.time, "time", lambda: next(clock))
    line = logs.EpochLine(10, monitor="kNN top-1")
    first = line(1, 6.123456, 0.06, 45.2)
    assert first == "epoch 1/10 | loss 6.1235 | lr 0.06 | kNN top-1 45.20% | 12.5 s | ETA 0:01:52"  # 9 x 12.5 s
    second = line(2, 5.5, 0.0599, float("nan"))  # the monitor did not run this epoch
    assert second == "epoch 2/10 | loss 5.5000 | lr 0.0599 | kNN top-1 - | 25.0 s | ETA 0:02:30"  # 8 x 18.75 s
    assert EPOCH_LINE.fullmatch(first) and EPOCH_LINE.fullmatch(second)


def test_epoch_line_without_monitor_and_long_eta(monkeypatch):
    clock = iter([0.0, 3600.0])
    monkeypatch.setattr(logs.time, "time", lambda: next(clock))
    text = logs.EpochLine(800)(1, 8.0, 4.8)
    assert text == "epoch 1/800 | loss 8.0000 | lr 4.8 | no accuracy monitor | 3600.0 s | ETA 799:00:00"


@pytest.mark.parametrize("lrs, warned", [([0.0], True), ([0.06, 0.0], True), ([0.06] * 9 + [0.0], True),
                                          ([0.06] * 10 + [0.0], False), ([0.06, 0.03], False)])
def test_zero_lr_epochs_warn_once_for_short_runs(lrs, warned):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert logs.warn_zero_lr_epochs(lrs) is warned
    assert len(caught) == int(warned)
    if warned:
        assert f"epoch {len(lrs)} of {len(lrs)} at lr 0" in str(caught[0].message)


def test_moco_cifar_schedule_of_a_two_epoch_run_is_warned():
    """The demo's own schedule: 1-based epochs, cosine set per epoch, so --epochs 2 trains epoch 2 at lr 0."""
    from UnMix_MoCo.for_CIFAR.unmix_cifar import build_parser, learning_rate
    args = build_parser("cifar10").parse_args(["--epochs", "2"])
    lrs = [learning_rate(e, args) for e in (1, 2)]
    assert lrs[0] == pytest.approx(0.03) and lrs[1] == pytest.approx(0.0, abs=1e-12)
    with pytest.warns(UserWarning, match="lr 0"):
        logs.warn_zero_lr_epochs(lrs)
    args = build_parser("cifar10").parse_args([])  # the published 1000 epochs: not warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logs.warn_zero_lr_epochs([learning_rate(e, args) for e in range(1, 1001)])
