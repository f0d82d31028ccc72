"""torch.distributed for the engine: set-up from the environment, and gathers.

A run is distributed when the environment says so: ``WORLD_SIZE`` > 1 with
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (what
``torchrun`` sets, and what the SLURM launcher sets from submitit's job
environment). One process drives one GPU (NCCL) or one CPU process (gloo).

Two gathers, and why each is the way it is:

- :func:`gather_with_grad` concatenates a tensor from every rank and lets the
  gradient flow back to each rank's own slice: its backward sums the incoming
  gradients across ranks (reduce-scatter on NCCL, all-reduce then slice on
  gloo). We do not use ``torch.distributed.nn.functional.all_gather``
  (deprecated): with torch 2.14 on gloo, SimCLR's gradients through it did not
  match the single-process ones in tests/pretrain/test_pretrain_ddp.py, while
  this function's do (we did not pin down why; a toy gather through it was right).
  Combined with DDP's gradient averaging this gives exactly the gradient of
  the loss computed on the whole global batch in one process: rank r's
  embeddings receive sum_s dL_s/dz_r from all ranks' losses L_s, and DDP then
  divides the parameter gradient by the world size. The common bug is a plain
  ``all_gather``, which drops the gradient through other ranks' copies, so each
  rank learns only from its own anchors (tested in tests/pretrain).
- :func:`gather_no_grad` for keys that never need a gradient (MoCo's queue).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from infoview.errors import InfoviewError
from infoview.utils.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InfoviewError(f"environment variable {name}={value!r} is not an integer") from None


def env_info() -> DistInfo:
    """Rank, world size and local rank from the environment (1 process when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise InfoviewError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process group")
    return DistInfo(rank, world, local)


TIMEOUT_ENV = "INFOVIEW_DIST_TIMEOUT_MIN"


def timeout_minutes(default: float = 30.0) -> float:
    """How long a collective waits for the other processes before the run fails: $INFOVIEW_DIST_TIMEOUT_MIN or 30."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return default
    try:
        minutes = float(value)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0:
        raise InfoviewError(f"{TIMEOUT_ENV}={value!r}: expected a number of minutes > 0 (how long a collective "
                            "waits for the other processes before the run fails)")
    return minutes


def setup(device: str = "auto", timeout_min: float | None = None) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when the environment asks for one; pick this process's device.

    ``device=auto`` or ``cuda`` takes GPU ``LOCAL_RANK`` under DDP. Safe to call
    when a group already exists (it is reused). ``timeout_min``: the collectives'
    timeout; None reads :func:`timeout_minutes`.
    """
    info = env_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if info.distributed and not (dist.is_available() and dist.is_initialized()):
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise InfoviewError(
                    f"WORLD_SIZE={info.world_size} but {var} is not set; launch with torchrun or "
                    "`infoview launch`, which set it"
                )
        _check_master_addr(os.environ["MASTER_ADDR"])
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=info.rank, world_size=info.world_size,
            timeout=datetime.timedelta(minutes=timeout_min if timeout_min is not None else timeout_minutes()),
            device_id=dev if dev.type == "cuda" else None,
        )
    return info, dev


def _check_master_addr(addr: str) -> None:
    """A rendezvous host that does not resolve is an error now, not a hang until the process group's timeout.

    torch retries an unknown MASTER_ADDR until ``timeout_min`` runs out (30 minutes). Under SLURM the
    address is the job's first node's name (submitit takes it from SLURM_JOB_NODELIST), which every node
    must resolve.
    """
    try:
        socket.getaddrinfo(addr, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise InfoviewError(
            f"MASTER_ADDR={addr} does not resolve on {socket.gethostname()} ({getattr(exc, 'strerror', exc)}): "
            "every process must reach the rendezvous host, under SLURM the job's first node by its name "
            "(check the cluster's DNS or /etc/hosts)"
        ) from None


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def row_offset(local_rows: int) -> int:
    """Where this rank's ``local_rows`` rows start in a batch gathered from every rank (0 on one process)."""
    return dist.get_rank() * local_rows if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: sum the gradient over ranks, keep this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # the incoming gradient is often a strided view
        n = grad.shape[0] // dist.get_world_size()
        if dist.get_backend() == "nccl":  # half the traffic of an all_reduce
            mine = torch.empty_like(grad[:n])
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        dist.all_reduce(grad)  # gloo has no reduce_scatter
        r = dist.get_rank()
        return grad[r * n : (r + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) along dim 0, differentiably."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x.contiguous())


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def shuffle_across_ranks(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffled BN: give each rank a random slice of the global batch.

    Returns this rank's shuffled slice and the index that undoes it
    (:func:`unshuffle_across_ranks`). The permutation is drawn on rank 0 and
    broadcast. One process: the batch is returned as it is.
    """
    if not is_distributed():
        return x, torch.arange(x.shape[0], device=x.device)
    full = gather_no_grad(x)
    n = full.shape[0]
    if dist.get_rank() == 0:
        perm = torch.randperm(n, generator=generator).to(x.device)
    else:
        perm = torch.empty(n, dtype=torch.long, device=x.device)
    dist.broadcast(perm, src=0)
    b, r = x.shape[0], dist.get_rank()
    return full[perm[r * b : (r + 1) * b]], torch.argsort(perm)


@torch.no_grad()
def unshuffle_across_ranks(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    full = gather_no_grad(x)
    b, r = x.shape[0], dist.get_rank()
    return full[unshuffle[r * b : (r + 1) * b]]
