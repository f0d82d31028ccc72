"""The figures docs/objectives.md quotes about which values are bounds.

1. Exact-critic Gaussians (d = 20, n x n matrices, 600 batches): the values
   that used to be reported as `.mi` and are now `.estimate` (ML-CPC at
   alpha = 1e-4, Ring's restricted value), beside the certified `.mi`; and
   the mi-bench staircase's reference row: InfoNCE and ML-CPC at its floor
   with the exact critic, batch 64, 200 batches per level.
2. ML-CPC's alpha floor on a heavy-tailed law: x uniform on k symbols, y = x
   with probability q, else uniform. Critics a * [x == y] are the best ones
   there (ML-CPC is concave in the log-critic and the law is symmetric under
   relabelling), so the maximum over a, k and q of J - I says whether an
   alpha is a bound on this family. J depends on a batch only through the
   number of hits on the diagonal and off it, which makes millions of batches
   cheap; the count formula is checked against the objective first.

Usage: .venv/bin/python scripts/bound_checks.py [--sizes 4,8,16,32] [--batches 20000] [--refine 1000000]
Takes about 3 minutes on a 2-core CPU at the defaults.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from infoview.objectives import alpha_floor, build, matrix_pairs


def gaussian_scores(n: int, mi: float, batches: int, seed: int, dim: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rho = math.sqrt(1 - math.exp(-2 * mi / dim))
    x = torch.randn(batches, n, dim, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(batches, n, dim, generator=g, dtype=torch.float64)
    c = 1 - rho**2
    xx, yy = (x * x).sum(-1)[:, :, None], (y * y).sum(-1)[:, None, :]
    xy = torch.einsum("bid,bjd->bij", x, y)
    return -0.5 * dim * math.log(c) - (rho**2 * xx - 2 * rho * xy + rho**2 * yy) / (2 * c)


def mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), t.std().item() / math.sqrt(len(t))


def exact_critic_table(batches: int = 600) -> None:
    print("exact critic, d = 20, n = m = 32, mean over", batches, "batches (nats)")
    print(f"{'objective':<34} {'true MI':>7} {'.mi (bound)':>14} {'.estimate':>14}")
    rows = [("ml_cpc", {"alpha": 1e-4}, 6.0), ("ml_cpc", {"alpha": 1e-4}, 4.0),
            ("ring", {"outer": 1.0, "inner": 0.5}, 0.5), ("ring", {}, 0.5), ("infonce", {}, 0.5)]
    for name, params, mi in rows:
        s = gaussian_scores(32, mi, batches, seed=int(10 * mi))
        obj = build(name, **params)
        outs = [obj(*matrix_pairs(m)) for m in s]
        b, b_se = mean_se([o.mi.item() for o in outs])
        est = [o.estimate.item() for o in outs if o.estimate is not None]
        e_text = "%.2f +- %.2f" % mean_se(est) if est else "-"
        label = name + ("(" + ", ".join(f"{k}={v:g}" for k, v in params.items()) + ")" if params else "")
        print(f"{label:<34} {mi:>7g} {f'{b:.2f} +- {b_se:.2f}':>14} {e_text:>14}")


def staircase_reference(levels=(2, 4, 6, 8, 10), n: int = 64, batches: int = 200) -> None:
    print(f"\nexact critic on the mi-bench staircase (d = 20, batch {n}, {batches} batches per level)")
    floor = alpha_floor(n, n)
    objs = {"infonce": build("infonce"), f"ml_cpc(alpha=floor={floor:.4g})": build("ml_cpc", alpha=floor)}
    print(f"{'objective':<30}" + "".join(f"{lv:>8}" for lv in levels))
    for name, obj in objs.items():
        cells = []
        for lv in levels:
            s = gaussian_scores(n, float(lv), batches, seed=100 + lv)
            cells.append(mean_se([obj(*matrix_pairs(m)).mi.item() for m in s])[0])
        print(f"{name:<30}" + "".join(f"{v:>8.2f}" for v in cells))


# ---- the heavy-tailed family ----------------------------------------------------------


def hits(n: int, k: int, q: float, batches: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch: hits on the diagonal (x_i == y_i) and off it (x_i == y_j, i != j)."""
    x = torch.randint(k, (batches, n), generator=g)
    keep = torch.rand(batches, n, generator=g) < q
    y = torch.where(keep, x, torch.randint(k, (batches, n), generator=g))
    hp = (x == y).sum(1).double()
    base = torch.arange(batches)[:, None] * k
    cx = torch.bincount((x + base).reshape(-1), minlength=batches * k).view(batches, k).double()
    cy = torch.bincount((y + base).reshape(-1), minlength=batches * k).view(batches, k).double()
    return hp, (cx * cy).sum(1) - hp


def j_from_hits(hp, hn, a: float, n: int, alpha: float) -> torch.Tensor:
    """ML-CPC on the n x n matrix a * [x_i == y_j], from the hit counts alone."""
    m = n
    w_pos, w_neg = alpha / (n * m), (m - alpha) / (n * m * (m - 1))
    z = w_pos * (hp * math.exp(a) + (n - hp)) + w_neg * (hn * math.exp(a) + (n * (n - 1) - hn))
    return a * hp / n - torch.log(z)


def family_mi(k: int, q: float) -> float:
    p = q + (1 - q) / k
    rest = (1 - p) * math.log((1 - p) / (1 - 1 / k)) if p < 1 else 0.0
    return p * math.log(p * k) + rest


def check_count_formula() -> None:
    g = torch.Generator().manual_seed(0)
    n, k, q, a = 6, 4, 0.7, 2.5
    x = torch.randint(k, (50, n), generator=g)
    y = torch.where(torch.rand(50, n, generator=g) < q, x, torch.randint(k, (50, n), generator=g))
    obj = build("ml_cpc", alpha=1.0)  # alpha >= the floor: .mi is J at alpha
    direct = torch.stack([obj(*matrix_pairs(a * (xi[:, None] == yi[None, :]).double())).mi for xi, yi in zip(x, y)])
    hp = (x == y).sum(1).double()
    hn = (x[:, :, None] == y[:, None, :]).sum((1, 2)).double() - hp
    torch.testing.assert_close(j_from_hits(hp, hn, a, n, 1.0), direct)


def worst_case(n: int, alpha: float, batches: int, seed: int) -> tuple[float, float, int, float, float]:
    """max over k, q and a of mean(J) - I: (gap, its standard error, k, q, a)."""
    g = torch.Generator().manual_seed(seed)
    best = (-math.inf, 0.0, 0, 0.0, 0.0)
    for k in (2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 512, 4096):
        for q in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0):
            hp, hn = hits(n, k, q, batches, g)
            mi = family_mi(k, q)
            for a in [i / 10 for i in range(1, 200)]:
                j = j_from_hits(hp, hn, a, n, alpha)
                gap = j.mean().item() - mi
                if gap > best[0]:
                    best = (gap, j.std().item() / math.sqrt(batches), k, q, a)
    return best


def refine(n: int, alpha: float, k: int, q: float, a0: float, batches: int, seed: int) -> tuple[float, float, float]:
    """Fresh batches at one (k, q) and a fine grid of a around a0: (gap, standard error, a)."""
    g = torch.Generator().manual_seed(seed)
    grid = [a0 + d / 40 for d in range(-8, 9) if a0 + d / 40 > 0]
    sums = {a: [0.0, 0.0] for a in grid}
    done = 0
    while done < batches:
        c = min(200_000, batches - done)
        hp, hn = hits(n, k, q, c, g)
        for a in grid:
            j = j_from_hits(hp, hn, a, n, alpha)
            sums[a][0] += j.sum().item()
            sums[a][1] += (j * j).sum().item()
        done += c
    a = max(grid, key=lambda v: sums[v][0])
    mean = sums[a][0] / batches
    se = math.sqrt(max(sums[a][1] / batches - mean**2, 0.0) / batches)
    return mean - family_mi(k, q), se, a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,8,16,32", help="n for the heavy-tailed family (n x n matrices)")
    ap.add_argument("--batches", type=int, default=20_000, help="batches per (k, q) in the search")
    ap.add_argument("--refine", type=int, default=1_000_000, help="fresh batches for the worst (k, q) at the floor")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact-only", action="store_true", help="only the exact-critic tables (seconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    exact_critic_table()
    staircase_reference()
    if args.exact_only:
        return
    check_count_formula()
    print("\nheavy-tailed family: max over k, q and a of mean(J_alpha) - I (nats), at multiples of the floor")
    for n in [int(v) for v in args.sizes.split(",")]:
        floor = alpha_floor(n, n)
        for c in (0.5, 0.7, 1.0):
            gap, se, k, q, a = worst_case(n, c * floor, args.batches, seed=n)
            line = (f"n={n:<3} alpha={c:.1f} x floor ({c * floor:.4g}): {gap:+.4f} +- {se:.4f} "
                    f"at k={k}, q={q}, a={a:.1f}")
            if c == 1.0 and args.refine:
                rgap, rse, ra = refine(n, floor, k, q, a, args.refine, seed=n + 1)
                line += f"; on {args.refine} fresh batches there: {rgap:+.4f} +- {rse:.4f} (a={ra:.3f})"
            print(line, flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
