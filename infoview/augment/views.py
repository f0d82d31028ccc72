"""``Views``: the module that turns a batch of images into V augmented views."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from infoview.augment.choices import BACKENDS
from infoview.augment.fused import FusedView, _Consts
from infoview.augment.recipes import ViewSpec, blur_kernel_size, normalization, resolve
from infoview.errors import ConfigError, InfoviewError

# On a CPU, views are made this many floats of output at a time (16 MiB): large
# enough to amortise per-op overhead, small enough to stay in cache and in the
# allocator's reusable heap. A GPU does the whole batch at once.
CPU_CHUNK_ELEMS = 1 << 22
CPU_SUB_ELEMS = 1 << 19  # the hue shift's ~15 passes run on pieces this big (2 MiB), in cache


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise InfoviewError(f"views expect a tensor batch (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InfoviewError(
            f"views expect a batch of shape (B, 3, H, W) (or 1 channel), got {tuple(images.shape)}"
        )
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise InfoviewError(
            f"views expect uint8 images (0..255) or float images in [0, 1], got dtype {images.dtype}"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


class Views(nn.Module):
    """uint8 (0..255) or float ([0, 1]) batch (B, 3, H, W) in, list of normalised float32 views out.

    Made by :func:`build_views`. Everything runs on the input's device; the
    module holds no tensors, so ``.to(device)`` is not needed. Views come in
    the order of :attr:`specs` (multi-crop: global views first, then local).

    Seeding: with ``seed`` given, the module owns a CPU ``torch.Generator``;
    each call draws that call's parameters from it, so two modules built with
    the same seed yield the same sequence of views, on any device, and the
    global RNG is untouched. ``manual_seed`` restarts the sequence and
    ``get_rng_state`` / ``set_rng_state`` save and restore it (for resuming).
    Without a seed, draws come from torch's global CPU generator, so
    ``torch.manual_seed`` governs them. Under DDP give each rank its own seed
    (e.g. ``seed + rank``), or all ranks draw the same crops.
    """

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int | None = None,
        backend: str = "fused",
        name: str = "<custom>",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown views backend '{backend}'; valid: {', '.join(BACKENDS)}")
        self.specs = list(specs)
        self.mean, self.std = tuple(mean), tuple(std)
        self.backend = backend
        self.cpu_chunk_elems = CPU_CHUNK_ELEMS
        self.recipe = name
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.manual_seed(seed)
        self._consts: dict[torch.device, _Consts] = {}
        self._cpu_buffer: torch.Tensor | None = None
        if backend == "fused":
            self._makers = [FusedView(s) for s in self.specs]
        else:
            self.pipelines = nn.ModuleList(_kornia_pipeline(s, self.mean, self.std) for s in self.specs)

    # -- seeding -------------------------------------------------------------
    def manual_seed(self, seed: int) -> "Views":
        """Restart the view sequence from ``seed`` (gives the module its own generator)."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)
        return self

    def get_rng_state(self) -> torch.Tensor:
        gen = self.generator if self.generator is not None else torch.default_generator
        return gen.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.set_state(state)

    # -- forward -------------------------------------------------------------
    @property
    def num_views(self) -> int:
        return len(self.specs)

    @property
    def sizes(self) -> list[int]:
        return [s.size for s in self.specs]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = _check_images(images)
        if self.backend == "kornia":
            return self._forward_kornia(images)
        b, _, h, w = images.shape
        dev = images.device
        if dev not in self._consts:
            self._consts[dev] = _Consts(self.mean, self.std, dev)
        consts = self._consts[dev]
        scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0  # folded into the colour matrix
        x = self._as_float(images)
        # all host-side draws first, so the device work of the views is queued back to back
        params = [m.sample(b, h, w, self.generator) for m in self._makers]
        outs = []
        for maker, p in zip(self._makers, params):
            if dev.type == "cpu":
                per = 3 * maker.size * maker.size
                chunk, sub = max(1, self.cpu_chunk_elems // per), max(1, CPU_SUB_ELEMS // per)
            else:
                chunk = sub = b
            outs.append(maker.apply(x, scale, p, consts, chunk, sub))
        return outs

    def _as_float(self, images: torch.Tensor) -> torch.Tensor:
        """float32 copy of a uint8 batch (values kept 0..255), contiguous.

        On a CPU the buffer is kept and reused: a fresh one this large is a new
        memory mapping every call, and the page faults cost as much as the copy.
        """
        if images.dtype == torch.float32 and images.is_contiguous():
            return images
        if images.device.type != "cpu":
            return images.float().contiguous()
        need = images.numel()
        if self._cpu_buffer is None or self._cpu_buffer.numel() < need:
            self._cpu_buffer = torch.empty(need, dtype=torch.float32)
        return self._cpu_buffer[:need].view(images.shape).copy_(images)

    def _forward_kornia(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.generator is None:
            return [pipe(x) for pipe in self.pipelines]
        # kornia draws from torch's global RNG: seed it from our generator inside
        # a fork, so the caller's global RNG state is left as it was
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        cuda = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(x.device):
                    torch.cuda.manual_seed(seed)
            return [pipe(x) for pipe in self.pipelines]

    def extra_repr(self) -> str:
        return (
            f"recipe={self.recipe!r}, backend={self.backend!r}, sizes={self.sizes}, "
            f"seeded={self.generator is not None}"
        )


def _kornia_pipeline(spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """The same view with kornia's augmentation modules (the reference backend)."""
    import kornia.augmentation as K

    ops = spec.ops
    s = spec.size
    jit = ops["jitter"]
    mods: list[nn.Module] = [
        K.RandomResizedCrop(
            (s, s), scale=ops["crop"]["scale"], ratio=ops["crop"]["ratio"], cropping_mode="resample",
            align_corners=False,
        ),
        K.RandomHorizontalFlip(p=ops["flip"]["p"]),
        K.ColorJitter(jit["brightness"], jit["contrast"], jit["saturation"], jit["hue"], p=jit["p"]),
        K.RandomGrayscale(p=ops["grayscale"]["p"]),
    ]
    blur = ops["blur"]
    if s >= blur["min_size"] and blur["p"] > 0:
        k = blur_kernel_size(s, blur["kernel_frac"])
        mods.append(K.RandomGaussianBlur((k, k), blur["sigma"], p=blur["p"]))
    sol = ops["solarize"]
    if sol["p"] > 0:
        t = sol["threshold"]
        mods.append(K.RandomSolarize(thresholds=(t, t), additions=(0.0, 0.0), p=sol["p"]))
    mods.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return nn.Sequential(*mods)


def build_views(
    recipe: str | Mapping[str, Any],
    size: int,
    num_views: int = 2,
    seed: int | None = None,
    mean: Iterable[float] | None = None,
    std: Iterable[float] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    normalize: str = "imagenet",
    num_local: int | None = None,
    local_size: int | None = None,
    backend: str = "fused",
) -> Views:
    """Build the view module for ``recipe`` (see :func:`available_recipes`).

    Args:
        recipe: a name in ``RECIPES`` (simclr, mocov2, byol, multicrop) or a
            recipe dict of the same shape.
        size: side of the (global) views in pixels.
        num_views: number of views (multicrop: of global views).
        seed: seeds the module's own generator; None draws from torch's global RNG.
        mean, std: normalisation, replacing the ``normalize`` preset's.
        overrides: edits to the recipe, nested or dotted, e.g. ``{"jitter.p": 0.5}``.
        normalize: preset for mean/std: ``imagenet`` (default), ``cifar10``,
            ``cifar100`` or ``none``.
        num_local, local_size: multicrop's local crops (default 6 at ~3/7 of size).
        backend: ``fused`` (default, fast) or ``kornia`` (kornia's modules, the reference).
    """
    name = recipe if isinstance(recipe, str) else "<custom>"
    specs = resolve(recipe, size, num_views, overrides, num_local=num_local, local_size=local_size)
    m, s = normalization(normalize, mean, std)
    return Views(specs, m, s, seed=seed, backend=backend, name=name)
