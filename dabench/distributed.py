"""One run on several processes (``torchrun --nproc-per-node N -m dabench run ...``).

Data parallelism without a wrapper around the algorithm: every rank builds the same model from
the run's seed, draws the same global batch for (seed, step) and takes its own contiguous slice
of it; before every optimiser step the gradients of that optimiser's parameters are averaged
over the ranks (one all-reduce per step and optimiser). Algorithms call their sub-networks
directly and own several optimisers (a discriminator, SagNet's three), which a
DistributedDataParallel wrapper would not see; the optimiser hook sees every one of them.
With losses that are means over a batch, N ranks with B/N images each follow one process with B
images up to the order of floating-point sums (batch-norm statistics are per rank unless
``--sync-bn``). Evaluation is sharded and the confusion matrices summed. Rank 0 alone writes the
run folder.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

import torch
import torch.distributed as dist

from dabench.errors import DabenchError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) in a plain process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: str = "auto") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU;
    ``device`` is the run's --device); a no-op outside torchrun. Each rank uses the GPU of its
    local rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and "DABENCH_PARENT" in os.environ:
        die_with_parent()  # a worker ends when torchrun's agent does, even one killed with SIGKILL
    if size > 1 and not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", size)))
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world()


def check_gpus(processes: int) -> None:
    """One process per GPU: more processes than GPUs is refused before any starts (a second rank
    on a one-GPU machine would otherwise die on CUDA's 'invalid device ordinal')."""
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise DabenchError(f"--devices {processes} starts one process per GPU, but PyTorch sees {gpus} GPU"
                           f"{'s' if gpus != 1 else ''} here. Use --devices {gpus} or fewer, or --device cpu to run "
                           f"{processes} processes on the CPU (gloo).")


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def average_(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks, in place."""
    rank, size = world()
    if size > 1:
        dist.all_reduce(tensor)
        tensor /= size
    return tensor


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def average_losses(losses: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each logged loss averaged over ranks (one all-reduce): what one process on the whole batch logs."""
    if world()[1] == 1 or not losses:
        return losses
    values = average_(torch.tensor(list(losses.values()), dtype=torch.float64, device=device))
    return dict(zip(losses, values.tolist()))


def _average_gradients(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = average_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def synchronise(algorithm) -> None:
    """Average gradients over ranks before every step of the algorithm's optimisers."""
    if world()[1] > 1:
        for optimizer in algorithm.optims.values():
            optimizer.register_step_pre_hook(_average_gradients)


def shard(indices: list[int]) -> list[int]:
    """This rank's contiguous slice of a global batch's indices (the batch size divides evenly)."""
    rank, size = world()
    if size == 1:
        return indices
    k = len(indices) // size
    return indices[rank * k : (rank + 1) * k]


def die_with_parent(parent: int | None = None) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent exits (``prctl``'s
    PR_SET_PDEATHSIG), so ``dabench run --devices N`` leaves no orphan training on when its
    process is killed. ``parent``: the pid the parent had when this process was started; if it has
    already gone, this process ends now. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took hold
