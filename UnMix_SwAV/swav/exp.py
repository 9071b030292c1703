"""Upstream SwAV's experiment dump (``src/utils.initialize_exp``, ``src/logger.py``), shared by every
SwAV entry script: ``params.pkl``, ``checkpoints/``, ``stats{rank}.pkl`` and ``train.log``.

Differences from upstream: the stats rows are also kept in the checkpoint (``"stats"``), so a resumed
run rewrites exactly the history it had; files are written atomically; the logger is a named logger
(not the root logger), so importing this module never changes other code's logging.
"""
import logging
import os
import pickle
import sys
import time
from datetime import timedelta

import pandas as pd


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


def create_logger(filepath, rank=0, name="swav"):
    """File handler (DEBUG) at ``filepath`` (``filepath-{rank}`` for rank > 0) + stdout (INFO)."""
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
    ch = logging.StreamHandler(sys.stdout)
    ch.setLevel(logging.INFO)
    ch.setFormatter(formatter)
    logger.addHandler(ch)
    return logger


class PDStats:
    """Upstream ``PD_Stats``: a pandas DataFrame pickled to ``path`` after every ``update``.

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
        tmp = f"{self.path}.tmp"
        self.stats.to_pickle(tmp)
        os.replace(tmp, self.path)


def initialize_exp(args, *columns, rank=0, rows=(), name="swav"):
    """Writes ``params.pkl``, creates ``checkpoints/`` and returns ``(logger, stats)``, as upstream.

    Only rank 0 writes ``params.pkl`` (upstream had every rank write the same file).
    """
    dump = args.dump_path
    args.dump_checkpoints = os.path.join(dump, "checkpoints")
    if rank == 0:
        os.makedirs(args.dump_checkpoints, exist_ok=True)
        tmp = os.path.join(dump, "params.pkl.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(args, f)
        os.replace(tmp, os.path.join(dump, "params.pkl"))
    stats = PDStats(os.path.join(dump, f"stats{rank}.pkl"), columns, rows)
    logger = create_logger(os.path.join(dump, "train.log"), rank=rank, name=name)
    logger.info("============ Initialized logger ============")
    logger.info("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    logger.info(f"The experiment will be stored in {dump}\n")
    return logger, stats
