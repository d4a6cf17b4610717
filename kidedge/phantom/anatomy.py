"""Real body anatomy for synthetic CT: multi-organ label maps in one common organ set.

The bodies of the anatomical phantoms are real label maps (no images): BTCV (8 organs),
AMOS (15) and TotalSegmentator (117 named structures). Each is mapped to the organ codes
below, brought into kidedge's canonical orientation (KiTS19: array (slice, row, col) with
nibabel axis codes ('I', 'P', 'L')) with kidedge.io's orientation tools, and checked
against anatomy: an affine can be wrong (the BTCV copies at hand say 'P' for an axis that
runs anteriorly), so the liver must lie on the patient's right of the spleen, the stomach
and liver anterior to the aorta, and the liver above the kidneys; an axis that fails is
flipped and the fix is recorded (``BodySource.fixes``), never silently assumed.

What a source does not label (``BodySource.has`` says what it does) is drawn
procedurally around the real organs (``kidedge.phantom.filler``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError

# Organ codes of the common body label set (uint8). 0: the source says nothing here.
NONE = 0
LIVER = 1
SPLEEN = 2
KIDNEY_R = 3
KIDNEY_L = 4
GALLBLADDER = 5
STOMACH = 6
PANCREAS = 7
AORTA = 8
IVC = 9
PORTAL_VEIN = 10
ADRENAL = 11
ESOPHAGUS = 12
DUODENUM = 13
SMALL_BOWEL = 14
COLON = 15
BLADDER = 16
PROSTATE_UTERUS = 17
LUNG = 18
HEART = 19
VERTEBRA = 20
RIB = 21
PELVIC_BONE = 22
OTHER_BONE = 23
ILIOPSOAS = 24
BACK_MUSCLE = 25
GLUTEAL = 26
ILIAC_ARTERY = 27
ILIAC_VEIN = 28
SPINAL_CORD = 29
CARTILAGE = 30
OTHER_ARTERY = 31
OTHER_VEIN = 32
KIDNEY_CYST = 33
OTHER_SOFT = 34
N_ORGANS = 35

ORGAN_NAMES = {v: k.lower() for k, v in dict(globals()).items()
               if k.isupper() and isinstance(v, int) and k not in ("N_ORGANS",)}

BTCV_MAP = {1: SPLEEN, 2: KIDNEY_R, 3: KIDNEY_L, 4: GALLBLADDER, 5: LIVER, 6: STOMACH,
            7: AORTA, 8: PANCREAS}
AMOS_MAP = {1: SPLEEN, 2: KIDNEY_R, 3: KIDNEY_L, 4: GALLBLADDER, 5: ESOPHAGUS, 6: LIVER,
            7: STOMACH, 8: AORTA, 9: IVC, 10: PANCREAS, 11: ADRENAL, 12: ADRENAL,
            13: DUODENUM, 14: BLADDER, 15: PROSTATE_UTERUS}

# TotalSegmentator structure names -> organ code; first matching prefix wins.
_TS_PREFIXES = (
    ("kidney_cyst", KIDNEY_CYST), ("kidney_right", KIDNEY_R), ("kidney_left", KIDNEY_L),
    ("liver", LIVER), ("spleen", SPLEEN), ("gallbladder", GALLBLADDER), ("stomach", STOMACH),
    ("pancreas", PANCREAS), ("aorta", AORTA), ("inferior_vena_cava", IVC),
    ("portal_vein", PORTAL_VEIN), ("adrenal", ADRENAL), ("esophagus", ESOPHAGUS),
    ("duodenum", DUODENUM), ("small_bowel", SMALL_BOWEL), ("colon", COLON),
    ("urinary_bladder", BLADDER), ("prostate", PROSTATE_UTERUS), ("uterus", PROSTATE_UTERUS),
    ("lung", LUNG), ("trachea", LUNG), ("heart", HEART), ("atrial_appendage", HEART),
    ("pulmonary", OTHER_VEIN), ("vertebrae", VERTEBRA), ("sacrum", PELVIC_BONE),
    ("hip", PELVIC_BONE), ("rib", RIB), ("costal_cartilage", CARTILAGE),
    ("sternum", OTHER_BONE), ("femur", OTHER_BONE), ("humerus", OTHER_BONE),
    ("scapula", OTHER_BONE), ("clavicula", OTHER_BONE), ("skull", OTHER_BONE),
    ("iliopsoas", ILIOPSOAS), ("autochthon", BACK_MUSCLE), ("gluteus", GLUTEAL),
    ("iliac_artery", ILIAC_ARTERY), ("iliac_vena", ILIAC_VEIN), ("spinal_cord", SPINAL_CORD),
    ("superior_vena_cava", OTHER_VEIN), ("brachiocephalic_vein", OTHER_VEIN),
    ("brachiocephalic_trunk", OTHER_ARTERY), ("subclavian_artery", OTHER_ARTERY),
    ("common_carotid", OTHER_ARTERY), ("thyroid", OTHER_SOFT), ("brain", OTHER_SOFT),
)

# What a body needs for the kidneys and the orientation check.
_REQUIRED = (LIVER, SPLEEN, AORTA)


@dataclasses.dataclass
class BodySource:
    """One real body label map in the common organ set, canonical orientation.

    Attributes:
        name: "<kind>/<file stem>", e.g. "btcv/label0001" (what sources.json records).
        path: the file it came from.
        organs: uint8 (slice, row, col) organ codes; row 0 anterior, col 0 the patient's
            right, slice 0 superior.
        spacing: (slice_mm, row_mm, col_mm).
        has: organ codes the source labels (everything else is drawn procedurally).
        fixes: axis flips applied because the affine disagreed with the anatomy.
    """

    name: str
    path: Path
    organs: np.ndarray
    spacing: tuple
    has: frozenset
    fixes: tuple

    def centroid_mm(self, code: int) -> np.ndarray | None:
        """(s, y, x) mm centroid of an organ, or None when absent."""
        idx = np.argwhere(self.organs == code)
        if idx.size == 0:
            return None
        return idx.mean(0) * np.asarray(self.spacing)


def source_kind(path: Path) -> str:
    """'totalsegmentator' (a .labels.json beside it), 'amos' or 'btcv' (by name)."""
    name = path.name.lower()
    if _labels_json(path).is_file():
        return "totalsegmentator"
    if name.startswith("amos"):
        return "amos"
    return "btcv"


def _labels_json(path: Path) -> Path:
    stem = path.name[:-7] if path.name.endswith(".nii.gz") else path.stem
    return path.with_name(stem + ".labels.json")


def _stem(path: Path) -> str:
    return path.name[:-7] if path.name.endswith(".nii.gz") else path.stem


def organ_lut(path: Path, kind: str, max_value: int) -> np.ndarray:
    """Look-up table file value -> organ code for one source file."""
    lut = np.zeros(max(max_value + 1, 256), np.uint8)
    if kind == "totalsegmentator":
        names = json.loads(_labels_json(path).read_text())
        for value, name in names.items():
            for prefix, code in _TS_PREFIXES:
                if name.startswith(prefix):
                    if int(value) < lut.size:
                        lut[int(value)] = code
                    break
        return lut
    table = AMOS_MAP if kind == "amos" else BTCV_MAP
    if max_value > max(table):
        raise KidedgeError(f"{path}: label value {max_value} is not in the {kind.upper()} "
                           f"organ set (1..{max(table)})")
    for value, code in table.items():
        lut[value] = code
    return lut


def find_body_files(folders) -> list[Path]:
    """Label maps (.nii/.nii.gz, not hidden) directly inside each folder, sorted."""
    out = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            out.append(folder)
            continue
        if not folder.is_dir():
            raise KidedgeError(f"{folder}: --bodies must be a folder of multi-organ label maps")
        files = sorted(p for p in folder.iterdir()
                       if not p.name.startswith(".") and p.name.endswith((".nii.gz", ".nii")))
        out.extend(files)
    if not out:
        raise KidedgeError(f"{', '.join(str(f) for f in folders)}: no multi-organ label maps "
                           "(.nii.gz) found for the bodies")
    return out


def _check_and_fix(organs: np.ndarray, path: Path) -> tuple[np.ndarray, tuple]:
    """Flip the axes whose direction contradicts the anatomy (see module docstring)."""
    counts = np.bincount(organs.reshape(-1), minlength=N_ORGANS)
    need = [c for c in _REQUIRED if counts[c] == 0]
    if need:
        names = ", ".join(ORGAN_NAMES[c] for c in need)
        raise KidedgeError(f"{path}: the body label map lacks {names} (needed to place "
                           "the kidneys and check its orientation)")
    codes = [LIVER, SPLEEN, AORTA, STOMACH, KIDNEY_R, KIDNEY_L]
    # Centroids from every 2nd voxel along each axis: exact enough to tell sides apart.
    sub = organs[::2, ::2, ::2]
    c = {}
    for code in codes:
        idx = np.nonzero(sub == code)
        c[code] = np.array([2.0 * float(i.mean()) for i in idx]) if idx[0].size else None
    fixes = []
    # Left-right: the liver is on the patient's right (low columns), the spleen left.
    if c[LIVER][2] > c[SPLEEN][2]:
        organs = organs[:, :, ::-1]
        fixes.append("columns flipped: the liver lay left of the spleen")
    # Anterior-posterior: liver and stomach lie in front of the aorta (row 0 anterior).
    front = [c[k][1] for k in (LIVER, STOMACH) if c[k] is not None]
    if float(np.mean(front)) > c[AORTA][1]:
        organs = organs[:, ::-1, :]
        fixes.append("rows flipped: the liver and stomach lay behind the aorta")
    # Superior-inferior: the liver's centre is above the kidneys' (slice 0 superior).
    kid = [c[k][0] for k in (KIDNEY_R, KIDNEY_L) if c[k] is not None]
    ref = float(np.mean(kid)) if kid else c[SPLEEN][0] + 1.0
    if c[LIVER][0] > ref:
        organs = organs[::-1]
        fixes.append("slices flipped: the liver lay below the kidneys")
    return np.ascontiguousarray(organs), tuple(fixes)


def load_body(path) -> BodySource:
    """Read one multi-organ label map as a :class:`BodySource`.

    Raises:
        KidedgeError: unreadable file, values outside the source's organ set, or a map
            without the liver, spleen and aorta (needed to check its orientation).
    """
    from kidedge.io import load_scan

    path = Path(path)
    kind = source_kind(path)
    scan = load_scan(path)
    raw = np.asarray(scan.array)
    if raw.ndim != 3 or raw.size == 0:
        raise KidedgeError(f"{path}: not a 3D label map")
    if raw.dtype.kind == "f":
        if not np.all(np.rint(raw[:: max(1, raw.shape[0] // 8)]) == raw[:: max(1, raw.shape[0] // 8)]):
            raise KidedgeError(f"{path}: not a label map (non-integer values)")
        raw = np.rint(raw).astype(np.int32)
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > 65535:
        raise KidedgeError(f"{path}: not a label map (values from {lo} to {hi})")
    lut = organ_lut(path, kind, hi)
    organs = lut[raw]
    organs, fixes = _check_and_fix(organs, path)
    has = frozenset(int(v) for v in np.flatnonzero(np.bincount(organs.reshape(-1), minlength=N_ORGANS)) if v)
    return BodySource(name=f"{kind}/{_stem(path)}", path=path, organs=organs,
                      spacing=tuple(float(v) for v in scan.spacing), has=has, fixes=fixes)
