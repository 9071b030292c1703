"""The reusable part installs as ``unmix`` (editable and as a wheel) and the README's library example runs."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np

from conftest import ROOT, script_env, source_files

EXAMPLE_CHECKS = """
import numpy as np
assert torch.isfinite(loss) and 0.0 <= lam <= 1.0
assert all(p.grad is not None for p in encoder.parameters())
# the README's RNG note: a private RandomState draws what the seeded global RNG draws, and leaves it alone
np.random.seed(3); a = unmix_batch(x1)
np.random.seed(5); state = np.random.get_state()[1].copy()
b = unmix_batch(x1, rng=np.random.RandomState(3))
assert np.array_equal(np.random.get_state()[1], state)
assert a[1] == b[1] and torch.equal(a[0], b[0])
import unmix, unmix.mix
print("EXAMPLE-OK", unmix.__file__)
"""


def readme_example():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Un-Mix in your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short_and_uses_the_installed_name():
    code = readme_example()
    assert "from unmix import" in code and "common" not in code
    assert len(code.strip().splitlines()) <= 12


def test_readme_library_example_runs(tmp_path):
    """The example under the name ``unmix`` without installing: ``unmix`` -> ``common/`` via a link."""
    (tmp_path / "unmix").symlink_to(ROOT / "common", target_is_directory=True)
    env = script_env()
    env["PYTHONPATH"] = str(tmp_path)  # not the repository: only `unmix` is importable
    p = subprocess.run([sys.executable, "-c", readme_example() + EXAMPLE_CHECKS], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "EXAMPLE-OK" in p.stdout, p.stderr[-3000:]


def test_api_names_are_the_functions_of_the_modules():
    import common
    from common import mix, mixer
    assert common.unmix_batch is mix.unmix_batch and common.unmix_loss is mix.unmix_loss
    assert common.Mixer is mixer.Mixer
    from common import device_aug
    assert common.DeviceTransform is device_aug.DeviceTransform and common.DeviceLoader is device_aug.DeviceLoader
    assert set(common.__all__) <= set(dir(common))
    # unmix_loss is the paper's objective
    assert common.unmix_loss(1.0, 2.0, 4.0, 0.25) == 1.0 + 0.25 * 2.0 + 0.75 * 4.0
    x = __import__("torch").arange(4.0).view(4, 1, 1, 1)
    mixed, lam = common.mix_with_reverse(x, 0.25, True)
    assert np.allclose(mixed.flatten().numpy(), 0.25 * np.arange(4) + 0.75 * np.arange(4)[::-1])


def _copy_tree(dst):
    """The repository's tracked and new files, as a fresh clone would hold them (no build leftovers)."""
    for name in source_files():
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def _venv(path):
    # --system-site-packages reuses the installed torch; without its own pip the venv runs the system's pip
    # and setuptools, so the build needs no network (--no-build-isolation --no-index).
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    py = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    if sys.prefix != sys.base_prefix:
        # the tests run in a virtual environment (e.g. .venv in the clone): a new venv's "system" packages are
        # the base interpreter's, not this one's (where torch, pip, setuptools and wheel were installed); a
        # .pth file puts this environment's packages after the new venv's own
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        Path(site, "_outer_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return py


def _pip(py, *args, cwd):
    p = subprocess.run([str(py), "-m", "pip", "-q", "--disable-pip-version-check", *args, "--no-deps",
                        "--no-build-isolation", "--no-index"], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


def _run_example(py, cwd):
    env = script_env()
    env.pop("PYTHONPATH")  # the installed package only
    code = readme_example() + EXAMPLE_CHECKS + (
        "import importlib.metadata as m, sys\n"
        "print('DIST', m.distribution('unmix').locate_file(''))\n"
        "import unmix.checkpoint, unmix.data, unmix.knn, unmix.larc, unmix.logs, unmix.mixer, unmix.device_aug\n")
    p = subprocess.run([str(py), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "EXAMPLE-OK" in p.stdout, p.stderr[-3000:]
    return p.stdout


def test_pip_install_editable_and_wheel_in_fresh_venvs(tmp_path):
    src = _copy_tree(tmp_path / "clone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    py = _venv(tmp_path / "venv_editable")
    _pip(py, "install", "-e", str(src), cwd=elsewhere)
    out = _run_example(py, elsewhere)
    assert f"EXAMPLE-OK {src / 'common' / '__init__.py'}" in out  # editable: the clone's own files
    assert f"DIST {tmp_path / 'venv_editable'}" in out  # installed in this venv, not inherited

    py = _venv(tmp_path / "venv_wheel")
    _pip(py, "wheel", "-w", str(tmp_path / "dist"), str(src), cwd=elsewhere)
    wheels = list((tmp_path / "dist").glob("unmix-*.whl"))
    assert len(wheels) == 1
    modules = {f"unmix/{f.name}" for f in (src / "common").glob("*.py")}
    with zipfile.ZipFile(wheels[0]) as z:
        assert modules <= set(z.namelist())
    _pip(py, "install", str(wheels[0]), cwd=elsewhere)
    # a regular install: the files inside the venv (found without importing torch again, to stay fast)
    env = script_env()
    env.pop("PYTHONPATH")
    p = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('unmix.mix').origin)"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().startswith(str(tmp_path / "venv_wheel")) and p.stdout.strip().endswith("mix.py"), \
        p.stdout + p.stderr
