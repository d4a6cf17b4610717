"""What a real body label map lacks, drawn procedurally around its real organs.

BTCV labels 8 organs and AMOS 15: no skin, fat, muscle, bone, bowel or lungs. Those are
drawn by the procedural painter (``kidedge.phantom.painter``), placed by anchors taken
from the real organs of each slice (``kidedge.phantom.anchors``: spine behind the aorta,
body envelope, diaphragm): wall, lungs above the diaphragm and heart, bowel loops in the
free space below it, mesenteric vessels, the aorta continued above and the iliac vessels
below where the source's aorta stops, ribs, and the pelvis (``kidedge.phantom.pelvis``)
below the iliac crest.

A source that labels a structure (TotalSegmentator labels bones, lungs, bowel, muscles)
keeps its real one and that part is not drawn. Real organs are painted over the
procedural background, then their interiors are made (stomach and bowel walls with air,
fluid or contrast inside, bladder wall and urine, bone cortex and marrow, heart wall).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from kidedge.phantom import anatomy as A
from kidedge.phantom import tissues as T
from kidedge.phantom.anchors import Anchors
from kidedge.phantom.body import BodyPlan
from kidedge.phantom.painter import _NORMAL, SlicePainter

ORGAN_TISSUE = np.zeros(256, np.uint8)
for _organ, _tissue in {
    A.LIVER: T.LIVER, A.SPLEEN: T.SPLEEN, A.KIDNEY_R: T.VISCERAL_FAT, A.KIDNEY_L: T.VISCERAL_FAT,
    A.KIDNEY_CYST: T.VISCERAL_FAT, A.GALLBLADDER: T.GALLBLADDER, A.STOMACH: T.BOWEL_WALL,
    A.PANCREAS: T.PANCREAS, A.AORTA: T.ARTERY, A.IVC: T.VEIN, A.PORTAL_VEIN: T.PORTAL_VEIN,
    A.ADRENAL: T.ADRENAL, A.ESOPHAGUS: T.BOWEL_WALL, A.DUODENUM: T.BOWEL_WALL,
    A.SMALL_BOWEL: T.BOWEL_WALL, A.COLON: T.BOWEL_WALL, A.BLADDER: T.URINE,
    A.PROSTATE_UTERUS: T.PROSTATE, A.LUNG: T.LUNG, A.HEART: T.HEART_BLOOD,
    A.VERTEBRA: T.BONE_MARROW, A.RIB: T.BONE_MARROW, A.PELVIC_BONE: T.BONE_MARROW,
    A.OTHER_BONE: T.BONE_MARROW, A.ILIOPSOAS: T.MUSCLE, A.BACK_MUSCLE: T.MUSCLE,
    A.GLUTEAL: T.MUSCLE, A.ILIAC_ARTERY: T.ARTERY, A.ILIAC_VEIN: T.VEIN,
    A.SPINAL_CORD: T.SPINAL_CORD, A.CARTILAGE: T.CARTILAGE, A.OTHER_ARTERY: T.ARTERY,
    A.OTHER_VEIN: T.VEIN, A.OTHER_SOFT: T.MUSCLE,
}.items():
    ORGAN_TISSUE[_organ] = _tissue

_HOLLOW = (A.STOMACH, A.DUODENUM, A.SMALL_BOWEL, A.COLON, A.ESOPHAGUS)
_BONES = (A.VERTEBRA, A.RIB, A.PELVIC_BONE, A.OTHER_BONE)
class AnchoredPainter(SlicePainter):
    """Paints a fine slice: procedural background, then the real organs over it.

    Args:
        plan: the base plan (its per-slice fields are replaced from ``anchors``).
        style: the case's :class:`kidedge.phantom.appearance.Appearance`.
        anchors: :class:`Anchors`.
        has: organ codes the body source labels (their procedural version is not drawn).
        pelvis: a ``kidedge.phantom.pelvis.PelvisPainter`` or None.
        stomach: (air fraction of its depth, content tissue) of the stomach.
    """

    def __init__(self, plan: BodyPlan, style, anchors: Anchors, has, pelvis=None,
                 stomach=(0.2, T.BOWEL_FLUID)):
        super().__init__(plan, style)
        self.base = plan
        self.anchors = anchors
        self.has = frozenset(has)
        self.pelvis = pelvis
        self.stomach = stomach
        self.plan_dome_zk = plan.hilum_s - anchors.dome_s
        self.plan_bif_zk = plan.hilum_s - anchors.bif_s
        d = anchors.diaphragm
        self.diaphragm = ndimage.zoom(d, (self.rows / d.shape[0], self.cols / d.shape[1]),
                                      order=1, mode="nearest").astype(np.float32)
        self.bowel_field = None     # a 3-channel SmoothField, set by the caller
        self.bowel_level = 0.0
        self.bowel_width = 0.3
        self.bowel_patch = 0.0

    def plan_at(self, f: int) -> BodyPlan:
        an = self.anchors
        return dataclasses.replace(
            self.base, cx=float(an.cx[f]), cy=float(an.cy[f]), a=float(an.a[f]),
            b_ant=float(an.b_ant[f]), b_post=float(an.b_post[f]), sx=float(an.sx[f]),
            sy=float(an.sy[f]), aorta_dx=float(an.ax[f] - an.sx[f]), aorta_r=float(an.ar[f]),
            dome_zk=self.plan_dome_zk, bifurcation_zk=self.plan_bif_zk)

    def paint_slice(self, f: int, org: np.ndarray, fields, wobble) -> tuple[np.ndarray, np.ndarray]:
        """(tissue codes, body mask) of fine slice ``f`` given its real organ codes."""
        self.p = p = self.plan_at(f)
        has = self.has
        zk = p.zk(f)
        codes, body, cavity = self.wall(f, wobble)
        if A.LUNG not in has:
            self._lungs(codes, f, zk, cavity)
        if A.SMALL_BOWEL not in has and self.bowel_field is not None:
            self._bowel_tubes(codes, f, cavity)
        self._fat_vessels(codes, f, fields, cavity)
        if A.COLON not in has:
            self.colon(codes, zk, cavity)
        if not self.anchors.aorta_real[f]:
            self._vessels(codes, zk, body, ivc=A.IVC not in has)
        elif A.IVC not in has:
            self.ellipse(codes, T.VEIN, p.sx + p.ivc_dx, p.sy - p.vry - p.aorta_r - 2, 13, 9, where=body)
        lumbar = self.pelvis is None or not self.pelvis.replaces_lumbar(self, zk)
        if A.VERTEBRA not in has and lumbar:
            self.muscles(codes, zk, body)
            self.spine(codes, zk)
        if self.pelvis is not None and A.PELVIC_BONE not in has:
            self.pelvis.paint(self, codes, zk, body, cavity)
        if A.RIB not in has:
            self._ribs(codes, f, zk, body)
        self._outside(codes, zk, body)
        m = org > 0
        if m.any():
            codes[m] = ORGAN_TISSUE[org[m]]
            self._interiors(codes, org, f, fields)
        self.liver_vessels(codes, f, fields)
        self.renal_vessels(codes, zk)
        return codes, body

    def wall(self, k: int, wobble=None):
        """Skin, subcutaneous fat, and an abdominal wall whose muscle is thick in front
        (paired recti, a thin linea alba between them), layered at the sides (the
        obliques, split by thin fat planes) and thin behind (the back muscles are drawn
        apart); visceral fat inside."""
        p = self.p
        self.wobble = wobble.slice(k)[0] if wobble is not None else None
        codes = np.zeros((self.rows, self.cols), np.uint8)
        depth, below_fat = self.outline_depth(k)
        body = depth > 0
        codes[body] = T.SKIN
        codes[depth > p.skin_mm] = T.SUBCUT_FAT
        dx = self.X - np.float32(p.cx)
        dy = self.Y - np.float32(p.cy)
        r = np.sqrt(dx * dx + dy * dy) + np.float32(1e-3)
        sin_t = dy / r
        cos2 = (dx / r) ** 2
        m = p.muscle_mm * (0.7 + 0.45 * np.clip(-sin_t, 0, None) ** 2 - 0.3 * np.clip(sin_t, 0, None))
        m = np.where((np.abs(dx) < 5.0) & (sin_t < -0.7), np.float32(2.0), m.astype(np.float32))
        inner = below_fat - np.float32(p.skin_mm)
        codes[(inner > 0) & (inner <= m)] = T.MUSCLE
        plane = (cos2 > 0.45) & (np.abs(inner - 0.5 * m) < 0.7)
        codes[plane & (inner > 0)] = T.SUBCUT_FAT
        cavity = inner > m
        codes[cavity] = T.VISCERAL_FAT
        return codes, body, cavity

    def _ribs(self, codes, k, zk, body):
        """Ribs cut obliquely in the wall: elongated along it at the sides, shorter in
        front and behind; costal cartilage in front; below the costal margin none."""
        p = self.p
        for theta in np.linspace(-np.pi, np.pi, 30, endpoint=False):
            ct, st_ = float(np.cos(theta)), float(np.sin(theta))
            if st_ > 0.9 or st_ < -0.97:
                continue
            margin = -35 + 70 * max(0.0, -st_) ** 1.5 + 15 * (1 - abs(ct))
            if zk < margin:
                continue
            band = np.sin(2 * np.pi * (zk + p.rib_phase + 20 * st_) / p.rib_period)
            if band < 0.2:
                continue
            b = p.b_ant if st_ < 0 else p.b_post
            r_b = 1.0 / np.sqrt((ct / p.a) ** 2 + (st_ / b) ** 2)
            fat = p.fat_mm * (1 + p.fat_aniso * (ct * np.cos(p.fat_phase) + st_ * np.sin(p.fat_phase))
                              - 0.35 * max(st_, 0.0))
            r = r_b - p.skin_mm - fat - p.muscle_mm * 0.6
            x, y = p.cx + r * ct, p.cy + r * st_
            ang = theta + np.pi / 2
            length = 6.0 + 7.0 * abs(ct) * (0.6 + 0.4 * band)
            if st_ < -0.45:
                self.ellipse(codes, T.CARTILAGE, x, y, length, 4.5, ang, where=body)
            else:
                self.ellipse(codes, T.BONE_CORTEX, x, y, length, 5.0, ang, where=body)
                self.ellipse(codes, T.BONE_MARROW, x, y, length - 2.0, 3.0, ang, where=body)

    def _lungs(self, codes, f, zk, cavity):
        """Lungs above the diaphragm height map; heart and mediastinum above the dome."""
        p = self.p
        lung = cavity & (f * p.spacing[0] < self.diaphragm - 3.0)
        codes[lung] = T.LUNG
        if zk > p.dome_zk + 10:
            W, Hb = p.a, 0.5 * (p.b_ant + p.b_post)
            hr = min(60.0, (zk - p.dome_zk - 10) * 1.2 + 25)
            hx, hy = p.cx + 0.15 * W, p.cy - 0.25 * Hb
            self.ellipse(codes, T.MYOCARDIUM, hx, hy, hr * 1.1, hr * 0.85, 0.5, where=cavity, wob=0.1)
            self.ellipse(codes, T.HEART_BLOOD, hx, hy, hr * 0.75, hr * 0.55, 0.5, where=cavity)
            self.ellipse(codes, T.VISCERAL_FAT, p.sx, p.sy - p.vry - 25, 28, 30, where=cavity)

    def _bowel_tubes(self, codes, f, cavity):
        """Small bowel and colon loops as tubes: a band around a level set of a smooth
        field (constant calibre, walls, fluid, gas or oral contrast inside), in patches
        of the visceral fat below the diaphragm and in front of the spine."""
        p, st = self.p, self.style
        rs = slice(0, min(self.rows, int((p.sy + 10) / p.spacing[1]) + 1))
        region = cavity[rs] & (codes[rs] == T.VISCERAL_FAT)
        region &= f * p.spacing[0] > self.diaphragm[rs] + 25.0
        if not region.any():
            return
        g = self.bowel_field.slice(f, rows=rs)
        band = np.abs(g[0] - self.bowel_level)
        lumen = band < self.bowel_width
        wall = ~lumen & (band < self.bowel_width + 0.1)
        region &= g[2] > self.bowel_patch
        c_air = _NORMAL.inv_cdf(min(max(1.0 - st.bowel_air, 1e-3), 1 - 1e-3))
        c_con = _NORMAL.inv_cdf(st.oral_contrast) if st.oral_contrast > 0 else -9.0
        inner = np.full(band.shape, T.BOWEL_FLUID, np.uint8)
        inner[g[1] > c_air] = T.BOWEL_AIR
        inner[g[1] < c_con] = T.BOWEL_CONTRAST
        inner[wall] = T.BOWEL_WALL
        sel = region & (lumen | wall)
        view = codes[rs]
        view[sel] = inner[sel]

    def _fat_vessels(self, codes, f, fields, cavity):
        """Mesenteric and retroperitoneal vessels: thin strands in the visceral fat."""
        fat = cavity & (codes == T.VISCERAL_FAT)
        rr = np.flatnonzero(fat.any(axis=1))
        if rr.size == 0:
            return
        cc = np.flatnonzero(fat.any(axis=0))
        box = (slice(rr[0], rr[-1] + 1), slice(cc[0], cc[-1] + 1))
        v = fields.slice(f, rows=box[0], cols=box[1], channels=slice(2, 3))[0]
        view = codes[box]
        view[fat[box] & (np.abs(v - 0.7) < 0.03)] = T.SMALL_VESSEL

    def _vessels(self, codes, zk, body, ivc: bool):
        """Aorta (and IVC) where the source's aorta is absent; iliacs below the
        bifurcation, diverging over the pelvic brim (at most 70 mm off the midline)."""
        p = self.p
        ay = p.sy - p.vry - p.aorta_r - 4
        if zk > p.bifurcation_zk:
            self.ellipse(codes, T.ARTERY, p.sx + p.aorta_dx, ay, p.aorta_r, p.aorta_r, where=body)
            if ivc:
                self.ellipse(codes, T.VEIN, p.sx + p.ivc_dx, ay + 2, 13, 9, where=body)
            return
        spread = min((p.bifurcation_zk - zk) * 0.35 + 6, 70.0)
        forward = min(max(0.0, (p.bifurcation_zk - zk - 60) * 0.4), 40.0)
        for side in (-1, 1):
            self.ellipse(codes, T.ARTERY, p.sx + side * spread, ay - forward, 5.5, 5.5, where=body)
            self.ellipse(codes, T.VEIN, p.sx + side * (spread + 3), ay + 9 - forward, 7.5, 6.5, where=body)

    def _interiors(self, codes, org, f, fields):
        """Walls and contents of hollow organs, bone cortex, heart wall."""
        present = np.bincount(org.reshape(-1), minlength=A.N_ORGANS) > 0
        for organ in _HOLLOW + _BONES + (A.BLADDER, A.HEART):
            if not present[organ]:
                continue
            m = org == organ
            rr = np.flatnonzero(m.any(axis=1))
            cc = np.flatnonzero(m.any(axis=0))
            box = (slice(rr[0], rr[-1] + 1), slice(cc[0], cc[-1] + 1))
            mb = m[box]
            view = codes[box]
            px = self.p.spacing[1]
            rim_mm = {A.BLADDER: 3.0, A.HEART: 7.0}.get(organ, 1.5 if organ in _BONES else 3.5)
            r = max(1, int(round(rim_mm / px)))
            inner = ndimage.minimum_filter(mb.astype(np.uint8), size=2 * r + 1, mode="constant") > 0
            if organ in _BONES:
                view[mb & ~inner] = T.BONE_CORTEX
            elif organ == A.HEART:
                view[mb & ~inner] = T.MYOCARDIUM
            elif organ == A.BLADDER:
                view[mb & ~inner] = T.BLADDER_WALL
                if self.style.phase == "excretory":
                    # Opacified urine is heavier than urine: it layers posteriorly (supine).
                    level = rr[0] + (rr[-1] - rr[0]) * self._bladder_level
                    rows = np.arange(box[0].start, box[0].stop)[:, None]
                    view[inner & (rows < level)] = T.BOWEL_FLUID
            else:
                self._contents(view, inner, organ, box, f, fields)

    _bladder_level = 0.45

    def _contents(self, view, inner, organ, box, f, fields):
        st = self.style
        if organ == A.STOMACH:
            air_frac, content = self.stomach
            rows = np.arange(box[0].start, box[0].stop)[:, None]
            level = box[0].start + (box[0].stop - box[0].start) * air_frac
            view[inner] = content
            view[inner & (rows < level)] = T.BOWEL_AIR
            return
        if organ == A.ESOPHAGUS:
            view[inner] = T.BOWEL_AIR if st.bowel_air > 0.15 else T.BOWEL_WALL
            return
        content = fields.slice(f, rows=box[0], cols=box[1], channels=slice(1, 2))[0]
        c_air = _NORMAL.inv_cdf(min(max(1.0 - st.bowel_air, 1e-3), 1 - 1e-3))
        c_con = _NORMAL.inv_cdf(st.oral_contrast) if st.oral_contrast > 0 else -9.0
        fill = np.full(inner.shape, T.FAECES if organ == A.COLON else T.BOWEL_FLUID, np.uint8)
        fill[content > c_air] = T.BOWEL_AIR
        fill[content < c_con] = T.BOWEL_CONTRAST
        view[inner] = fill[inner]
