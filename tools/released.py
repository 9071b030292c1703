"""The released Un-Mix artefacts: catalogue, download, verify, evaluate.

    python tools/released.py list [--kind K]
    python tools/released.py download NAME [--out DIR]
    python tools/released.py verify FILE_OR_DIR [--kind K | --name NAME]
    python tools/released.py eval-cmd NAME [--path FILE] [--data DIR] [--run]

Sources: the MoCo CIFAR demo table of the Un-Mix root README (24 Google Drive files: weights, log, args),
the SwAV for_CIFAR README (Drive folders), the MoCo-v2 + Un-Mix ImageNet ResNet-50 (Drive file), and the
vanilla MoCo / SwAV ImageNet checkpoints that the evaluation scripts also accept (docs/faithfulness.md).
Google Drive files AND folders are fetched with ``gdown``; the public HTTPS files with urllib.
Nothing touches the network unless ``download`` is asked for.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import CLIError, HelpFormatter, add_unsafe_load_arg, run_main  # noqa: E402
from tools import layouts  # noqa: E402

DEFAULT_OUT = "released_checkpoints"


@dataclass(frozen=True)
class Artefact:
    name: str
    method: str
    dataset: str
    epochs: str
    published: str   # the published number(s) this artefact reproduces, cited as published
    source: str      # gdrive-file | gdrive-folder | https
    where: str       # Drive id or URL
    kind: str        # a layouts.KINDS kind, or moco_cifar_log / moco_cifar_args / folder
    filename: str    # name given to the downloaded file (folders: directory name)
    evaluate: str = ""  # evaluation command template: {path} {data} {out}
    md5: str = ""       # md5 prefix published upstream
    note: str = ""

    @property
    def url(self):
        if self.source == "gdrive-file":
            return f"https://drive.google.com/file/d/{self.where}/view"
        if self.source == "gdrive-folder":
            return f"https://drive.google.com/drive/folders/{self.where}"
        return self.where


# --- evaluation commands (paths relative to the repo root) -------------------------------------------------
EVAL_MOCO_CIFAR = "python UnMix_MoCo/for_CIFAR/eval_knn.py {path} --dataset {dataset} --data {data} --mode knn"
EVAL_SWAV_CIFAR = ("python UnMix_SwAV/for_CIFAR/eval_linear.py --arch resnet18 --data_path {data} "
                   "--dataset {dataset} --num_labels {labels} --crop_size 32 --workers 2 --pretrained {path} "
                   "--dump_path {out}")
EVAL_MOCO_IN = ("python UnMix_MoCo/for_ImageNet/main_lincls_unmix.py -a resnet50 --lr 30.0 --batch-size 256 "
                "--pretrained {path} --dist-url tcp://localhost:10001 --multiprocessing-distributed "
                "--world-size 1 --rank 0 --output-dir {out} {data}")
EVAL_SWAV_IN = ("torchrun --nproc_per_node=8 UnMix_SwAV/for_ImageNet/eval_linear.py --data_path {data} "
                "--pretrained {path} --dump_path {out} --arch {arch}")
PLOT_LOG = "python tools/plot_curves.py --run {path} --out {out}.png"

_DRIVE_MOCO_CIFAR = {
    # (dataset, loss, unmix): (published kNN top-1, weights id, log id, args id) — Un-Mix root README tables
    ("cifar10", "asymmetric", False): ("89.11", "1SFug83e6J2U4WsnapFxAs4UinGMcfrRZ",
                                       "1LX0sZmUH6Datwq3H5mPnkOL_kxDr0oWs", "1-CpyJh41J5cd9aKyZIQT5x9V5Oph2Lrr"),
    ("cifar10", "asymmetric", True): ("91.34", "1kuRZIcyWGHYYge1Y_CxkBIuaUxVmdLTD",
                                      "1s8wvuFdRiw6ZreRotyvHFXyNWpCee5ka", "1d2cOGhKhRWUYC19HCO-ZopjvPMof6wGO"),
    ("cifar10", "symmetric", False): ("90.49", "1VribpdEWZ-MoyKRw2YBV9FY-AvHY3lsy",
                                      "11ptyy0XC7zthsNVY_xJKxIfNQ-Ikn55e", "1I6eRUJT0AG_mFDodgimQfomBy4VAXeCe"),
    ("cifar10", "symmetric", True): ("92.25", "1hUq3m7c6a6Pg1faLqdNLYPDeQ4Py2ZJz",
                                     "1vrJaKb9QzEt0P0aYe59LsMAOtn8XLABA", "1yy2SmlJiRubyYwLbyiv7DE9Y7e8EAKk-"),
    ("cifar100", "asymmetric", False): ("63.64", "1KWjk1366Z9oPqNlCtvjW2csOHe4KIuqX",
                                        "1gD8gESbDsgjQjsDnWRJsplDtrGAo59fI", "1SMQAD7zBheV84I5BEtgFqCvgDWuXu8CW"),
    ("cifar100", "asymmetric", True): ("67.33", "1V9mHEjVgD8FDL_s1Zx6fzouZkzWtlG0o",
                                       "1VPWKIgu0F8ZYYAFUN4e1pkSQUSDGSBjb", "1_Ch9MBKQ4E_Ff3qeLWQZLK8YnDG0HOms"),
    ("cifar100", "symmetric", False): ("65.49", "1mgCUFSA8Lo38kce97mJcTZ76PQ7INwiC",
                                       "1LcIh4xmQabzi3oDtwUXHnR_LbspppK-0", "14bJPtRvD0ZNuOfSAOxc7dCsZg-ejj568"),
    ("cifar100", "symmetric", True): ("68.83", "1yRVTbJLTL6yphcBWkPw1r29LPcG5stFW",
                                      "1N3hGWm4kT1x2zrup51avWcxG4V-zte8P", "1uwEY7HZUTj1CT6ZfmZ72DR2JSggfaIuh"),
}

_SWAV_CIFAR_PUBLISHED = {  # for_CIFAR README, linear-eval best top-1 at 200/400/600/800/1000 epochs
    "cifar10": "SwAV 84.9/88.8/90.1/90.8/91.5, Un-Mix 86.8/90.4/92.0/92.5/93.0 (linear top-1, 200..1000 ep)",
    "cifar100": "SwAV 57.9/64.5/65.7/67.2/67.5, Un-Mix 61.1/66.1/68.5/69.1/69.9 (linear top-1, 200..1000 ep)",
}


def _build_catalogue():
    cat = []
    for (ds, loss, unmix), (acc, w, log, args) in _DRIVE_MOCO_CIFAR.items():
        short = "c10" if ds == "cifar10" else "c100"
        base = f"{'unmix_' if unmix else ''}moco_{short}_{loss}"
        method = f"MoCo{' + Un-Mix' if unmix else ''} ({loss} loss)"
        pub = f"kNN top-1 {acc}"
        cat.append(Artefact(base, method, ds, "1000", pub, "gdrive-file", w, "moco_cifar", "model_last.pth",
                            EVAL_MOCO_CIFAR))
        cat.append(Artefact(base + "_log", method, ds, "1000", pub, "gdrive-file", log, "moco_cifar_log",
                            "log.csv", PLOT_LOG))
        cat.append(Artefact(base + "_args", method, ds, "1000", pub, "gdrive-file", args, "moco_cifar_args",
                            "args.json"))
    swav = [("swav_c10_weights", "cifar10", "1EHCU100944difnz8eqWpNME-NAHBvkce", "weights (last) of every run"),
            ("swav_c10_logs", "cifar10", "1P4X2aiQ2Wv-YMd_xR62UdfBsp299_9eX", "logs of every run"),
            ("swav_c100_weights", "cifar100", "1pSJKWkgwdeLrigQmEzt_s2Jg__UrQE5d", "weights (last) of every run"),
            ("swav_c100_logs", "cifar100", "1BPQcrmEq9d-5MQ1AXpv0h0ZOBvh3QPxp", "logs of every run")]
    for name, ds, fid, what in swav:
        cat.append(Artefact(name, "SwAV and SwAV + Un-Mix (bs 128)", ds, "200-1000", _SWAV_CIFAR_PUBLISHED[ds],
                            "gdrive-folder", fid, "folder", name,
                            EVAL_SWAV_CIFAR if name.endswith("weights") else "",
                            note=f"Drive folder: {what}; pick a run's checkpoint.pth.tar with --path"))
    for name, ds, fid in (("swav_c10_bs256", "cifar10", "1VUDMlp0NcawRPyPZSIEinSXULufdSmjO"),
                          ("swav_c100_bs256", "cifar100", "1ivyarxLdOajpjrLn06CcROdPIz-H74FC")):
        cat.append(Artefact(name, "SwAV and SwAV + Un-Mix (bs 256, paper setting)", ds, "200-1000",
                            "no number published for this folder (paper figure: ImageNet mean/std, bs 256)",
                            "gdrive-folder", fid, "folder", name, EVAL_SWAV_CIFAR,
                            note="Drive folder: the bs=256 results linked under the for_CIFAR tables"))
    cat.append(Artefact("unmix_mocov2_in1k_r50", "MoCo v2 + Un-Mix", "imagenet", "200/800?",
                        "linear top-1 68.6 (200 ep) / 71.8 (800 ep); VOC AP50 83.0 / 83.2; COCO AP 41.2 (200 ep)",
                        "gdrive-file", "1-t1lgVk6qPBaPRqePPHsEtyf530DfEbt", "moco_imagenet",
                        "unmix_mocov2_r50.pth.tar", EVAL_MOCO_IN,
                        note="the root README does not say which epoch budget; layout presumed MoCo-style"))
    fb = "https://dl.fbaipublicfiles.com"
    for name, ep, acc, md5 in (("moco_v1_200ep", "200", "linear top-1 60.6", "b251726a"),
                               ("moco_v2_200ep", "200", "linear top-1 67.5 (paper; 67.7 in MoCo's README)",
                                "59fd9945"),
                               ("moco_v2_800ep", "800", "linear top-1 71.1", "a04e12f8")):
        cat.append(Artefact(name, "MoCo v1" if "v1" in name else "MoCo v2", "imagenet", ep, acc, "https",
                            f"{fb}/moco/moco_checkpoints/{name}/{name}_pretrain.pth.tar", "moco_imagenet",
                            f"{name}_pretrain.pth.tar", EVAL_MOCO_IN, md5=md5,
                            note="vanilla MoCo baseline (facebookresearch/moco)"))
    for name, arch, acc in (("swav_800ep", "resnet50", "75.3"), ("swav_RN50w2_400ep", "resnet50w2", "77.3"),
                            ("swav_RN50w4_400ep", "resnet50w4", "77.9"),
                            ("swav_RN50w5_400ep", "resnet50w5", "78.5")):
        cat.append(Artefact(name.lower(), f"SwAV ({arch})", "imagenet", name.split("_")[-1][:-2],
                            f"linear top-1 {acc} (SwAV's README)", "https",
                            f"{fb}/deepcluster/{name}_pretrain.pth.tar", "swav_imagenet",
                            f"{name}_pretrain.pth.tar", EVAL_SWAV_IN.replace("{arch}", arch),
                            note="vanilla SwAV baseline (facebookresearch/swav hubconf)"))
    cat.append(Artefact("swav_800ep_eval_linear", "SwAV linear classifier", "imagenet", "800",
                        "linear top-1 75.3 (SwAV's README)", "https",
                        f"{fb}/deepcluster/swav_800ep_eval_linear.pth.tar", "swav_linear",
                        "swav_800ep_eval_linear.pth.tar",
                        note="linked from the SwAV ImageNet README; vanilla SwAV, not Un-Mix"))
    return {a.name: a for a in cat}


CATALOGUE = _build_catalogue()


def get(name):
    if name not in CATALOGUE:
        close = [n for n in CATALOGUE if name.lower() in n]
        hint = f" (did you mean {', '.join(close[:4])}?)" if close else " (see `list`)"
        raise CLIError(f"no released artefact named {name!r}{hint}")
    return CATALOGUE[name]


# --- verification ------------------------------------------------------------------------------------------
MOCO_LOG_COLUMNS = ["epoch", "train_loss", "test_acc@1"]
MOCO_ARGS_KEYS = {"arch", "lr", "epochs", "batch_size", "moco_dim", "moco_k", "moco_m", "moco_t"}


def _is_html(path):
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def verify_log(path):
    if _is_html(path):
        raise CLIError(f"{path} is an HTML page, not a log (a failed or quota-limited download?)")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CLIError(f"{path} is not a CSV log: {e}") from None
    if not rows or rows[0][:3] != MOCO_LOG_COLUMNS:
        raise CLIError(f"{path} is not a MoCo CIFAR log.csv: header {rows[0] if rows else 'missing'}, "
                       f"expected {','.join(MOCO_LOG_COLUMNS)}")
    try:
        last = [float(x) for x in rows[-1][:3]]
    except (ValueError, IndexError):
        raise CLIError(f"{path}: last row {rows[-1]} is not numeric (truncated?)") from None
    return f"MoCo CIFAR log.csv, {len(rows) - 1} epochs, last epoch {int(last[0])}: test_acc@1 {last[2]:.2f}"


def verify_args(path):
    if _is_html(path):
        raise CLIError(f"{path} is an HTML page, not args.json (a failed or quota-limited download?)")
    try:
        with open(path) as f:
            args = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CLIError(f"{path} is not a JSON args file (truncated?): {e}") from None
    if not isinstance(args, dict) or not MOCO_ARGS_KEYS <= set(args):
        missing = sorted(MOCO_ARGS_KEYS - set(args if isinstance(args, dict) else ()))
        raise CLIError(f"{path} is not a MoCo CIFAR args.json: missing {', '.join(missing)}")
    return (f"MoCo CIFAR args.json: arch {args['arch']}, epochs {args['epochs']}, bs {args['batch_size']}, "
            f"symmetric {args.get('symmetric')}")


def verify_checkpoint(path, kind=None, unsafe=False):
    """Loads ``path`` and checks its layout against ``kind`` (auto-detected when None); returns a summary."""
    from common.checkpoint import load_checkpoint  # imports torch: only when a checkpoint is read
    obj = load_checkpoint(path, unsafe=unsafe)  # CLIError for missing / empty / HTML / truncated / foreign files
    sd = layouts.state_dict_of(obj)
    if sd is None:
        keys = ", ".join(map(str, list(obj)[:4])) if isinstance(obj, dict) else type(obj).__name__
        raise CLIError(f"{path} holds no model state_dict (top-level: {keys})")
    if kind is None:
        found = layouts.detect(sd)
        if found is None:
            raise CLIError(f"{path} matches none of the released layouts ({', '.join(layouts.KINDS)}); "
                           f"first keys: {', '.join(list(sd)[:3])}")
        kind, variant = found
    else:
        variant, problems = layouts.match(kind, sd)
        if problems:
            other = layouts.detect(sd)
            guess = (f"; it looks like a {other[0]} checkpoint ({layouts.KINDS[other[0]][0]})" if other
                     else "")
            raise CLIError(f"{path} is not a {kind} checkpoint ({layouts.KINDS[kind][0]}): "
                           + "; ".join(problems) + guess)
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return (f"{layouts.KINDS[kind][0]} [{variant}], {len(sd)} tensors"
            + (f", epoch {epoch}" if epoch is not None else ""))


def md5_of(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_path(path, kind=None, md5="", unsafe=False):
    """Verifies one file (or every file of a downloaded folder); returns a list of summary lines."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path} does not exist")
    if path.is_dir():
        out = []
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CLIError(f"{path} is an empty folder")
        for p in files:
            if p.suffix in (".pth", ".tar", ".pt") or p.name.endswith(".pth.tar"):
                out.append(f"{p}: {verify_checkpoint(p, unsafe=unsafe)}")
            elif _is_html(p):
                raise CLIError(f"{p} is an HTML page, not a released file (a failed or quota-limited download?)")
            elif p.suffix in (".csv", ".json"):
                try:
                    out.append(f"{p}: {verify_log(p) if p.suffix == '.csv' else verify_args(p)}")
                except CLIError:  # another program's csv/json (e.g. in the SwAV log folders)
                    out.append(f"{p}: {p.stat().st_size} bytes (not a MoCo CIFAR log/args; not checked)")
            else:
                out.append(f"{p}: {p.stat().st_size} bytes (not a checkpoint; not checked)")
        return out
    if md5 and not md5_of(path).startswith(md5):
        raise CLIError(f"{path}: md5 {md5_of(path)[:8]} does not match the published {md5} (corrupt download?)")
    if kind == "moco_cifar_log" or (kind is None and path.suffix == ".csv"):
        return [f"{path}: {verify_log(path)}"]
    if kind == "moco_cifar_args" or (kind is None and path.suffix == ".json"):
        return [f"{path}: {verify_args(path)}"]
    if kind == "folder":
        raise CLIError(f"{path} is a file; the folder artefacts download to a directory")
    return [f"{path}: {verify_checkpoint(path, kind, unsafe)}"]


# --- download ----------------------------------------------------------------------------------------------
class DownloadError(CLIError, ConnectionError):
    """A download that failed (offline, quota, moved file): one line saying what failed, where to fetch the
    file by hand and which option takes a local file."""


def reason(e, url=None):
    """A short reason for a failed download, one line: "no connection to HOST" when offline."""
    inner = getattr(e, "reason", None)  # urllib's URLError wraps the socket error
    err = inner if isinstance(inner, BaseException) else e
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    host = re.search(r"host='([^']+)'", text)  # requests: "HTTPSConnectionPool(host='...', ...): Max retries"
    host = host.group(1) if host else (urllib.parse.urlparse(url).hostname if url else None)
    offline = isinstance(err, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)) or \
        any(w in type(err).__name__ for w in ("Connection", "Timeout", "Proxy"))
    if offline:
        return f"no connection to {host} ({text[:80]})" if host and host not in text else \
            f"no connection to {host}" if host else f"no connection: {text[:100]}"
    return text if len(text) <= 120 else text[:117] + "..."


def manual_hint(art, local_option):
    """Where to fetch ``art`` by hand and which option then takes the local file."""
    what = "the folder" if art.source == "gdrive-folder" else "the file"
    return f"fetch {what} by hand from {art.url} and pass it with {local_option}"


def _cli_option(art, out):
    dest = Path(out) / art.name
    if art.source == "gdrive-folder":
        return (f"`verify DIR --name {art.name}` and `eval-cmd {art.name} --path DIR/<run>/checkpoint.pth.tar`"
                f" (or save it as {dest})")
    return f"`eval-cmd {art.name} --path FILE` or `verify FILE --name {art.name}` (or save it as {dest / art.filename})"


def _https(url, dest):
    tmp = Path(tempfile.mkstemp(prefix=".part-", dir=dest.parent)[1])
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            done = 0
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{dest.name}: {done / total:6.1%} of {total / 2**20:.0f} MiB", end="", flush=True)
        print()
        if total and done != total:
            raise CLIError(f"download of {url} stopped at {done} of {total} bytes")
        os.replace(tmp, dest)
    except OSError as e:  # URLError, HTTPError, timeouts, disk full
        raise DownloadError(reason(e, url)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _gdown():
    try:
        import gdown
    except ImportError:
        raise CLIError("Google Drive downloads need gdown: pip install gdown") from None
    return gdown


def created_dirs(path):
    """The folders ``path.mkdir(parents=True)`` would create, innermost first."""
    made = []
    path = Path(path).absolute()
    while not path.exists():
        made.append(path)
        path = path.parent
    return made


def remove_if_empty(dirs):
    for d in dirs:  # innermost first; a folder holding anything (another download) stays
        try:
            d.rmdir()
        except OSError:
            break


def download(art, out=DEFAULT_OUT, force=False, local_option=None):
    """Fetches ``art`` into ``out/<name>/`` and verifies it; returns the downloaded path.

    A failed download (offline, quota, moved file) raises :class:`DownloadError` with one line: what
    failed, where to fetch the file by hand and ``local_option`` (the option that takes a local file; the
    CLI's by default). Folders it created are removed again and no partial file is left behind.
    """
    dest_dir = Path(out) / art.name
    local_option = local_option or _cli_option(art, out)
    dest = dest_dir / art.filename if art.source != "gdrive-folder" else dest_dir
    if dest.exists() and not force:
        if dest.is_file() or any(dest.iterdir()):
            print(f"{dest} already exists (use --force to download again); verifying it")
            for line in verify_path(dest, art.kind if art.kind != "folder" else None, art.md5):
                print(line)
            return dest
    gdown = _gdown() if art.source != "https" else None
    made = created_dirs(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {art.name} from {art.url}", flush=True)
    part = dest.with_name(".part-" + dest.name)
    try:
        if art.source == "https":
            _https(art.url, dest)
        elif art.source == "gdrive-file":
            got = gdown.download(id=art.where, output=str(part), quiet=False)
            if not got or not part.exists():
                raise DownloadError("gdown fetched nothing (Drive quota exceeded or file moved?)")
            os.replace(part, dest)
        else:
            got = gdown.download_folder(id=art.where, output=str(dest), quiet=False)
            if not got:
                raise DownloadError("gdown fetched nothing (Drive quota exceeded or folder moved?)")
    except Exception as e:  # gdown raises its own types (FileURLRetrievalError, requests' ConnectionError)
        if part.exists():
            part.unlink()
        if art.source == "gdrive-folder" and dest.is_dir() and not any(p.is_file() for p in dest.rglob("*")):
            for d in sorted((p for p in dest.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                d.rmdir()
        remove_if_empty(made)
        why = str(e) if isinstance(e, DownloadError) else reason(e)
        raise DownloadError(f"download of {art.name} failed ({why}); "
                            f"{manual_hint(art, local_option)}") from None
    for line in verify_path(dest, art.kind if art.kind != "folder" else None, art.md5):
        print(line)
    return dest


# --- evaluation command ------------------------------------------------------------------------------------
def eval_command(art, path=None, data=None, out=None):
    """The command, to be run from the repo root (its scripts are named relative to it). Relative paths
    (given or default) mean the caller's working directory, where ``download`` put the files: they are
    made absolute unless that directory is the repo root."""
    if not art.evaluate:
        raise CLIError(f"{art.name} ({art.kind}) has no evaluation command; "
                       "its published number comes with the weights entry")
    path = path or str(Path(DEFAULT_OUT) / art.name / (art.filename if art.source != "gdrive-folder" else
                                                          "<run>/checkpoint.pth.tar"))
    default_data = {"cifar10": "data", "cifar100": "data", "imagenet": "/path/to/imagenet"}[art.dataset]
    elsewhere = Path.cwd().resolve() != ROOT.resolve()

    def arg(p):
        return shlex.quote(os.path.abspath(p) if elsewhere else str(p))

    fields = dict(path=arg(path), data=arg(data or default_data), out=arg(out or f"eval_{art.name}"),
                  dataset=art.dataset, labels="100" if art.dataset == "cifar100" else "10")
    return art.evaluate.format(**fields)


# --- CLI ---------------------------------------------------------------------------------------------------
def kinds():
    """Every kind `list` prints, and every checkpoint layout `verify` knows: both `--kind` options take all."""
    return sorted(set(layouts.KINDS) | {a.kind for a in CATALOGUE.values()})


def cmd_list(args):
    rows = [a for a in CATALOGUE.values() if args.kind in (None, a.kind)]
    if not rows:
        raise CLIError(f"no released artefact of kind {args.kind} (the catalogue's kinds: "
                       f"{', '.join(sorted({a.kind for a in CATALOGUE.values()}))})")
    if args.json:
        print(json.dumps([dict(vars(a), url=a.url) for a in rows], indent=1))
        return
    w = max(len(a.name) for a in rows)
    print(f"{'name':<{w}}  {'dataset':<8}  {'epochs':<10}  {'kind':<15}  published")
    for a in rows:
        print(f"{a.name:<{w}}  {a.dataset:<8}  {a.epochs:<10}  {a.kind:<15}  {a.published}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="print the catalogue", formatter_class=HelpFormatter)
    s.add_argument("--kind", default=None, choices=kinds(), help="only artefacts of this kind")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("download", help="fetch an artefact and verify it", formatter_class=HelpFormatter)
    s.add_argument("name")
    s.add_argument("--out", default=DEFAULT_OUT, help="download folder (files go to OUT/NAME/)")
    s.add_argument("--force", action="store_true", help="download again even if present")
    s = sub.add_parser("verify", help="check a file's layout (kind auto-detected unless given)",
                       formatter_class=HelpFormatter)
    s.add_argument("path")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--kind", default=None, choices=kinds(),
                   help="the layout to check against (`folder`: every file of a downloaded folder)")
    g.add_argument("--name", default=None,
                   help="catalogue name: its kind and, where one was published, its md5 are checked")
    add_unsafe_load_arg(s)
    s = sub.add_parser("eval-cmd", help="print (or --run) the command that reproduces the published number",
                       formatter_class=HelpFormatter)
    s.add_argument("name")
    s.add_argument("--path", default=None, help="the downloaded file (default: where `download` puts it)")
    s.add_argument("--data", default=None, help="dataset root (CIFAR) or ImageNet folder")
    s.add_argument("--out", default=None, help="output folder of the evaluation")
    s.add_argument("--run", action="store_true", help="run the command instead of printing it")
    args = p.parse_args(argv)

    if args.cmd == "list":
        cmd_list(args)
    elif args.cmd == "download":
        download(get(args.name), args.out, args.force)
    elif args.cmd == "verify":
        kind, md5, note = args.kind, "", ""
        if args.name:
            art = get(args.name)
            kind, md5 = (None if art.kind == "folder" else art.kind), art.md5
            note = (f" (md5 matches the published {md5})" if md5 else
                    f" (layout only: no md5 was published for {art.name}, so the bytes were not checked)")
        for line in verify_path(args.path, kind, md5, args.unsafe_load):
            print("OK " + line + note)
    else:
        cmd = eval_command(get(args.name), args.path, args.data, args.out)
        if not args.run:
            print(cmd)
            return
        if args.path and not Path(args.path).exists():
            raise CLIError(f"{args.path} does not exist; download it first")
        print("+ " + cmd, flush=True)
        argv = shlex.split(cmd)
        if argv[0] == "python":
            argv[0] = sys.executable  # the interpreter running this tool, not whichever is first on PATH
        rc = subprocess.call(argv, cwd=ROOT)
        if rc:  # the evaluation has said why (one error line): its status, nothing printed twice
            sys.exit(rc if 0 < rc < 256 else 128 + abs(rc))


if __name__ == "__main__":
    run_main(main)
