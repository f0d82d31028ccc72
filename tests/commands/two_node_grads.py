"""Each task of a two-node SLURM step runs this (tests/commands/test_launch_two_nodes.py: srun, 2 nodes x 2 tasks).

``python two_node_grads.py VIEWS OUT``: torch.distributed is set up as a launched job sets it up (submitit's
TorchDistributedEnvironment, whose MASTER_ADDR is the job's first node, then infoview's own set-up, gloo on
CPU); each rank takes its quarter of the views in VIEWS and back-propagates every case of ``CASES`` under DDP.
Rank 0 saves the gradients, the figures and where each rank ran to OUT. The test builds the same models with
``build`` for its one-process reference on the whole batch.
"""
from __future__ import annotations

import os
import sys

import torch

# name: (method, objective, its parameters). MoCo with shuffled BatchNorm under DDP equals, on one process,
# MoCo with BatchNorm split into one group per rank (``build(name, world)``): each rank normalises its own
# queries, and its keys after the shuffle, which draws its permutation on rank 0 from the global generator.
CASES = {
    "simclr_ml_cpc": ("simclr", "ml_cpc", {"alpha": 0.5}),
    "moco_infonce": ("moco", "infonce", {}),
    "moco_ml_cpc": ("moco", "ml_cpc", {"alpha": 0.5}),
}
SHUFFLE_SEED = 7  # set on every rank, and in the reference, just before the forward pass


def build(name: str, world: int = 1, bn: str = ""):
    """The model of case ``name``: under DDP (``world`` = 1: one per rank) or for one process standing for
    ``world`` ranks; ``bn`` sets MoCo's BatchNorm mode instead."""
    from infoview.models import build_encoder, projector
    from infoview.objectives import build as build_objective
    from infoview.pretrain.methods import MoCo, SimCLR

    method, objective, params = CASES[name]
    torch.manual_seed(0)
    if method == "simclr":  # a one-block ViT: no BatchNorm, whose per-rank statistics would differ by design
        enc = build_encoder("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
        proj = projector(enc.feature_dim, 32, 16, num_layers=2, bn=False)
        return SimCLR(enc, proj, build_objective(objective, **params), num_classes=0, temperature=0.5)
    enc = build_encoder("resnet18", cifar_stem=True, channels=[8, 16, 32, 64])
    proj = projector(enc.feature_dim, 32, 16)
    modes = {"bn": bn} if bn else {"bn": "shuffle"} if world == 1 else {"bn": "split", "bn_splits": world}
    return MoCo(enc, proj, build_objective(objective, **params), num_classes=0, temperature=0.2, queue_size=32,
                **modes)


def step(model, views: list[torch.Tensor]):
    """One forward and backward pass; the gradients by parameter name and the figures."""
    torch.manual_seed(SHUFFLE_SEED)
    out = model(views)
    out.loss.backward()
    module = getattr(model, "module", model)
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads, [float(out.loss.detach()), float(out.mi)]


def main(views_file: str, out_file: str) -> None:
    import submitit
    import torch.distributed as dist

    from infoview.training import distributed as D

    torch.set_num_threads(1)
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    info, _ = D.setup("cpu")
    try:
        views = torch.load(views_file)
        b = views[0].shape[0] // info.world_size
        mine = [v[info.rank * b : (info.rank + 1) * b] for v in views]
        results = {}
        for name in CASES:
            ddp = torch.nn.parallel.DistributedDataParallel(build(name))
            results[name] = step(ddp, mine)
        import infoview

        here = (info.rank, os.environ.get("SLURMD_NODENAME"), os.environ["MASTER_ADDR"], infoview.__file__)
        results["where"] = D.all_gather_object(here)
        if info.is_main:
            torch.save(results, out_file)
        dist.barrier()
    finally:
        D.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
