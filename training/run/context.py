"""Where a training process runs: device choice, DDP set-up under torchrun (gloo on CPU, NCCL on GPUs),
threads and seeding. Explicit state: a `RunContext` value, no globals beyond torch's own."""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class RunContext:
    """One process of a run: `device` ("cpu", "cuda:0"...), `rank` of `world` processes (1 without torchrun)."""

    device: str
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine (e.g. device=cuda without a GPU)."""


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; an explicit "cuda..." without a GPU is an error.

    Raises:
        DeviceUnavailable: CUDA requested but unavailable.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device={name} requested but no CUDA GPU is available (use device=cpu or auto)")
    return name


def start(device: str, threads: int = 0) -> RunContext:
    """Resolve the device and, under torchrun (WORLD_SIZE > 1), join the process group: NCCL with one GPU per
    local rank, gloo on CPU. `threads` > 0 sets torch's intra-op threads."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
        if dev.startswith("cuda"):
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(dev)
    if threads:
        torch.set_num_threads(threads)
    return RunContext(dev, rank, world)


def finish(ctx: RunContext) -> None:
    """Wait for every process, then leave the process group (no-op for one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(module, ctx: RunContext):
    """`module` wrapped in DistributedDataParallel for a multi-process run, else itself."""
    if not ctx.distributed:
        return module
    import torch

    return torch.nn.parallel.DistributedDataParallel(module)


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def step_rng(seed: int, ctx: RunContext, step: int) -> np.random.Generator:
    """The numpy generator of a run's data sampling: distinct per rank and per resume step, reproducible."""
    return np.random.default_rng(seed * 1000 + ctx.rank * 7919 + step)
