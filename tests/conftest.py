"""Shared fixtures: tiny on-disk datasets and a helper that runs an entry script as a user would."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakedata import make_cifar, make_image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cifar10"), "cifar10")


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cifar100"), "cifar100", n_train=200, n_test=100)


@pytest.fixture(scope="session")
def imagefolder_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


def source_files():
    """The repository's files as a fresh clone holds them: what git tracks plus new files it does not ignore,
    never a virtual environment kept in the clone (a folder holding ``pyvenv.cfg``: installed packages), even
    under a name .gitignore does not know. Tests that scan the repository read these, not the folder tree."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    names = [n for n in out if n]
    venvs = tuple(n[:-len("pyvenv.cfg")] for n in names if n == "pyvenv.cfg" or n.endswith("/pyvenv.cfg"))
    return [n for n in names if not (venvs and n.startswith(venvs))]


def script_env(**extra):
    """Environment for subprocess runs: single-threaded, CPU only, repo importable, no network."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(args, cwd=None, check=True, timeout=600, env=None):
    """Runs ``python <args>`` (or ``[executable, ...]``) like a user; returns the CompletedProcess."""
    cmd = [sys.executable] + [str(a) for a in args]
    p = subprocess.run(cmd, cwd=cwd or ROOT, env=env or script_env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\n"
                             f"stderr:\n{p.stderr[-4000:]}")
    return p


def kill_9_after(point, args, n=1):
    """Runs ``python <args>`` like :func:`run_script`, killed (SIGKILL, as ``kill -9``) the ``n``-th time it
    reaches ``common.runstate.kill_point(point)``, e.g. ``"checkpoint"``: right after a checkpoint is written."""
    p = run_script(args, env=script_env(UNMIX_TEST_KILL_AFTER=f"{point}:{n}"), check=False)
    assert p.returncode == -signal.SIGKILL, f"not killed at {point} #{n}: exit {p.returncode}\n{p.stderr[-3000:]}"


def assert_clean_error(p, *fragments):
    """A user error: non-zero exit, no traceback, one ``error:`` line naming the problem."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) >= 1, p.stderr
    for frag in fragments:
        assert frag.lower() in p.stderr.lower(), (frag, p.stderr)


# common.logs.EpochLine: "epoch 3/200 | loss 6.1234 | lr 0.0599 | kNN top-1 45.20% | 12.3 s | ETA 0:40:12"
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \| loss (\S+) \| lr (\S+) \| (.+?) \| (\d+\.\d) s \| ETA (\d+:\d\d:\d\d)$",
                        re.M)


def assert_epoch_lines(output, epochs, total, monitor):
    """``output`` holds one per-epoch summary line for each of ``epochs`` (numbers), of ``total`` epochs, in the
    shared shape, with the script's monitored accuracy named ``monitor`` (None: 'no accuracy monitor')."""
    found = EPOCH_LINE.findall(output)
    assert [int(f[0]) for f in found] == list(epochs), output[-3000:]
    for _, tot, loss, lr, acc, _, _ in found:
        assert int(tot) == total and float(loss) == float(loss) and float(lr) >= 0
        if monitor is None:
            assert acc == "no accuracy monitor", acc
        else:
            assert re.fullmatch(re.escape(monitor) + r" (\d+\.\d\d%|-)", acc), acc


# ----------------------------------------------------------------------------------------------------------
# The fast tier: `python -m pytest -m "not slow"` for day-to-day work; CI (.ci/run) runs the whole suite.
# A test is slow when it starts an entry script or a process (a training run, a job script, a venv, pip): its
# own code, a fixture it uses, or a helper of the suite (two levels deep) calls one of the functions below.
# Unit tests of the formulas, layouts and helpers stay in the fast tier; ``@pytest.mark.slow`` marks by hand.
# ----------------------------------------------------------------------------------------------------------
LAUNCHES = re.compile(r"(?<![\w.])(run_script|kill_9_after|killed_then_resumed|two_processes|bash|dry_run|main|"
                      r"_venv|_pip)\(|\bsubprocess\.(run|call|check_call|check_output|Popen)\(|\bspawn\(|"
                      r"\bstart_method=")
# in-process training runs and statistics over many draws (> 3 s each here), marked without editing their files
SLOW_IN_PROCESS = {
    "tests/test_moco_cifar_cli.py::test_resume_with_amp_of_a_run_started_without_it",
    "tests/test_moco_imagenet.py::test_pretrain_resume_is_bit_exact_in_process",
    "tests/test_device_aug.py::test_views_statistics_match_pil_pipeline",
    "tests/test_simclr_byol_scripts.py::test_resume_alone_finds_the_runs_data",
    "tests/test_bad_inputs.py::test_moco_imagenet_resume_with_a_state_dict_that_is_not_a_dict",
    "tests/test_swav_train_units.py::test_train_one_epoch_equals_a_plain_upstream_order_computation",
}


def _in_tests(func):
    return Path(getattr(func, "__code__", None) and func.__code__.co_filename or "").parent == Path(__file__).parent


def _launches(func, depth=2, seen=None):
    import inspect
    seen = set() if seen is None else seen
    if func in seen:
        return False
    seen.add(func)
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    if LAUNCHES.search(src):
        return True
    if depth == 0:
        return False
    module = sys.modules.get(getattr(func, "__module__", None))
    for name in set(re.findall(r"(?<![\w.])(\w+)\(", src)):
        helper = getattr(module, name, None)  # the suite's own helpers (also behind lru_cache), not the code
        helper = inspect.unwrap(helper) if callable(helper) else helper  # under test
        if inspect.isfunction(helper) and _in_tests(helper) and _launches(helper, depth - 1, seen):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or not hasattr(item, "function"):
            continue
        fixtures = [d.func for name in item.fixturenames
                    for d in item._fixtureinfo.name2fixturedefs.get(name, ()) if d.baseid]  # the suite's own
        if item.nodeid.split("[")[0] in SLOW_IN_PROCESS or any(_launches(f) for f in [item.function, *fixtures]):
            item.add_marker(pytest.mark.slow)
