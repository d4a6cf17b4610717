"""What ``kidedge batch`` will do: the scans under INPUT, where each result goes, and
which results are already finished (so a rerun skips them).

INPUT is a folder tree (every NIfTI scan and every DICOM series folder in it, at any
depth) or a list file (one scan per line: a NIfTI file or a DICOM series folder, or a
folder to search as a tree; relative lines are relative to the list; blank lines and
``#`` comments are skipped). Outputs mirror the scans' folders under OUT, so two scans
with the same name in different folders never collide, and a rerun finds the same names.

A scan is *finished* when its volumes JSON exists, parses, names this scan, this output
and this model package, and records the output's size and sha256, and the output file
matches them. The JSON is written (atomically) only after the output (atomically), so a
run killed at any moment leaves either a finished scan or one that is done again; an
output later truncated or replaced is done again too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.runtime.inputs import LABEL_MAP_ENDINGS, is_dicom_folder, is_nifti, scan_name

FORMATS = {"nifti": "_seg.nii.gz", "dicom-seg": "_seg.dcm"}
SUMMARY_NAME = "batch_summary.csv"


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """One scan and its result files (absolute paths, as strings: they travel to workers)."""

    scan: str
    name: str
    output: str
    volumes_json: str


def _is_scan_file(p: Path) -> bool:
    return (p.is_file() and is_nifti(p) and not p.name.startswith(".")
            and not p.name.lower().endswith(LABEL_MAP_ENDINGS))


def _walk(root: Path, skip: Path | None) -> list[Path]:
    """Scans under ``root``: NIfTI files, and DICOM series folders (not searched further)."""
    if is_dicom_folder(root):
        return [root]
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or (here / d).resolve() != skip))
        if is_dicom_folder(here):
            found.append(here)
            dirs[:] = []
            continue
        found.extend(here / f for f in sorted(files) if _is_scan_file(here / f))
    return found


def _read_list(path: Path, skip: Path | None) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KidedgeError(f"{path}: cannot read the list of scans ({exc})") from exc
    out: list[Path] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if p.is_dir() and not is_dicom_folder(p):
            out.extend(_walk(p, skip))
        else:
            out.append(p)  # a missing or unreadable entry fails as that scan, in the summary
    return out


def find_scans(input_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[list[Path], Path]:
    """The scans named by INPUT (a folder tree or a list file) and the folder their
    relative output paths start from. ``out_dir`` is never searched (outputs inside INPUT)."""
    p = Path(input_path)
    skip = Path(out_dir).resolve() if out_dir is not None else None
    if not p.exists():
        raise KidedgeError(f"{p}: no such file or folder")
    if p.is_dir():
        scans, root = _walk(p, skip), p
    elif is_nifti(p):
        scans, root = [p], p.parent
    else:
        scans = _read_list(p, skip)
        existing = [s.resolve().parent for s in scans if s.exists()]
        root = Path(os.path.commonpath(existing)) if existing else p.parent
    if not scans:
        raise KidedgeError(f"{p}: no scans found (.nii, .nii.gz files or DICOM series folders)")
    return scans, root


def plan_items(scans: list[Path], root: Path, out_dir: str | os.PathLike, fmt: str = "nifti") -> list[BatchItem]:
    """Each scan's output ``OUT/<its folder relative to root>/<name>_seg.nii.gz`` (or
    ``_seg.dcm``) and volumes JSON; scans that would share a name are numbered."""
    if fmt not in FORMATS:
        raise KidedgeError(f"unknown output format {fmt!r} (one of {', '.join(FORMATS)})")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise KidedgeError(f"{out}: -o exists and is not a folder")
    root = root.resolve()
    items, used = [], set()
    for s in scans:
        s_abs = s.resolve() if s.exists() else s.absolute()
        try:
            rel = s_abs.parent.relative_to(root)
        except ValueError:
            rel = Path()
        name = scan_name(s_abs)
        base, k = (rel / name).as_posix(), 2
        key = base
        while key in used:
            key, k = f"{base}_{k}", k + 1
        used.add(key)
        output = out / f"{key}{FORMATS[fmt]}"
        volumes = output.with_name(output.name[: -len(FORMATS[fmt])] + "_seg.volumes.json")
        items.append(BatchItem(str(s_abs), key, str(output), str(volumes)))
    return items


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def finished_record(item: BatchItem, package_name: str) -> dict | None:
    """The volumes record of a finished scan (see the module docstring), or None."""
    try:
        record = json.loads(Path(item.volumes_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if (record.get("scan"), record.get("segmentation"), record.get("package")) != (
            item.scan, item.output, package_name):
        return None
    try:
        size, digest = file_digest(item.output)
    except OSError:
        return None
    if (record.get("output_bytes"), record.get("output_sha256")) != (size, digest):
        return None
    return record
