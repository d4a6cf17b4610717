"""Where the procedural parts of an anatomical body go: anchors taken from its real organs.

From a coarse map of the warped real organs (every 4th pixel of each written slice):

- the spine lies behind the aorta (vertebral body centre = aortic centre + aortic radius
  + a few mm + half the vertebral depth, a little to the patient's right of the aorta), so
  it sits between the kidneys as in a patient;
- the body outline is an envelope of all real organs plus wall muscle and fat; it holds
  the widest (most anterior) organs' extent below their level (the trunk does not narrow
  below the liver, bowel fills it) and follows the organs within 15 cm above it; the back
  lies behind the spine;
- the diaphragm is a height map over the real abdominal organs (the lungs end on it);
- the aortic bifurcation is where the source's aorta stops (when it stops inside the field).

``base_plan`` draws the rest of the body plan (wall thicknesses, vertebra size, ...).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from kidedge.phantom import anatomy as A
from kidedge.phantom.body import BodyPlan, _harmonics

# Organs that do not count for the body envelope (stray labels far outside the abdomen).
_NOT_ENVELOPE = (A.NONE, A.OTHER_BONE, A.OTHER_SOFT)


@dataclasses.dataclass
class Anchors:
    """Per fine slice (mm): spine centre, aorta, body outline; plus levels (s, mm)."""

    sx: np.ndarray
    sy: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    ar: np.ndarray
    aorta_real: np.ndarray   # bool: the source's aorta is on this slice
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b_ant: np.ndarray
    b_post: np.ndarray
    dome_s: float            # top of the liver
    bif_s: float             # aortic bifurcation
    diaphragm: np.ndarray    # (r, c) coarse map: s (mm) of the top of the abdominal organs


def _fill(values: np.ndarray, valid: np.ndarray, default: float) -> np.ndarray:
    if not valid.any():
        return np.full(values.shape, default, np.float64)
    idx = np.arange(len(values))
    return np.interp(idx, idx[valid], values[valid])


def compute_anchors(rng, plan: BodyPlan, coarse: np.ndarray, coarse_mm: tuple,
                    fine_s: np.ndarray, coarse_s: np.ndarray) -> Anchors:
    """Anchor the procedural body to the real organs.

    Args:
        rng: numpy Generator.
        plan: the case's base plan (wall thicknesses, vertebra size ...).
        coarse: uint8 organ codes on a coarse grid (n_coarse, r, c) of the output.
        coarse_mm: (row_mm, col_mm) of the coarse grid; coarse_s: s (mm) of its slices.
        fine_s: s (mm) of every fine slice.
    """
    n = coarse.shape[0]
    Y = (np.arange(coarse.shape[1]) * coarse_mm[0])[:, None]
    X = (np.arange(coarse.shape[2]) * coarse_mm[1])[None, :]
    cell = coarse_mm[0] * coarse_mm[1]
    ax, ay, ar = np.zeros(n), np.zeros(n), np.zeros(n)
    has_ao = np.zeros(n, bool)
    xlo, xhi, ylo, yhi = (np.zeros(n) for _ in range(4))
    has_any = np.zeros(n, bool)
    liver_rows = []
    for i in range(n):
        org = coarse[i]
        m = org == A.AORTA
        if m.sum() * cell > 60:
            has_ao[i] = True
            ax[i] = float(np.broadcast_to(X, m.shape)[m].mean())
            ay[i] = float(np.broadcast_to(Y, m.shape)[m].mean())
            ar[i] = float(np.sqrt(m.sum() * cell / np.pi))
        env = ~np.isin(org, _NOT_ENVELOPE)
        if env.any():
            has_any[i] = True
            rr, cc = np.nonzero(env)
            xlo[i], xhi[i] = cc.min() * coarse_mm[1], cc.max() * coarse_mm[1]
            ylo[i], yhi[i] = rr.min() * coarse_mm[0], rr.max() * coarse_mm[0]
        if (org == A.LIVER).any():
            liver_rows.append(i)
    dz = float(np.median(np.diff(coarse_s))) if n > 1 else 5.0
    mid_x = float(np.mean(X)) if not has_any.any() else float(np.median((xlo + xhi)[has_any] / 2))
    mid_y = float(np.mean(Y))
    ax = _fill(ax, has_ao, mid_x + 10)
    ay = _fill(ay, has_ao, mid_y)
    ar = np.clip(_fill(ar, has_ao, plan.aorta_r), 6.0, 16.0)
    sig = max(1.0, 12.0 / dz)
    ax, ay, ar = (ndimage.gaussian_filter1d(v, sig, mode="nearest") for v in (ax, ay, ar))
    sx = ax - rng.uniform(6, 14)
    sy = ay + ar + rng.uniform(3, 6) + plan.vry
    for v in (xlo, ylo, xhi, yhi):
        v[:] = _fill(v, has_any, float(np.mean(v[has_any])) if has_any.any() else mid_x)
    shrink = 1.0 - float(plan.harmonics[:, 1].sum())
    fat_side = plan.fat_mm * (1 + plan.fat_aniso)
    lateral = plan.skin_mm + fat_side + plan.muscle_mm + rng.uniform(0, 10)
    # The trunk does not narrow below the liver (bowel fills it) nor into the pelvis: from
    # the level of the widest (most anterior) organs downwards the envelope holds that
    # extent; above it, the widest extent within 15 cm, so the liver and spleen touch the
    # wall at their own level while the lower chest stays as wide as the upper abdomen.
    idx = np.arange(n)
    w = 2 * max(1, int(round(150.0 / dz))) + 1
    ext = np.maximum(sx - xlo, xhi - sx)
    k_w = int(np.argmax(ext))
    half = np.where(idx >= k_w, ext.max(), ndimage.maximum_filter1d(ext, w, mode="nearest")) + lateral
    k_a = int(np.argmin(ylo))
    front = np.where(idx >= k_a, ylo.min(), ndimage.minimum_filter1d(ylo, w, mode="nearest"))
    y_ant = front - (plan.skin_mm + fat_side + plan.muscle_mm + rng.uniform(0, 12))
    back = plan.vry + rng.uniform(55, 72) + plan.fat_mm * 0.8 + plan.skin_mm
    y_post = np.maximum(sy + back, yhi + plan.skin_mm + plan.fat_mm * 0.8 + 4)
    a = ndimage.gaussian_filter1d(half / shrink, 2 * sig, mode="nearest")
    y_ant = ndimage.gaussian_filter1d(y_ant, 2 * sig, mode="nearest")
    y_post = ndimage.gaussian_filter1d(y_post, 2 * sig, mode="nearest")
    cy = 0.5 * (y_ant + y_post)
    b = 0.5 * (y_post - y_ant) / shrink
    ratio = rng.uniform(0.95, 1.08)
    cx = sx + rng.uniform(-6, 6)

    def fine(v):
        return np.interp(fine_s, coarse_s, v)

    ao_idx = np.flatnonzero(has_ao)
    if ao_idx.size and ao_idx[-1] < n - 2:
        bif_s = float(coarse_s[ao_idx[-1]])
    else:
        bif_s = float(coarse_s[-1] + rng.uniform(20, 60))
    dome_s = float(coarse_s[liver_rows[0]]) if liver_rows else float(coarse_s[0])
    real = np.interp(fine_s, coarse_s, has_ao.astype(float)) > 0.5
    diaphragm = _diaphragm(coarse, coarse_s, coarse_mm, lift_mm=rng.uniform(0.0, 50.0))
    return Anchors(sx=fine(sx), sy=fine(sy), ax=fine(ax), ay=fine(ay), ar=fine(ar),
                   aorta_real=real, cx=fine(cx), cy=fine(cy), a=fine(a),
                   b_ant=fine(b * ratio), b_post=fine(b * (2 - ratio)), dome_s=dome_s, bif_s=bif_s,
                   diaphragm=diaphragm)


_UNDER_DIAPHRAGM = (A.LIVER, A.SPLEEN, A.STOMACH, A.GALLBLADDER, A.PANCREAS, A.KIDNEY_R,
                    A.KIDNEY_L, A.ADRENAL, A.DUODENUM, A.SMALL_BOWEL, A.COLON)


def _diaphragm(coarse, coarse_s, coarse_mm, lift_mm: float = 0.0) -> np.ndarray:
    """The diaphragm as a height map: for each in-plane cell, s (mm) of the highest
    abdominal organ below it, filled in from the nearest organ where there is none and
    smoothed (~1 cm), so the lungs end on a dome over the real liver and spleen. Cells
    with no organ under them (beside and in front of the liver) are lifted by up to
    ``lift_mm`` with their distance from the organs: how far the costophrenic recesses
    reach down varies between patients."""
    under = np.isin(coarse, _UNDER_DIAPHRAGM)
    any_col = under.any(axis=0)
    if not any_col.any():
        return np.full(coarse.shape[1:], float(coarse_s[0]))
    first = np.argmax(under, axis=0)
    top = coarse_s[first].astype(np.float64)
    dist, (ri, ci) = ndimage.distance_transform_edt(~any_col, return_indices=True)
    filled = top[ri, ci] - lift_mm * (1.0 - np.exp(-dist * coarse_mm[0] / 20.0))
    # Nearest-organ filling has straight (Voronoi) edges: smooth it broadly where no organ
    # is, keep the organs' own tops where they are.
    wide = ndimage.gaussian_filter(filled, max(1.0, 25.0 / coarse_mm[0]), mode="nearest")
    top = np.where(any_col, top, wide)
    return ndimage.gaussian_filter(top, max(1.0, 8.0 / coarse_mm[0]), mode="nearest")


def base_plan(rng, shape, spacing, hilum_s: float) -> BodyPlan:
    """The random, non-anchored part of an anatomical body (wall, spine sizes ...)."""
    return BodyPlan(
        shape=tuple(shape), spacing=tuple(spacing), hilum_s=hilum_s,
        cx=0.0, cy=0.0, a=150.0, b_ant=100.0, b_post=100.0, harmonics=_harmonics(rng),
        skin_mm=rng.uniform(1.5, 3.0), fat_mm=float(np.exp(rng.uniform(np.log(6), np.log(40)))),
        fat_aniso=rng.uniform(0.0, 0.5), fat_phase=rng.uniform(0, 2 * np.pi),
        muscle_mm=rng.uniform(7, 15), sx=0.0, sy=0.0,
        vrx=rng.uniform(17, 24), vry=rng.uniform(14, 19),
        vert_period=rng.uniform(28, 36), disc_mm=rng.uniform(6, 10), vert_phase=rng.uniform(0, 40),
        aorta_dx=0.0, aorta_r=rng.uniform(9, 13), ivc_dx=-rng.uniform(20, 30),
        bifurcation_zk=0.0, dome_zk=0.0, liver_low_zk=0.0, spleen_low_zk=0.0,
        spleen_top_zk=0.0, spleen_size=1.0, liver_size=1.0, gallbladder=None,
        bowel_level=rng.uniform(-0.3, 0.5), rib_period=rng.uniform(22, 30),
        rib_phase=rng.uniform(0, 30), sites=[], arm_r=rng.uniform(38, 55),
        table_gap=rng.uniform(2, 15), table_curve=rng.uniform(0.0008, 0.002),
    )
