"""`patches/` and `configs/` are installed as `stop_hf.patches` and `stop_hf.configs` by pyproject.toml alone (an
editable install maps them to the checkout's folders; a regular install copies them into the package). Nothing is
mounted at run time: `check_one_tree` only refuses to run when those two resolve into another tree than `stop_hf`
itself, which happens when Python imports `stop_hf` from one checkout while a different one is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MAPPED_PACKAGES = ("patches", "configs")


def installed_location(name: str) -> Path | None:
    """Where `stop_hf.<name>` resolves (without importing it), or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(f"stop_hf.{name}")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def check_one_tree() -> None:
    """Raises ImportError when `stop_hf.patches` / `stop_hf.configs` are missing or belong to another tree."""
    for name in MAPPED_PACKAGES:
        location = installed_location(name)
        # a regular install puts them inside the package; an editable one maps the checkout's sibling folders
        allowed = (PACKAGE_DIR / name, PACKAGE_DIR.parent / name)
        if location is None:
            raise ImportError(
                f"stop_hf.{name} is not installed for the stop_hf at {PACKAGE_DIR}; install the checkout with "
                f"`pip install -e {PACKAGE_DIR.parent}` (or `pip install {PACKAGE_DIR.parent}`)"
            )
        if location not in allowed:
            raise ImportError(
                f"stop_hf is imported from {PACKAGE_DIR} but stop_hf.{name} resolves to {location}: two stop-hf "
                f"trees are mixed (the installed one is another checkout). Install this one with "
                f"`pip install -e {PACKAGE_DIR.parent}`, or run from the installed checkout."
            )
