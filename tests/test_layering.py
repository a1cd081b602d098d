"""Layering: product code never imports the test kit. `stop_hf.testing` re-exports product modules (the tiny models
of `stop_hf.tiny`, the frame I/O of `stop_hf.video`), never the other way round; a user's `stop-hf demo` must not
depend on test helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import stop_hf.patches

import stop_hf

PACKAGE_DIR = Path(stop_hf.__file__).resolve().parent
PATCHES_DIR = Path(stop_hf.patches.__file__).resolve().parent
TEST_KIT = "stop_hf.testing"


def _module_name(path: Path) -> str:
    """The dotted name `path` is imported as: stop_hf.<...> (patches/ is installed as stop_hf.patches)."""
    if path.is_relative_to(PATCHES_DIR):
        parts = ["stop_hf", "patches", *path.relative_to(PATCHES_DIR).with_suffix("").parts]
    else:
        parts = ["stop_hf", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_test_kit(name: str) -> bool:
    return name == TEST_KIT or name.startswith(TEST_KIT + ".")


def kit_imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, statement) of every import of stop_hf.testing in `source`, absolute or relative, including
    `importlib.import_module("stop_hf.testing...")`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        if any(_is_test_kit(t) for t in targets):
            found.append((node.lineno, ast.get_source_segment(source, node) or ""))
    return found


def _product_modules() -> list[Path]:
    files = {p.resolve() for root in (PACKAGE_DIR, PATCHES_DIR) for p in root.rglob("*.py")}
    kit = PACKAGE_DIR / "testing"
    return sorted(p for p in files if not p.is_relative_to(kit))


def test_product_code_never_imports_the_test_kit():
    modules = _product_modules()
    assert PACKAGE_DIR / "tiny.py" in modules and PATCHES_DIR / "base.py" in modules
    offences = []
    for path in modules:
        for line, statement in kit_imports_in(
            path.read_text(), _module_name(path), is_package=path.name == "__init__.py"
        ):
            offences.append(f"{path}:{line}: {statement}")
    assert not offences, (
        "product code imports stop_hf.testing (move what it needs into a product module):\n"
        + ("\n".join(offences))
    )


@pytest.mark.parametrize(
    ("source", "module", "flagged"),
    [
        ("import stop_hf.testing", "stop_hf.runner", True),
        ("import stop_hf.testing.models as m", "stop_hf.runner", True),
        ("from stop_hf.testing.video import write_video", "stop_hf.runner", True),
        ("from stop_hf import testing", "stop_hf.runner", True),
        ("def f():\n    from ..testing import build_tiny_model", "stop_hf.eval.lmms", True),
        ("from .. import testing", "stop_hf.cli.demo", True),
        ("from .testing.models import token_id", "stop_hf.runner", True),
        ("from ..testing.models import VOCAB_SIZE", "stop_hf.patches.qwen2_5_vl", True),
        ("importlib.import_module('stop_hf.testing.siglip')", "stop_hf.bench", True),
        ("from .video import write_video", "stop_hf.runner", False),
        ("from stop_hf.tiny import VOCAB_SIZE, token_id", "stop_hf.patches.qwen2_5_vl", False),
        ("import torch.testing\nfrom torch import testing", "stop_hf.bench", False),
        ("from stop_hf import testing_notes", "stop_hf.runner", False),
        ("from .testing import x", "stop_hf.cli.demo", False),  # stop_hf.cli.testing, not the kit
    ],
)
def test_the_layering_check_resolves_imports(source, module, flagged):
    assert bool(kit_imports_in(source, module)) is flagged


def test_relative_imports_in_a_package_init_resolve_from_the_package():
    assert kit_imports_in("from .testing import x", "stop_hf", is_package=True)
    assert not kit_imports_in("from .testing import x", "stop_hf.cli", is_package=True)


def test_kit_names_stay_importable_from_the_test_kit():
    """Tests and users import the moved names from stop_hf.testing; they are the product objects themselves."""
    from stop_hf import siglip_head, tiny, video
    from stop_hf.testing import models, siglip
    from stop_hf.testing import video as kit_video

    for name in (
        "VOCAB_SIZE",
        "token_id",
        "build_tiny_model",
        "build_processor",
        "tiny_checkpoint",
        "QK_SCALE",
    ):
        assert getattr(models, name) is getattr(tiny, name)
    for name in ("write_video", "synthetic_frames", "read_video"):
        assert getattr(kit_video, name) is getattr(video, name)
    assert siglip.save_random_siglip_head is siglip_head.save_random_siglip_head
    assert tuple(stop_hf.patches.ARCHITECTURES) == models.ARCHITECTURES


def test_the_tiny_model_runs_without_loading_the_test_kit(tmp_path):
    """At run time too: the demo's pieces (every CLI and eval module, the tiny model and processor, a generated
    video, one answer) leave stop_hf.testing unloaded."""
    import subprocess
    import sys

    script = f"""
import importlib, pkgutil, sys
import stop_hf, stop_hf.cli, stop_hf.eval
for package in (stop_hf, stop_hf.cli, stop_hf.eval):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name != "stop_hf.testing" and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
from stop_hf.runner import VideoLLM
from stop_hf.tiny import build_processor, build_tiny_model
from stop_hf.video import write_video
path = write_video({str(tmp_path / "clip.mp4")!r}, num_frames=2, height=64, width=64)
llm = VideoLLM(build_tiny_model("llava_onevision"), build_processor("llava_onevision"), num_frames=2)
llm.answer(path, "what happens ?", max_new_tokens=1)
print(sorted(name for name in sys.modules if name.startswith("stop_hf.testing")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
