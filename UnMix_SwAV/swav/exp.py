"""Upstream SwAV's experiment dump (``src/utils.initialize_exp``, ``src/logger.py``), shared by every
SwAV entry script: ``params.pkl``, ``checkpoints/``, ``stats{rank}.pkl`` and ``train.log``.

Differences from upstream: the stats rows are also kept in the checkpoint (``"stats"``), so a resumed
run rewrites exactly the history it had (:func:`rows_before` reads it back from ``stats{rank}.pkl`` for
checkpoints without them); files are written atomically; the logger is a named logger (not the root
logger), so importing this module never changes other code's logging; ``stats{rank}.pkl`` is read without
running code from it (:func:`common.safepickle.read_pandas_pickle`) and also written as ``stats{rank}.csv``,
a format any tool can read safely (the pickle stays, for upstream's tools).
"""
import logging
import os
import pickle
import sys
import time
from datetime import timedelta

import pandas as pd

from common.cli import CLIError, atomic_write
from common.safepickle import read_pandas_pickle


class LogFormatter(logging.Formatter):
    """``LEVEL - date time - elapsed - message``, continuation lines indented (upstream's format)."""

    def __init__(self):
        super().__init__()
        self.start_time = time.time()

    def format(self, record):
        elapsed = round(record.created - self.start_time)
        prefix = "%s - %s - %s" % (record.levelname, time.strftime("%x %X"), timedelta(seconds=elapsed))
        message = record.getMessage().replace("\n", "\n" + " " * (len(prefix) + 3))
        return "%s - %s" % (prefix, message) if message else ""


# logger.info(msg, extra=FILE_ONLY): written to train.log, not shown on the console (the model printout)
FILE_ONLY = {"file_only": True}


def create_logger(filepath, rank=0, name="swav", console="stdout"):
    """File handler (DEBUG) at ``filepath`` (``filepath-{rank}`` for rank > 0) + the console (INFO):
    ``console`` is ``"stdout"`` (the evaluation scripts) or ``"stderr"`` (pretraining, as upstream's
    ``StreamHandler()``)."""
    formatter = LogFormatter()
    logger = logging.getLogger(name)
    for h in list(logger.handlers):  # a second call in the same process (tests) replaces the handlers
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if filepath is not None:
        fh = logging.FileHandler(filepath if rank == 0 else f"{filepath}-{rank}", "a")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    ch = logging.StreamHandler(getattr(sys, console))
    ch.setLevel(logging.INFO)
    ch.addFilter(lambda record: not getattr(record, "file_only", False))  # logger.info(..., extra=FILE_ONLY)
    ch.setFormatter(formatter)
    logger.addHandler(ch)
    return logger


class PDStats:
    """Upstream ``PD_Stats``: a pandas DataFrame pickled to ``path`` after every ``update`` (and the same
    table as CSV beside it: ``stats0.pkl`` -> ``stats0.csv``).

    ``rows`` (a list of tuples) is the history to start from; pass the one saved in the checkpoint
    when resuming so the file matches the checkpoint exactly.
    """

    def __init__(self, path, columns, rows=()):
        self.path, self.columns = path, list(columns)
        self.rows = [tuple(r) for r in rows]
        if self.rows:
            self._write()

    def update(self, row):
        row = tuple(row)
        if len(row) != len(self.columns):
            raise ValueError(f"stats row has {len(row)} values for columns {self.columns}")
        self.rows.append(row)
        self._write()

    @property
    def stats(self):
        return pd.DataFrame(self.rows, columns=self.columns)

    def _write(self):
        with atomic_write(self.path) as tmp:
            self.stats.to_pickle(tmp)
        with atomic_write(os.path.splitext(self.path)[0] + ".csv") as tmp:
            self.stats.to_csv(tmp, index=False)


def rows_before(path, columns, epoch):
    """The rows of an existing stats file ``path`` (first column: the epoch) for the epochs before
    ``epoch``, as Python numbers (so they can go into a ``weights_only`` checkpoint): the history of a run
    resumed from a checkpoint that does not hold its stats rows. No file: no rows."""
    if not os.path.isfile(path):
        return []
    df = read_pandas_pickle(path, what="SwAV stats file")
    if list(df.columns) != list(columns):
        raise CLIError(f"{path} is not a stats file of this script (columns {list(df.columns)})")
    rows = [tuple(v.item() if hasattr(v, "item") else v for v in r) for r in df.itertuples(index=False, name=None)]
    return [(int(r[0]), *r[1:]) for r in rows if r[0] < epoch]  # older files hold float epochs


def initialize_exp(args, *columns, rank=0, rows=(), name="swav", console="stdout"):
    """Writes ``params.pkl``, creates ``checkpoints/`` and returns ``(logger, stats)``, as upstream.

    Only rank 0 writes ``params.pkl`` (upstream had every rank write the same file).
    """
    dump = args.dump_path
    args.dump_checkpoints = os.path.join(dump, "checkpoints")
    if rank == 0:
        os.makedirs(args.dump_checkpoints, exist_ok=True)
        with atomic_write(os.path.join(dump, "params.pkl")) as tmp, open(tmp, "wb") as f:
            pickle.dump(args, f)
    stats = PDStats(os.path.join(dump, f"stats{rank}.pkl"), columns, rows)
    logger = create_logger(os.path.join(dump, "train.log"), rank=rank, name=name, console=console)
    logger.info("============ Initialized logger ============")
    logger.info("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    logger.info(f"The experiment will be stored in {dump}\n")
    return logger, stats
