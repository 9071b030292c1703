"""Released checkpoints, torch.hub support, converters and curves (see tools/README.md)."""
from pathlib import Path


def check_output(path, force):
    """Refuses to overwrite ``path`` unless ``force``, and a ``path`` whose folder does not exist."""
    from common.cli import CLIError
    if Path(path).exists() and not force:
        raise CLIError(f"{path} exists; pass --force to overwrite it")
    if not Path(path).resolve().parent.is_dir():
        raise CLIError(f"the folder of {path} does not exist")
