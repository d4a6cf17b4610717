"""The benchmark's scans: CT phantoms on real KiTS19 label geometry, sized by slice count.

A latency benchmark needs realistic scan sizes (KiTS19 runs from 29 to over 1000 slices of
512 x 512) and anatomy whose kidneys sit where real kidneys sit, so cascade gating skips
what it would skip on real scans. No real KiTS CT can be downloaded here, so each scan is a
:mod:`kidedge.phantom` built on a real KiTS19 label map (its shape, spacing, kidneys and
tumours), picked by slice count. Without label maps (a fresh clone), or for tiny test
scans, phantoms get synthetic anatomy.

Scans are written once in the KiTS layout (``imaging.nii.gz`` + ``segmentation.nii.gz``,
the phantom's truth) into a cache folder and reused by later runs; a ``scan.json`` beside
them records where they came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.io.writer import save_volume, write_json_atomic

#: Slice counts of the full benchmark (issue 7: about 60, 250 and 600 or more).
FULL_TARGETS = (60, 250, 600)
#: The quick benchmark: one small scan.
QUICK_TARGETS = (30,)
#: The time-and-memory curve of the full benchmark (issue 13: 100 to 1000 slices).
CURVE_TARGETS = (100, 200, 400, 600, 800, 1000)
#: In-plane size of synthetic scans (KiTS19 slices are 512 x 512).
SYNTHETIC_ROWS_COLS = (512, 512)
#: Synthetic scans: 3 mm slices and a 400 mm field of view (0.78 mm pixels at 512 x 512),
#: a typical KiTS19 portal-venous scan; smaller test scans keep the field of view.
SYNTHETIC_SLICE_MM = 3.0
SYNTHETIC_FOV_MM = 400.0


@dataclasses.dataclass(frozen=True)
class BenchScan:
    """One benchmark scan on disk.

    Args:
        name: short name used in reports (e.g. ``"s061-case_00042"``).
        image: the CT (``imaging.nii.gz``).
        truth: the phantom's label map (``segmentation.nii.gz``).
        slices, shape, spacing_mm: canonical geometry (slice, row, col).
        source: where the label geometry came from (a KiTS19 case id, or ``"synthetic"``).
    """

    name: str
    image: Path
    truth: Path
    slices: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    source: str

    def to_dict(self) -> dict:
        return {"name": self.name, "image": str(self.image), "truth": str(self.truth),
                "slices": self.slices, "shape": list(self.shape),
                "spacing_mm": [float(v) for v in self.spacing_mm], "source": self.source,
                "file_mb": round(self.image.stat().st_size / 1e6, 2) if self.image.exists() else None}


def slice_count(label_path: Path) -> int:
    """Number of axial slices of a label map, from its header only (no voxel data read)."""
    import nibabel as nib

    img = nib.load(str(label_path))
    codes = nib.aff2axcodes(img.affine)
    for axis, code in enumerate(codes):
        if code in ("I", "S"):
            return int(img.shape[axis])
    raise KidedgeError(f"{label_path}: no axis runs inferior-superior (axis codes {codes})")


def label_cases(labels_root: Path) -> list[tuple[str, Path, int]]:
    """(case id, label path, slice count) of every labelled case under ``labels_root``."""
    from kidedge.io import discover_cases

    cases = []
    for case in discover_cases(labels_root):
        if case.label is not None:
            cases.append((case.case_id, Path(case.label), slice_count(Path(case.label))))
    if not cases:
        raise KidedgeError(f"{labels_root}: no label maps found")
    return sorted(cases)


def choose_cases(cases: Sequence[tuple[str, Path, int]], targets: Sequence[int]) -> list[tuple[str, Path, int]]:
    """Pick one distinct case per target slice count.

    The largest target takes the smallest case with at least that many slices ("600 or
    more"); the others take the case whose slice count is nearest. Ties go to the lower
    case id, so the choice is deterministic.
    """
    chosen: list[tuple[str, Path, int]] = []
    largest = max(targets)
    for target in targets:
        pool = [c for c in cases if c not in chosen]
        if not pool:
            raise KidedgeError(f"not enough label maps for {len(targets)} benchmark scans")
        if target == largest and len(targets) > 1:
            big = [c for c in pool if c[2] >= target]
            pick = min(big, key=lambda c: (c[2], c[0])) if big else max(pool, key=lambda c: (c[2], c[0]))
        else:
            pick = min(pool, key=lambda c: (abs(c[2] - target), c[0]))
        chosen.append(pick)
    return chosen


def _write_scan(folder: Path, phantom, source: str, name: str) -> BenchScan:
    folder.mkdir(parents=True, exist_ok=True)
    image, truth = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    save_volume(phantom.hu, phantom.affine, image)
    save_volume(phantom.labels, phantom.affine, truth)
    scan = BenchScan(name=name, image=image, truth=truth, slices=int(phantom.hu.shape[0]),
                     shape=tuple(int(v) for v in phantom.hu.shape),
                     spacing_mm=tuple(float(v) for v in phantom.spacing), source=source)
    write_json_atomic(folder / "scan.json", scan.to_dict())  # written last: marks the scan complete
    return scan


def _cached(folder: Path) -> BenchScan | None:
    meta = folder / "scan.json"
    if not meta.exists():
        return None
    d = json.loads(meta.read_text())
    image, truth = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    if not (image.exists() and truth.exists()):
        return None
    return BenchScan(name=d["name"], image=image, truth=truth, slices=int(d["slices"]),
                     shape=tuple(d["shape"]), spacing_mm=tuple(d["spacing_mm"]), source=d["source"])


def make_bench_scans(
    work_dir: str | os.PathLike,
    labels_root: str | os.PathLike | None = None,
    targets: Sequence[int] = FULL_TARGETS,
    seed: int = 0,
    synthetic_shape: tuple[int, int] | None = None,
) -> list[BenchScan]:
    """Make (or reuse) one phantom scan per target slice count.

    Args:
        work_dir: cache folder; each scan gets a sub-folder in the KiTS layout.
        labels_root: real label maps (any layout :func:`kidedge.io.discover_cases` reads);
            None gives synthetic anatomy.
        targets: wanted slice counts (one scan each).
        seed: phantom seed (tissue textures, noise); the same seed gives the same scans.
        synthetic_shape: (rows, cols) of synthetic scans (default 512 x 512); small values
            make the tiny scans tests need.

    Returns:
        The scans, in the order of ``targets``.
    """
    from kidedge.phantom import make_phantom

    work = Path(work_dir)
    scans = []
    if labels_root is not None:
        from kidedge.io import load_label_map

        for case_id, label_path, n in choose_cases(label_cases(Path(labels_root)), targets):
            name = f"s{n:04d}-{case_id}"
            folder = work / f"{name}-seed{seed}"
            scan = _cached(folder)
            if scan is None:
                labels, ref = load_label_map(label_path)
                phantom = make_phantom(seed, shape=labels.shape, spacing=tuple(ref.spacing), labels=labels)
                scan = _write_scan(folder, phantom, source=f"KiTS19 {case_id} labels", name=name)
            scans.append(scan)
        return scans
    rows, cols = synthetic_shape or SYNTHETIC_ROWS_COLS
    for i, n in enumerate(targets):
        name = f"s{n:04d}-synthetic{'' if (rows, cols) == SYNTHETIC_ROWS_COLS else f'-{rows}x{cols}'}"
        folder = work / f"{name}-seed{seed}"
        scan = _cached(folder)
        if scan is None:
            spacing = (SYNTHETIC_SLICE_MM, SYNTHETIC_FOV_MM / rows, SYNTHETIC_FOV_MM / cols)
            phantom = make_phantom(seed + i, shape=(int(n), int(rows), int(cols)), spacing=spacing)
            scan = _write_scan(folder, phantom, source="synthetic", name=name)
        scans.append(scan)
    return scans
