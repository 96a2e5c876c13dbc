"""The regulariser under DistributedDataParallel: 2 CPU ranks with gloo via torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("lc_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_regulariser_under_ddp_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), str(tmp_path),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 60, f"DDP test took {elapsed:.1f}s"

    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert set(r0["slopes"]) == {"1", "3"}  # unwrapped names, no "module." prefix
    for name in r0["slopes"]:
        assert torch.equal(r0["slopes"][name], r1["slopes"][name]), name
    assert torch.equal(r0["fc_weight"], r1["fc_weight"])
    assert r0["penalties"] == r1["penalties"]

    penalties = r0["penalties"]
    assert penalties[0] == pytest.approx(2 * (1 - 0.01) ** 2)
    assert penalties[-1] < 1e-3 * penalties[0]
    falling = penalties[:8]  # strictly falling while far from 1, then at the noise floor
    assert all(b < a for a, b in zip(falling, falling[1:], strict=False)), penalties
    assert penalties[-1] < penalties[-2]  # the decoupled steps only shrink |1 - a|
    assert r0["max_deviation"] < 0.05
