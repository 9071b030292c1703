"""Command-line plumbing: one clear error line instead of a traceback, output-directory safety (atomic
writes), flags."""
import argparse
import contextlib
import errno
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one ``error: ...`` line, exit status 2."""


# A full disk, a quota, a read-only file system, missing permissions: the output folder cannot be written.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def cannot_write(path, reason):
    """The one line for an output file that cannot be written (see :func:`common.checkpoint.save_atomic`)."""
    return (f"cannot write {path}: {reason}; every file is written to a temporary name and renamed, so what "
            "was there before (the previous checkpoint included) is intact - free space or fix the folder's "
            "permissions, then continue with --resume")


def user_error(e):
    """The one line for an error the user can mend: a :class:`CLIError`'s text, or for an ``OSError`` on a
    full or read-only disk (``log.csv``, ``curves.png``, ``args.json``, ... of any run) the cannot-write line;
    ``None`` for anything else (a bug: its traceback is wanted)."""
    if isinstance(e, CLIError):
        return str(e)
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return cannot_write(e.filename or "an output file", e.strerror)
    return None


def tell_launcher(line):
    """Under ``torchrun`` (which sets ``$TORCHELASTIC_ERROR_FILE`` for each worker): ``line`` becomes the
    worker's error report, in the JSON layout of torch's own ``ErrorHandler``. torchrun then prints it as the
    ``traceback :`` field of its "Root Cause" summary, the last line before its closing rule, instead of "To
    enable traceback see: ...": the user's first line (the worker's own) and last line say what happened."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):  # not under torchrun, or another report was written first
        return
    report = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(report, f)
    except OSError:  # torchrun's summary then says "To enable traceback see: ..."; our line was printed anyway
        pass


def run_main(main, *args, **kwargs):
    """Runs ``main``; a :class:`CLIError` (or a full disk, :func:`user_error`) becomes one line on stderr and
    exit code 2."""
    try:
        return main(*args, **kwargs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, as Unix tools do. stdout is pointed at devnull
        # so that the interpreter's final flush does not raise again (the Python documentation's recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (CLIError, OSError) as e:  # after BrokenPipeError, an OSError too
        message = user_error(e)
        if message is None:
            raise
        prog = os.path.basename(sys.argv[0]) or "unmix"
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        tell_launcher(f"{prog}: error: {message}")
        sys.exit(2)


def bool_flag(s):
    """SwAV-style boolean: on/true/1 and off/false/0, case-insensitive."""
    v = str(s).lower()
    if v in {"on", "true", "1"}:
        return True
    if v in {"off", "false", "0"}:
        return False
    raise argparse.ArgumentTypeError("invalid value for a boolean flag (use true/false)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every default, except on ``store_false`` switches (``--no-unmix``, ``--asymmetric``):
    there "(default: True)" is the destination's value and reads as if the switch were on by default."""

    def _get_help_string(self, action):
        if isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


def prepare_output_dir(path, resume, marker, create=True):
    """Creates ``path`` for a new run, refusing to overwrite a previous run unless resuming it.

    ``marker`` is the file whose presence means "a run lives here" (e.g. ``model_last.pth``). ``resume`` is
    a bool (the run in ``path`` itself is continued) or the checkpoint file being resumed: then ``path``
    must be that file's own folder, or a new or empty folder (the resumed run must not overwrite another).
    ``create=False`` only checks (early, before the inputs are read); call it again to create the folder once
    they are accepted, so that a refused run leaves no empty folder behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"output path {path} exists and is not a directory")
    if not resume and (path / marker).exists():
        raise CLIError(f"{path} already holds a run ({marker}); pass --resume to continue it "
                       "or choose another output directory")
    if isinstance(resume, (str, os.PathLike)) and path.is_dir() and any(path.iterdir()):
        own = Path(resume).resolve().parent
        if path.resolve() != own:
            what = f"another run ({marker})" if (path / marker).exists() else "other files"
            raise CLIError(f"{path} already holds {what}: --resume {resume} writes into its own folder {own} "
                           "or into a new or empty one; choose such a --results-dir (or resume "
                           f"{path / marker} to continue the run in {path})")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(cannot_write(path, e.strerror)) from None
    return path


def _create_temp(d, suffix):
    """A new, empty ``d/.tmp-XXXXXXXXXXXX<suffix>``, created with mode 0666 minus the umask as any file
    (``tempfile.mkstemp`` makes 0600, which a group sharing the run folder could not read)."""
    for _ in range(100):
        tmp = os.path.join(d, f".tmp-{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", d)


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as tmp:`` write the file ``tmp``; when the block ends it is flushed to disk
    and renamed over ``path``, so a run killed mid-write (even ``kill -9``) leaves what was at ``path`` intact.

    ``tmp`` is a new hidden file in ``path``'s folder with ``path``'s suffix (pandas picks its compression
    from it); what a kill leaves of it is removed when a training script starts again in that folder
    (:func:`common.runstate.remove_partial_files`). On an error it is removed and a folder that cannot be
    written (full disk, quota, read-only, permissions) gives one :class:`CLIError` naming ``path``; an error
    about another file (e.g. an unreadable source of a copy) passes through as it is."""
    path = os.fspath(path)
    tmp = None
    try:
        tmp = _create_temp(os.path.dirname(os.path.abspath(path)), os.path.splitext(path)[1])
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and (tmp is None or e.filename in (None, tmp, path)):
            raise CLIError(cannot_write(path, e.strerror)) from None
        raise


def save_args(args, path):
    """Writes the parsed arguments as JSON (argparse insertion order), atomically."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(vars(args), f, indent=2)


def add_unsafe_load_arg(parser):
    """``--unsafe-load`` (also ``--unsafe_load``, for the SwAV scripts' spelling): the one way to open a
    checkpoint the safe loader refuses (see :func:`common.checkpoint.load_checkpoint`)."""
    parser.add_argument("--unsafe-load", "--unsafe_load", dest="unsafe_load", action="store_true",
                        help="load checkpoints with plain pickle (torch.load weights_only=False), which runs "
                             "any code the file holds: only for a file you trust that the safe loader refuses")


def add_local_rank_arg(parser):
    """``--local_rank`` and ``--local-rank`` (PyTorch >= 2.0's torch.distributed.launch), same dest."""
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="set by torch.distributed.launch; torchrun uses $LOCAL_RANK")


def explicit_options(parser, argv=None):
    """The ``dest`` of every option written on the command line ``argv`` (default ``sys.argv[1:]``).

    ``argv`` is parsed again into a namespace that already holds a sentinel for every destination: argparse
    fills in a default only where the namespace lacks the attribute, so what is not the sentinel afterwards
    was given explicitly (also when it equals the default)."""
    unset = object()
    ns = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv], namespace=ns)
    return {k for k, v in vars(ns).items() if v is not unset}


# sane upper bounds of the counts a run is sized by (typed or recorded in a resumed checkpoint): far above any
# published setting, low enough that nothing sized by them (a schedule, a queue, a batch) can exhaust memory
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_QUEUE = 1 << 22  # keys (MoCo's 65,536 on ImageNet, SwAV's 3,840)
MAX_WIDTH = 1 << 16  # feature dimensions, hidden widths, prototypes (SwAV RN50w5: 10,240 hidden, 3,000 prototypes)
MAX_IMAGE = 4096  # image and crop sizes in pixels
MAX_CROPS = 64  # SwAV's crops per resolution


def count(limit):
    """argparse type: an integer of at most ``limit`` (lower bounds are each script's range checks)."""
    def parse(s):
        v = int(s)
        if v > limit:
            raise argparse.ArgumentTypeError(f"more than the {limit:,} allowed")
        return v
    parse.__name__ = "int"  # argparse's "invalid int value: 'x'"
    return parse


# data folders whose recorded path a resumed run took from its checkpoint: read, never created or downloaded
# into (see :func:`common.data.cifar`)
RECORDED_DATA_ROOTS = {}
DATA_OPTIONS = ("data", "data_path")


def recorded_data_root(root):
    """The checkpoint a data folder's path was adopted from, or ``None`` when the command line named it."""
    return RECORDED_DATA_ROOTS.get(os.path.abspath(os.fspath(root)))


def _recorded_value(parser, action, value):
    """``value`` (recorded in a checkpoint) as the parser turns a typed one into the option's value: the same
    type, ``choices`` and bounds; raises ``argparse.ArgumentError`` or ``ValueError``."""
    if action.nargs == 0:  # store_true / store_false / --[no-]x switches
        if not isinstance(value, bool):
            raise ValueError("not true or false")
        return value
    if value is None and action.default is None:  # unset, as without the option
        return None
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int) and action.nargs != 1
    items = value if many else [value]
    if many and not isinstance(value, (list, tuple)):
        raise ValueError("not a list")
    out = []
    for v in items:
        if isinstance(v, bool) and action.type is not bool_flag or not isinstance(v, (str, int, float)):
            raise ValueError("not a number or text")
        v = parser._get_value(action, v if isinstance(v, str) else _short(v, None))
        parser._check_value(action, v)
        out.append(v)
    return out if many else out[0]


def _short(v, width=60):
    """``repr(v)``, cut to ``width`` characters (an integer too long to print names its size)."""
    try:
        text = repr(v)
    except ValueError:  # int's 4300-digit limit: refused by any type anyway
        return f"<an integer of {v.bit_length()} bits>"
    return text if width is None or len(text) <= width else text[:width - 3] + "..."


def _differs(given, recorded):
    try:
        return bool(given != recorded)
    except Exception:  # a recorded value of another type (a tensor, ...): overridden anyway
        return True


def adopt_recorded_args(args, recorded, parser, argv=None, session=(), source="the checkpoint"):
    """Resume with a run's recorded settings: every option in ``recorded`` (the ``vars(args)`` saved with the
    run) that was not written on the command line is taken from it; options given again override it.
    ``session`` names per-session options (output folder, launcher settings) never taken from it.

    A checkpoint is input like the command line: every adopted value goes through the parser's type, choices
    and bounds (:func:`count`) as a typed one; a bad one is a :class:`CLIError` naming ``source`` and the
    option. A data folder (``--data`` / ``--data_path``) taken from the record is only read
    (:func:`recorded_data_root`). Wrap the script's range checks in :func:`recorded_checks` with the result.

    Prints one line naming what the command line overrode; returns ``{dest: (given, recorded)}``, whose
    ``adopted`` attribute names the options taken from the record. Without a recorded dict (e.g. an upstream
    checkpoint) nothing is adopted and ``None`` is returned."""
    if not isinstance(recorded, dict):
        return None
    given = explicit_options(parser, argv)
    actions = {a.dest: a for a in parser._actions}
    names = {d: next((o for o in a.option_strings if o.startswith("--")), d) for d, a in actions.items()}
    overridden = Adopted(source)
    for k, v in recorded.items():
        if not isinstance(k, str) or k in session or k not in names or not hasattr(args, k):
            continue
        if k not in given:
            try:
                v = _recorded_value(parser, actions[k], v)
            except (argparse.ArgumentError, ValueError, TypeError) as e:
                shown = _short(v)
                reason = str(e).split(": ", 1)[-1] if isinstance(e, argparse.ArgumentError) else str(e)
                reason = reason if len(reason) <= 160 else reason[:157] + "..."  # it may quote the value
                raise CLIError(f"{source} records {names[k]} = {shown}, which the command line would refuse "
                               f"({reason}): not resumed") from None
            setattr(args, k, v)
            overridden.adopted[k] = names[k]
            if k in DATA_OPTIONS and isinstance(v, str):
                RECORDED_DATA_ROOTS[os.path.abspath(v)] = source
        elif _differs(getattr(args, k), v):
            shown = v if isinstance(v, (str, int, float, list, tuple)) else type(v).__name__
            overridden[k] = (getattr(args, k), shown)
    what = ", ".join(f"{names[k]} {g} (recorded: {r})" for k, (g, r) in overridden.items())
    print(f"=> resuming with the settings recorded in {source}; "
          + (f"overridden on the command line: {what}" if what else "none overridden"), flush=True)
    return overridden


class Adopted(dict):
    """What :func:`adopt_recorded_args` returns: the overrides, plus ``adopted`` ({dest: option}) and ``source``."""

    def __init__(self, source):
        super().__init__()
        self.source, self.adopted = source, {}


@contextlib.contextmanager
def recorded_checks(resumed):
    """``with recorded_checks(adopt_recorded_args(...)):`` the script's range checks. A :class:`CLIError` about
    an option whose value came from the checkpoint says so (the file and the option), so that a bad recorded
    value reads as the checkpoint's, not the command line's."""
    try:
        yield
    except CLIError as e:
        named = [o for o in (resumed.adopted.values() if resumed is not None else ())
                 if re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", str(e))]
        if not named:
            raise
        raise CLIError(f"{e} ({', '.join(named)} as recorded in {resumed.source}: not resumed; give "
                       f"{'it' if len(named) == 1 else 'them'} on the command line to override)") from None
