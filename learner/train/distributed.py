"""Multi-process training under torch DDP, launched by torchrun.

    torchrun --standalone --nproc_per_node 2 -m learner.train --log RUN --out DIR --steps N

torchrun starts one process per rank and sets WORLD_SIZE, RANK, LOCAL_RANK (and MASTER_ADDR/PORT) in each
one's environment; `init_from_env` reads them and joins the process group (gloo for CPU tensors, nccl for
CUDA tensors). Without those variables it does nothing and every helper here answers as a single process
(rank 0 of 1), so the same code runs unchanged with and without torchrun.

The trainer (learner/train/trainer.py) asks `context()` who it is: rank r draws its share of each global
batch from its own RNG stream, DDP averages the gradients, rank 0 alone writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job. world_size 1 (the default) = a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "gloo" / "nccl" once the process group is up, "" for a single process

    @property
    def enabled(self) -> bool:
        """True when there are other ranks to synchronise with (gradients, flags, checkpoints)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress output."""
        return self.rank == 0


@dataclass(frozen=True)
class LaunchEnv:
    """The torchrun launch variables of this process."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The torchrun variables (WORLD_SIZE, RANK, LOCAL_RANK) of this process, None when not launched by
    torchrun. Raises ValueError on a partial or inconsistent set (e.g. RANK without WORLD_SIZE)."""
    env = os.environ if environ is None else environ
    present = [k for k in ENV_VARS if k in env]
    if not present:
        return None
    if len(present) != len(ENV_VARS):
        missing = sorted(set(ENV_VARS) - set(present))
        raise ValueError(f"incomplete torchrun environment: {', '.join(present)} set but {', '.join(missing)} missing")
    try:
        world, rank, local = (int(env[k]) for k in ENV_VARS)
    except ValueError as e:
        raise ValueError(f"torchrun variables must be integers: {({k: env[k] for k in ENV_VARS})}") from e
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"invalid torchrun variables WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local}")
    return LaunchEnv(rank=rank, world_size=world, local_rank=local)


def backend_for(device: str | torch.device) -> str:
    """The collective backend for tensors on `device`: nccl for CUDA, gloo for CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device = "cpu", timeout_s: float = 600.0) -> DistContext:
    """Join the process group when launched by torchrun (backend from `device`: gloo on CPU, nccl on CUDA,
    which also selects cuda:LOCAL_RANK); a no-op returning the single-process context otherwise, or the
    existing group's context when it is already up. `timeout_s`: seconds a collective may wait for the
    other ranks before failing (a crashed rank must not hang the rest forever)."""
    if dist.is_available() and dist.is_initialized():
        return context()
    env = launch_env()
    if env is None:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("launched by torchrun but this torch build has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("nccl asked for (a CUDA device) but CUDA is not available")
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s))
    return context()


def context() -> DistContext:
    """This process's place in the job (the single-process context when no process group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = launch_env()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=env.local_rank if env else 0, backend=str(dist.get_backend()))


def rank() -> int:
    return context().rank


def world_size() -> int:
    return context().world_size


def is_main() -> bool:
    return context().is_main


def _collective_device() -> torch.device:
    """nccl moves only CUDA tensors; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if context().backend == "nccl" else torch.device("cpu")


def broadcast_flags(flags: list[bool]) -> list[bool]:
    """Rank 0's flags on every rank (decisions that must agree, e.g. "stop now", "checkpoint now", taken
    from rank 0's clock). Identity for a single process."""
    if not context().enabled:
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_collective_device())
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def mean_scalar(value: float) -> float:
    """The mean of `value` over all ranks (itself for a single process)."""
    if not context().enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's (picklable) `obj`, in rank order, on every rank ([obj] for a single process)."""
    if not context().enabled:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for all ranks (no-op for a single process)."""
    if context().enabled:
        dist.barrier()


def teardown() -> None:
    """Leave the process group (no-op when none is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
