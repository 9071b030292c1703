"""Command-line plumbing: one clear error line instead of a traceback, output-directory safety, flags."""
import argparse
import json
import os
import sys
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one ``error: ...`` line, exit status 2."""


def run_main(main, *args, **kwargs):
    """Runs ``main``; a :class:`CLIError` becomes one line on stderr and exit code 2."""
    try:
        return main(*args, **kwargs)
    except CLIError as e:
        prog = os.path.basename(sys.argv[0]) or "unmix"
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, as Unix tools do. stdout is pointed at devnull
        # so that the interpreter's final flush does not raise again (the Python documentation's recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


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


def prepare_output_dir(path, resume, marker):
    """Creates ``path`` for a new run, refusing to overwrite a previous run unless resuming.

    ``marker`` is the file whose presence means "a run lives here" (e.g. ``model_last.pth``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"output path {path} exists and is not a directory")
    if not resume and (path / marker).exists():
        raise CLIError(f"{path} already holds a run ({marker}); pass --resume to continue it "
                       "or choose another output directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_args(args, path):
    """Writes the parsed arguments as JSON (argparse insertion order), atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(vars(args), f, indent=2)
    os.replace(tmp, path)


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
