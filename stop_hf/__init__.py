"""stop-hf: sink-token-aware video token pruning (SToP) for HuggingFace video LLMs.

`import stop_hf` makes `from_pretrained(..., stop_config=...)` work on the supported HF classes and does nothing
else to transformers.
"""

from __future__ import annotations

from ._install import check_one_tree
from .config import StopConfig, StopConfigError, list_presets
from .hooks import StopUnsupportedError, report_embeddings
from .loading import (
    from_pretrained,
    get_stop_config,
    install_from_pretrained_kwarg,
    is_patched,
    last_prune_report,
    patch,
    unpatch,
)
from .sink import Sink, sink_score
from .validation import StopInputError

__version__ = "0.1.0"

check_one_tree()
install_from_pretrained_kwarg()

__all__ = [
    "Sink",
    "StopConfig",
    "StopConfigError",
    "StopInputError",
    "StopUnsupportedError",
    "from_pretrained",
    "get_stop_config",
    "is_patched",
    "last_prune_report",
    "list_presets",
    "patch",
    "report_embeddings",
    "sink_score",
    "unpatch",
]
