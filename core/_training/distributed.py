"""Where training runs: the device, and data-parallel processes started by ``torchrun``.

``torchrun --nproc-per-node N -m polymodal train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; each process then trains on its share of every batch, and DDP averages the
gradients (gloo on CPU, NCCL on GPUs). Only rank 0 writes files and holds the output locks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .._errors import SpecError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    #: Whether this context started the process group (and so ends it); a process group a
    #: caller started (a search training trial after trial in it) is left to the caller.
    owns_process_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError([("training.device", f"{name} was asked for but no CUDA GPU is available")])
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def start(device: str) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, resolve_device(device))
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), target, owns)


def stop(context: Context) -> None:
    if context.distributed and context.owns_process_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def summed(context: Context, *values: torch.Tensor | float) -> list[float]:
    """Each value summed over the processes, in one collective (one process: the values)."""
    if not context.distributed:
        return [float(v) for v in values]
    together = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=context.device)
                            for v in values])
    import torch.distributed as dist

    dist.all_reduce(together)
    return together.tolist()


def all_agree(context: Context, ok: bool) -> bool:
    """Whether ``ok`` holds in every process (one process: ``ok``). Every process must call it,
    so that one that cannot go on stops the others instead of leaving them waiting."""
    if not context.distributed:
        return ok
    import torch.distributed as dist

    flag = torch.tensor([1.0 if ok else 0.0], device=context.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
