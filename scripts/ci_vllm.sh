#!/usr/bin/env bash
# CI for stop-hf's vLLM plugin (issue 22): builds the CPU vLLM venv with scripts/setup_vllm.sh (reused when it already
# imports) and runs the plugin tests there. Usage: bash scripts/ci_vllm.sh [VENV]  (default: $TMPDIR/stop-hf-vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${STOP_HF_VLLM_VENV:-${TMPDIR:-/tmp}/stop-hf-vllm}}
if ! "$VENV/bin/python" -c "import vllm, stop_hf.vllm" 2>/dev/null; then
  rm -rf "$VENV"
  bash scripts/setup_vllm.sh "$VENV"
else
  "$VENV/bin/python" -m pip install -q --no-deps -e .  # this checkout, in case the venv held another one
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_ENABLE_V1_MULTIPROCESSING=0
# the engines start once per architecture and are shared by every test (module scope); bounded in time. The
# contract and invariant suites run here too: this venv holds the transformers (5.19) and torch (2.13) that vLLM
# pins (STOP_HF_VLLM_FULL=0 leaves the invariant suites out).
suites=(tests/test_vllm_plugin.py tests/test_vllm_llava.py tests/test_vllm_serving_cases.py tests/test_vllm_internvl.py
  tests/test_vllm_bench.py tests/test_compat.py)
if [ "${STOP_HF_VLLM_FULL:-1}" = 1 ]; then suites+=(tests/test_architectures.py tests/test_qwen3_vl.py); fi
timeout "${STOP_HF_VLLM_TIMEOUT:-1500}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${suites[@]}"
# each MoE engine file in its own process: vLLM creates its parallel groups once per process, and after a dense
# engine there is no expert-parallel group ("expert parallel group is not initialized")
for moe in tests/test_vllm_moe.py tests/test_vllm_qwen3_5.py; do
  timeout "${STOP_HF_VLLM_TIMEOUT:-1500}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$moe"
done
