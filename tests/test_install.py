"""`stop_hf.patches` and `stop_hf.configs` come from the install (pyproject.toml), never from a run-time mount: every
`stop_hf.*` module loads from one tree, a second checkout installed editable loads its own `patches/`, mixing two
trees raises a clear ImportError, and a regular (non-editable) install works."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import site
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
    """A throwaway venv that sees this interpreter's packages (torch, transformers, pip and the setuptools the test
    extra installs), whether this interpreter is a system Python or itself a venv: `--system-site-packages` alone
    would see the *base* interpreter's packages, which a user's venv does not share. No download, no build tools
    beyond what the project installs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # appended after the venv's own site-packages, so what the venv installs shadows this interpreter's copy
    (Path(own_site) / "_outer_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


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


def test_the_build_tools_these_tests_use_come_from_the_test_extra():
    """The editable and regular installs above build without isolation, from the installed setuptools: the test
    extra must install one that builds wheels on its own (bdist_wheel is built in from setuptools 70.1), so the
    suite does not depend on a `wheel` package the machine happens to have."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = {
        Requirement(r).name: Requirement(r) for r in pyproject["project"]["optional-dependencies"]["test"]
    }
    assert "setuptools" in extra, (
        "the test extra must install setuptools (tests/test_install.py builds with it)"
    )
    assert not extra["setuptools"].specifier.contains("70.0"), extra["setuptools"]
    assert Version(version("setuptools")) >= Version("70.1")
    assert "wheel" not in pyproject["build-system"]["requires"]
