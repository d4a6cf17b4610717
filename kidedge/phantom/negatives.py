"""Kidney-like things that are not kidney: lesions, stones, layered contents.

A model that has seen only kidneys as round, enhancing, fluid-containing things labels
every such thing kidney or tumour on real CT (the built-in model before issue 11 did so
to the liver, stomach and bowel). These negatives are labelled background:

- liver lesions, darker than the liver (cysts, metastases) or brighter in enhanced phases
  (haemangiomas, hypervascular tumours), round or lobulated, 4-30 mm;
- splenic lesions (cysts, infarcts: darker; a few brighter);
- gallstones, dependent (posterior) in the gallbladder, dense or fat-like.

Bowel with positive oral contrast, stomach contents (air, fluid, contrast, food), the
bladder with opacified urine, adrenals, vessels, vertebrae, iliac bone and iliopsoas are
drawn by the body painters (``filler``, ``pelvis``); this module adds the focal lesions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kidedge.phantom import anatomy as A
from kidedge.phantom import tissues as T


@dataclasses.dataclass(frozen=True)
class Ball:
    """A round focal finding: centre (s, y, x) mm, radius mm, tissue, where it may go."""

    s: float
    y: float
    x: float
    r: float
    code: int
    only: tuple


def _pick(rng, coarse, organ, coords):
    idx = np.argwhere(coarse == organ)
    if len(idx) == 0:
        return None
    i, r, c = idx[int(rng.integers(len(idx)))]
    s_mm, row_mm, col_mm = coords
    return float(s_mm[i]), float(r * row_mm), float(c * col_mm), idx


def plan_lesions(rng, coarse: np.ndarray, coarse_s: np.ndarray, coarse_mm) -> list[Ball]:
    """Draw the case's focal negatives from its (coarse) organ map.

    Args:
        coarse: uint8 organ codes (n, r, c) of the output body on a coarse grid.
        coarse_s: s (mm) of each coarse slice; coarse_mm: (row_mm, col_mm).
    """
    coords = (coarse_s, coarse_mm[0], coarse_mm[1])
    balls = []
    liver = (T.LIVER, T.LIVER_VESSEL)
    n_liver = int(rng.choice([0, 1, 2, 4, 7], p=[0.4, 0.2, 0.15, 0.15, 0.1]))
    hyper_share = rng.uniform(0.0, 0.5)
    for _ in range(n_liver):
        got = _pick(rng, coarse, A.LIVER, coords)
        if got is None:
            break
        s, y, x, _ = got
        code = T.LESION_HYPER if rng.random() < hyper_share else T.LESION_HYPO
        r = float(np.exp(rng.uniform(np.log(4), np.log(30))))
        balls.append(Ball(s, y, x, r, code, liver))
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.7, 0.15, 0.1, 0.05]))):
        got = _pick(rng, coarse, A.SPLEEN, coords)
        if got is None:
            break
        s, y, x, _ = got
        code = T.LESION_HYPER if rng.random() < 0.2 else T.LESION_HYPO
        balls.append(Ball(s, y, x, float(rng.uniform(4, 16)), code, (T.SPLEEN,)))
    if rng.random() < 0.3:
        got = _pick(rng, coarse, A.GALLBLADDER, coords)
        if got is not None:
            _, _, _, idx = got
            # Stones sink: pick among the most posterior gallbladder cells.
            deep = idx[idx[:, 1] >= np.percentile(idx[:, 1], 70)]
            for _ in range(int(rng.integers(1, 6))):
                i, r, c = deep[int(rng.integers(len(deep)))]
                code = T.STONE if rng.random() < 0.7 else T.SUBCUT_FAT  # cholesterol stones: fat-like
                balls.append(Ball(float(coarse_s[i]), float(r * coarse_mm[0]),
                                  float(c * coarse_mm[1]), float(rng.uniform(2, 8)), code,
                                  (T.GALLBLADDER,)))
    return balls


def paint_balls(painter, codes: np.ndarray, s_mm: float, balls: list[Ball]) -> None:
    """Paint the balls' cross-sections on a slice at ``s_mm``."""
    for b in balls:
        dz = s_mm - b.s
        if abs(dz) >= b.r:
            continue
        rr = math.sqrt(b.r * b.r - dz * dz)
        painter.ellipse(codes, b.code, b.x, b.y, rr, rr, only=b.only, wob=0.1)
