"""Reading plain pickles (SwAV's ``stats{rank}.pkl``, CIFAR's batch and meta files) without running code.

A pickle can call any Python function while it is read. These readers allow only the globals the format
really holds (NumPy arrays and scalars; pandas' DataFrame reconstruction); a file asking for anything else
is refused with one :class:`common.cli.CLIError` naming the file and the global. No module outside the
allow-list is even imported. (Checkpoints are torch files: see :func:`common.checkpoint.load_checkpoint`.)
"""
import pickle

from .cli import CLIError

# NumPy arrays, scalars and dtypes, under the names NumPy 1.x and 2.x write.
NUMPY = {f"numpy.{core}.{name}" for core in ("core.multiarray", "_core.multiarray")
         for name in ("_reconstruct", "scalar")} | {
    "numpy.ndarray", "numpy.dtype", "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    *(f"numpy.dtypes.{t}DType" for t in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                                         "UInt64", "Float16", "Float32", "Float64", "Object", "Str", "Bytes"))}

# A DataFrame of numbers (upstream's ``PD_Stats``) as pandas 0.25 ... 3.x pickle it: the frame, its block
# manager and blocks, its row/column index (RangeIndex, Index of strings), slices and bytes.
PANDAS_FRAME = NUMPY | {
    "builtins.slice", "__builtin__.slice", "_codecs.encode",
    "pandas.DataFrame", "pandas.core.frame.DataFrame",
    "pandas.core.internals.managers.BlockManager", "pandas.core.internals.BlockManager",
    "pandas._libs.internals._unpickle_block", "pandas.core.internals.blocks.new_block",
    "pandas.Index", "pandas.core.indexes.base.Index", "pandas.core.indexes.base._new_Index",
    "pandas.RangeIndex", "pandas.core.indexes.range.RangeIndex",
    "pandas.core.indexes.numeric.Int64Index", "pandas.core.indexes.numeric.Float64Index",
    "pandas.core.indexes.numeric.UInt64Index",
    # pandas >= 3 stores string column names as a StringArray
    "pandas.StringDtype", "pandas.core.arrays.string_.StringDtype",
    "pandas.arrays.StringArray", "pandas.core.arrays.string_.StringArray",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked",
}


class _Refused(pickle.UnpicklingError):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


def restricted_load(f, allowed, base=pickle.Unpickler, **kwargs):
    """``pickle.load(f)`` that refuses (:class:`pickle.UnpicklingError`) every global not in ``allowed``
    (a set of ``"module.name"`` strings) before importing anything. ``base``: an Unpickler class (e.g.
    pandas' compatibility unpickler, which renames classes of older pandas versions)."""

    class Restricted(base):
        def find_class(self, module, name):
            if f"{module}.{name}" not in allowed:
                raise _Refused(f"{module}.{name}")
            return super().find_class(module, name)

    return Restricted(f, **kwargs).load()


def load_pickle(path, allowed, what="pickle", **kwargs):
    """Reads the pickle file ``path`` allowing only ``allowed`` globals; one :class:`CLIError` otherwise."""
    try:
        with open(path, "rb") as f:
            return restricted_load(f, allowed, **kwargs)
    except _Refused as e:
        raise CLIError(f"refused to read {path}: it asks for the Python global {e.name}, which no {what} "
                       "holds and which could run code (only if you trust the file, convert it yourself)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OSError) as e:
        raise CLIError(f"cannot read {path} as a {what} (truncated or another format): {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None


def read_pandas_pickle(path, what="pandas pickle"):
    """The DataFrame pickled in ``path`` (``DataFrame.to_pickle``), read without running code from it."""
    import pandas as pd
    from pandas.compat.pickle_compat import Unpickler

    df = load_pickle(path, PANDAS_FRAME, what, base=Unpickler)
    if not isinstance(df, pd.DataFrame):
        raise CLIError(f"{path} holds a {type(df).__name__}, not a table (DataFrame)")
    return df
