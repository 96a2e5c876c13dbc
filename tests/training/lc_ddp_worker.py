"""Worker for test_training_ddp.py, run by ``torch.distributed.run`` with 2 CPU/gloo ranks.

Each rank trains the same tiny collapsible MLP under DistributedDataParallel on its own
shard of a synthetic task, using the LayerCollapseRegularizer exactly as in single-process
training (coupled loss, then a few decoupled steps), and saves its slopes and penalties.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lconnx.training import LayerCollapseRegularizer, make_collapsible, param_groups


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # same data and initial model everywhere
    x = torch.randn(512, 16)
    teacher = torch.randn(16, 4)
    y = (x @ teacher + 0.3 * torch.relu(x[:, :4])).argmax(1)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4)
    )
    make_collapsible(model, per_channel=True, init=0.01)
    ddp = DistributedDataParallel(model)
    reg = LayerCollapseRegularizer(ddp, strength=5.0, schedule="linear_warmup", warmup_steps=10)
    opt = torch.optim.AdamW(param_groups(ddp, 1e-4, slope_lr=2e-2), lr=1e-2)

    shard = torch.arange(rank, len(x), world)  # each rank sees different samples
    gen = torch.Generator().manual_seed(100 + rank)  # and shuffles them differently
    penalties = [reg.penalty().item()]
    for _ in range(15):
        perm = shard[torch.randperm(len(shard), generator=gen)]
        for i in range(0, len(perm), 32):
            idx = perm[i : i + 32]
            loss = F.cross_entropy(ddp(x[idx]), y[idx]) + reg.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            reg.step()
        penalties.append(reg.penalty().item())
    for _ in range(5):
        reg.decoupled_step(lr=1e-2)
    penalties.append(reg.penalty().item())

    torch.save(
        {
            "rank": rank,
            "slopes": reg.slopes(),
            "penalties": penalties,
            "max_deviation": reg.report().max_deviation,
            "fc_weight": model[0].weight.detach().clone(),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
