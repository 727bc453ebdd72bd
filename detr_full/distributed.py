"""Multi-process training helpers (torchrun), kept to what the engine and train loop need.

Differences from the official `util/misc.py`:
- NCCL on CUDA, **gloo on CPU** (the official code is NCCL-only), so the distributed path can be
  tested on a laptop: `torchrun --nproc_per_node 2 -m detr_full.train --device cpu ...`.
- Only torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) is
  read; no SLURM branch and no `--dist_url` file rendezvous.
- `print` is not monkey-patched on other ranks: callers guard their output with `is_main_process()`.
- Object gathering uses `torch.distributed.all_gather_object` instead of hand-pickled byte tensors.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def init_distributed(device_type: str = "cpu") -> bool:
    """Join the process group described by torchrun's environment variables.

    `device_type` is "cuda" (NCCL backend, one GPU per process, chosen by `LOCAL_RANK`) or "cpu"
    (gloo). Returns True when running distributed, False for a single process (no `WORLD_SIZE`,
    or `WORLD_SIZE=1`). Calling it again once initialised is a no-op.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # before init: NCCL binds each process to its GPU
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank)
    dist.barrier()
    return True


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _comm_device() -> torch.device:
    """Where tensors must live for a collective: NCCL only moves CUDA tensors."""
    if is_dist_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Tensor) -> Tensor:
    """Element-wise sum of `values` over all processes (a copy; the input is untouched)."""
    if get_world_size() == 1:
        return values.clone()
    out = values.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def reduce_mean_dict(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Average each scalar tensor of `values` over all processes (the official `reduce_dict`).

    Keys are sorted so every rank stacks them in the same order. Returns detached tensors.
    """
    if get_world_size() == 1 or not values:
        return {k: v.detach() for k, v in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])  # (n_keys,)
    summed = all_reduce_sum(stacked) / get_world_size()
    return dict(zip(keys, summed.unbind(0)))


def all_gather_object(obj: Any) -> list[Any]:
    """Return `[obj_rank0, obj_rank1, ...]` from every process (`[obj]` when not distributed)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
