"""The pelvis below the kidneys, for bodies whose label maps stop at the abdomen.

Drawn in each axial slice relative to the spine centre (sx, sy) and the depth ``d`` (mm)
below the iliac crest (a few cm below the aortic bifurcation, at L4-L5):

- iliac wings: curved bony plates from the sacroiliac joints (beside the sacrum) sweeping
  laterally and forwards to the anterior iliac spines, thin above and thick near the
  acetabulum; the iliacus muscle lines their inner (concave) side, the gluteus medius and
  minimus their outer side, the gluteus maximus lies behind;
- psoas running forwards and outwards over the pelvic brim to join the iliacus;
- the sacrum below L5 (wide, sloping backwards), the rectum in front of it;
- the bladder behind the lower anterior wall; femoral heads in the acetabula.

These are the hard negatives of the pelvis: iliac bone and iliopsoas muscle in
non-contrast CT look like kidney to a model that never saw them.
"""

from __future__ import annotations

import math

import numpy as np

from kidedge.phantom import tissues as T


class PelvisPainter:
    """Per-case pelvis geometry (drawn once) and its painting.

    Args:
        rng: numpy Generator.
        has_bladder: the body source labels the bladder (then it is not drawn here).
    """

    def __init__(self, rng, has_bladder: bool = False):
        self.crest_below_bif = float(rng.uniform(-5, 25))
        # Each wing is an arc of a circle centred in front of the spine, from the
        # sacroiliac joint (about 4 cm lateral, 1.5 cm behind the vertebral centre) to the
        # anterior superior iliac spine (about 11 cm lateral, 6-7 cm in front of it).
        self.wing_r = float(rng.uniform(112, 128))
        self.wing_dx = float(rng.uniform(-5, 5))
        self.wing_dy = float(rng.uniform(-105, -90))
        self.iliacus_mm = float(rng.uniform(12, 22))
        self.glut_mm = float(rng.uniform(18, 30))
        self.bladder_top = float(rng.uniform(70, 120))
        self.bladder_r = float(rng.uniform(22, 45)) if not has_bladder else 0.0
        self.bladder_level = float(rng.uniform(0.3, 0.7))
        self.rectum_r = float(rng.uniform(12, 20))
        self.head_d = float(rng.uniform(115, 135))

    def depth(self, painter, zk: float) -> float:
        """mm below the iliac crest (negative above it)."""
        return painter.p.bifurcation_zk - self.crest_below_bif - zk

    def replaces_lumbar(self, painter, zk: float) -> bool:
        """Below L5 the lumbar spine and its muscles give way to the sacrum and pelvis."""
        return self.depth(painter, zk) > 15.0

    def _arc(self, painter, codes, code, cx, cy, r_in, r_out, th0, th1, side, where=None, only=None):
        """Annular sector around (cx, cy); angles (deg) in the side's frame: 0 lateral,
        90 posterior."""
        box = painter._box(cx, cy, r_out, r_out)
        if box is None:
            return
        rs, cs = box
        dx = (painter.X[:, cs] - cx) * side
        dy = painter.Y[rs] - cy
        rr = np.sqrt(dx * dx + dy * dy)
        th = np.degrees(np.arctan2(dy, dx))
        m = (rr >= r_in) & (rr <= r_out) & (th >= th0) & (th <= th1)
        if where is not None:
            m &= where[rs, cs]
        view = codes[rs, cs]
        if only is not None:
            m &= np.isin(view, only)
        view[m] = code

    def paint(self, painter, codes, zk: float, body, cavity) -> None:
        d = self.depth(painter, zk)
        if d < 0:
            return
        p = painter.p
        sx, sy = p.sx, p.sy
        soft = (T.VISCERAL_FAT, T.BOWEL_FLUID, T.BOWEL_AIR, T.BOWEL_WALL, T.BOWEL_CONTRAST,
                T.FAECES, T.MUSCLE, T.SUBCUT_FAT)
        # Sacrum (below L5), sloping backwards, narrowing towards the coccyx.
        if 15 < d < 150:
            t = (d - 15) / 135
            scy = sy + 6 + 40 * t
            srx = max(8.0, 48 * (1 - t) + 8)
            painter.ellipse(codes, T.BONE_CORTEX, sx, scy, srx, 16 - 6 * t, where=body)
            painter.ellipse(codes, T.BONE_MARROW, sx, scy, srx - 2.5, 13.5 - 6 * t, where=body)
            painter.ellipse(codes, T.CSF, sx, scy + 4, 7, 4, where=body)
        # Erector spinae behind the sacrum, gluteus maximus behind the wings.
        for side in (-1, 1):
            if d < 90:
                painter.ellipse(codes, T.MUSCLE, sx + side * 28, sy + 48 + 0.3 * d, 24, 18, where=body, wob=0.08)
            if d > 25:
                g = min(1.0, (d - 25) / 50)
                painter.ellipse(codes, T.MUSCLE, sx + side * (75 + 15 * g), sy + 50 + 10 * g,
                                40 + 25 * g, 22 + 10 * g, side * 0.5, where=body, only=soft, wob=0.08)
        # Iliac wings with iliacus inside and the small gluteals outside.
        for side in (-1, 1):
            cx = sx + side * self.wing_dx
            cy = sy + self.wing_dy
            if d < 95:
                t = d / 95
                r = self.wing_r
                thick = 5 + 9 * t
                th0 = 16 + 30 * t
                self._arc(painter, codes, T.MUSCLE, cx, cy, r + thick / 2, r + thick / 2 + self.glut_mm,
                          th0 - 4, 74, side, where=body, only=soft)
                self._arc(painter, codes, T.MUSCLE, cx, cy, r - thick / 2 - self.iliacus_mm,
                          r - thick / 2, th0 + 3, 66, side, where=body, only=soft)
                self._arc(painter, codes, T.BONE_CORTEX, cx, cy, r - thick / 2, r + thick / 2,
                          th0, 72, side, where=body)
                if thick > 7:
                    self._arc(painter, codes, T.BONE_MARROW, cx, cy, r - thick / 2 + 1.8,
                              r + thick / 2 - 1.8, th0 + 1.5, 70.5, side, where=body)
            # Psoas over the pelvic brim, joining the iliacus.
            if d < 110:
                u = min(1.0, d / 80)
                px = sx + side * (p.vrx + 22 + 28 * u)
                py = sy - 0.2 * p.vry - 35 * u
                painter.ellipse(codes, T.MUSCLE, px, py, 22 - 4 * u, 18, where=body, only=soft, wob=0.08)
            # Acetabulum (medial to the head) and the femoral head in it.
            hx, hy = sx + side * 95, sy - 35
            if 80 < d < 140:
                ax = hx - side * 16
                painter.ellipse(codes, T.BONE_CORTEX, ax, hy + 6, 19, 30, side * 0.3, where=body)
                painter.ellipse(codes, T.BONE_MARROW, ax, hy + 6, 16, 27, side * 0.3, where=body)
            dh = d - self.head_d
            if abs(dh) < 23:
                rr = math.sqrt(23 ** 2 - dh ** 2)
                painter.ellipse(codes, T.MUSCLE, hx, hy, rr + 1.5, rr + 1.5, where=body)
                painter.ellipse(codes, T.BONE_CORTEX, hx, hy, rr, rr, where=body)
                painter.ellipse(codes, T.BONE_MARROW, hx, hy, rr - 2, rr - 2, where=body)
        # Rectum in front of the sacrum.
        if d > 60:
            rcy = sy + 6 + 40 * min(1.0, (d - 15) / 135) - 16 - 2 * self.rectum_r
            painter.ellipse(codes, T.BOWEL_WALL, sx + 5, rcy, self.rectum_r + 3, self.rectum_r * 0.8 + 3,
                            where=cavity, wob=0.15)
            painter.ellipse(codes, T.FAECES, sx + 5, rcy, self.rectum_r, self.rectum_r * 0.8, where=cavity, wob=0.15)
        # Bladder behind the lower anterior wall.
        if self.bladder_r > 0:
            top = self.bladder_top
            r = self.bladder_r
            if top < d < top + 2 * r:
                rad = math.sqrt(max(r * r - (d - top - r) ** 2, 0.0))
                front = p.cy - p.b_ant + p.skin_mm + p.fat_mm + p.muscle_mm
                bcy = front + 4 + rad * 0.85
                painter.ellipse(codes, T.BLADDER_WALL, sx, bcy, rad * 1.25 + 3, rad * 0.85 + 3, where=cavity, wob=0.1)
                painter.ellipse(codes, T.URINE, sx, bcy, rad * 1.25, rad * 0.85, where=cavity, wob=0.1)
                if painter.style.phase == "excretory":
                    # Opacified urine layers posteriorly in a supine patient.
                    level = bcy - rad * 0.85 + 2 * rad * 0.85 * self.bladder_level
                    m = (painter.Y < level) & (codes == T.URINE)
                    codes[m] = T.BOWEL_FLUID
