"""``make_anatomical_phantom``: synthetic CT on a real body with real KiTS kidneys.

One case:

1. draw the appearance (contrast phase, HU table, scanner: ``appearance``);
2. choose the field from the lung bases (20-100 mm above the real liver dome) to the
   pelvis (60-230 mm below the lowest kidney pole), the pixel size (the body fits a
   512 x 512 field) and the written slice spacing (2.5-5 mm; three sub-slices per written
   slice when the slice profile is integrated);
3. warp the real body (``warp``: scale, rotation, elastic bending);
4. anchor the procedural anatomy to the real organs (``filler``, ``pelvis``);
5. put kidneys in: a KiTS kidney per side transplanted into the body's kidney bed
   (``transplant``), or the body's own normal kidneys; the body's kidneys are removed
   first and their bed is fat;
6. paint every fine slice (procedural background, real organs and their interiors,
   lesions, kidneys with cortex, medulla, sinus, tumour and cyst), render HU
   (``scanner``), integrate sub-slices into written slices.

The written labels are the kidney labels of the written slices; the kidney tissue codes of
the image are exactly the labelled voxels (nothing else is ever a kidney code).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.phantom import anatomy as A
from kidedge.phantom import tissues as T
from kidedge.phantom.anatomy import BodySource
from kidedge.phantom.anchors import base_plan, compute_anchors
from kidedge.phantom.appearance import Appearance, sample_appearance, sub_slice_weights
from kidedge.phantom.fields import SmoothField
from kidedge.phantom.filler import AnchoredPainter
from kidedge.phantom.generate import canonical_affine
from kidedge.phantom.kidneys import HALO_REPLACES, find_kidney_sites, kidney_tissues
from kidedge.phantom.negatives import paint_balls, plan_lesions
from kidedge.phantom.pelvis import PelvisPainter
from kidedge.phantom.scanner import ScannerModel
from kidedge.phantom.transplant import KidneySource, place_piece, shape_axes
from kidedge.phantom.warp import BodyWarp, Grid, rotation_matrix

ROWS = 512
COARSE = 4         # coarse planning grid: every 4th pixel
KIDNEY_MARGIN_MM = 30.0


@dataclasses.dataclass
class AnatomicalPhantom:
    """One anatomical synthetic CT (canonical orientation, like ``Phantom``).

    Attributes:
        hu: int16 (slice, row, col); labels: uint8, 0 bg, 1 kidney, 2 tumour, 3 cyst.
        affine: KiTS19-style affine; spacing: (slice_mm, row_mm, col_mm).
        tissues: uint8 tissue codes of the written slices (centre sub-slice).
        appearance: the drawn :class:`Appearance`; record: what sources.json stores.
    """

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple
    tissues: np.ndarray
    appearance: Appearance
    record: dict

    @property
    def style(self):  # montage and older callers read ``.style.phase``
        return self.appearance


def _body_kidneys(body: BodySource):
    """{side: centroid mm} of the body's own kidneys (right -1, left +1)."""
    out = {}
    for side, code in ((-1, A.KIDNEY_R), (1, A.KIDNEY_L)):
        c = body.centroid_mm(code)
        if c is not None:
            out[side] = c
    if not out:
        raise KidedgeError(f"{body.path}: the body label map has no kidneys to place kidneys at")
    return out


def _slice_codes(org, codes):
    present = np.zeros(org.shape[0], bool)
    for k in range(org.shape[0]):
        present[k] = np.isin(org[k, ::2, ::2], codes).any()
    return present


def make_anatomical_phantom(seed, body: BodySource, kidneys: KidneySource | None = None,
                            kidney_mode: str | None = None, phase: str | None = None,
                            rows: int = ROWS) -> AnatomicalPhantom:
    """Make one anatomical phantom, deterministic for ``seed``.

    Args:
        seed: anything ``np.random.default_rng`` takes.
        body: a real body (:func:`kidedge.phantom.anatomy.load_body`).
        kidneys: a KiTS label map's kidney pieces, or None to keep the body's own kidneys.
        kidney_mode: "transplant" (default with ``kidneys``) or "own".
        phase: force a contrast phase (``appearance.PHASES``); drawn when None.
        rows: rows and columns of the written slices.
    """
    rng = np.random.default_rng(seed)
    app = sample_appearance(rng, phase)
    mode = kidney_mode or ("transplant" if kidneys is not None else "own")
    if mode not in ("transplant", "own") or (mode == "transplant" and kidneys is None):
        raise KidedgeError(f"phantom: kidney mode '{mode}' needs KiTS kidneys" if mode == "transplant"
                           else f"phantom: kidney mode must be 'transplant' or 'own', got '{mode}'")
    org = body.organs
    sp_src = np.asarray(body.spacing)
    own = _body_kidneys(body)
    kid_codes = (A.KIDNEY_R, A.KIDNEY_L)
    kz = np.flatnonzero(_slice_codes(org, kid_codes))
    lz = np.flatnonzero(_slice_codes(org, (A.LIVER,)))
    hila = np.mean(list(own.values()), axis=0)
    top_src = lz[0] * sp_src[0] - rng.uniform(20, 100)
    bottom_src = kz[-1] * sp_src[0] + rng.uniform(60, 200)

    # Spatial augmentation.
    s_xy = rng.uniform(0.88, 1.12)
    scale = np.array([s_xy * rng.uniform(0.93, 1.07), s_xy * rng.uniform(0.95, 1.05), s_xy])
    angles = (rng.uniform(-6, 6), rng.uniform(-3, 3), rng.uniform(-3, 3))
    rot = rotation_matrix(*(math.radians(a) for a in angles))
    elastic = float(rng.uniform(2.0, 6.0))

    # Output grid.
    dz_out = app.slice_mm
    n_written = int((bottom_src - top_src) * scale[0] // dz_out) + 1
    sub = app.n_sub
    dz_fine = dz_out / 3.0 if sub == 3 else dz_out
    n_fine = 3 * n_written + 4 if sub == 3 else n_written
    centre_f = (lambda i: 3 * i + 2) if sub == 3 else (lambda i: i)
    # The body's extent: organs plus the wall in front and at the sides, and the spine and
    # back muscles behind the kidneys; the field of view (512 pixels) must hold it.
    cols_any = np.flatnonzero(org[::2, ::2, :].any(axis=(0, 1)))
    rows_any = np.flatnonzero(org[::2, :, ::2].any(axis=(0, 2)))
    x0, x1 = cols_any[0] * sp_src[2], cols_any[-1] * sp_src[2]
    y0, y1 = rows_any[0] * sp_src[1], rows_any[-1] * sp_src[1]
    ao = body.centroid_mm(A.AORTA)
    mid_x = ao[2] - 10.0
    wall = rng.uniform(45, 80)
    body_y = (y0 - wall, max(y1, ao[1]) + rng.uniform(85, 120))
    half_w = (max(mid_x - x0, x1 - mid_x) + wall) * scale[2]
    half_d = 0.5 * (body_y[1] - body_y[0]) * scale[1]
    need = (2 * max(half_w, half_d + 12) + 10) * rng.uniform(1.05, 1.35)
    # 0.62-0.98 mm for 512 columns (the pixel sizes of abdominal CT), at most 1 mm; a
    # smaller matrix (tests) scales the same field of view.
    unit = 512.0 / rows
    pixel = float(max(rng.uniform(0.62, 0.98) * unit,
                      min(unit, need / rows * rng.uniform(0.97, 1.08))))
    fov = rows * pixel
    body_cy = 0.5 * (body_y[0] + body_y[1])
    out_centre = (centre_f(0) * dz_fine + (hila[0] - top_src) * scale[0],
                  fov / 2 + (hila[1] - body_cy) * scale[1] + rng.uniform(-8, 12),
                  fov / 2 + (hila[2] - mid_x) * scale[2] + rng.uniform(-12, 12))
    grid = Grid((n_fine, rows, rows), (dz_fine, pixel, pixel))
    warp = BodyWarp(rng, grid, org.shape, sp_src, hila, out_centre, scale, rot, elastic)
    fine_sp = grid.spacing

    # Coarse organ map of the written slices: the plan's anchors and the lesions.
    cs = slice(0, None, COARSE)
    coarse = np.stack([warp.sample_slice(org, centre_f(i), cs, cs) for i in range(n_written)])
    coarse_s = np.array([centre_f(i) * dz_fine for i in range(n_written)])
    coarse_mm = (pixel * COARSE, pixel * COARSE)
    fine_s = np.arange(n_fine) * dz_fine
    plan = base_plan(rng, grid.shape, fine_sp, hilum_s=float(out_centre[0]))
    anchors = compute_anchors(rng, plan, coarse, coarse_mm, fine_s, coarse_s)

    # Kidneys on the fine grid, inside one box around the body's kidney beds.
    kid_lab, k_origin, placed = _kidneys(rng, warp, org, coarse, coarse_mm, coarse_s, grid,
                                         kidneys, mode, anchors, plan)
    sites = [dataclasses.replace(s, s=s.s + k_origin[0] * dz_fine, y=s.y + k_origin[1] * pixel,
                                 x=s.x + k_origin[2] * pixel)
             for s in find_kidney_sites(kid_lab, fine_sp)]
    if sites:
        plan = dataclasses.replace(plan, sites=sites, hilum_s=float(np.mean([s.s for s in sites])))
    parts = kidney_tissues(kid_lab, fine_sp, rng, sinus=True)

    has = body.has
    pelvis = PelvisPainter(rng, has_bladder=A.BLADDER in has)
    stomach = (float(rng.uniform(0.0, 0.4)),
               int(rng.choice([T.BOWEL_FLUID, T.BOWEL_CONTRAST, T.FAECES], p=[0.5, 0.25, 0.25]))
               if app.oral_contrast > 0 else int(rng.choice([T.BOWEL_FLUID, T.FAECES], p=[0.7, 0.3])))
    painter = AnchoredPainter(plan, app, anchors, has, pelvis=pelvis, stomach=stomach)
    painter._bladder_level = float(rng.uniform(0.3, 0.7))
    painter.bowel_field = SmoothField(rng, grid.shape, fine_sp, grid_mm=9.0, sigma_cells=1.0, channels=3)
    painter.bowel_level = float(rng.uniform(-0.6, 0.6))
    painter.bowel_width = float(rng.uniform(0.15, 0.32))
    painter.bowel_patch = float(rng.uniform(-0.8, 0.5))
    balls = plan_lesions(rng, coarse, coarse_s, coarse_mm)
    fields = SmoothField(rng, grid.shape, fine_sp, grid_mm=5.0, sigma_cells=1.2, channels=3)
    wobble = SmoothField(rng, grid.shape, fine_sp, grid_mm=10.0, sigma_cells=1.2, channels=1)
    radius = _label_radius(kid_lab, k_origin, rows)
    scanner = ScannerModel(rng, app, grid.shape, fine_sp, n_written, pixel, keep_radius_px=radius)

    hu = np.empty((n_written, rows, rows), np.int16)
    tissues = np.empty((n_written, rows, rows), np.uint8)
    labels = np.zeros((n_written, rows, rows), np.uint8)
    written_of = {centre_f(i): i for i in range(n_written)}
    kb = tuple(slice(o, o + n) for o, n in zip(k_origin, kid_lab.shape, strict=True))

    boxes = _organ_boxes(coarse, coarse_s, dz_out, rows)

    def render(f):
        i_near = min(max(int(round((f * dz_fine - coarse_s[0]) / dz_out)), 0), n_written - 1)
        org_f = warp.sample_into(org, f, boxes[i_near])
        codes, _ = painter.paint_slice(f, org_f, fields, wobble)
        paint_balls(painter, codes, f * dz_fine, balls)
        lab_f = None
        if kb[0].start <= f < kb[0].stop:
            kf = f - kb[0].start
            view = codes[kb[1], kb[2]]
            for part in parts:
                box = part["box"]
                if not box[0].start <= kf < box[0].stop:
                    continue
                pv = view[box[1], box[2]]
                halo = part["halo"][kf - box[0].start]
                pv[halo & np.isin(pv, HALO_REPLACES)] = T.VISCERAL_FAT
                sub_codes = part["codes"][kf - box[0].start]
                m = sub_codes > 0
                pv[m] = sub_codes[m]
            lab_f = kid_lab[kf]
        i = written_of.get(f)
        if i is not None:
            if lab_f is not None:
                labels[i][kb[1], kb[2]] = lab_f
            scanner.mark_outside(codes, labels[i])
            tissues[i] = codes
        else:
            scanner.mark_outside(codes)
        return scanner.plane(codes, f)

    weights = sub_slice_weights(app)
    planes = {}
    for i in range(n_written):
        fc = centre_f(i)
        mixed = None
        for j, w in zip(range(-2, 3), weights, strict=True):
            f = fc + j
            if w <= 0 or not 0 <= f < n_fine:
                continue
            if f not in planes:
                planes[f] = render(f)
            mixed = planes[f] * np.float32(w) if mixed is None else mixed + planes[f] * np.float32(w)
        if fc not in planes:  # a zero-weight centre still carries the slice's labels
            render(fc)
        for f in [f for f in planes if f < fc + 1]:
            del planes[f]
        hu[i] = scanner.finish(mixed, i)

    record = {
        "body": body.name, "body_fixes": list(body.fixes),
        "kidneys": kidneys.name if kidneys is not None else None,
        "kidney_mode": mode, "kidneys_placed": placed,
        "appearance": app.summary(),
        "spatial": {"scale": [round(float(v), 3) for v in scale],
                    "rotation_deg": [round(float(a), 2) for a in angles],
                    "elastic_mm": round(elastic, 2)},
        "grid": {"shape": [n_written, rows, rows], "spacing": [dz_out, round(pixel, 4), round(pixel, 4)]},
        "lesions": len(balls),
    }
    return AnatomicalPhantom(hu=hu, labels=labels, affine=canonical_affine((dz_out, pixel, pixel)),
                             spacing=(dz_out, pixel, pixel), tissues=tissues, appearance=app,
                             record=record)


def _organ_boxes(coarse, coarse_s, dz_out, rows, grow_cells: int = 3):
    """Per written slice: the (rows, cols) box of the real organs on it and on its two
    neighbours, grown by a few coarse cells (sub-slices and the elastic field move them
    by a few mm), in full-resolution pixels; None where there are none."""
    present = coarse > 0
    n = len(coarse)
    out = []
    for i in range(n):
        m = present[max(0, i - 1): i + 2].any(axis=0)
        rr = np.flatnonzero(m.any(axis=1))
        if rr.size == 0:
            out.append(None)
            continue
        cc = np.flatnonzero(m.any(axis=0))
        r0 = max(0, (rr[0] - grow_cells) * COARSE)
        r1 = min(rows, (rr[-1] + 1 + grow_cells) * COARSE)
        c0 = max(0, (cc[0] - grow_cells) * COARSE)
        c1 = min(rows, (cc[-1] + 1 + grow_cells) * COARSE)
        out.append((slice(r0, r1), slice(c0, c1)))
    return out


def _label_radius(kid_lab, origin, rows) -> float:
    """Largest distance (pixels) of a labelled voxel from the slice centre."""
    if not kid_lab.any():
        return 0.0
    proj = kid_lab.any(axis=0)
    r, c = np.nonzero(proj)
    yy = r + origin[1] - (rows - 1) / 2
    xx = c + origin[2] - (rows - 1) / 2
    return float(np.sqrt(yy * yy + xx * xx).max())


def _kidneys(rng, warp, org, coarse, coarse_mm, coarse_s, grid, kidneys, mode, anchors, plan):
    """(labels box, its origin (fine indices), what was placed) of the case's kidneys."""
    n_fine, rows, cols = grid.shape
    sp = np.asarray(grid.spacing)
    kid_cells = np.argwhere(np.isin(coarse, (A.KIDNEY_R, A.KIDNEY_L)))
    if len(kid_cells) == 0:
        raise KidedgeError("phantom: the body's kidneys fall outside the field")
    lo_mm = np.array([coarse_s[kid_cells[:, 0].min()], kid_cells[:, 1].min() * coarse_mm[0],
                      kid_cells[:, 2].min() * coarse_mm[1]]) - KIDNEY_MARGIN_MM
    hi_mm = np.array([coarse_s[kid_cells[:, 0].max()], kid_cells[:, 1].max() * coarse_mm[0],
                      kid_cells[:, 2].max() * coarse_mm[1]]) + KIDNEY_MARGIN_MM
    lo = np.maximum(np.floor(lo_mm / sp).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / sp).astype(int) + 1, np.array(grid.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    bed = warp.sample_box(org, box)
    lab = np.zeros(bed.shape, np.uint8)
    targets = {}
    for side, code in ((-1, A.KIDNEY_R), (1, A.KIDNEY_L)):
        idx = np.argwhere(bed == code)
        if len(idx) > 50:
            c, axis = shape_axes(idx + lo, sp)
            targets[side] = (c, axis, idx)
    placed = []
    if mode == "own":
        for side, (_, _, idx) in targets.items():
            lab[tuple(idx.T)] = 1
            placed.append({"side": "right" if side < 0 else "left", "from": "body"})
        lab[bed == A.KIDNEY_CYST] = 3  # TotalSegmentator's kidney cysts
        return lab, lo, placed

    pieces = list(kidneys.pieces)
    used = set()
    # Big KiTS kidneys may need more room than the bed's box: grow the box as needed.
    placements = []
    for piece in pieces:
        side = piece.side if piece.side in targets and piece.side not in used else (
            -piece.side if -piece.side in targets and -piece.side not in used else None)
        if side is None:
            continue
        used.add(side)
        c, axis, _ = targets[side]
        pbox, plab = place_piece(piece, c, axis, side, sp, grid.shape, roll_deg=rng.uniform(-10, 10))
        if pbox is None:
            continue
        plab, pbox = _clear_spine(plab, pbox, side, anchors, plan, sp, grid.shape)
        placements.append((pbox, plab))
        placed.append({"side": "right" if side < 0 else "left", "from": kidneys.name,
                       "source_side": "right" if piece.side < 0 else "left", **piece.counts})
    for side, (_, _, idx) in targets.items():
        if side not in used and rng.random() < 0.6:
            placements.append((box, _own(bed.shape, idx)))
            placed.append({"side": "right" if side < 0 else "left", "from": "body"})
    lo2 = np.array(lo)
    hi2 = np.array(hi)
    for pbox, _ in placements:
        lo2 = np.minimum(lo2, [s.start for s in pbox])
        hi2 = np.maximum(hi2, [s.stop for s in pbox])
    margin = np.ceil(20.0 / sp).astype(int)
    lo2 = np.maximum(lo2 - margin, 0)
    hi2 = np.minimum(hi2 + margin, np.array(grid.shape))
    lab = np.zeros(tuple(hi2 - lo2), np.uint8)
    for pbox, plab in placements:
        dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(pbox, lo2, strict=True))
        view = lab[dst]
        m = plab > 0
        view[m] = plab[m]
    return lab, lo2, placed


def _own(shape, idx):
    out = np.zeros(shape, np.uint8)
    out[tuple(idx.T)] = 1
    return out


def _clear_spine(plab, pbox, side, anchors, plan, sp, shape):
    """Shift a placed kidney laterally (at most 40 mm) off the spine and psoas."""
    cols = np.flatnonzero(plab.any(axis=(0, 1)))
    if cols.size == 0:
        return plab, pbox
    ks = np.arange(pbox[0].start, pbox[0].stop)
    sx = float(np.median(anchors.sx[ks]))
    limit = sx + side * (plan.vrx + 12.0)
    if side < 0:
        medial = (pbox[2].start + cols[-1]) * sp[2]
        shift = min(0.0, limit - medial)
    else:
        medial = (pbox[2].start + cols[0]) * sp[2]
        shift = max(0.0, limit - medial)
    n = int(round(np.clip(shift, -40.0, 40.0) / sp[2]))
    if n == 0:
        return plab, pbox
    start, stop = pbox[2].start + n, pbox[2].stop + n
    if start < 0 or stop > shape[2]:
        return plab, pbox
    return plab, (pbox[0], pbox[1], slice(start, stop))
