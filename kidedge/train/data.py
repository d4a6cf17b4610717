"""Training data: find cases, cache them as memory-mapped int16 HU / uint8 label arrays,
split patients 80/10/10, fit z-score statistics.

Why a cache: real KiTS volumes are up to 1000+ slices of 512 x 512. Holding a hundred of
them as float would need hundreds of GB, so each case is converted once to canonical
int16 HU and uint8 labels in ``RUN_DIR/cache/<case>.{hu,labels}.npy`` and read back as
``np.memmap``; samples then read only the slices they need, and the OS page cache keeps
what fits. Reading and orientation are kidedge.io's (canonical = KiTS19 orientation).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.writer import atomic_target, write_json_atomic

N_LABELS = 4  # 0 background, 1 kidney, 2 tumour, 3 cyst
CACHE_VERSION = 1


@dataclasses.dataclass
class TrainingCase:
    """A labelled case found in a dataset folder."""

    case_id: str
    image: Path
    label: Path


@dataclasses.dataclass
class CachedCase:
    """One case as memory-mapped canonical arrays.

    Attributes:
        hu: int16 ``(slices, rows, cols)`` Hounsfield units (slope/intercept applied).
        labels: uint8 ``(slices, rows, cols)``, 0 background, 1 kidney, 2 tumour, 3 cyst.
        spacing: (slice, row, col) mm.
        slice_counts: int64 ``(slices, 4)`` voxels of each label per slice (for sampling).
    """

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    slice_counts: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


def discover_training_cases(data) -> list[TrainingCase]:
    """Labelled cases under ``data`` in any layout kidedge.io understands (KiTS19/21/23,
    Decathlon); cases without an image or a label are skipped."""
    root = Path(data)
    if not root.is_dir():
        raise KidedgeError(f"{root}: dataset folder not found")
    try:
        from kidedge.io import discover_cases
    except ImportError:  # kidedge.io not in this build: plain KiTS layout only
        discover_cases = None
    found: list[TrainingCase] = []
    if discover_cases is not None:
        for c in discover_cases(root):
            if c.image is not None and c.label is not None:
                found.append(TrainingCase(str(c.case_id), Path(c.image), Path(c.label)))
    else:
        for d in sorted(root.glob("case_*")):
            img, lab = d / "imaging.nii.gz", d / "segmentation.nii.gz"
            if img.is_file() and lab.is_file():
                found.append(TrainingCase(d.name, img, lab))
    if len(found) < 2:
        raise KidedgeError(f"{root}: found {len(found)} labelled case(s) (image + segmentation); training needs at least 2")
    return found


def _load_canonical(case: TrainingCase):
    """(hu_source, slope, intercept, labels uint8, spacing) in canonical orientation."""
    try:
        from kidedge.io import load_label_map, load_scan
    except ImportError:
        load_scan = None
    if load_scan is not None:
        scan = load_scan(case.image)
        labels, lscan = load_label_map(case.label)
        return scan.array, float(scan.slope), float(scan.intercept), labels, tuple(float(s) for s in scan.spacing)
    # Fallback while kidedge.io is not available: nibabel reorientation to (I, P, L).
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    img = nib.load(str(case.image))
    lab = nib.load(str(case.label))
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("I", "P", "L")))
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    spacing = [0.0, 0.0, 0.0]
    for i, (axis, _) in enumerate(ornt):
        spacing[int(axis)] = float(zooms[i])
    hu = apply_orientation(np.asanyarray(img.dataobj), ornt)
    labels = apply_orientation(np.asanyarray(lab.dataobj), ornt).astype(np.uint8)
    return hu, 1.0, 0.0, labels, tuple(spacing)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_target(path) as tmp:
        np.save(tmp, array)


class CaseCache:
    """Converts cases once to ``<root>/<case>.*.npy`` and opens them memory-mapped.

    Args:
        root: cache folder (usually ``RUN_DIR/cache``).
    """

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, case_id: str):
        return (self.root / f"{case_id}.hu.npy", self.root / f"{case_id}.labels.npy",
                self.root / f"{case_id}.counts.npy", self.root / f"{case_id}.json")

    def get(self, case: TrainingCase) -> CachedCase:
        hu_p, lab_p, cnt_p, meta_p = self._paths(case.case_id)
        meta = None
        if meta_p.is_file():
            meta = json.loads(meta_p.read_text())
            if meta.get("version") != CACHE_VERSION or meta.get("image") != str(case.image):
                meta = None
        if meta is None:
            meta = self._convert(case)
        return CachedCase(
            case.case_id,
            np.load(hu_p, mmap_mode="r"),
            np.load(lab_p, mmap_mode="r"),
            tuple(meta["spacing"]),
            np.load(cnt_p),
        )

    def _convert(self, case: TrainingCase) -> dict:
        hu_p, lab_p, cnt_p, meta_p = self._paths(case.case_id)
        try:
            src, slope, intercept, labels, spacing = _load_canonical(case)
        except KidedgeError:
            raise
        except Exception as exc:
            raise KidedgeError(f"{case.image}: cannot read case '{case.case_id}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if src.ndim != 3 or tuple(src.shape) != tuple(labels.shape):
            raise KidedgeError(f"{case.label}: label shape {tuple(labels.shape)} does not match image {tuple(src.shape)}")
        if labels.max(initial=0) >= N_LABELS:
            raise KidedgeError(f"{case.label}: label value {int(labels.max())} outside 0..3")
        # Slab by slab, so a 1000-slice scan never exists as float in memory.
        with atomic_target(hu_p) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=tuple(src.shape))
            for z in range(0, src.shape[0], 32):
                slab = np.asarray(src[z:z + 32], dtype=np.float32) * np.float32(slope) + np.float32(intercept)
                if not np.isfinite(slab).all():
                    raise KidedgeError(f"{case.image}: NaN or infinite voxels in case '{case.case_id}'")
                out[z:z + 32] = np.clip(np.rint(slab), -32768, 32767).astype(np.int16)
            out.flush()
            del out
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        _atomic_save_npy(lab_p, labels)
        counts = np.stack([(labels == k).sum(axis=(1, 2)) for k in range(N_LABELS)], axis=1).astype(np.int64)
        _atomic_save_npy(cnt_p, counts)
        meta = {"version": CACHE_VERSION, "case_id": case.case_id, "image": str(case.image),
                "label": str(case.label), "shape": list(src.shape), "spacing": list(spacing)}
        write_json_atomic(meta_p, meta)  # written last: marks the cached case complete
        return meta


def make_split(case_ids: list[str], seed: int, train: float = 0.8, val: float = 0.1, test: float = 0.1) -> dict:
    """Patient-level split (shuffled with ``seed``): at least one validation and one
    training case; the test part may be empty for tiny datasets."""
    ids = sorted(case_ids)
    n = len(ids)
    if n < 2:
        raise KidedgeError("a split needs at least 2 cases")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val)))
    n_test = int(round(n * test)) if n - n_val - int(round(n * test)) >= 1 else 0
    n_test = min(n_test, n - n_val - 1)
    shuffled = [ids[i] for i in order]
    return {
        "seed": int(seed), "fractions": [train, val, test],
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val:n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test:]),
    }


def load_split_file(path) -> dict:
    """A given split (``split.file``): JSON with lists "train", "val" (non-empty) and
    "test" of case ids, no id in two parts; other keys are kept as they are."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KidedgeError(f"{path}: cannot read the split file ({type(exc).__name__})") from exc
    parts = [split.get(k) if isinstance(split, dict) else None for k in ("train", "val", "test")]
    if not all(isinstance(p, list) and all(isinstance(c, str) for c in p) for p in parts) or not parts[0] or not parts[1]:
        raise KidedgeError(f"{path}: a split file needs lists 'train' and 'val' (non-empty) and 'test' of case ids")
    if len(set().union(*parts)) != sum(len(p) for p in parts):
        raise KidedgeError(f"{path}: a case id is in more than one part of the split")
    return split


def sample_hu(cases: list[CachedCase], seed: int, per_case: int = 200_000) -> np.ndarray:
    """Random voxels (HU) from the cases, ``per_case`` from each, for z-score fitting."""
    rng = np.random.default_rng(seed)
    out = []
    for c in cases:
        n = c.hu.shape[0]
        zs = np.sort(rng.choice(n, size=min(n, 16), replace=False))
        block = np.asarray(c.hu[zs]).reshape(-1)
        out.append(block[rng.choice(block.size, size=min(per_case, block.size), replace=False)])
    return np.concatenate(out)
