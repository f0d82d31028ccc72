"""What only a GPU run exercises: bf16 autocast around the objectives, channels_last, torch.compile, NCCL.

Marked ``gpu``: skipped without CUDA. With INFOVIEW_GPU_TESTS_ON_CPU=1 they
run on the CPU instead (``benchmarks/gpu_check.py --dry-run``), which checks
the tests, not the GPU: bf16 autocast is the CPU's, channels_last is applied
by hand (the trainer uses it on CUDA only), torch.compile uses the
``aot_eager`` backend (dynamo and AOT autograd, no inductor code generation,
which takes half a minute per graph on a small CPU), and DDP runs on gloo.

Each comparison is between two runs of the same tiny pretraining step
(a ResNet with one block per stage and 8..64 channels, SimCLR on
scikit-learn's bundled digits at 16 px, so no data files are needed): the
same seed gives the same initial weights, the same batch and the same views,
so the losses and the parameter updates after a few steps must agree to the
precision's rounding, and a wrong path (a layout read as another, a compiled
graph that differs, a gradient DDP scales or drops) moves them far apart.
"""
from __future__ import annotations

import contextlib
import functools
import math

import pytest
import torch

from infoview.objectives import available, build, cross_view_pairs, in_batch_pairs, objective_params, queue_logits

pytestmark = pytest.mark.gpu

TEMPERATURE = 0.2
# parameters that keep every objective away from its defaults' corner cases (ml_cpc's alpha = 1 is valid but plain)
OBJECTIVE_KW = {"ml_cpc": {"alpha": 0.1}, "ring": {"outer": 0.1, "inner": 0.1}}

TINY = [
    "data.source=digits",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.backend=pytorch",
    "augment.size=16",
    "model.arch=resnet18",
    "model.cifar_stem=true",
    "model.kwargs.channels=[8,16,32,64]",
    "model.kwargs.layers=[1,1,1,1]",
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "optim.warmup_epochs=0",
    "optim.lr=0.004",  # small steps: the runs stay where a rounding difference is not amplified
    "train.progress=false",
    "train.eval_every=0",
    "train.ckpt_every_steps=0",
    "train.max_steps=100",
]
STEPS = 3
# relative difference allowed between two runs that should be the same computation: fp32 (TF32 off),
# kernels that sum in another order (seen on CPU: 1e-5 on the loss, 3e-6 on the update; cuDNN's Winograd
# and FFT convolutions round more, hence the margin); bf16, each run rounds its activations on its own
# (seen on CPU: 1.5e-2 on the loss, 1.5e-2 on the update after 3 steps). A wrong path is far outside:
# unrelated updates differ by about 1.4, a sign flip by 2, a doubled gradient by 1.
TOL = {"fp32": {"loss": 1e-3, "update": 1e-2}, "bf16": {"loss": 5e-2, "update": 0.1}}


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for the block: fp32 on Ampere and later otherwise multiplies in 10-bit mantissas."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------- objectives under bf16 autocast


def make_objective(name: str):
    kw = dict(OBJECTIVE_KW.get(name, {}))
    if "temperature" in objective_params(name):
        kw["temperature"] = TEMPERATURE
    return build(name, **kw)


def objective_paths(obj, z: torch.Tensor, queue: torch.Tensor) -> dict[str, tuple]:
    """(loss, mi) on SimCLR's masked in-batch rows, the certified cross-view matrix and MoCo's queue rows."""
    out = {}
    r = obj(*in_batch_pairs(z, TEMPERATURE, masked=True))
    out["in_batch"] = (r.loss, r.mi)
    r = obj.bound(*cross_view_pairs(z[0], z[1], TEMPERATURE))
    out["cross_view"] = (None, r.mi)
    r = obj(*queue_logits(z[0], z[1], queue, TEMPERATURE))
    out["queue"] = (r.loss, r.mi)
    return out


@pytest.mark.parametrize("name", available())
def test_objective_under_bf16_autocast_agrees_with_fp32(gpu_device, name):
    """The pairs and the objectives compute in float32 with autocast off, so autocast changes nothing.

    1. The same float32 embeddings inside ``torch.autocast(bfloat16)``: loss, bound and gradient
       equal the float32 ones (a matmul left under autocast would round the scores to bf16).
    2. bf16 embeddings, as a projector under autocast emits them: every output is float32 and equals
       the float32 computation on the same (rounded) values.
    3. Against the unrounded embeddings, the loss moves only by bf16's rounding of the inputs.
    """
    dev = gpu_device
    obj = make_objective(name).to(dev)
    g = torch.Generator().manual_seed(0)
    b, d = 64, 32
    base = torch.randn(2, b, d, generator=g).to(dev)
    queue = torch.nn.functional.normalize(torch.randn(256, d, generator=g), dim=-1).to(dev)

    def run(z_in: torch.Tensor, autocast: bool):
        z = z_in.detach().clone().requires_grad_(True)
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with exact_fp32(), ctx:
            out = objective_paths(obj, z, queue)
        losses = [loss for loss, _ in out.values() if loss is not None]
        for loss in losses:
            assert loss.dtype in (torch.float32, torch.float64), f"{name}: loss in {loss.dtype} under autocast"
        total = sum(losses)
        total.backward()
        return {k: (None if loss is None else loss.item(), mi.item()) for k, (loss, mi) in out.items()}, z.grad

    ref, ref_grad = run(base, autocast=False)
    for path, (loss, mi) in ref.items():
        assert loss is None or math.isfinite(loss), f"{name} {path}: loss {loss}"
        assert math.isfinite(mi) or mi == -math.inf, f"{name} {path}: mi {mi}"

    # 1. float32 inputs inside autocast
    got, grad = run(base, autocast=True)
    for path in ref:
        for what, x, y in zip(("loss", "mi"), got[path], ref[path]):
            if y is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-6), f"{name} {path} {what} under autocast: {x} vs {y}"
    assert rel(grad, ref_grad) < 1e-5, f"{name}: gradient under autocast differs by {rel(grad, ref_grad):.2e}"

    # 2. bf16 embeddings (what a model under autocast hands over)
    z16 = base.to(torch.bfloat16)
    got16, grad16 = run(z16, autocast=True)
    ref16, _ = run(z16.float(), autocast=False)
    assert grad16.dtype == torch.bfloat16  # the gradient comes back in the embeddings' dtype
    for path in ref16:
        for what, x, y in zip(("loss", "mi"), got16[path], ref16[path]):
            if y is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-6), f"{name} {path} {what} on bf16 inputs: {x} vs {y}"

    # 3. bf16 rounding of the embeddings (relative 2^-8 per entry) moves the loss little
    for path in ref:
        x, y = got16[path][0], ref[path][0]
        if y is not None:
            assert x == pytest.approx(y, rel=2e-2, abs=2e-2), f"{name} {path}: loss {x} on bf16 inputs vs {y} in fp32"


# --------------------------------------------------------------------------- a pretraining step: layouts, compile, DDP


def make_trainer(dev: torch.device, tmp_path, tag: str, precision: str, channels_last: bool, compile: bool = False):
    from infoview.commands import build_config
    from infoview.pretrain.engine import Trainer

    device = "cuda" if dev.type == "cuda" else "cpu"
    _, cfg = build_config("pretrain", [
        *TINY, f"out_dir={tmp_path / tag}", f"train.device={device}", f"train.precision={precision}",
        f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile).lower()}"])
    trainer = Trainer(cfg)
    if dev.type == "cpu" and channels_last:
        # the trainer keeps CPU runs contiguous; apply what it does on CUDA, so that the path is exercised
        trainer.channels_last = True
        trainer.method.to(memory_format=torch.channels_last)
    assert trainer.channels_last == channels_last
    return trainer


def first_batch(trainer):
    for images, labels in trainer.loader:
        return images, labels
    raise AssertionError("the loader yielded no batch")


def train(trainer, images, labels, steps: int = STEPS) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of ``steps`` steps on views of one batch, and the parameters afterwards."""
    trainer.method.train()
    losses = []
    for _ in range(steps):
        views = trainer.make_views(images)
        if trainer.channels_last:
            assert all(v.is_contiguous(memory_format=torch.channels_last) for v in views)
        _, stats, _ = trainer.train_step(views, labels)
        assert not stats.nonfinite, f"the loss is not finite: {stats.loss}"
        losses.append(stats.loss)
        trainer.step += 1
    params = {n: p.detach().float().clone() for n, p in trainer.method.named_parameters()}
    return losses, params


def compare(a, b, start: dict[str, torch.Tensor], precision: str, what: str) -> None:
    (loss_a, params_a), (loss_b, params_b) = a, b
    tol = TOL[precision]
    for i, (x, y) in enumerate(zip(loss_a, loss_b)):
        assert x == pytest.approx(y, rel=tol["loss"]), f"{what}, {precision}: step {i} loss {x} vs {y}"
    # the whole update of every parameter after the steps: this is what a wrong gradient moves
    upd_a = torch.cat([(params_a[n] - start[n]).flatten() for n in start])
    upd_b = torch.cat([(params_b[n] - start[n]).flatten() for n in start])
    assert upd_b.norm() > 0, f"{what}: the parameters did not move"
    diff = rel(upd_a, upd_b)
    assert diff < tol["update"], f"{what}, {precision}: parameter updates differ by {diff:.2e} (relative)"


def initial_params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in trainer.method.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_step_matches_contiguous(gpu_device, tmp_path, precision):
    with exact_fp32():
        plain = make_trainer(gpu_device, tmp_path, "plain", precision, channels_last=False)
        images, labels = first_batch(plain)
        start = initial_params(plain)
        ref = train(plain, images, labels)
        cl = make_trainer(gpu_device, tmp_path, "cl", precision, channels_last=True)
        assert all(torch.equal(start[n], p.detach().float()) for n, p in cl.method.named_parameters())
        convs = [m for m in cl.method.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        got = train(cl, images, labels)
    compare(got, ref, start, precision, "channels_last against contiguous")


def test_compiled_step_matches_eager(gpu_device, tmp_path, monkeypatch):
    precision = "bf16" if gpu_device.type == "cuda" else "fp32"  # the GPU default (train.precision=auto)
    if gpu_device.type == "cpu":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    with exact_fp32():
        eager = make_trainer(gpu_device, tmp_path, "eager", precision, channels_last=True)
        images, labels = first_batch(eager)
        start = initial_params(eager)
        ref = train(eager, images, labels)
        compiled = make_trainer(gpu_device, tmp_path, "compiled", precision, channels_last=True, compile=True)
        assert compiled.model is not compiled.method and hasattr(compiled.model, "_orig_mod"), \
            "train.compile=true did not compile the model"
        got = train(compiled, images, labels)
    compare(got, ref, start, precision, "torch.compile against eager")


def test_ddp_one_process_step_matches_no_ddp(gpu_device, tmp_path):
    """DDP over a one-process group (NCCL on CUDA, gloo on CPU) trains as the bare model."""
    import torch.distributed as dist

    from infoview.training import distributed as D

    backend = "nccl" if gpu_device.type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        pytest.fail(f"torch.distributed with the {backend} backend is not available in this torch build")
    precision = "bf16" if gpu_device.type == "cuda" else "fp32"
    with exact_fp32():
        bare = make_trainer(gpu_device, tmp_path, "bare", precision, channels_last=True)
        images, labels = first_batch(bare)
        start = initial_params(bare)
        ref = train(bare, images, labels)

        assert not dist.is_initialized()
        kw = {"device_id": gpu_device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1, **kw)
        try:
            assert dist.get_backend() == backend
            ddp = make_trainer(gpu_device, tmp_path, "ddp", precision, channels_last=True)
            ddp.model = torch.nn.parallel.DistributedDataParallel(
                ddp.method, device_ids=[gpu_device] if gpu_device.type == "cuda" else None)
            got = train(ddp, images, labels)
            # the group really carried a collective on this backend
            t = torch.ones(3, device=gpu_device)
            dist.all_reduce(t)
            assert t.tolist() == [1.0, 1.0, 1.0]
        finally:
            D.teardown()
    compare(got, ref, start, precision, f"DDP ({backend}, one process) against no DDP")
