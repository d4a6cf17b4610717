"""Paints a body plan one axial slice at a time, as tissue codes.

Vectorised ellipse and segment tests inside bounding boxes: a 512x512 slice costs a few
ms. ``SlicePainter.paint`` draws a whole procedural body; its parts (wall, lungs, bowel,
organs, vessels, muscles, spine, ribs, what lies outside the body) are separate methods so
the anatomical phantoms (``kidedge.phantom.filler``) draw only what their maps lack.

Orientation is KiTS19's canonical one: rows run anterior -> posterior (y in mm grows
posteriorly), columns run from the patient's right to left (x grows to the left), slices
run superior -> inferior. ``zk`` is the height in mm above the renal hila (positive is
superior), the anatomical coordinate organs are placed by.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from kidedge.phantom import tissues as T
from kidedge.phantom.body import BodyPlan
from kidedge.phantom.fields import CoarseGrid

_NORMAL = statistics.NormalDist()


class SlicePainter:
    """Paints axial slices of one plan; holds the pixel coordinate vectors (mm)."""

    def __init__(self, plan: BodyPlan, style: T.PhantomStyle):
        self.p = plan
        self.style = style
        _, rows, cols = plan.shape
        self.rows, self.cols = rows, cols
        self.X = (np.arange(cols, dtype=np.float32) * plan.spacing[2])[None, :]
        self.Y = (np.arange(rows, dtype=np.float32) * plan.spacing[1])[:, None]
        # ~3 mm coarse nodes for the smooth outline computations.
        self.wobble = None
        self.coarse = CoarseGrid(rows, cols, max(1, min(8, int(3.0 / min(plan.spacing[1:])))))

    # -- primitives ---------------------------------------------------------------
    def _box(self, cx, cy, rx, ry):
        sr, sc = self.p.spacing[1], self.p.spacing[2]
        r0 = max(int((cy - ry) / sr) - 1, 0)
        r1 = min(int((cy + ry) / sr) + 2, self.rows)
        c0 = max(int((cx - rx) / sc) - 1, 0)
        c1 = min(int((cx + rx) / sc) + 2, self.cols)
        if r1 <= r0 or c1 <= c0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, codes, code, cx, cy, rx, ry, angle=0.0, where=None, only=None, wob=0.0):
        """Set ``code`` inside an ellipse (radii rx, ry mm, rotated by angle rad).

        ``where``: optional full-slice bool mask to intersect with; ``only``: optional
        tuple of codes that may be overwritten; ``wob``: how much the slice's smooth
        "wobble" field bends the outline (organs are not ellipses, and a model must not
        learn that only kidneys have irregular outlines).
        """
        if rx <= 0 or ry <= 0:
            return
        grow = math.sqrt(1.0 + 3.0 * wob)  # the wobble can push the outline out
        r = max(rx, ry) if angle else None
        box = self._box(cx, cy, (r or rx) * grow, (r or ry) * grow)
        if box is None:
            return
        rs, cs = box
        dx = self.X[:, cs] - cx
        dy = self.Y[rs] - cy
        if angle:
            ca, sa = math.cos(angle), math.sin(angle)
            u = dx * ca + dy * sa
            v = -dx * sa + dy * ca
        else:
            u, v = dx, dy
        if wob and self.wobble is not None:
            m = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0 + wob * self.wobble[rs, cs]
        else:
            m = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        if where is not None:
            m &= where[rs, cs]
        view = codes[rs, cs]
        if only is not None:
            m &= np.isin(view, only)
        view[m] = code

    def segment(self, codes, code, p0, p1, radius, only=None):
        """Set ``code`` within ``radius`` mm of the segment p0-p1 ((x, y) in mm)."""
        (x0, y0), (x1, y1) = p0, p1
        box = self._box((x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2 + radius, abs(y1 - y0) / 2 + radius)
        if box is None:
            return
        rs, cs = box
        dx, dy = x1 - x0, y1 - y0
        L2 = dx * dx + dy * dy + 1e-9
        px = self.X[:, cs] - x0
        py = self.Y[rs] - y0
        t = np.clip((px * dx + py * dy) / L2, 0.0, 1.0)
        m = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= radius * radius
        view = codes[rs, cs]
        if only is not None:
            m &= np.isin(view, only)
        view[m] = code

    # -- the slice ----------------------------------------------------------------
    def outline_depth(self, k):
        """Depth (mm) below the skin, and below the subcutaneous fat, of every pixel.

        Both are smooth, so they are computed on a coarse grid and interpolated.
        Returns (depth, depth_below_fat), float32 (rows, cols); <= 0 means outside.
        """
        p = self.p
        zk = p.zk(k)
        g = self.coarse
        X = (g.cols_idx.astype(np.float32) * p.spacing[2])[None, :]
        Y = (g.rows_idx.astype(np.float32) * p.spacing[1])[:, None]
        # Slow changes of size along the body (chest wider, pelvis rounder).
        grow = 1.0 + 0.04 * math.sin(zk / 140.0 + p.fat_phase)
        a = p.a * grow
        dx = X - p.cx
        dy = Y - p.cy
        b = np.where(dy < 0, p.b_ant, p.b_post).astype(np.float32) * grow
        L = np.sqrt(dx * dx + dy * dy) + 1e-3
        c, s = dx / L, dy / L
        rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
        # cos(k theta + phi) by the multiple-angle recurrence: no trig per pixel.
        pert = np.ones_like(rho)
        ck, sk = c, s
        for kk, amp, ph in p.harmonics:
            if kk == 2:
                ck, sk = c * c - s * s, 2 * c * s
            else:
                ck, sk = ck * c - sk * s, sk * c + ck * s
            pert += amp * (ck * math.cos(ph) - sk * math.sin(ph))
        # Supine patients are flattened at the back.
        pert -= 0.06 * np.clip(s, 0, None) ** 4
        rho = rho / pert
        depth = L * (1.0 - rho) / np.maximum(rho, 1e-3)
        depth = np.minimum(depth, 1000.0)
        fat = p.fat_mm * (1.0 + p.fat_aniso * (c * math.cos(p.fat_phase) + s * math.sin(p.fat_phase))
                          - 0.35 * np.clip(s, 0, None))
        return g.up(depth), g.up(depth - fat)

    def paint(self, k: int, fields, wobble=None) -> np.ndarray:
        """Tissue codes (uint8, rows x cols) of slice ``k`` without the kidneys' interior.

        ``fields`` is the case's ``SmoothField`` with channels (bowel, content, vessel);
        ``wobble`` an optional coarser one-channel ``SmoothField`` that bends organ outlines.
        """
        zk = self.p.zk(k)
        codes, body, cavity = self.wall(k, wobble)
        self.lungs(codes, zk, cavity)
        self.bowel(codes, k, zk, cavity, fields)
        self.colon(codes, zk, cavity)
        self.organs(codes, zk, cavity)
        self.liver_vessels(codes, k, fields)
        self.great_vessels(codes, zk, body)
        self.renal_vessels(codes, zk)
        self.muscles(codes, zk, body)
        self.spine(codes, zk)
        self.iliac_wings(codes, zk, body)
        # Ribs: oblique ribs cut as small ovals just inside the wall muscle.
        self._ribs(codes, k, zk, body)
        self._outside(codes, zk, body)
        return codes

    def wall(self, k: int, wobble=None):
        """(codes, body, cavity) of slice ``k``: skin, subcutaneous fat, wall muscle and
        visceral fat inside; also sets the slice's organ-outline wobble."""
        p = self.p
        self.wobble = wobble.slice(k)[0] if wobble is not None else None
        codes = np.zeros((self.rows, self.cols), np.uint8)
        depth, below_fat = self.outline_depth(k)
        body = depth > 0
        codes[body] = T.SKIN
        codes[depth > p.skin_mm] = T.SUBCUT_FAT
        codes[below_fat > p.skin_mm] = T.MUSCLE
        cavity = below_fat > p.skin_mm + p.muscle_mm
        codes[cavity] = T.VISCERAL_FAT
        return codes, body, cavity

    def lungs(self, codes, zk, cavity):
        """Lungs above the diaphragm (the posterior recesses reach lower), heart above."""
        p = self.p
        W, Hb = p.a, 0.5 * (p.b_ant + p.b_post)
        post = np.clip((self.Y - p.cy) / Hb + 0.5, 0, 1)
        lung_level = p.dome_zk - 10 - 45 * post
        if zk > p.dome_zk - 60:
            lung = cavity & (zk > lung_level)
            codes[lung] = T.LUNG
            if zk > p.dome_zk + 10:
                # Mediastinum and heart.
                hr = min(60.0, (zk - p.dome_zk - 10) * 1.2 + 25)
                self.ellipse(codes, T.MYOCARDIUM, p.cx + 0.15 * W, p.cy - 0.25 * Hb, hr * 1.1, hr * 0.85, 0.5, where=cavity, wob=0.1)
                self.ellipse(codes, T.HEART_BLOOD, p.cx + 0.15 * W, p.cy - 0.25 * Hb, hr * 0.75, hr * 0.55, 0.5, where=cavity)
                self.ellipse(codes, T.VISCERAL_FAT, p.sx, p.sy - p.vry - 25, 28, 30, where=cavity)

    def bowel(self, codes, k, zk, cavity, fields, top_zk=None):
        """Bowel loops where a smooth field exceeds a level, anterior to the spine, in
        visceral fat only; below ``top_zk`` (default: 40 mm under the liver dome)."""
        p, st = self.p, self.style
        top = p.dome_zk - 40 if top_zk is None else top_zk
        if zk < top:
            rs = slice(0, min(self.rows, int((p.sy + 15) / p.spacing[1]) + 1))
            f = fields.slice(k, rows=rs)
            loops = f[0] > p.bowel_level
            wall = loops & (f[0] < p.bowel_level + 0.28)
            region = cavity[rs] & (codes[rs] == T.VISCERAL_FAT)
            content = f[1]
            q_air = 1.0 - st.bowel_air
            q_con = st.oral_contrast
            # The field is close to unit-normal, so its quantiles give the content fractions.
            c_air = _NORMAL.inv_cdf(min(max(q_air, 1e-3), 1 - 1e-3))
            c_con = _NORMAL.inv_cdf(q_con) if q_con > 0 else -9.0
            inner = np.full(content.shape, T.BOWEL_FLUID, np.uint8)
            inner[content > c_air] = T.BOWEL_AIR
            inner[content < c_con] = T.BOWEL_CONTRAST
            inner[wall] = T.BOWEL_WALL
            sel = region & loops
            view = codes[rs]
            view[sel] = inner[sel]

    def colon(self, codes, zk, cavity):
        """Ascending (right) and descending (left) colon in the flanks, faeces and gas."""
        p = self.p
        W, Hb = p.a, 0.5 * (p.b_ant + p.b_post)
        if zk < p.dome_zk - 80:
            for side in (-1, 1):
                ccx = p.cx + side * 0.62 * W
                ccy = p.cy + 0.05 * Hb
                r = 18 + 6 * math.sin(zk / 23.0 + side)
                self.ellipse(codes, T.BOWEL_WALL, ccx, ccy, r + 3, r * 0.9 + 3, where=cavity, wob=0.15)
                self.ellipse(codes, T.FAECES, ccx, ccy, r, r * 0.9, where=cavity, wob=0.15)
                self.ellipse(codes, T.BOWEL_AIR, ccx, ccy - r * 0.45, r * 0.7, r * 0.4, where=cavity, only=(T.FAECES,))

    def organs(self, codes, zk, cavity):
        """Procedural liver, gallbladder, spleen, stomach and pancreas."""
        p, st = self.p, self.style
        W, Hb = p.a, 0.5 * (p.b_ant + p.b_post)
        if p.liver_low_zk < zk < p.dome_zk:
            t = (zk - p.liver_low_zk) / (p.dome_zk - p.liver_low_zk)
            size = p.liver_size * min(1.0, 3.0 * (1 - t) + 0.15) * min(1.0, 0.3 + 1.4 * t)
            low = 1 - min(1.0, 2.2 * t)  # the lower liver is the right lobe, lateral and back
            lcx = p.cx - (0.35 + 0.3 * low) * W
            lcy = p.cy - 0.05 * Hb + 0.2 * low * Hb
            self.ellipse(codes, T.LIVER, lcx, lcy, (0.7 - 0.35 * low) * W * size,
                         (0.95 - 0.35 * low) * Hb * size, 0.2, where=cavity, wob=0.15)
            gb = p.gallbladder
            if gb is not None and abs(zk - gb[2]) < gb[3]:
                rr = math.sqrt(gb[3] ** 2 - (zk - gb[2]) ** 2)
                self.ellipse(codes, T.GALLBLADDER, p.cx + gb[0] * W, p.cy + gb[1] * Hb, rr, rr * 1.3, where=cavity, wob=0.1)
        # Spleen (left, posterior) and stomach (left, anterior).
        if p.spleen_low_zk < zk < p.spleen_top_zk:
            t = (zk - p.spleen_low_zk) / (p.spleen_top_zk - p.spleen_low_zk)
            size = p.spleen_size * math.sin(math.pi * t) ** 0.6
            self.ellipse(codes, T.SPLEEN, p.cx + 0.62 * W, p.cy + 0.3 * Hb, 0.2 * W * size + 4,
                         0.42 * Hb * size + 4, -0.7, where=cavity, wob=0.2)
        if 15 < zk < p.dome_zk - 5:
            t = (zk - 15) / max(p.dome_zk - 20, 1)
            r = 45 * math.sin(math.pi * min(max(t, 0), 1)) ** 0.5 + 5
            scx, scy = p.cx + 0.3 * W, p.cy - 0.3 * Hb
            self.ellipse(codes, T.BOWEL_WALL, scx, scy, r + 4, r * 0.8 + 4, where=cavity, wob=0.12)
            self.ellipse(codes, T.BOWEL_FLUID if st.oral_contrast == 0 else T.BOWEL_CONTRAST,
                         scx, scy, r, r * 0.8, where=cavity, wob=0.12)
            # Gas rises to the front of a supine patient.
            self.ellipse(codes, T.BOWEL_AIR, scx, scy - 0.5 * r, r * 0.9, r * 0.45, where=cavity,
                         only=(T.BOWEL_FLUID, T.BOWEL_CONTRAST))
        if -15 < zk < 40:
            self.ellipse(codes, T.PANCREAS, p.sx + 25, p.sy - p.vry - 40, 60, 11, -0.35, where=cavity, wob=0.3)

    def liver_vessels(self, codes, k, fields):
        """Liver vessels: the zero set of a smooth field gives branching tubes."""
        lv = codes == T.LIVER
        if lv.any():
            rs_l = np.flatnonzero(lv.any(axis=1))
            cs_l = np.flatnonzero(lv.any(axis=0))
            rsl = slice(rs_l[0], rs_l[-1] + 1)
            csl = slice(cs_l[0], cs_l[-1] + 1)
            v = fields.slice(k, rows=rsl, cols=csl, channels=slice(2, 3))[0]
            view = codes[rsl, csl]
            view[(np.abs(v) < 0.045) & (view == T.LIVER)] = T.LIVER_VESSEL

    def great_vessels(self, codes, zk, body):
        """Aorta and IVC in front of the spine; iliac vessels below the bifurcation."""
        p = self.p
        ay = p.sy - p.vry - p.aorta_r - 4
        if zk > p.bifurcation_zk:
            self.ellipse(codes, T.ARTERY, p.sx + p.aorta_dx, ay, p.aorta_r, p.aorta_r, where=body)
            self.ellipse(codes, T.VEIN, p.sx + p.ivc_dx, ay + 2, 13, 9, where=body)
        else:
            spread = (p.bifurcation_zk - zk) * 0.35 + 6
            for side in (-1, 1):
                self.ellipse(codes, T.ARTERY, p.sx + side * spread, ay, 6.5, 6.5, where=body)
                self.ellipse(codes, T.VEIN, p.sx + side * (spread + 4), ay + 10, 8, 7, where=body)

    def renal_vessels(self, codes, zk):
        """Renal veins and arteries at each kidney's hilum level."""
        p = self.p
        ay = p.sy - p.vry - p.aorta_r - 4
        for site in p.sites:
            dz = (p.hilum_s - site.s) - zk
            medial = (site.x_max if site.side < 0 else site.x_min)
            if abs(dz) < 5:
                self.segment(codes, T.VEIN, (p.sx + p.ivc_dx, ay + 2), (medial, site.y), 5.0,
                             only=(T.VISCERAL_FAT, T.BOWEL_FLUID, T.BOWEL_WALL, T.PANCREAS))
            if abs(dz - 9) < 3:
                self.segment(codes, T.ARTERY, (p.sx + p.aorta_dx, ay), (medial, site.y), 3.0,
                             only=(T.VISCERAL_FAT, T.BOWEL_FLUID, T.BOWEL_WALL, T.PANCREAS))

    def muscles(self, codes, zk, body):
        """Psoas beside the spine, quadratus lumborum and the back muscles."""
        p = self.p
        if zk < 35:
            r = min(6 + (35 - zk) * 0.12, 27)
            for side in (-1, 1):
                self.ellipse(codes, T.MUSCLE, p.sx + side * (p.vrx + r * 0.85), p.sy - 0.15 * p.vry, r, r * 0.85, where=body, wob=0.08)
        if -150 < zk < 40:
            for side in (-1, 1):
                self.ellipse(codes, T.MUSCLE, p.sx + side * 68, p.sy + p.vry + 18, 18, 10, side * 0.5, where=body, wob=0.1)
        for side in (-1, 1):
            self.ellipse(codes, T.MUSCLE, p.sx + side * 32, p.sy + p.vry + 38, 27, 22, where=body, wob=0.08)

    def spine(self, codes, zk):
        """Vertebral body (cortex, marrow) or disc, canal, arch, processes."""
        p = self.p
        ph = (zk + p.vert_phase) % p.vert_period
        grow = 1.0 + max(0.0, -zk) * 0.0008
        vrx, vry = p.vrx * grow, p.vry * grow
        if ph < p.disc_mm:
            self.ellipse(codes, T.DISC, p.sx, p.sy, vrx, vry)
        else:
            self.ellipse(codes, T.BONE_CORTEX, p.sx, p.sy, vrx, vry)
            self.ellipse(codes, T.BONE_MARROW, p.sx, p.sy, vrx - 2.0, vry - 2.0)
        cy_canal = p.sy + vry + 9
        arch = ph > p.disc_mm + 4
        if arch:
            self.ellipse(codes, T.BONE_CORTEX, p.sx, cy_canal + 1, 14, 12)
            self.ellipse(codes, T.BONE_MARROW, p.sx, cy_canal + 1, 11, 9)
            self.ellipse(codes, T.BONE_CORTEX, p.sx, cy_canal + 24, 4.5, 15)
            for side in (-1, 1):
                if zk < 45:
                    self.ellipse(codes, T.BONE_CORTEX, p.sx + side * 26, cy_canal - 2, 18, 5, side * 0.3)
                else:
                    self.ellipse(codes, T.BONE_CORTEX, p.sx + side * 24, cy_canal - 4, 12, 6, side * 0.4)
        self.ellipse(codes, T.CSF, p.sx, cy_canal, 8, 7)

    def iliac_wings(self, codes, zk, body):
        """Simple iliac wings below the aortic bifurcation."""
        p = self.p
        if zk < p.bifurcation_zk - 10:
            t = min(1.0, (p.bifurcation_zk - 10 - zk) / 60)
            for side in (-1, 1):
                wx = p.sx + side * (60 + 30 * t)
                self.ellipse(codes, T.BONE_CORTEX, wx, p.sy + 15, 12 + 20 * t, 6 + 3 * t, side * -0.9, where=body)
                self.ellipse(codes, T.BONE_MARROW, wx, p.sy + 15, 9 + 20 * t, 3 + 3 * t, side * -0.9, where=body)

    def _ribs(self, codes, k, zk, body):
        p = self.p
        for theta in np.linspace(-math.pi, math.pi, 26, endpoint=False):
            ct, st_ = math.cos(theta), math.sin(theta)
            if st_ > 0.93 or st_ < -0.97:  # spine behind, sternum in front
                continue
            # The costal margin: low at the back and sides, high at the front.
            margin = -35 + 70 * max(0.0, -st_) ** 1.5 + 15 * (1 - abs(ct))
            if zk < margin:
                continue
            band = math.sin(2 * math.pi * (zk + p.rib_phase + 20 * st_) / p.rib_period)
            if band < 0.25:
                continue
            b = p.b_ant if st_ < 0 else p.b_post
            r_b = 1.0 / math.sqrt((ct / p.a) ** 2 + (st_ / b) ** 2)
            r = r_b - p.skin_mm - p.fat_mm * (1 - 0.3 * max(st_, 0)) - p.muscle_mm * 0.5
            x, y = p.cx + r * ct, p.cy + r * st_
            ang = theta + math.pi / 2
            if st_ < -0.45:
                self.ellipse(codes, T.CARTILAGE, x, y, 7, 4.5, ang, where=body)
            else:
                self.ellipse(codes, T.BONE_CORTEX, x, y, 7.5, 5, ang, where=body)
                self.ellipse(codes, T.BONE_MARROW, x, y, 5.5, 3, ang, where=body)

    def _outside(self, codes, zk, body):
        p, st = self.p, self.style
        if st.has_arms:
            for side in (-1, 1):
                ax = p.cx + side * (p.a + 12 + p.arm_r)
                ay = p.cy + 0.05 * p.b_post
                outside = ~body
                self.ellipse(codes, T.SKIN, ax, ay, p.arm_r, p.arm_r * 1.15, where=outside)
                self.ellipse(codes, T.SUBCUT_FAT, ax, ay, p.arm_r - 2, p.arm_r * 1.15 - 2, where=outside)
                self.ellipse(codes, T.MUSCLE, ax, ay, p.arm_r * 0.7, p.arm_r * 0.8, where=outside)
                self.ellipse(codes, T.BONE_CORTEX, ax, ay, 11, 11, where=outside)
                self.ellipse(codes, T.BONE_MARROW, ax, ay, 7, 7, where=outside)
        if st.has_table:
            y0 = p.cy + p.b_post + p.table_gap
            dx = self.X - p.cx
            yt = y0 + p.table_curve * dx * dx
            for off, thick in ((0.0, 3.0), (22.0, 2.0)):
                m = (self.Y >= yt + off) & (self.Y < yt + off + thick) & (np.abs(dx) < 220)
                codes[m & (codes == T.AIR)] = T.TABLE
