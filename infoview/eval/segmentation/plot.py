"""The picture of `infoview segment`: image | ground truth | prediction rows in the PASCAL VOC colours."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infoview.eval.segmentation.metrics import void_values
from infoview.utils.io import save_figure


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id -> RGB, fixed, neighbours far apart."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def colourise(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8; void is black, a real class never is."""
    pal = palette(max(256, int(mask.max()) + 1))
    pal[0] = (255, 255, 255)  # id 0 is black in VOC's map: white when it is a real class
    rgb = pal[np.clip(mask, 0, None)]
    void = np.isin(mask, void_values(ignore_index)) | (mask < 0)
    rgb[void] = 0
    return rgb


def plot_predictions(path, samples, ignore_index: int, class_names: dict[int, str], title: str = "") -> Path:
    """A grid, one row per sample: image | ground truth | prediction, with a legend of the row's classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(12.5, 3.2 * rows + 0.6), dpi=100, squeeze=False)
    voids = set(void_values(ignore_index))
    for r, (name, image, gt, pred) in enumerate(samples):
        labelled = ~np.isin(gt, list(voids))
        acc = 100 * float((pred == gt)[labelled].mean()) if labelled.any() else float("nan")
        panels = ((image, "image"), (colourise(gt, ignore_index), "ground truth"),
                  (colourise(pred, ignore_index), f"prediction (pixel acc {acc:.0f}%)"))
        for c, (picture, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=8)
        ids = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()))
        counts = {i: int((gt == i).sum() + (pred == i).sum()) for i in ids}
        shown = sorted((i for i in ids if i not in voids), key=lambda i: -counts[i])[:14]
        pal = palette(max(256, max(ids) + 1))
        pal[0] = (255, 255, 255)
        handles = [Patch(facecolor=pal[i] / 255, edgecolor="0.4", label=f"{i} {class_names.get(i, '')}".strip())
                   for i in sorted(shown)]
        if voids & set(np.unique(gt).tolist()):
            handles.append(Patch(facecolor="black", edgecolor="0.4", label="void (not scored)"))
        more = len([i for i in ids if i not in voids]) - len(shown)
        if more > 0:
            handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{more} more"))
        axes[r, 2].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7,
                          frameon=False, handlelength=1.2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
