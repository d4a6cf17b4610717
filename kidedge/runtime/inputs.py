"""What ``kidedge infer`` was given: scans to read, and where each result goes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kidedge.errors import KidedgeError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: ``--format``: the label map's file ending (a DICOM SEG object for a DICOM series).
OUTPUT_ENDINGS = {"nifti": "_seg.nii.gz", "dicom-seg": "_seg.dcm"}
DEFAULT_OUTPUT_DIR = Path("kidedge_out")
#: NIfTI names in a folder that are label maps, not scans (our own outputs, KiTS truth).
LABEL_MAP_ENDINGS = ("_seg.nii.gz", "_seg.nii", "segmentation.nii.gz", "segmentation.nii")
#: File names that say nothing about the case: use the folder's name instead.
GENERIC_STEMS = {"imaging", "image", "ct", "scan", "volume"}


@dataclasses.dataclass
class ScanJob:
    """One scan to segment and the files its results go to (``overlay``: its PNG, if asked;
    ``format``: ``nifti`` or ``dicom-seg``, the label map's)."""

    scan: Path
    name: str
    output: Path | None = None
    overlay: Path | None = None
    format: str = "nifti"

    @property
    def volumes_json(self) -> Path:
        return self.output.with_name(_strip_nifti(self.output.name) + ".volumes.json")


def _strip_nifti(name: str) -> str:
    for suf in (*NIFTI_SUFFIXES, ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_folder(path: Path, probe: int = 16) -> bool:
    """A folder holding DICOM files (``.dcm``, or the ``DICM`` magic at byte 128)."""
    if not path.is_dir():
        return False
    checked = 0
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix.lower() == ".dcm":
            return True
        try:
            with open(f, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
        checked += 1
        if checked >= probe:
            break
    return False


def scan_name(path: Path) -> str:
    """A short name for outputs: the file's stem, or its folder's name for generic stems
    such as KiTS's ``case_00000/imaging.nii.gz``; a DICOM folder's own name."""
    if path.is_dir():
        return path.name
    stem = _strip_nifti(path.name)
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return stem


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Scans named on the command line: files and DICOM folders as given; any other
    folder contributes the NIfTI files in it (except label maps named ``*_seg.nii.gz``, as
    kidedge writes them, or ``segmentation.nii.gz``), its DICOM sub-folders and, for a
    dataset in the KiTS layout, each ``case_*/imaging.nii.gz``. Missing paths are kept
    (and reported as a failed scan later)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir() or is_dicom_folder(p):
            out.append(p)
            continue
        found = [f for f in sorted(p.iterdir()) if f.is_file() and is_nifti(f) and not f.name.startswith(".")
                 and not f.name.lower().endswith(LABEL_MAP_ENDINGS)]
        for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
            images = [sub / f"imaging{s}" for s in NIFTI_SUFFIXES if (sub / f"imaging{s}").is_file()]
            if images:
                found.append(images[0])
            elif is_dicom_folder(sub):
                found.append(sub)
        if not found:
            raise KidedgeError(f"{p}: no scans in this folder (.nii, .nii.gz files or DICOM folders)")
        out.extend(found)
    return out


def plan_outputs(scans: list[Path], output: str | Path | None, overlay: str | Path | None = None,
                 profile: str | Path | None = None, fmt: str = "nifti") -> list[ScanJob]:
    """Assign each scan its output file ``<name>_seg.nii.gz`` (``_seg.dcm`` with
    ``fmt="dicom-seg"``) and overlay PNG.

    Args:
        scans: from :func:`expand_inputs`.
        output: ``-o``: a ``.nii``/``.nii.gz`` file (``.dcm`` for ``dicom-seg``; one scan
            only) or a folder (default ``./kidedge_out``).
        overlay: ``--overlay``: the PNG of one scan; with several, the scan's name is
            added to each file's name.
        profile: ``--profile``: checked here only, like the overlay, never to overwrite
            an input scan (the label maps' writer refuses that itself).
    """
    if not scans:
        raise KidedgeError("no scans given")
    inputs = {Path(s).resolve() for s in scans}
    for extra, what in ((profile, "--profile"), (overlay, "--overlay")):
        if extra is not None and Path(extra).resolve() in inputs:
            raise KidedgeError(f"{extra}: {what} would overwrite an input scan")
    jobs = _name_outputs(scans, output, fmt)
    if overlay is not None:
        p = Path(overlay)
        for job in jobs:
            job.overlay = p if len(jobs) == 1 else p.with_name(f"{p.stem}_{job.name}{p.suffix or '.png'}")
            if job.overlay.resolve() in inputs:
                raise KidedgeError(f"{job.overlay}: --overlay would overwrite an input scan")
    return jobs


def _name_outputs(scans: list[Path], output: str | Path | None, fmt: str) -> list[ScanJob]:
    if fmt not in OUTPUT_ENDINGS:
        raise KidedgeError(f"--format {fmt}: not one of {', '.join(OUTPUT_ENDINGS)}")
    out = Path(output) if output is not None else DEFAULT_OUTPUT_DIR
    is_file = {"nifti": is_nifti(out), "dicom-seg": out.name.lower().endswith(".dcm")}
    for other, named in is_file.items():
        if named and other != fmt and not out.is_dir():
            raise KidedgeError(f"{out}: -o names a {other} file but --format is {fmt}")
    if is_file[fmt] and not out.is_dir():
        if len(scans) > 1:
            raise KidedgeError(f"{out}: -o must be a folder when segmenting {len(scans)} scans")
        return [ScanJob(scans[0], scan_name(scans[0]), out, format=fmt)]
    if out.exists() and not out.is_dir():
        raise KidedgeError(f"{out}: -o exists and is not a folder")
    jobs, used = [], set()
    for s in scans:
        name = scan_name(s)
        base, k = name, 2
        while name in used:  # two scans with the same name: number the later ones
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        jobs.append(ScanJob(s, name, out / f"{name}{OUTPUT_ENDINGS[fmt]}", format=fmt))
    return jobs
