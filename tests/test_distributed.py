"""DDP on CPU (gloo, 2 processes): ranks stay identical and the queues see the global batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from modeling_lddetr import LDDetrModel
from tests.helpers import random_batch, tiny_config


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, sync_batchnorm: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on every rank
    model = LDDetrModel(tiny_config(queue_length=16, sync_batchnorm=sync_batchnorm))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(3):
        inputs, labels = random_batch(model.config, [9 - rank, 6, 7], [4, 3, 5], seed=100 * step + rank)  # rank-local data
        ddp.train()
        loss = ddp(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _run(tmp_path, sync_batchnorm):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), sync_batchnorm), nprocs=2, join=True)
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


@pytest.mark.slow
def test_ddp_ranks_hold_identical_weights_and_queues(tmp_path):
    state0, state1 = _run(tmp_path, sync_batchnorm=True)
    for key in state0:
        torch.testing.assert_close(state0[key], state1[key], atol=1e-6, rtol=0, msg=key)
    # 3 steps x global batch of 6 momentum features entered the queue of length 16
    assert state0["distill_align.queue_ptr"].item() == (3 * 6) % 16
    # the newest columns are this step's two ranks, rank 0 first: they differ (different local data)
    queue = state0["distill_align.video_queue"]
    rank0_cols, rank1_cols = queue[:, [12, 13, 14]], queue[:, [15, 0, 1]]
    assert (rank0_cols - rank1_cols).abs().max() > 1e-3
