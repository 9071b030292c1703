"""One run = one checkpoint: everything else a run writes is derived from it and re-derived on every start.

A checkpoint is written atomically (``common.checkpoint.save_atomic``); the files written after it (``log.csv``,
``curves.png``, SwAV's ``queue{rank}.pth`` and ``checkpoints/ckp-N.pth``, htdt's per-epoch snapshots) can be
lost or left stale by a kill between the two writes, so every start (``--resume`` included, also with nothing
left to train) writes them again from the checkpoint, and removes the partial temporary files a kill in the
middle of an atomic write leaves behind (:func:`remove_partial_files`).

:func:`kill_point` is the test hook that places such a kill exactly: with ``UNMIX_TEST_KILL_AFTER=<point>``
(or ``<point>:<n>``, the n-th time) in the environment the process SIGKILLs itself when it reaches ``<point>``.
"""
import collections
import os
import shutil
import signal
from pathlib import Path

from .cli import atomic_write

KILL_ENV = "UNMIX_TEST_KILL_AFTER"
_hits = collections.Counter()

# what an atomic write leaves while writing: common.cli.atomic_write's ".tmp-*"; "*.tmp" and "*.tmp.png" are
# what the CSV/JSON/pickle writers and the plots of earlier versions left
PARTIAL_PATTERNS = (".tmp-*", "*.tmp", "*.tmp.png")


def kill_point(name):
    """Test hook: ``kill -9`` of this very process at ``name`` when ``$UNMIX_TEST_KILL_AFTER`` asks for it."""
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    point, _, count = want.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def remove_partial_files(*folders):
    """Deletes the temporary files of atomic writes a killed run left in ``folders``; returns their paths.

    Call it once per run, from the only process that writes there, before anything is written."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for pattern in PARTIAL_PATTERNS:
            for p in folder.glob(pattern):
                if p.is_file():
                    p.unlink()
                    removed.append(p)
    return removed


def copy_atomic(src, dst):
    """Copies ``src`` to ``dst`` through a temporary file in ``dst``'s folder and a rename."""
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
