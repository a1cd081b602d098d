"""`stop_hf.patches` and `stop_hf.configs` come from the install (pyproject.toml), never from a run-time mount: every
`stop_hf.*` module loads from one tree, a second checkout installed editable loads its own `patches/`, mixing two
trees raises a clear ImportError, and a regular (non-editable) install works."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import stop_hf

PACKAGE_DIR = Path(stop_hf.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
#: where a module of this install may live: the package, or (editable) the checkout's mapped sibling folders
TREES = (PACKAGE_DIR, ROOT / "patches", ROOT / "configs")


def _import_everything() -> None:
    for package in ("stop_hf", "stop_hf.patches", "stop_hf.pruners", "stop_hf.testing", "stop_hf.cli"):
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__, f"{package}."):
            if not info.name.endswith("__main__"):  # running the CLI is not importing it
                importlib.import_module(info.name)
    importlib.import_module("stop_hf.configs")


def test_every_stop_hf_module_loads_from_one_tree():
    _import_everything()
    modules = {name: m for name, m in sys.modules.items() if name == "stop_hf" or name.startswith("stop_hf.")}
    assert {"stop_hf.patches", "stop_hf.configs", "stop_hf.pruners", "stop_hf.hooks"} <= set(modules)
    strays = {}
    for name, module in modules.items():
        file = getattr(module, "__file__", None)
        if file is None:
            strays[name] = f"no __file__ (a mounted or namespace module: {module!r})"
            continue
        path = Path(file).resolve()
        if not any(path.is_relative_to(tree) for tree in TREES):
            strays[name] = str(path)
    assert not strays, f"stop_hf modules outside {[str(t) for t in TREES]}: {strays}"
    assert not hasattr(stop_hf, "_layout"), "stop_hf must not mount patches/ or configs/ at run time"


def test_presets_come_from_the_installed_configs():
    from stop_hf.config import list_presets, presets_dir

    assert presets_dir().resolve() in (PACKAGE_DIR / "configs", ROOT / "configs")
    assert "holitom_stop_r10" in list_presets()


def _copy_checkout(destination: Path) -> None:
    """This checkout's files as git sees them (tracked and untracked, not ignored): a second checkout of this tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _venv(path: Path) -> Path:
    """A throwaway venv over the system site-packages; pip and setuptools are the system's (no download, no wheel)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True
    )
    return path / "bin" / "python"


def _pip_install(python: Path, *args: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


PROBE = (
    "import stop_hf, stop_hf.patches, stop_hf.configs, stop_hf.config as c; "
    "print(stop_hf.__file__); print(stop_hf.patches.__file__); print(c.presets_dir())"
)


@pytest.fixture(scope="module")
def second_checkout(tmp_path_factory):
    """A copy of this checkout, installed editable into a throwaway venv over the system packages."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of stop-hf (this is an installed copy)")
    base = tmp_path_factory.mktemp("second_checkout")
    clone = base / "clone"
    _copy_checkout(clone)
    python = _venv(base / "venv")
    _pip_install(python, "-e", str(clone))
    return clone, python


def _probe(python: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_second_checkout_loads_its_own_patches(second_checkout, tmp_path):
    clone, python = second_checkout
    done = _probe(python, tmp_path)  # a neutral directory: only the install decides
    assert done.returncode == 0, done.stderr
    package, patches, configs = (Path(line).resolve() for line in done.stdout.split())
    assert package == clone.resolve() / "stop_hf" / "__init__.py"
    assert patches == clone.resolve() / "patches" / "__init__.py"
    assert configs == clone.resolve() / "configs"


def test_mixing_two_checkouts_raises_naming_both_trees(second_checkout):
    clone, python = second_checkout
    # run from this checkout's root (it shadows the install on sys.path) while the clone is the installed one
    done = _probe(python, ROOT)
    assert done.returncode != 0
    assert "two stop-hf trees are mixed" in done.stderr
    assert str(ROOT / "stop_hf") in done.stderr and str(clone.resolve() / "patches") in done.stderr


def test_a_regular_install_ships_patches_and_configs(second_checkout, tmp_path):
    clone, _ = second_checkout
    python = _venv(tmp_path / "venv")
    _pip_install(python, str(clone))
    done = _probe(python, tmp_path)
    assert done.returncode == 0, done.stderr
    package, patches, configs = (Path(line).resolve() for line in done.stdout.split())
    site = package.parent
    assert site.parent.is_relative_to(tmp_path / "venv"), package
    assert patches == site / "patches" / "__init__.py"
    assert configs == site / "configs" and (configs / "holitom_stop_r10.yaml").is_file()
