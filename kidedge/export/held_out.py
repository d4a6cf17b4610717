"""CT volumes for export-time checks: parity inputs, calibration and fidelity cases.

When the training run's dataset is on this machine, export uses it: calibration draws from
the run's ``train`` cases and fidelity scores the run's ``test`` cases (the patient-level
split the trainer saved), so both see the scans, spacing and sizes the model was trained
for (:func:`run_split_volumes`). Otherwise held-out cases are phantoms from :func:`kidedge.phantom.make_phantom` (seeds disjoint from
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


def _kidney_slab(volume: CTVolume, max_slices: int, grow: int = 4) -> CTVolume:
    """The contiguous slices around the labelled kidneys (grown by ``grow`` each side), at
    most ``max_slices`` of them (centred); the whole volume without labels or kidneys.

    Contiguous, so a stage's slice context still sees true neighbours.
    """
    n = volume.array.shape[0]
    if volume.labels is not None and volume.labels.any():
        z = np.nonzero(volume.labels.reshape(n, -1).any(axis=1))[0]
        a, b = max(0, int(z[0]) - grow), min(n, int(z[-1]) + 1 + grow)
    else:
        a, b = 0, n
    if b - a > max_slices:
        mid = (a + b) // 2
        a = max(0, mid - max_slices // 2)
        b = a + max_slices
    if (a, b) == (0, n):
        return volume
    return dataclasses.replace(volume, array=volume.array[a:b],
                               labels=None if volume.labels is None else volume.labels[a:b],
                               source=f"{volume.source}[{a}:{b}]")


def run_split_volumes(run: dict, part: str, max_cases: int, max_slices: int | None = None) -> list[CTVolume] | None:
    """Labelled volumes of ``part`` (``"train"``, ``"val"``, ``"test"``) of a training run's
    split, read from the run's dataset folder; None when the folder or the split is not
    available here (export then falls back to phantoms).

    Args:
        run: run.json of the training run (``data`` folder, ``split`` lists of case ids).
        part: which list of the split.
        max_cases: at most this many cases (the first ones of the list).
        max_slices: keep at most this many contiguous slices around the kidneys per case
            (bounded export time on 500-slice scans); None keeps whole volumes.
    """
    from pathlib import Path

    from kidedge.errors import KidedgeError
    from kidedge.io import discover_cases, load_label_map, load_scan

    data, split = run.get("data"), run.get("split")
    if not isinstance(data, str) or not isinstance(split, dict) or not split.get(part):
        return None
    if not Path(data).is_dir():
        return None
    try:
        by_id = {c.case_id: c for c in discover_cases(data) if c.image is not None and c.label is not None}
    except KidedgeError:
        return None
    volumes = []
    for cid in split[part]:
        case = by_id.get(cid)
        if case is None:
            continue
        scan = load_scan(case.image)
        labels, _ = load_label_map(case.label)
        if labels.shape != scan.array.shape:
            raise KidedgeError(f"{case.label}: label map shape {labels.shape} does not match its image {scan.array.shape}")
        vol = CTVolume(scan.array, labels, tuple(float(s) for s in scan.spacing), str(case.image),
                       float(scan.slope), float(scan.intercept))
        volumes.append(vol if max_slices is None else _kidney_slab(vol, max_slices))
        if len(volumes) >= max_cases:
            break
    return volumes or None
