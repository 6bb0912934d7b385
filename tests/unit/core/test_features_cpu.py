"""Features do not depend on the CPU: numpy picks SIMD kernels by the CPU it runs on, and some
(float32 ``expm1`` on AVX-512) round the last bit differently. The same batch's features are
computed in subprocesses with numpy's dispatch capped at each x86-64 level this machine has
(``NPY_DISABLE_CPU_FEATURES``; on a machine without a level, capping it changes nothing) and
must be bit-identical. Found when the recorded suggestion bytes of ``test_batch`` differed on
an AVX-512 machine (the price ratio's ``expm1``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import hashlib, numpy as np
from worker.core.candidates import generate_candidates
from worker.core.features import build_features
from worker.core.pipeline import advance_sessions
from worker.core.records import BrowsingEvent
from worker.core.session import SessionStore
from worker.testing import tiny_catalogue

tables = tiny_catalogue(seed=3)
rng = np.random.default_rng(5)
n = 400
items = rng.integers(0, tables.n_products, n).astype(np.int32)
events = [
    BrowsingEvent(f"e{i}", f"u{i % 37}", f"s{i % 37}", int(rng.integers(0, 3)),
                  str(tables.product_ids[items[i]]), None, None, 1_700_000_000_000 + 997 * i)
    for i in range(n)
]
batch = advance_sessions(SessionStore(history=20), events, items)
cands = generate_candidates(tables, batch.items, batch.current_item, 20)
x = build_features(tables, batch, cands)
print(hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
"""

#: numpy's dispatch capped at AVX-512 (none disabled), AVX2 (X86_V3) and SSE4.2 (X86_V2).
CAPS = ("", "X86_V4 AVX512_ICL AVX512_SPR", "X86_V3 X86_V4 AVX512_ICL AVX512_SPR")


def _digest(disabled: str) -> str:
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_features_are_bit_identical_whatever_simd_numpy_dispatches_to() -> None:
    digests = {cap: _digest(cap) for cap in CAPS}
    assert len(set(digests.values())) == 1, digests
    assert len(next(iter(digests.values()))) == len(hashlib.sha256().hexdigest())
