"""DDP on CPU (gloo, 2 processes): ranks stay identical, the queues see the global batch, synchronised BatchNorm
equals one process on the global batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from modeling_lddetr import LDDetrModel
from modeling_lddetr.convolutional_fuser import MaskedBatchNorm1d
from tests.helpers import random_batch, tiny_config


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, sync_batchnorm: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on every rank
    model = LDDetrModel(tiny_config(queue_length=16, sync_batchnorm=sync_batchnorm))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(3):
        # rank-local data
        inputs, labels = random_batch(model.config, [9 - rank, 6, 7], [4, 3, 5], seed=100 * step + rank)
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


def _sync_batchnorm_inputs():
    generator = torch.Generator().manual_seed(7)
    x = 2 * torch.randn(4, 6, 5, generator=generator) + 1  # (B, L, C): rank r holds videos 2r, 2r + 1
    grad = torch.randn(4, 6, 5, generator=generator)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 4, 5])[:, None]).float()[..., None]
    return x, grad, mask


def _batchnorm_and_grads(bn, x, grad, mask):
    x = x.clone().requires_grad_()
    bn(x, mask).backward(grad)
    return x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def _sync_batchnorm_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    x, grad, mask = _sync_batchnorm_inputs()
    part = slice(2 * rank, 2 * rank + 2)
    results = _batchnorm_and_grads(MaskedBatchNorm1d(5, sync=True), x[part], grad[part], mask[part])
    torch.save(results, f"{out_dir}/bn{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_synchronised_masked_batchnorm_equals_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_sync_batchnorm_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "bn0.pt"), torch.load(tmp_path / "bn1.pt")
    x, grad, mask = _sync_batchnorm_inputs()
    grad_x, grad_weight, grad_bias, running_mean, running_var = _batchnorm_and_grads(
        MaskedBatchNorm1d(5), x, grad, mask
    )
    torch.testing.assert_close(torch.cat([rank0[0], rank1[0]]), grad_x, atol=1e-6, rtol=1e-5)
    # parameter gradients are per-process sums (DDP adds them up); running stats are the global batch's on each rank
    torch.testing.assert_close(rank0[1] + rank1[1], grad_weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rank0[2] + rank1[2], grad_bias, atol=1e-5, rtol=1e-5)
    for rank in (rank0, rank1):
        torch.testing.assert_close(rank[3], running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(rank[4], running_var, atol=1e-6, rtol=1e-6)
