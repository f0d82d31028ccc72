"""Where negatives come from when the batch is too small: a FIFO queue and a memory bank.

InfoNCE certifies at most log(K + 1) nats with K negatives, so a bound worth
reporting needs many of them. Two ways to have many without a huge batch:

- :class:`NegativeQueue` (MoCo, He et al. 2020): the keys of the last
  ``size`` samples, produced by the momentum encoder, in a ring buffer. Each
  step enqueues the new keys over the oldest ones.
- :class:`MemoryBank` (instance discrimination, Wu et al. 2018): one slowly
  updated embedding per training sample; negatives are drawn at random from
  the other samples' rows.

:class:`EpochVisits` keeps which samples the current epoch has visited: what
a bank's rows reveal about the loader's order, which a bank's MI bound must
take into account (:mod:`infoview.objectives.bank`).

Both keep their state in persistent buffers, so they move with ``.to(device)``
and are saved in and restored from checkpoints with the model. Their random
initial rows come from their own ``torch.Generator`` (``seed``), so building
one does not move the global random stream the rest of a run depends on.
Neither gathers across DDP ranks: callers enqueue the keys gathered from all
ranks so that every rank's queue stays the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError, InfoviewError


def _check_positive(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner} {name} must be a positive int, got {value!r}")
    return value


def _random_unit_rows(n: int, dim: int, seed: int | None) -> torch.Tensor:
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh entropy, still without touching the global generator
    else:
        gen.manual_seed(int(seed))
    return F.normalize(torch.randn(n, dim, generator=gen), dim=1)


class NegativeQueue(nn.Module):
    """A ring buffer of ``size`` L2-normalised keys of width ``dim`` (MoCo's queue).

    ``negatives`` (or calling the module) returns a copy of all ``size`` rows.
    Until ``filled`` reaches ``size`` some rows are still the random initial
    ones; rows ``[:filled]`` are always real keys.
    """

    def __init__(self, dim: int, size: int = 65536, seed: int | None = 0) -> None:
        super().__init__()
        self.dim = _check_positive("NegativeQueue", "dim", dim)
        self.size = _check_positive("NegativeQueue", "size", size)
        self.register_buffer("keys", _random_unit_rows(size, dim, seed))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # real keys so far, capped at size

    @property
    def filled(self) -> int:
        """How many real keys the queue holds (at most ``size``)."""
        return int(self.count)

    @property
    def negatives(self) -> torch.Tensor:
        """(size, dim) detached copy of the queue: later enqueues do not change it."""
        return self.keys.detach().clone()

    def forward(self) -> torch.Tensor:
        return self.negatives

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write (B, dim) keys over the oldest ones; with B > size only the last ``size`` stay."""
        if not isinstance(keys, torch.Tensor) or keys.dim() != 2 or keys.shape[1] != self.dim:
            shape = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise InfoviewError(f"NegativeQueue.enqueue expects keys of shape (B, {self.dim}), got {shape}")
        b = keys.shape[0]
        if b == 0:
            return
        keys = keys.detach().to(device=self.keys.device, dtype=self.keys.dtype)
        start = int(self.ptr)
        rows = (start + torch.arange(b, device=self.keys.device)) % self.size
        if b > self.size:  # as if written one by one: only the last `size` survive
            rows, keys = rows[-self.size :], keys[-self.size :]
        self.keys.index_copy_(0, rows, keys)
        self.ptr.fill_((start + b) % self.size)
        self.count.fill_(min(int(self.count) + b, self.size))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


class MemoryBank(nn.Module):
    """One L2-normalised embedding per training sample (Wu et al. 2018, instance discrimination).

    ``update`` moves the rows of a batch towards its new features::

        bank[i] <- normalize(momentum * bank[i] + (1 - momentum) * normalize(feat_i))

    and ``negatives(indices, k)`` draws, for every row, ``k`` rows of *other*
    samples uniformly (with replacement).
    """

    def __init__(self, num_samples: int, dim: int, momentum: float = 0.5, seed: int | None = 0) -> None:
        super().__init__()
        self.num_samples = _check_positive("MemoryBank", "num_samples", num_samples)
        self.dim = _check_positive("MemoryBank", "dim", dim)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ConfigError(f"MemoryBank momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("bank", _random_unit_rows(num_samples, dim, seed))

    def _check_indices(self, indices, what: str) -> torch.Tensor:
        indices = torch.as_tensor(indices, device=self.bank.device)
        if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise InfoviewError(
                f"MemoryBank.{what} expects a 1-D integer tensor of sample indices, "
                f"got shape {tuple(indices.shape)} {indices.dtype}"
            )
        bad = indices[(indices < 0) | (indices >= self.num_samples)]
        if bad.numel():
            shown = ", ".join(str(int(i)) for i in bad[:8].tolist()) + (", ..." if bad.numel() > 8 else "")
            raise InfoviewError(
                f"MemoryBank.{what}: indices out of range [0, {self.num_samples}): {shown}"
            )
        return indices.long()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor) -> None:
        """Blend the rows ``indices`` with ``feats`` (B, dim); detached. A repeated index keeps one write."""
        indices = self._check_indices(indices, "update")
        if feats.dim() != 2 or feats.shape != (indices.numel(), self.dim):
            raise InfoviewError(
                f"MemoryBank.update expects feats of shape ({indices.numel()}, {self.dim}) "
                f"for {indices.numel()} indices, got {tuple(feats.shape)}"
            )
        feats = F.normalize(feats.detach().to(self.bank), dim=1)
        mixed = self.momentum * self.bank[indices] + (1.0 - self.momentum) * feats
        self.bank[indices] = F.normalize(mixed, dim=1)

    def sample(self, indices: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, k) indices drawn uniformly from the N - 1 samples other than each row's own."""
        indices = self._check_indices(indices, "sample")
        k = _check_positive("MemoryBank.sample", "k", k)
        if self.num_samples < 2:
            raise InfoviewError("MemoryBank.sample needs at least 2 samples to draw negatives from, the bank has 1")
        device = generator.device if generator is not None else self.bank.device
        # draw from N - 1 slots and skip over the row's own index
        draw = torch.randint(0, self.num_samples - 1, (indices.numel(), k), generator=generator, device=device)
        draw = draw.to(indices.device)
        return draw + (draw >= indices[:, None]).long()

    def negatives(self, indices: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, k, dim) bank rows of other samples, see :meth:`sample`."""
        return self.bank[self.sample(indices, k, generator=generator)].detach()

    def forward(self, indices: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.negatives(indices, k, generator=generator)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, dim={self.dim}, momentum={self.momentum}"


#: ``EpochVisits.epoch`` of a state saved before visits were kept: unknown until the next epoch starts
UNKNOWN_EPOCH = -2


class EpochVisits(nn.Module):
    """Which of ``num_samples`` samples the current epoch has visited (a loader visits each once an epoch).

    ``start(epoch)`` forgets the visits when ``epoch`` is not the one they were made in (call it before every
    step: only a new epoch resets); ``mark(indices)`` records a step's samples (callers mark those gathered
    from every rank, so that every rank keeps the same set). Both buffers are saved with the model, so a run
    resumed mid-epoch knows what its epoch visited. A state saved before they existed loads as every sample
    visited until the next epoch starts (a bound that uses them then reads 0: nothing is assumed).
    """

    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.num_samples = _check_positive("EpochVisits", "num_samples", num_samples)
        self.register_buffer("visited", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("epoch", torch.tensor(-1, dtype=torch.long))  # the epoch the visits belong to

    def start(self, epoch: int) -> None:
        known = int(self.epoch)
        if known == UNKNOWN_EPOCH:  # the resumed epoch of an old state: keep "all visited" until it ends
            self.epoch.fill_(int(epoch))
        elif known != int(epoch):
            self.visited.zero_()
            self.epoch.fill_(int(epoch))

    @torch.no_grad()
    def mark(self, indices: torch.Tensor) -> None:
        self.visited[indices.to(self.visited.device).long()] = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        names = (prefix + "visited", prefix + "epoch")
        if not any(name in state_dict for name in names):  # a checkpoint from before visits were kept
            self.visited.fill_(True)
            self.epoch.fill_(UNKNOWN_EPOCH)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"
