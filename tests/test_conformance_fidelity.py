"""FlashVID reproduces the reference by default (issue 21): the fixtures in tests/fixtures/conformance_fidelity
(repeated picks, torch.cdist near-ties, w2 averaged per frame, alpha = 0) reproduce through `run_case`.

Rows that share a source index (a copy and a cluster centre of the same position) are compared as a set, because the
reference orders them with an unstable argsort; embeddings within 1e-5.

Which token a repeated pick repeats, and how a cdist near-tie resolves, is decided by the last bit of a GEMM, which
depends on the BLAS kernel the CPU runs. stop-hf multiplies the same shapes with the same torch ops as the reference,
so it equals the unmodified reference under every kernel (checked: MKL AVX2 and AVX-512, 1 and 2 threads, every
FlashVID fixture). The fixtures were produced under two kernels, so the cases that depend on it run in a subprocess
pinned to theirs (`BLAS`); the others run here, under any kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stop_hf.testing.conformance import load_case, run_case

LOCAL = Path(__file__).resolve().parent / "fixtures" / "conformance_fidelity"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "conformance_fidelity"
FIXTURES = LOCAL if LOCAL.is_dir() else SHARED
FILES = sorted(FIXTURES.glob("*.safetensors"))

#: the BLAS kernel each kernel-dependent fixture was produced under (MKL's instruction set and thread count)
MKL_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
MKL_AVX512 = {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
BLAS = {
    "flashvid_stop_r013": MKL_AVX2,  # repeated picks
    "flashvid_stop_r032": MKL_AVX2,  # repeated picks
    "flashvid_stop_r027": MKL_AVX2,  # cdist near-tie
    "flashvid_baseline_r031": MKL_AVX512,  # cdist near-tie
}


def mismatch(path: Path) -> str | None:
    """None when `run_case(path)` reproduces the fixture, else what differs."""
    tensors, _ = load_case(path)
    result = run_case(path)
    index, kind, embeds = tensors["expected_index"], tensors["expected_kind"], tensors["expected_embeds"]
    if result.index.shape != index.shape:
        return f"M = {result.index.numel()}, expected {index.numel()}"
    if not torch.equal(result.index, index):
        return f"{int((result.index != index).sum())} rows keep another source index"
    for value in torch.unique(index).tolist():
        rows = torch.nonzero(index == value).squeeze(-1)
        mine = sorted(zip(result.kind[rows].tolist(), result.embeds[rows].tolist()))
        theirs = sorted(zip(kind[rows].tolist(), embeds[rows].tolist()))
        if [k for k, _ in mine] != [k for k, _ in theirs]:
            return f"index {value}: kinds {[k for k, _ in mine]} vs {[k for k, _ in theirs]}"
        for (_, a), (_, b) in zip(mine, theirs):
            if not torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5):
                return f"index {value}: embeddings differ by more than 1e-5"
    copies = result.kind == 0
    flat = tensors["features"].reshape(-1, tensors["features"].shape[-1])
    if not torch.equal(result.embeds[copies], flat[result.index[copies]]):
        return "a copied row is not its source token bit for bit"
    return None


def _ids(path: Path) -> str:
    return path.stem


@pytest.mark.parametrize("path", [p for p in FILES if p.stem not in BLAS], ids=_ids)
def test_fixture_reproduces(path):
    assert mismatch(path) is None


def _mkl_kernel_available(env: dict[str, str]) -> str | None:
    """Why `env` cannot be emulated here (None when it can)."""
    if not torch.backends.mkl.is_available():
        return "torch is not built with MKL"
    if env["MKL_ENABLE_INSTRUCTIONS"] == "AVX512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        return "the CPU has no AVX-512"
    return None


@pytest.mark.parametrize("path", [p for p in FILES if p.stem in BLAS], ids=_ids)
def test_kernel_dependent_fixture_reproduces_under_its_kernel(path):
    env = BLAS[path.stem]
    reason = _mkl_kernel_available(env)
    if reason:
        pytest.skip(f"{path.stem} was produced by MKL {env['MKL_ENABLE_INSTRUCTIONS']}: {reason}")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); from test_conformance_fidelity import mismatch; "
        "from pathlib import Path; print(json.dumps(mismatch(Path(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(Path(__file__).parent)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is None


def test_every_fidelity_fixture_is_covered():
    names = {p.stem for p in FILES}
    assert len(names) >= 6 and set(BLAS) <= names
