"""CT volumes for export-time checks: parity inputs, calibration and fidelity cases.

Held-out cases are phantoms from :func:`kidedge.phantom.make_phantom` (seeds disjoint from
the ones training uses by default). If the phantom module is not available in this build,
a simple synthetic abdomen (ellipses of fat, soft tissue, two kidneys, a tumour) stands in;
:attr:`CTVolume.source` says which one was used, and the export report records it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

#: Seeds of held-out cases start here, far from training's small seeds (0, 1, 2, ...).
HELD_OUT_SEED = 10_000


@dataclasses.dataclass
class CTVolume:
    """One canonical CT volume.

    Args:
        array: ``(slices, rows, cols)`` stored values (any real dtype; HU = array * slope +
            intercept), e.g. the native int16 view of a scan, never converted as a whole.
        labels: ``(slices, rows, cols)`` uint8 KiTS labels (0 bg, 1 kidney, 2 tumour, 3 cyst)
            or None when unknown.
        spacing: (slice, row, col) mm.
        source: where it came from (file path, ``"phantom:<seed>"`` or ``"synthetic:<seed>"``).
        slope, intercept: rescale of ``array`` to HU.
    """

    array: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float]
    source: str
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        return float(self.spacing[1]), float(self.spacing[2])


def simple_synthetic_volume(seed: int, shape=(32, 128, 128), spacing=(3.0, 0.8, 0.8)) -> CTVolume:
    """A deliberately simple abdomen: body ellipse (fat rim, soft tissue), two kidneys
    (cortex brighter than medulla), a tumour in one kidney, a cyst sometimes, noise.

    Only a stand-in for :mod:`kidedge.phantom` (used when that module is absent).
    """
    rng = np.random.default_rng(seed)
    n, h, w = shape
    z, y, x = np.meshgrid(
        (np.arange(n) + 0.5) / n * 2 - 1, (np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1,
        indexing="ij",
    )
    hu = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = -100.0  # fat
    hu[(x / 0.82) ** 2 + (y / 0.6) ** 2 < 1] = 40.0  # soft tissue
    for side in (-1, 1):
        cx = side * rng.uniform(0.35, 0.45)
        cy, cz = rng.uniform(0.05, 0.2), rng.uniform(-0.2, 0.2)
        rx, ry, rz = rng.uniform(0.12, 0.16), rng.uniform(0.16, 0.2), rng.uniform(0.45, 0.6)
        r = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2
        kidney = r < 1
        hu[kidney] = 150.0
        hu[r < 0.4] = 100.0  # medulla
        labels[kidney] = 1
        if side == 1 or rng.random() < 0.3:
            tr = rng.uniform(0.06, 0.09)
            tx, ty, tz = cx + side * rx * 0.5, cy, cz + rng.uniform(-0.2, 0.2)
            tumour = ((x - tx) ** 2 + (y - ty) ** 2) / tr**2 + ((z - tz) / (tr * 2.5)) ** 2 < 1
            hu[tumour] = 80.0
            labels[tumour] = 2
        if rng.random() < 0.5:
            cr = 0.04
            cyst = ((x - cx) ** 2 + (y - cy + ry * 0.6) ** 2) / cr**2 + ((z - cz) / 0.1) ** 2 < 1
            hu[cyst & (labels == 1)] = 10.0
            labels[cyst & (labels == 1)] = 3
    hu += rng.normal(0, 12, shape).astype(np.float32)
    return CTVolume(hu.astype(np.int16), labels, tuple(float(s) for s in spacing), f"synthetic:{seed}")


def phantom_volume(seed: int, shape=(32, 128, 128), spacing=(3.0, 0.8, 0.8)) -> CTVolume:
    """A :mod:`kidedge.phantom` case, or :func:`simple_synthetic_volume` where that module
    is not in this build."""
    try:
        from kidedge.phantom import make_phantom
    except ImportError:
        return simple_synthetic_volume(seed, shape, spacing)
    p = make_phantom(seed, shape=tuple(shape), spacing=tuple(spacing))
    return CTVolume(p.hu, p.labels, tuple(float(s) for s in p.spacing), f"phantom:{seed}")


def held_out_volumes(n_cases: int, shape=(32, 128, 128), spacing=(3.0, 0.8, 0.8),
                     seed: int = HELD_OUT_SEED) -> list[CTVolume]:
    """``n_cases`` held-out phantom volumes with seeds ``seed, seed + 1, ...``."""
    return [phantom_volume(seed + i, shape, spacing) for i in range(n_cases)]


def volumes_from_dataset(root, max_cases: int = 8) -> Iterator[CTVolume]:
    """CT volumes (with labels where present) from a dataset folder in any layout
    :func:`kidedge.io.discover_cases` understands, one at a time (a KiTS case is hundreds
    of MB). Cases without an image are skipped.

    Raises:
        KidedgeError: no usable case in ``root`` (or an unreadable file, from kidedge.io).
    """
    from kidedge.errors import KidedgeError
    from kidedge.io import discover_cases, load_label_map, load_scan

    count = 0
    for case in discover_cases(root):
        if case.image is None:
            continue
        scan = load_scan(case.image)
        labels = None
        if case.label is not None:
            labels, _ = load_label_map(case.label)
            if labels.shape != scan.array.shape:
                raise KidedgeError(f"{case.label}: label map shape {labels.shape} does not match its image {scan.array.shape}")
        yield CTVolume(scan.array, labels, tuple(float(s) for s in scan.spacing), str(case.image),
                       float(scan.slope), float(scan.intercept))
        count += 1
        if count >= max_cases:
            break
    if count == 0:
        raise KidedgeError(f"{root}: no CT images found for calibration")
