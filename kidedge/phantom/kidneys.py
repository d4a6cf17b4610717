"""Kidneys, tumours and cysts: procedural label maps, and where real ones lie.

Procedural kidneys are bean-shaped ellipsoids (a medial hilum notch), tilted like real
kidneys (upper poles medial and posterior, hilum facing antero-medially). Tumours are
lobulated spheres placed deep in the kidney (endophytic) or on its surface (exophytic),
some large enough for a necrotic core; cysts are smooth spheres.

``KidneySite`` says where a kidney is in a label map (either drawn here or read from a
real KiTS label map), so the body can be built around it.

Coordinates: in-plane ``x = col * col_mm`` (towards the patient's left), ``y = row *
row_mm`` (towards posterior), and along the scan ``s = slice * slice_mm`` (towards
inferior, KiTS19's slice order).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from kidedge.phantom import tissues as T


@dataclasses.dataclass(frozen=True)
class KidneySite:
    """One kidney's place in a scan (mm; x, y in-plane, s along the slices).

    Attributes:
        side: -1 the patient's right (low columns), +1 the left.
        x, y, s: centroid of the kidney's labelled voxels.
        x_min, x_max, y_min, y_max, s_min, s_max: extent of its labelled voxels.
    """

    side: int
    x: float
    y: float
    s: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float
    s_min: float
    s_max: float


def _site(mask_idx: np.ndarray, spacing, side: int) -> KidneySite:
    mm = mask_idx * np.asarray(spacing, np.float64)
    lo, hi, c = mm.min(0), mm.max(0), mm.mean(0)
    return KidneySite(side, c[2], c[1], c[0], lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])


def find_kidney_sites(labels: np.ndarray, spacing, max_points: int = 200_000) -> list[KidneySite]:
    """Where the kidneys of a canonical label map lie (one site per side found).

    Args:
        labels: canonical (slice, row, col) uint8 label map (0 background).
        spacing: (slice_mm, row_mm, col_mm).
        max_points: labelled voxels sampled for the estimate (for speed on big scans).

    The two sides are split at the widest empty gap between labelled columns; a single
    mass (one kidney, or a horseshoe kidney) gives one site, its side taken from whether it
    lies left or right of the image centre.
    """
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return []
    if len(idx) > max_points:
        step = len(idx) // max_points + 1
        idx = idx[::step]
    cols = labels.shape[2]
    occupied = np.bincount(idx[:, 2], minlength=cols) > 0
    first, last = np.flatnonzero(occupied)[[0, -1]]
    gap_start, gap_len, run_start = None, 0, None
    for c in range(first, last + 1):
        if not occupied[c]:
            if run_start is None:
                run_start = c
            if c - run_start + 1 > gap_len:
                gap_len, gap_start = c - run_start + 1, run_start
        else:
            run_start = None
    # A gap of a few mm between two lobes of one kidney is not the midline.
    if gap_start is not None and gap_len * spacing[2] >= 15.0:
        split = gap_start + gap_len / 2.0
        right = idx[idx[:, 2] < split]
        left = idx[idx[:, 2] >= split]
        return [_site(right, spacing, -1), _site(left, spacing, +1)]
    side = -1 if idx[:, 2].mean() < cols / 2 else +1
    return [_site(idx, spacing, side)]


def _rotation(rng: np.random.Generator, side: int) -> np.ndarray:
    """Rotation taking kidney-frame axes (long, lateral, antero-posterior) to (s, x, y)."""
    # Long axis mostly along the scan (s), upper pole tilted medially and posteriorly.
    tilt_med = np.deg2rad(rng.uniform(8, 22))
    tilt_post = np.deg2rad(rng.uniform(5, 20))
    long_ax = np.array([1.0, side * np.tan(tilt_med), -np.tan(tilt_post)])  # upper pole: -s
    long_ax /= np.linalg.norm(long_ax)
    # Hilum faces antero-medially: rotate the lateral axis in the axial plane.
    yaw = np.deg2rad(rng.uniform(20, 45))
    lat = np.array([0.0, side * np.cos(yaw), side * np.sin(yaw)])  # lateral and posterior
    lat -= lat.dot(long_ax) * long_ax
    lat /= np.linalg.norm(lat)
    ap = np.cross(long_ax, lat)
    return np.stack([long_ax, lat, ap])  # rows: kidney axes in (s, x, y)


def _lobulated_radius(rng, n_terms: int = 4, amount: float = 0.15):
    dirs = rng.standard_normal((n_terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amps = rng.uniform(-amount, amount, n_terms) / np.sqrt(n_terms)

    def radius_factor(u):  # u: (..., 3) unit vectors
        return 1.0 + np.tensordot(u, dirs.T, axes=1) ** 2 @ amps * 2.0

    return radius_factor


def draw_kidney_labels(
    rng: np.random.Generator, shape, spacing, centres
) -> tuple[np.ndarray, np.ndarray]:
    """Procedural kidney/tumour/cyst label map and a renal-sinus mask.

    Args:
        rng: numpy Generator.
        shape: (n_slices, rows, cols).
        spacing: (slice_mm, row_mm, col_mm).
        centres: list of (side, s_mm, x_mm, y_mm) kidney centres.

    Returns:
        (labels uint8 with 0 background, 1 kidney, 2 tumour, 3 cyst; sinus bool mask of
        the hilum fat and renal pelvis, outside the kidney label).
    """
    labels = np.zeros(shape, np.uint8)
    sinus = np.zeros(shape, bool)
    sp = np.asarray(spacing, np.float64)
    kidneys = []
    for side, s_c, x_c, y_c in centres:
        half = np.array([rng.uniform(48, 62), rng.uniform(26, 32), rng.uniform(20, 25)])
        rot = _rotation(rng, side)
        kidneys.append((side, np.array([s_c, x_c, y_c]), half, rot))

    def grid_in_box(centre, radius):
        lo = np.floor((centre - radius) / sp).astype(int)
        hi = np.ceil((centre + radius) / sp).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, np.array(shape))
        if np.any(hi <= lo):
            return None, None
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        axes = [np.arange(a, b) * s - c for a, b, s, c in zip(lo, hi, sp, centre, strict=True)]
        # (s, row=y, col=x) array axes; vectors ordered (s, x, y) to match the rotation.
        ds, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
        return box, (ds, dx, dy)

    kidney_geoms = []
    for side, centre, half, rot in kidneys:
        box, g = grid_in_box(centre[[0, 2, 1]], np.full(3, half.max() + 2))
        if box is None:
            continue
        ds, dx, dy = g
        # Kidney frame coordinates.
        u = [rot[i, 0] * ds + rot[i, 1] * dx + rot[i, 2] * dy for i in range(3)]
        r2 = (u[0] / half[0]) ** 2 + (u[1] / half[1]) ** 2 + (u[2] / half[2]) ** 2
        body = r2 <= 1.0
        # Hilum notch: an ellipsoid centred on the medial surface (lateral axis negative).
        notch_c = -half[1] * rng.uniform(0.75, 0.95)
        notch = ((u[0] / (half[0] * 0.42)) ** 2 + ((u[1] - notch_c) / (half[1] * 0.62)) ** 2
                 + (u[2] / (half[2] * 0.55)) ** 2) <= 1.0
        labels[box][body & ~notch] = 1
        sinus[box] |= body & notch
        kidney_geoms.append((side, centre, half, rot))

    def ball(centre, radius, lobes):
        box, g = grid_in_box(centre[[0, 2, 1]], np.full(3, radius * 1.35 + 2))
        if box is None:
            return None, None, None
        ds, dx, dy = g
        d = np.sqrt(ds**2 + dx**2 + dy**2) + 1e-6
        u = np.stack(np.broadcast_arrays(ds / d, dx / d, dy / d), axis=-1)
        rn = d / (radius * lobes(u))
        return box, rn <= 1.0, rn

    if not kidney_geoms:
        return labels, sinus
    n_tumours = int(rng.choice([1, 1, 1, 2, 0], p=[0.3, 0.3, 0.2, 0.12, 0.08]))
    n_cysts = int(rng.choice([0, 1, 2], p=[0.55, 0.3, 0.15]))
    for kind, count in ((2, n_tumours), (3, n_cysts)):
        for _ in range(count):
            side, centre, half, rot = kidney_geoms[int(rng.integers(len(kidney_geoms)))]
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            # Surface distance of the ellipsoid along that direction, in the kidney frame.
            surf = 1.0 / np.sqrt(np.sum((direction / half) ** 2))
            if kind == 2:
                radius = float(np.exp(rng.uniform(np.log(8), np.log(45))))
                depth = rng.uniform(0.2, 1.15)  # > ~0.85: exophytic
                lobes = _lobulated_radius(rng, amount=0.25)
            else:
                radius = float(rng.uniform(5, 25))
                depth = rng.uniform(0.5, 1.1)
                lobes = _lobulated_radius(rng, amount=0.03)
            offset = rot.T @ (direction * surf * depth)  # (s, x, y)
            c = centre + offset
            box, inside, _ = ball(c, radius, lobes)
            if box is None:
                continue
            view = labels[box]
            if kind == 2:
                view[inside] = 2
            else:
                view[inside & (view != 2)] = 3
            sinus[box] &= ~inside
    return labels, sinus


# Tissues the fat around a kidney may replace (organs pressed against it stay apart by
# a fat plane in real CT); vessels and bone keep their place.
HALO_REPLACES = (T.LIVER, T.LIVER_VESSEL, T.SPLEEN, T.PANCREAS, T.BOWEL_WALL, T.BOWEL_FLUID,
                 T.BOWEL_AIR, T.BOWEL_CONTRAST, T.FAECES, T.MUSCLE, T.GALLBLADDER, T.LUNG)


def kidney_tissues(labels: np.ndarray, spacing, rng: np.random.Generator,
                   sinus: bool = False) -> list[dict]:
    """Per-voxel tissue codes inside the labelled kidneys, tumours and cysts, and the
    perirenal fat around them.

    Cortex is the outer shell of the labelled region (4-7 mm, from a 3D distance map),
    medulla the pyramids beneath it (blobs of a smooth field), the deepest parenchyma the
    collecting-system side; tumours get a necrotic core when they are big enough. Around
    the labels lies a patchy layer of perirenal fat (Gerota's space). The work is done in
    one bounding box per group of labelled columns (one per kidney, usually), so the
    distance maps never cover the space between the kidneys.

    Args:
        labels: canonical uint8 label map (0 bg, 1 kidney, 2 tumour, 3 cyst).
        spacing: (slice_mm, row_mm, col_mm).
        rng: numpy Generator.
        sinus: also fill the renal sinus (the hilum's concavity, outside the labels):
            sinus fat, and the renal pelvis (urine) in its middle.

    Returns:
        a list (empty without labels) of {"box": tuple of slices (a group's bounding box
        grown by the fat layer), "codes": uint8 tissue codes over the box, 0 where the
        label is background, "halo": bool over the box, the perirenal fat}.
    """
    occupied = labels.max(axis=(0, 1)) > 0
    cols = np.flatnonzero(occupied)
    if cols.size == 0:
        return []
    gap = max(1, int(np.ceil(15.0 / spacing[2])))
    breaks = np.flatnonzero(np.diff(cols) > gap)
    groups = np.split(cols, breaks + 1)
    style = dict(
        halo_mm=float(rng.uniform(2.0, 10.0)),
        cortex_mm=float(rng.uniform(4.0, 7.0)),
        pyramid_mm=float(rng.uniform(9.0, 15.0)),
        medulla_level=float(rng.uniform(-0.6, 0.0)),
        necrosis=bool(rng.random() < 0.55),
        necrosis_mm=float(rng.uniform(6.0, 14.0)),
        necrosis_level=float(rng.uniform(-0.8, 0.3)),
    )
    parts = []
    for g in groups:
        part = _kidney_part(labels, spacing, rng, slice(int(g[0]), int(g[-1]) + 1), sinus=sinus, **style)
        if part is not None:
            parts.append(part)
    return parts


def _coarse_distances(inside: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) to the mask's surface from inside and from outside, float32.

    Computed on a grid of ~1.6 mm cells (every few voxels of a fine scan) and repeated
    back to full size: the cortex and fat layers they define are several mm thick, and a
    full-resolution 3D distance map of a 0.5 mm scan would cost seconds.
    """
    f = [max(1, int(round(1.6 / sp))) for sp in spacing]
    coarse = inside[f[0] // 2:: f[0], f[1] // 2:: f[1], f[2] // 2:: f[2]]
    csp = [sp * k for sp, k in zip(spacing, f, strict=True)]
    depth = ndimage.distance_transform_edt(np.pad(coarse, 1), sampling=csp)[1:-1, 1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~coarse, sampling=csp)

    def full(a):
        for axis, k in enumerate(f):
            if k > 1:
                a = np.repeat(a, k, axis=axis)
        pad = [(0, max(0, n - m)) for n, m in zip(inside.shape, a.shape, strict=True)]
        a = np.pad(a, pad, mode="edge")
        return a[: inside.shape[0], : inside.shape[1], : inside.shape[2]].astype(np.float32)

    return full(depth), full(outside)


def _sinus(inside: np.ndarray, outside_mm: np.ndarray, spacing, radius_mm: float = 12.0):
    """(sinus, pelvis) masks: the morphological closing of the labels minus the labels
    (the hilum's concavity), and the part of it more than 3 mm from the parenchyma.
    Computed on the ~1.6 mm grid of ``_coarse_distances``."""
    f = [max(1, int(round(1.6 / sp))) for sp in spacing]
    grown = outside_mm <= radius_mm
    coarse = grown[f[0] // 2:: f[0], f[1] // 2:: f[1], f[2] // 2:: f[2]]
    csp = [sp * k for sp, k in zip(spacing, f, strict=True)]
    depth = ndimage.distance_transform_edt(np.pad(coarse, 1), sampling=csp)[1:-1, 1:-1, 1:-1]
    for axis, k in enumerate(f):
        if k > 1:
            depth = np.repeat(depth, k, axis=axis)
    pad = [(0, max(0, n - m)) for n, m in zip(inside.shape, depth.shape, strict=True)]
    depth = np.pad(depth, pad, mode="edge")[: inside.shape[0], : inside.shape[1], : inside.shape[2]]
    closed = depth > radius_mm
    sinus = closed & ~inside
    return sinus, sinus & (outside_mm > 3.0)


def _kidney_part(labels, spacing, rng, col_range, halo_mm, cortex_mm, pyramid_mm,
                 medulla_level, necrosis, necrosis_mm, necrosis_level, sinus=False):
    sub = labels[:, :, col_range]
    nz = np.flatnonzero(sub.max(axis=(1, 2)))
    if nz.size == 0:
        return None
    rows_any = np.flatnonzero(sub[nz[0]: nz[-1] + 1].max(axis=(0, 2)))
    lo = [nz[0], rows_any[0], col_range.start]
    hi = [nz[-1] + 1, rows_any[-1] + 1, col_range.stop]
    grow_mm = max(halo_mm * 2.0, 14.0 if sinus else 0.0)
    margin = [int(np.ceil(grow_mm / sp)) + 1 for sp in spacing]
    box = tuple(slice(max(a - m, 0), min(b + m, n))
                for a, b, m, n in zip(lo, hi, margin, labels.shape, strict=True))
    lab = labels[box]
    inside = lab > 0
    depth, outside = _coarse_distances(inside, spacing)
    codes = np.zeros(lab.shape, np.uint8)
    from kidedge.phantom.fields import SmoothField

    pyr = SmoothField(rng, lab.shape, spacing, grid_mm=3.5, sigma_cells=1.0, channels=3)
    planes = np.stack([pyr.slice(k) for k in range(lab.shape[0])], axis=1)
    pattern, necro, fat = planes
    kid = lab == 1
    codes[kid] = T.KIDNEY_CORTEX
    codes[kid & (depth > cortex_mm) & (pattern > medulla_level)] = T.KIDNEY_MEDULLA
    codes[kid & (depth > cortex_mm + pyramid_mm)] = T.KIDNEY_DEEP
    tum = lab == 2
    codes[tum] = T.TUMOUR
    if necrosis and tum.any():
        tdepth = ndimage.distance_transform_edt(np.pad(tum, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        codes[tum & (tdepth > necrosis_mm) & (necro > necrosis_level)] = T.TUMOUR_NECROSIS
    codes[lab == 3] = T.CYST
    if sinus:
        fat_mask, pelvis = _sinus(inside, outside, spacing)
        codes[fat_mask] = T.SINUS_FAT
        codes[pelvis] = T.URINE
    # Patchy: in places organs touch the kidney with no fat plane at all.
    halo = (~inside) & (outside < halo_mm * np.clip(0.6 + 1.2 * fat, None, 2.0))
    return {"box": box, "codes": codes, "halo": halo}
