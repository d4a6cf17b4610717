"""Label maps normalised to kidedge's classes: 0 background, 1 kidney, 2 tumour, 3 cyst.

KiTS19/21/23 files already use these values (KiTS19 has no cyst). Medical Decathlon and
nnU-Net folders name their labels in dataset.json, either ``{"0": "background", "1":
"Kidney", ...}`` (Decathlon, nnU-Net v1) or ``{"background": 0, "kidney": 1, ...}``
(nnU-Net v2); names are mapped to kidedge's values by what they say. Labels of other
structures (e.g. "ureter", "artery") become background: kidedge segments kidneys and
renal masses only. nnU-Net v2 region entries (a list of values, e.g. "masses": [2, 3])
describe training regions, not voxel values, and are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.scan import Scan, load_scan

KIDEDGE_LABELS = {0: "background", 1: "kidney", 2: "tumour", 3: "cyst"}
IDENTITY_MAPPING = {v: v for v in KIDEDGE_LABELS}
_UNKNOWN = 255
_CHUNK_SLICES = 16


def kidedge_value_of(name: str) -> int:
    """The kidedge class of a label name ("Kidney", "tumor", "kidney_cyst", "ureter"...)."""
    n = name.strip().lower()
    if "cyst" in n:
        return 3
    if any(w in n for w in ("tumor", "tumour", "cancer", "malignan", "carcinoma")):
        return 2
    if "kidney" in n or "renal" in n:
        return 1
    return 0


def mapping_from_dataset_json(path: str | Path) -> dict[int, int]:
    """{value in the files: kidedge value} from a Decathlon / nnU-Net dataset.json."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KidedgeError(f"{path}: not a dataset.json with a 'labels' entry ({exc})") from exc
    mapping: dict[int, int] = {}
    for key, value in labels.items():
        if str(key).strip().lstrip("-").isdigit() and isinstance(value, str):
            mapping[int(key)] = kidedge_value_of(value)  # {"1": "Kidney"}
        elif isinstance(value, int) and not isinstance(value, bool):
            mapping[value] = kidedge_value_of(str(key))  # {"kidney": 1}
        # lists are nnU-Net v2 regions: not voxel values
    if not mapping:
        raise KidedgeError(f"{path}: no label values in 'labels'")
    return mapping


def dataset_json_for(label_path: Path) -> Path | None:
    """dataset.json beside a Decathlon/nnU-Net labelsTr (or labelsTs) folder, if any."""
    parent = Path(label_path).parent
    if parent.name in ("labelsTr", "labelsTs"):
        candidate = parent.parent / "dataset.json"
        if candidate.is_file():
            return candidate
    return None


def load_label_map(path: str | Path, mapping: dict[int, int] | None = None) -> tuple[np.ndarray, Scan]:
    """Read a label map as canonical uint8 with values 0 bg, 1 kidney, 2 tumour, 3 cyst.

    Args:
        path: label NIfTI (any supported layout).
        mapping: {value in the file: kidedge value}; default: from dataset.json beside a
            labelsTr folder, else the KiTS values 0..3 as they are.

    Returns (labels, scan): ``labels`` has ``scan.shape``; for a uint8 KiTS file it is
    ``scan.array`` itself (no copy). Raises KidedgeError for values outside the mapping
    or non-integer labels.
    """
    path = Path(path)
    if mapping is None:
        ds_json = dataset_json_for(path)
        mapping = mapping_from_dataset_json(ds_json) if ds_json else IDENTITY_MAPPING
    scan = load_scan(path)
    raw = scan.array
    scaled = (scan.slope, scan.intercept) != (1.0, 0.0)
    if raw.size == 0:
        return np.zeros(raw.shape, np.uint8), scan
    lo, hi = raw.min(), raw.max()
    if scaled:
        lo, hi = sorted((lo * scan.slope + scan.intercept, hi * scan.slope + scan.intercept))
    if raw.dtype == np.uint8 and not scaled and all(mapping.get(v) == v for v in range(int(hi) + 1)):
        return raw, scan
    if not (float(lo).is_integer() and float(hi).is_integer()) or hi - lo > 65535:
        raise KidedgeError(f"{path}: not a label map (values from {lo} to {hi})")
    lo, hi = int(lo), int(hi)
    lut = np.full(hi - lo + 1, _UNKNOWN, dtype=np.uint8)
    for value, kid in mapping.items():
        if lo <= value <= hi:
            lut[value - lo] = kid
    out = np.empty(raw.shape, dtype=np.uint8)
    for k0 in range(0, raw.shape[0], _CHUNK_SLICES):
        chunk = raw[k0 : k0 + _CHUNK_SLICES]
        if scaled or chunk.dtype.kind == "f":
            chunk = chunk * scan.slope + scan.intercept if scaled else chunk
            rounded = np.rint(chunk)
            if np.any(rounded != chunk):
                raise KidedgeError(f"{path}: not a label map (non-integer values)")
            chunk = rounded
        mapped = lut[chunk.astype(np.int64) - lo]
        if np.any(mapped == _UNKNOWN):
            bad = np.unique(chunk[mapped == _UNKNOWN])[:5].astype(int).tolist()
            raise KidedgeError(
                f"{path}: label values {bad} are not known (expected {sorted(mapping)})"
            )
        out[k0 : k0 + _CHUNK_SLICES] = mapped
    return out, scan
