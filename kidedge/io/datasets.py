"""Finding cases (image + label pairs) in the dataset layouts kidedge reads.

- KiTS19: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (layout "kits19"; the
  labels-only release, segmentation.nii.gz alone, gives ``image=None``).
- KiTS21: ``case_XXXXX/imaging.nii.gz`` + ``aggregated_MAJ_seg.nii.gz`` ("kits21").
- KiTS23: like KiTS19 plus an ``instances/`` folder, cyst label 3 ("kits23").
- Medical Decathlon / nnU-Net: ``imagesTr/NAME.nii.gz`` (nnU-Net: ``NAME_0000.nii.gz``,
  the CT channel; other channels are ignored) + ``labelsTr/NAME.nii.gz``, label names in
  ``dataset.json`` ("decathlon"). Only the training split (imagesTr) is listed.
- A flat folder of .nii/.nii.gz files ("flat"): each file one case, taken as the image
  (or as the label with ``flat_as="label"``, e.g. a folder of predictions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.labels import load_label_map, mapping_from_dataset_json
from kidedge.io.scan import Scan

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_KITS_LABEL_FILES = (("segmentation.nii.gz", "kits19"), ("aggregated_MAJ_seg.nii.gz", "kits21"))
_CHANNEL = re.compile(r"_(\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Args:
        case_id: e.g. "case_00042" or "kidney_001".
        image: the CT file, or None (labels-only data).
        label: the label map, or None (unlabelled data).
        layout: "kits19", "kits21", "kits23", "decathlon" or "flat".
        label_mapping: {value in the label file: kidedge value}, or None for KiTS values.
    """

    case_id: str
    image: Path | None
    label: Path | None
    layout: str
    label_mapping: dict | None = None

    def load_label(self) -> tuple[np.ndarray, Scan]:
        """Canonical uint8 labels (0 bg, 1 kidney, 2 tumour, 3 cyst) and their Scan."""
        if self.label is None:
            raise KidedgeError(f"{self.case_id}: this case has no label map")
        return load_label_map(self.label, mapping=self.label_mapping)


def _strip_nifti(name: str) -> str | None:
    lower = name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _nifti_files(folder: Path) -> list[Path]:
    # "._name" files are macOS resource forks, shipped inside the Decathlon tarballs
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _strip_nifti(p.name) is not None
    )


def _decathlon_cases(root: Path) -> list[Case]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    ds_json = root / "dataset.json"
    mapping = mapping_from_dataset_json(ds_json) if ds_json.is_file() else None
    images: dict[str, Path] = {}
    if images_dir.is_dir():
        for p in _nifti_files(images_dir):
            stem = _strip_nifti(p.name)
            m = _CHANNEL.search(stem)
            if m and m.group(1) != "0000":
                continue  # nnU-Net channel 1.. (not the CT)
            images[_CHANNEL.sub("", stem)] = p
    labels: dict[str, Path] = {}
    if labels_dir.is_dir():
        for p in _nifti_files(labels_dir):
            labels[_strip_nifti(p.name)] = p
    ids = sorted(set(images) | set(labels))
    return [Case(i, images.get(i), labels.get(i), "decathlon", mapping) for i in ids]


def _kits_case(folder: Path) -> Case | None:
    image = folder / "imaging.nii.gz"
    image = image if image.is_file() else None
    for name, layout in _KITS_LABEL_FILES:
        label = folder / name
        if label.is_file():
            if layout == "kits19" and (folder / "instances").is_dir():
                layout = "kits23"
            return Case(folder.name, image, label, layout)
    if image is not None:
        return Case(folder.name, image, None, "kits19")
    return None


def discover_cases(root: str | Path, flat_as: str = "image") -> list[Case]:
    """All cases under ``root``, sorted by case id.

    Args:
        root: a dataset folder in one of the layouts above, or a single KiTS case folder.
        flat_as: for a flat folder of NIfTI files, whether each is an "image" or a "label".

    Raises KidedgeError when ``root`` is missing, not a folder, or holds no cases.
    """
    root = Path(root)
    if not root.exists():
        raise KidedgeError(f"{root}: no such folder")
    if not root.is_dir():
        raise KidedgeError(f"{root}: not a folder")
    if flat_as not in ("image", "label"):
        raise ValueError("flat_as must be 'image' or 'label'")
    if (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        cases = _decathlon_cases(root)
    else:
        single = _kits_case(root)
        if single is not None:
            cases = [single]
        else:
            # Hidden folders are skipped: a writer's half-written ".case_X.partial" is not a case.
            folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            cases = [c for d in folders if (c := _kits_case(d))]
        if not cases:
            files = _nifti_files(root)
            cases = [
                Case(_strip_nifti(p.name), p if flat_as == "image" else None,
                     p if flat_as == "label" else None, "flat")
                for p in files
            ]
    if not cases:
        raise KidedgeError(f"{root}: no cases found (expected a KiTS, Decathlon/nnU-Net or flat NIfTI folder)")
    return cases
