"""The plan of a procedural body around the kidneys.

``BodyPlan`` fixes a case's anatomy (body outline, fat and muscle layers, spine, vessels,
organs and where they start and end along the scan), either around real kidneys taken
from a label map or around procedural ones. ``kidedge.phantom.painter.SlicePainter`` then
draws it one axial slice at a time.

Orientation is KiTS19's canonical one: rows run anterior -> posterior (y in mm grows
posteriorly), columns run from the patient's right to left (x grows to the left), slices
run superior -> inferior. ``zk`` below is the height in mm above the renal hila (positive
is superior), the anatomical coordinate organs are placed by.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kidedge.phantom.kidneys import KidneySite


@dataclasses.dataclass
class BodyPlan:
    """One case's anatomy, in mm (see the module docstring for the axes)."""

    shape: tuple
    spacing: tuple
    hilum_s: float           # s (mm) of the renal hila
    cx: float                # body centre
    cy: float
    a: float                 # half width
    b_ant: float             # half depth, anterior half
    b_post: float            # half depth, posterior half
    harmonics: np.ndarray    # (k, amplitude, phase) outline perturbation
    skin_mm: float
    fat_mm: float            # subcutaneous fat thickness (mean)
    fat_aniso: float         # how much thicker the fat is anterolaterally
    fat_phase: float
    muscle_mm: float         # abdominal wall muscle thickness
    sx: float                # vertebral body centre
    sy: float
    vrx: float               # vertebral body half width, half depth
    vry: float
    vert_period: float       # vertebra + disc height
    disc_mm: float
    vert_phase: float
    aorta_dx: float
    aorta_r: float
    ivc_dx: float
    bifurcation_zk: float
    dome_zk: float           # top of the liver (diaphragm)
    liver_low_zk: float
    spleen_low_zk: float
    spleen_top_zk: float
    spleen_size: float
    liver_size: float
    gallbladder: tuple | None  # (dx, dy, zk, radius)
    bowel_level: float         # threshold of the bowel field (higher: fewer loops)
    rib_period: float
    rib_phase: float
    sites: list
    arm_r: float
    table_gap: float
    table_curve: float

    def zk(self, k: int) -> float:
        return self.hilum_s - k * self.spacing[0]


def _harmonics(rng):
    ks = np.array([2.0, 3.0, 4.0, 5.0])
    amps = rng.uniform(0.0, 1.0, 4) * np.array([0.05, 0.03, 0.02, 0.012])
    phases = rng.uniform(0, 2 * np.pi, 4)
    return np.stack([ks, amps, phases], axis=1)


def plan_body(rng, shape, spacing, sites: list[KidneySite] | None) -> BodyPlan:
    """Draw a body plan; when ``sites`` are given, fit the body around those kidneys.

    Args:
        rng: numpy Generator.
        shape: (n_slices, rows, cols); spacing: (slice_mm, row_mm, col_mm).
        sites: kidneys found in a label map, or None for a procedural case (the caller
            then draws kidneys at ``procedural_kidney_centres(plan)``).
    """
    n, rows, cols = shape
    sz, sr, sc = spacing
    fov_x, fov_y, ext = cols * sc, rows * sr, n * sz
    skin = rng.uniform(1.5, 3.0)
    fat = float(np.exp(rng.uniform(np.log(6), np.log(45))))
    muscle = rng.uniform(7, 16)
    vrx, vry = rng.uniform(17, 24), rng.uniform(14, 19)
    harm = _harmonics(rng)
    shrink = 1.0 - float(harm[:, 1].sum())
    wall = skin + fat * 1.4 + muscle
    if sites:
        xs = [s.x for s in sites]
        if len(sites) == 2:
            sx = 0.5 * (sites[0].x_max + sites[1].x_min)
        else:
            s0 = sites[0]
            # One kidney: the spine lies medial to it, by half a kidney and a psoas.
            sx = s0.x - s0.side * ((s0.x_max - s0.x_min) / 2 + rng.uniform(40, 55))
        ky = float(np.mean([s.y for s in sites]))
        sy = ky - rng.uniform(0, 15)
        hilum = float(np.mean([s.s for s in sites]))
        k_xmin = min(s.x_min for s in sites)
        k_xmax = max(s.x_max for s in sites)
        k_ymin = min(s.y_min for s in sites)
        k_ymax = max(s.y_max for s in sites)
        cx = sx + rng.uniform(-8, 8)
        a = max(rng.uniform(125, 185), (max(cx - k_xmin, k_xmax - cx) + wall + 15) / shrink)
        y_post = max(sy + vry + rng.uniform(55, 75) + fat, (k_ymax + 12 + wall) / shrink)
        ap = rng.uniform(190, 300)
        y_ant = min(y_post - ap, k_ymin - wall - 50)
        del xs
    else:
        cx = fov_x / 2 + rng.uniform(-10, 10)
        a = min(rng.uniform(125, 185), 0.5 * fov_x * rng.uniform(0.8, 0.97))
        ap = min(rng.uniform(190, 290), fov_y * rng.uniform(0.68, 0.8))
        cy_guess = fov_y / 2 + rng.uniform(-10, 25)
        y_ant, y_post = cy_guess - ap / 2, cy_guess + ap / 2
        sx = cx + rng.uniform(-5, 5)
        # Thin patients are small: keep the spine and muscles inside a small outline.
        sy = y_post - min(fat + vry + rng.uniform(55, 70), 0.45 * ap)
        hilum = ext * rng.uniform(0.4, 0.6)
    cy = 0.5 * (y_ant + y_post)
    b = 0.5 * (y_post - y_ant)
    b_ant = b * rng.uniform(0.95, 1.08)
    b_post = 2 * b - b_ant
    return BodyPlan(
        shape=tuple(shape), spacing=tuple(spacing), hilum_s=hilum,
        cx=cx, cy=cy, a=a, b_ant=b_ant, b_post=b_post, harmonics=harm,
        skin_mm=skin, fat_mm=fat, fat_aniso=rng.uniform(0.0, 0.5), fat_phase=rng.uniform(0, 2 * np.pi),
        muscle_mm=muscle, sx=sx, sy=sy, vrx=vrx, vry=vry,
        vert_period=rng.uniform(28, 36), disc_mm=rng.uniform(6, 10), vert_phase=rng.uniform(0, 40),
        aorta_dx=rng.uniform(2, 14), aorta_r=rng.uniform(9, 13), ivc_dx=-rng.uniform(18, 28),
        bifurcation_zk=-rng.uniform(90, 150),
        dome_zk=rng.uniform(110, 170), liver_low_zk=-rng.uniform(20, 90),
        spleen_low_zk=rng.uniform(-25, 15), spleen_top_zk=rng.uniform(80, 130),
        spleen_size=rng.uniform(0.8, 1.25), liver_size=rng.uniform(0.85, 1.15),
        gallbladder=(rng.uniform(-0.35, -0.15), rng.uniform(-0.45, -0.25), rng.uniform(-40, 10),
                     rng.uniform(10, 20)) if rng.random() < 0.6 else None,
        bowel_level=rng.uniform(0.0, 0.7),
        rib_period=rng.uniform(22, 30), rib_phase=rng.uniform(0, 30),
        sites=list(sites or []), arm_r=rng.uniform(38, 55),
        table_gap=rng.uniform(2, 15), table_curve=rng.uniform(0.0008, 0.002),
    )


def procedural_kidney_centres(rng, plan: BodyPlan):
    """Kidney centres (side, s, x, y) in mm for a procedural case, beside the spine."""
    out = []
    for side in (-1, +1):
        dx = rng.uniform(55, 75)
        dz = rng.uniform(-18, -4) if side < 0 else rng.uniform(-2, 12)  # right kidney lower
        out.append((side, plan.hilum_s - dz, plan.sx + side * dx, plan.sy + rng.uniform(-5, 15)))
    return out
