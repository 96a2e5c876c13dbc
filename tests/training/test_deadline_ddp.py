"""The deadline band under DistributedDataParallel: 2 CPU ranks with gloo via torchrun.

This file is also the worker: torchrun runs it as a script. Each rank trains the same
collapsible MLP on its own shard with Adam (different data per rank, so only DDP's gradient
averaging keeps the ranks together) and the band attached to the optimiser; the slopes must
stay bit-identical across ranks at every step and be exactly 1 from the deadline on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 24
STEPS = 30


def worker(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from lconnx.training import LayerCollapseRegularizer, make_collapsible, param_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same data and initial model everywhere
    x = torch.randn(512, 16)
    y = (x @ torch.randn(16, 4) + 0.3 * torch.relu(x[:, :4])).argmax(1)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4)
    )  # fmt: skip
    make_collapsible(model, per_channel=True, init=0.01)
    ddp = DistributedDataParallel(model)
    reg = LayerCollapseRegularizer(ddp, strength=1.0, deadline_steps=DEADLINE, shape="cosine")
    opt = torch.optim.Adam(param_groups(ddp, 0.0), lr=3e-4)
    handle = reg.attach(opt)  # the loop below never calls reg.step()
    shard = torch.arange(rank, len(x), world)
    gen = torch.Generator().manual_seed(100 + rank)
    history = []
    for _ in range(STEPS):
        idx = shard[torch.randperm(len(shard), generator=gen)[:32]]
        loss = F.cross_entropy(ddp(x[idx]), y[idx]) + reg.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(torch.cat([a.flatten() for a in reg.slopes().values()]))
    handle.remove()
    torch.save(
        {"history": torch.stack(history), "steps": reg.current_step, "w": model[0].weight.detach()},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_band_under_ddp_keeps_ranks_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        __file__, str(tmp_path),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - start < 60

    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["steps"] == r1["steps"] == STEPS
    assert torch.equal(r0["history"], r1["history"])  # every step, every slope, bit for bit
    assert torch.equal(r0["w"], r1["w"])
    history = r0["history"]
    assert (history[DEADLINE - 2] != 1.0).any()  # still moving just before the deadline
    assert torch.equal(history[DEADLINE - 1 :], torch.ones_like(history[DEADLINE - 1 :]))


if __name__ == "__main__":
    worker(sys.argv[1])
