"""What method=la adds to a CIFAR-10 epoch: its k-means and the bank's share of each step.

Synthetic data, no images: a bank of --samples unit rows (CIFAR-10's train split: 50,000) of width
128, and a batch of --batch embeddings standing in for the projector's output. Times

- kmeans_s: one epoch's clusterings (--num-kmeans clusterings of --k clusters, --iters Lloyd iterations
  each, ``LocalAggregation.recluster``), done once at the start of every epoch: --timed-kmeans of them
  are timed (each costs the same: same shapes, same iterations) and scaled to --num-kmeans;
- step_s: the bank's part of one step (``LocalAggregation.forward`` after the encoder: the certificate
  against every row, the scores, the background top-k, the close-neighbour mask, the loss and its backward
  to the embeddings, the bank update), the median of --repeats;

and per_epoch_s = kmeans_s + steps_per_epoch x step_s, steps = samples // batch (wall clock; the
``*_cpu_s`` fields are the process's CPU time, what a shared machine's load does not inflate). The encoder's own cost
is not in it (the same as any method's on one view). Prints one JSON line.

    python benchmarks/la_cost.py                      # infoview/configs/la_cifar10.yaml's settings, CPU
    python benchmarks/la_cost.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infoview.objectives import build  # noqa: E402
from infoview.pretrain.methods.la import LocalAggregation  # noqa: E402


class _Given(nn.Identity):
    """An encoder (and a head) that returns the embeddings it is given: only the method's own work is timed."""

    def __init__(self, dim: int):
        super().__init__()
        self.feature_dim = self.out_dim = dim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--background-k", type=int, default=4096)
    p.add_argument("--num-kmeans", type=int, default=10)
    p.add_argument("--timed-kmeans", type=int, default=2, help="clusterings timed (scaled to --num-kmeans)")
    p.add_argument("--k", type=int, default=400)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    la = LocalAggregation(
        _Given(a.dim), _Given(a.dim), build("infonce"), 0, a.samples, background_k=a.background_k,
        num_kmeans=min(a.timed_kmeans, a.num_kmeans), k=a.k, kmeans_iters=a.iters, kmeans_start_epoch=0,
    ).to(dev)
    # a bank with structure, as after some training: 100 blobs on the sphere
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(100, a.dim, generator=gen), dim=1)
    rows = centres[torch.randint(0, 100, (a.samples,), generator=gen)] + 0.3 * torch.randn(a.samples, a.dim,
                                                                                                generator=gen)
    la.bank.bank.copy_(F.normalize(rows, dim=1).to(dev))

    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    la.set_progress(0, 1, 0.0)
    sync()
    per_clustering = (time.perf_counter() - t0) / la.num_kmeans
    cpu_per_clustering = (time.process_time() - c0) / la.num_kmeans
    kmeans_s = per_clustering * a.num_kmeans

    times, cpu_times = [], []
    for r in range(a.repeats + 1):
        z = torch.randn(a.batch, a.dim, generator=gen).to(dev).requires_grad_(True)
        idx = torch.randperm(a.samples, generator=gen)[: a.batch].to(dev)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = la([z], None, idx)
        out.loss.backward()
        sync()
        if r:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    step_s = statistics.median(times)
    steps = a.samples // a.batch
    print(json.dumps({
        "benchmark": "la_cost", "device": str(dev), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "samples": a.samples, "batch": a.batch, "dim": a.dim, "background_k": a.background_k,
        "num_kmeans": a.num_kmeans, "k": a.k, "iters": a.iters,
        "kmeans_s": round(kmeans_s, 3), "kmeans_per_clustering_s": round(per_clustering, 3),
        "kmeans_cpu_s": round(cpu_per_clustering * a.num_kmeans, 3),
        "step_s": round(step_s, 4), "step_cpu_s": round(statistics.median(cpu_times), 4),
        "steps_per_epoch": steps, "per_epoch_s": round(kmeans_s + steps * step_s, 2),
    }))


if __name__ == "__main__":
    main()
