"""`patches/` and `configs/` sit next to `stop_hf/` in the source tree and are installed as `stop_hf.patches` and
`stop_hf.configs`. When Python imports `stop_hf` straight from a checkout (the repo root on sys.path shadows the
installed mapping), mount the sibling folders so both layouts behave the same."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def mount_sibling_package(name: str, folder: str) -> None:
    full = f"stop_hf.{name}"
    if full in sys.modules:
        return
    try:
        if importlib.util.find_spec(full) is not None:
            return
    except ModuleNotFoundError:
        pass
    directory = SOURCE_ROOT / folder
    if not directory.is_dir():
        raise ModuleNotFoundError(f"{full} is neither installed nor found at {directory}")
    init = directory / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(full, init, submodule_search_locations=[str(directory)])
    else:  # a data-only folder (configs/)
        spec = ModuleSpec(full, None, is_package=True)
        spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
