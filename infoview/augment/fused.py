"""The default view maker: every op of a view in a handful of batched kernels.

One view of a batch costs, whatever its recipe:

1. crop + resize + horizontal flip: one ``grid_sample`` over a per-sample
   axis-aligned sampling grid (the flip is a sign in the grid, not a pass);
2. colour jitter + grayscale + normalisation: brightness, contrast,
   saturation, grayscale and normalisation are affine maps of the RGB pixel,
   so they fold into one per-sample 3x3 matrix and offset (``bmm``) and one
   clamp. Hue is not affine: the steps the sample draws before hue go into one
   matrix, then the clamp, the exact HSV hue shift (torchvision's formula,
   about ten elementwise passes), and the steps after it go into a second
   matrix. The four jitter steps run in a random order per sample, as in
   torchvision; contrast's grey level at its turn follows from the crop's (or
   the hue-shifted image's) per-channel means through the same affine maps;
3. gaussian blur: two depthwise 1-D convolutions on the samples drawn for it;
4. solarize: one ``where`` on the samples drawn for it.

How this differs from torchvision's per-image ops (and from kornia's modules,
which the ``kornia`` backend uses as the reference): between brightness,
contrast and saturation nothing is clamped to [0, 1] (clamps happen before
the hue shift and at the end); without those intermediate clamps the three
steps commute, so the results match wherever no step leaves [0, 1]. Blur
kernel taps further than 4 sigma_max from the centre (weights below 1e-4 of
the total) are dropped. Blur and solarize act on the normalised image, which
is the same as acting before normalising: the blur is linear with weights
summing to one, and the solarize threshold and inversion are mapped into
normalised units. Resizing is bilinear without antialiasing: let the loader
resize images to about the view size, as it does, so crops are rarely shrunk.

Random parameters are drawn on the CPU from the module's ``torch.Generator``
(or torch's global CPU generator when no seed was given), a fixed number of
draws per op whatever its probability, so the same seed gives the same views
on any device, and changing one op's probability leaves the other ops' draws
alone. Which samples get blurred or solarized is then known on the host, so
choosing them costs no device synchronisation.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from infoview.augment.recipes import ViewSpec, blur_kernel_size

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
_CROP_TRIES = 10


def _uniform(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64).mul_(hi - lo).add_(lo)


def sample_crops(
    batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    gen: torch.Generator | None,
) -> torch.Tensor:
    """(B, 4) integer boxes ``top, left, h, w`` with torchvision's RandomResizedCrop rule.

    Up to 10 tries per sample of an area fraction in ``scale`` and a log-uniform
    aspect ratio in ``ratio``; the first that fits wins, else a centre crop with
    the ratio clamped into range. Vectorised over the batch and the tries.
    """
    area = float(height * width)
    frac = _uniform((batch, _CROP_TRIES), scale[0], scale[1], gen)
    log_r = _uniform((batch, _CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), gen)
    pos = torch.rand((batch, 2), generator=gen, dtype=torch.float64)
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * frac * r))
    h = torch.round(torch.sqrt(area * frac / r))
    ok = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first True (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # fallback: the whole image, with its ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    found = ok.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.floor(pos[:, 0] * (height - h + 1)).clamp_(max=height - h)
    left = torch.floor(pos[:, 1] * (width - w + 1)).clamp_(max=width - w)
    return torch.stack([top, left, h, w], dim=1).float()


def crop_grid(boxes: torch.Tensor, flip: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid (B, size, size, 2) that crops ``boxes``, resizes and flips.

    Pixel centres map to pixel centres (``align_corners=False``): output column
    ``u`` samples input x = left + (u + 0.5) * w / size - 0.5.
    """
    dev = boxes.device
    top, left, h, w = boxes.unbind(1)
    u = torch.arange(size, device=dev, dtype=torch.float32) + 0.5  # (S,)
    ux = torch.where(flip[:, None], size - u, u)  # mirrored column centres
    gx = (2 * left[:, None] + 2 * ux * (w[:, None] / size)) / width - 1
    gy = (2 * top[:, None] + 2 * u * (h[:, None] / size)) / height - 1
    grid = torch.empty(boxes.shape[0], size, size, 2, device=dev)
    grid[..., 0] = gx[:, None, :]  # (filling beats stacking expanded tensors ~5x on CPU)
    grid[..., 1] = gy[:, :, None]
    return grid


def hsv_hue_shift(
    x: torch.Tensor, shift: torch.Tensor, c: "_Consts", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Shift the HSV hue of ``x`` (n,3,h,w) in [0, 1] by ``shift`` (n,) turns, as torchvision's adjust_hue.

    Value (max) and chroma (max - min) are kept; the hue sector H in [0, 6) is
    read from which channel is largest, moved, and the channels rebuilt as
    ``V - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (H + (5, 3, 1)) mod 6``.
    """
    n = x.shape[0]
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)
    chroma = v - x.amin(dim=1)
    safe = torch.where(chroma > 0, chroma, 1.0)
    hue = torch.where(v == r, (g - b) / safe, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = hue.add_(6 * shift.view(n, 1, 1))  # the one remainder below wraps it
    k = (hue.unsqueeze(1) + c.hue_offsets).remainder_(6)
    k = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.sub(v.unsqueeze(1), k.mul_(chroma.unsqueeze(1)), out=k if out is None else out)


class _Consts:
    """Small constant tensors, made once per device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        f32 = dict(device=device, dtype=torch.float32)
        self.mean = torch.tensor(mean, **f32)
        self.std = torch.tensor(std, **f32)
        self.luma = torch.tensor(LUMA, **f32)
        self.eye = torch.eye(3, **f32)
        self.gray = torch.ones(3, 1, **f32) @ self.luma[None]  # every channel := luma
        self.hue_offsets = torch.tensor([5.0, 3.0, 1.0], **f32).view(1, 3, 1, 1)
        # the [0, 1] range, and solarize's threshold and inversion, in normalised units
        self.lo = ((0 - self.mean) / self.std).view(1, 3, 1, 1)
        self.hi = ((1 - self.mean) / self.std).view(1, 3, 1, 1)
        self.invert = ((1 - 2 * self.mean) / self.std).view(1, 3, 1, 1)
        self._thresh: dict[float, torch.Tensor] = {}

    def thresh(self, value: float) -> torch.Tensor:
        """Solarize threshold ``value`` (in [0, 1] units) in normalised units, per channel."""
        if value not in self._thresh:
            self._thresh[value] = ((value - self.mean) / self.std).view(1, 3, 1, 1)
        return self._thresh[value]


class FusedView:
    """Draws one view's parameters and applies them to a float batch."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec
        ops = spec.ops
        self.size = spec.size
        self.crop = ops["crop"]
        self.p_flip = ops["flip"]["p"]
        jit = ops["jitter"]
        self.p_jitter = jit["p"]
        self.ranges = [jit["brightness"], jit["contrast"], jit["saturation"], jit["hue"]]
        neutral = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]
        self.jitter_on = self.p_jitter > 0 and any(tuple(r) != n for r, n in zip(self.ranges, neutral))
        self.contrast_on = self.jitter_on and tuple(self.ranges[1]) != (1.0, 1.0)
        self.hue_on = self.jitter_on and tuple(self.ranges[3]) != (0.0, 0.0)
        self.p_gray = ops["grayscale"]["p"]
        blur = ops["blur"]
        self.p_blur = blur["p"] if spec.size >= blur["min_size"] else 0.0
        self.sigma = blur["sigma"]
        k = blur_kernel_size(spec.size, blur["kernel_frac"])
        # taps past 4 sigma_max carry < 1e-4 of the weight; reflect padding needs radius < size
        self.radius = max(1, min(k // 2, math.ceil(4 * self.sigma[1]), spec.size - 1))
        self.p_solarize = ops["solarize"]["p"]
        self.threshold = ops["solarize"]["threshold"]

    # -- host side ---------------------------------------------------------
    def sample(self, batch: int, height: int, width: int, gen: torch.Generator | None) -> dict[str, Any]:
        """All random draws for one view, on the CPU, in a fixed order and count."""
        boxes = sample_crops(batch, height, width, self.crop["scale"], self.crop["ratio"], gen)
        flip = torch.rand(batch, generator=gen) < self.p_flip
        jitter = torch.rand(batch, generator=gen) < self.p_jitter
        unit = torch.rand((batch, 4), generator=gen)
        order = torch.argsort(torch.rand((batch, 4), generator=gen), dim=1)
        gray = torch.rand(batch, generator=gen) < self.p_gray
        blur = torch.rand(batch, generator=gen) < self.p_blur
        sigma = torch.rand(batch, generator=gen) * (self.sigma[1] - self.sigma[0]) + self.sigma[0]
        solarize = torch.rand(batch, generator=gen) < self.p_solarize

        lo = torch.tensor([r[0] for r in self.ranges])
        hi = torch.tensor([r[1] for r in self.ranges])
        factors = lo + (hi - lo) * unit
        neutral = torch.tensor([1.0, 1.0, 1.0, 0.0])
        factors = torch.where(jitter[:, None], factors, neutral)
        return {
            "boxes": boxes, "flip": flip, "factors": factors, "order": order, "gray": gray,
            "jitter_any": bool(jitter.any()) and self.jitter_on,
            "blur": blur, "sigma_all": sigma,
            "solarize": solarize, "solarize_any": bool(solarize.any()),
        }

    # -- device side -------------------------------------------------------
    def _compose(
        self, A: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None, j: dict[str, torch.Tensor],
        active: torch.Tensor, c: _Consts,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the jitter steps marked in ``active`` (n, 4) into the affine map ``(A, t)``.

        ``m`` is the current per-channel mean of the image (None when no
        contrast step needs it): contrast blends with its grey level.
        """
        n = A.shape[0]
        for step in range(4):
            k, on = j["order"][:, step], active[:, step]
            P = torch.where(on.view(n, 1, 1), j["mats"][j["rows"], k], c.eye)
            A = P @ A
            t = (P @ t.unsqueeze(-1)).squeeze(-1)
            if m is not None:
                grey = (m @ c.luma).unsqueeze(1)  # (n, 1)
                q = torch.where((on & (k == 1)).unsqueeze(1), (1 - j["fc"]) * grey, 0.0).expand(n, 3)
                t = t + q
                m = (P @ m.unsqueeze(-1)).squeeze(-1) + q
        return A, t

    def _jitter(self, dp: dict[str, torch.Tensor], sl: slice, c: _Consts) -> dict[str, torch.Tensor]:
        f, order = dp["factors"][sl], dp["order"][sl]
        n = f.shape[0]
        fb, fc, fs = (f[:, i].view(n, 1, 1) for i in range(3))
        # brightness, contrast (its offset is added in _compose), saturation; hue is not affine
        mats = torch.stack([fb * c.eye, fc * c.eye, fs * c.eye + (1 - fs) * c.gray, c.eye.expand(n, 3, 3)], 1)
        hue_pos = torch.argmax((order == 3).to(torch.uint8), dim=1, keepdim=True)  # hue's turn
        steps = torch.arange(4, device=f.device).view(1, 4)
        return {
            "order": order, "mats": mats, "rows": torch.arange(n, device=f.device), "fc": fc.view(n, 1),
            "hue": f[:, 3], "before_hue": steps < hue_pos, "after_hue": steps > hue_pos,
        }

    def _finish(self, A: torch.Tensor, t: torch.Tensor, dp: dict, sl: slice, c: _Consts):
        """Grayscale and normalisation on top of ``(A, t)``."""
        if "gray" in dp:
            n = A.shape[0]
            G = torch.where(dp["gray"][sl].view(n, 1, 1), c.gray, c.eye)
            A = G @ A
            t = (G @ t.unsqueeze(-1)).squeeze(-1)
        return A / c.std.view(1, 3, 1), (t - c.mean) / c.std

    @staticmethod
    def _affine(A: torch.Tensor, t: torch.Tensor, x: torch.Tensor, out: torch.Tensor, lo, hi) -> torch.Tensor:
        """``out = clamp(A x + t, lo, hi)`` per sample and pixel; x, out (n, 3, s, s)."""
        n, _, h, w = x.shape
        torch.bmm(A, x.reshape(n, 3, h * w), out=out.view(n, 3, h * w))
        return out.add_(t.view(n, 3, 1, 1)).clamp_(min=lo, max=hi)

    def apply(
        self, x: torch.Tensor, scale: float, params: dict[str, Any], c: _Consts, chunk: int, sub: int | None = None
    ) -> torch.Tensor:
        """``x``: float (B,3,H,W) with values in [0, 1/scale]. Returns the normalised view.

        Works through the batch ``chunk`` samples at a time, writing into the
        output: on a CPU this keeps the intermediates small enough for the
        allocator to reuse (large ones are fresh, page-faulting mappings every
        call) and in cache; on a GPU the chunk is the whole batch. The hue
        shift goes through ``sub`` samples at a time (default: the chunk).
        """
        b, _, height, width = x.shape
        dev, s = x.device, self.size
        dp = {
            "boxes": params["boxes"].to(dev, non_blocking=True),
            "flip": params["flip"].to(dev, non_blocking=True),
        }
        jitter = params["jitter_any"]
        if jitter:
            dp["factors"] = params["factors"].to(dev, non_blocking=True)
            dp["order"] = params["order"].to(dev, non_blocking=True)
        if self.p_gray > 0:
            dp["gray"] = params["gray"].to(dev, non_blocking=True)
        if params["solarize_any"]:
            dp["solarize"] = params["solarize"].to(dev, non_blocking=True)
        need_mean = self.contrast_on and jitter
        sub = sub or chunk
        out = torch.empty(b, 3, s, s, device=dev)
        for start in range(0, b, chunk):
            sl = slice(start, min(b, start + chunk))
            n = sl.stop - sl.start
            grid = crop_grid(dp["boxes"][sl], dp["flip"][sl], s, height, width)
            view = F.grid_sample(x[sl], grid, mode="bilinear", padding_mode="border", align_corners=False)
            del grid
            o = out[sl]
            A = (c.eye * scale).expand(n, 3, 3)
            t = torch.zeros(n, 3, device=dev)
            m = view.mean(dim=(2, 3)) * scale if need_mean else None
            if jitter:
                j = self._jitter(dp, sl, c)
                if self.hue_on:
                    # affine steps before the hue shift, clamp, exact HSV hue shift, then the rest
                    A, t = self._compose(A, t, m, j, j["before_hue"], c)
                    shifted = torch.empty_like(view)
                    for i in range(0, n, sub):  # small pieces stay in cache through ~15 passes
                        p = slice(i, min(n, i + sub))
                        tmp = self._affine(A[p], t[p], view[p], torch.empty_like(view[p]), 0.0, 1.0)
                        hsv_hue_shift(tmp, j["hue"][p], c, out=shifted[p])
                    view = shifted
                    m = view.mean(dim=(2, 3)) if need_mean else None
                    A, t = c.eye.expand(n, 3, 3), torch.zeros(n, 3, device=dev)
                    A, t = self._compose(A, t, m, j, j["after_hue"], c)
                else:
                    A, t = self._compose(A, t, m, j, torch.ones_like(j["before_hue"]), c)
            A, t = self._finish(A, t, dp, sl, c)
            self._affine(A, t, view, o, c.lo, c.hi)
            del view
            blur = params["blur"][sl]
            if bool(blur.any()):
                self._blur(o, blur, params["sigma_all"][sl])
            if "solarize" in dp:
                mask = dp["solarize"][sl].view(n, 1, 1, 1)
                o.copy_(torch.where(mask & (o >= c.thresh(self.threshold)), c.invert - o, o))
        return out

    def _blur(self, o: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor) -> None:
        """Blur the samples of ``o`` picked by ``mask`` in place, each with its own sigma.

        ``mask`` and ``sigma`` (one per sample of ``o``) are on the host. The
        count is rounded up to a multiple of 8 with extra samples that get an
        identity kernel, so the depthwise convolutions see few distinct shapes
        (oneDNN builds a kernel per new shape, which costs more than the blur).
        On a CPU samples are picked with a boolean mask (``index_select`` of
        large slices is many times slower there); on a GPU with host-made indices.
        """
        n_total, s, r = mask.numel(), self.size, self.radius
        sigma = torch.where(mask, sigma, 0.0)  # 0: identity kernel
        pad = min(n_total, -(-int(mask.sum()) // 8) * 8) - int(mask.sum())
        if pad:
            mask = mask.clone()
            mask[torch.nonzero(~mask).flatten()[:pad]] = True
        sig = sigma[mask]
        n = sig.numel()
        taps = torch.arange(-r, r + 1, dtype=torch.float32)
        kern = torch.exp(-(taps[None] ** 2) / (2 * sig.clamp(min=1e-6)[:, None] ** 2))
        kern = torch.where((sig > 0)[:, None], kern, (taps == 0).float()[None])
        kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(3, dim=0)  # (n*3, 2r+1)
        kern = kern.to(o.device, non_blocking=True)
        if o.device.type == "cpu":
            pick = mask
            z = o[pick]
        else:  # indices known on the host: no device sync, unlike a boolean mask
            pick = torch.nonzero(mask).flatten().to(o.device, non_blocking=True)
            z = o.index_select(0, pick)
        z = z.view(1, n * 3, s, s)
        z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="reflect"), kern.view(n * 3, 1, 1, 2 * r + 1), groups=n * 3)
        z = F.conv2d(F.pad(z, (0, 0, r, r), mode="reflect"), kern.view(n * 3, 1, 2 * r + 1, 1), groups=n * 3)
        if o.device.type == "cpu":
            o[pick] = z.view(n, 3, s, s)
        else:
            o.index_copy_(0, pick, z.view(n, 3, s, s))
