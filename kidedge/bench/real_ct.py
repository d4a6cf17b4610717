"""Real-CT validation of a model package: ircadb-01 (expert kidney masks) and the DICOM sample.

The library side of ``benchmarks/validate_real_ct.py`` (which documents the report). Scans
are run through exactly what ``kidedge infer`` runs (:func:`run_infer`: the written NIfTI
read back); the raw network labels of the same scans are post-processed three ways
(:func:`postprocess_variants`) to measure what post-processing does.

- :func:`read_ircadb`: the ircadb-01 CT and its expert masks (DICOM series in a zip, read
  in memory), each mask file placed on the CT slice with its own ImagePositionPatient.
- :func:`score_ircadb`, :func:`score_sample`: the numbers per scan.
- :func:`check_targets`: issue 11's targets, met or not.

Only numbers come out for ircadb-01 (its licence forbids sharing adapted material).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError

#: ../shared/data beside the repository root (absent in a user's clone: callers check).
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IRCADB = SHARED / "ircadb-01"
SAMPLE = SHARED / "ct-dicom-sample"
#: Where a labelled voxel outside the kidney masks is attributed: first match wins
#: (vessels before the organs they run through); "skin" is the whole body in ircadb.
FP_STRUCTURES = ("artery", "portalvein", "venoussystem", "liver", "spleen", "bone", "leftlung", "rightlung")
#: issue 11's targets for the shipped package (int8 and fp32 both).
TARGETS = {"ircadb_kidney_dice_min": 0.90, "ircadb_masses_ml_max": 5.0, "sample_masses_ml_max": 5.0,
           "phantom_kidney_dice_min": 0.95, "phantom_tumour_dice_min": 0.80, "int8_vs_fp32_max": 0.005}


# ------------------------------------------------------------------------- ircadb-01
def read_ircadb(root: Path = IRCADB, structures=None):
    """The ircadb-01 CT and its masks, in canonical orientation, read from the zip in memory.

    Each mask file is placed on the CT slice with the same ImagePositionPatient (not by file
    name or order), after checking that its orientation, pixel spacing and size equal the
    CT's, so a mask cannot land on a wrong or flipped slice. Mask pixels are 0/255 (any
    non-zero counts).

    Returns:
        ``(scan, masks)``: the :class:`kidedge.io.Scan` and ``{structure: bool array}``
        with the scan's canonical shape.

    Raises:
        KidedgeError: a mask does not match the CT's geometry or misses slices.
    """
    import pydicom

    from kidedge.io import load_scan

    scan = load_scan(root / "PATIENT_DICOM")
    ct = pydicom.dcmread(str(scan.dicom.files[0]), stop_before_pixels=True)
    positions = np.asarray(scan.dicom.positions, float)  # native slice order
    masks = {}
    with zipfile.ZipFile(root / "MASKS_DICOM.zip") as z:
        members: dict[str, list[str]] = {}
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[2]:
                members.setdefault(parts[1], []).append(name)
        for structure in structures or sorted(members):
            if structure not in members:
                raise KidedgeError(f"{root.name}: no mask folder {structure!r} in MASKS_DICOM.zip")
            native = np.zeros(scan.native_shape, bool)
            placed = np.zeros(len(positions), bool)
            for name in members[structure]:
                ds = pydicom.dcmread(io.BytesIO(z.read(name)))
                for key in ("ImageOrientationPatient", "PixelSpacing"):
                    if not np.allclose([float(v) for v in ds[key].value], [float(v) for v in ct[key].value], atol=1e-4):
                        raise KidedgeError(f"{name}: {key} differs from the CT's")
                gap = np.linalg.norm(positions - [float(v) for v in ds.ImagePositionPatient], axis=1)
                k = int(np.argmin(gap))
                if gap[k] > 0.01 or placed[k] or ds.pixel_array.shape != native.shape[1:]:
                    raise KidedgeError(f"{name}: matches no free CT slice of the same size")
                native[k] = ds.pixel_array > 0
                placed[k] = True
            if not placed.all():
                raise KidedgeError(f"{structure}: masks for {placed.sum()} of {placed.size} CT slices")
            masks[structure] = scan.to_canonical(native)
    return scan, masks


def _ml(mask: np.ndarray, voxel_ml: float) -> float:
    return round(float(np.count_nonzero(mask)) * voxel_ml, 2)


def region_recall(roi: dict | None, kidney: np.ndarray) -> float | None:
    """The fraction of the truth ``kidney`` inside the stage-2 region ``roi`` (the
    profile's ``gating.roi``: slice/row/col start and stop): what stage 1 lets stage 2 see,
    an upper bound of the kidney recall (None without a region)."""
    if not roi:
        return None
    inside = kidney[roi["slice_start"]:roi["slice_stop"], roi["row_start"]:roi["row_stop"],
                    roi["col_start"]:roi["col_stop"]].sum()
    return round(float(inside / max(1, kidney.sum())), 4)


def score_ircadb(labels: np.ndarray, masks: dict, voxel_ml: float, roi: dict | None = None) -> dict:
    """Scores of canonical ``labels`` against the ircadb-01 masks (see the module docstring);
    with the runtime's stage-2 region ``roi``, how much of each kidney it held."""
    from kidedge.metrics import dice

    left, right = masks["leftkidney"], masks["rightkidney"]
    kidney = left | right
    fg, masses = labels > 0, labels >= 2
    outside = fg & ~kidney
    where, rest = {}, outside.copy()
    for s in FP_STRUCTURES:
        if s in masks:
            hit = rest & masks[s]
            where[s] = {"all_ml": _ml(hit, voxel_ml), "masses_ml": _ml(hit & masses, voxel_ml)}
            rest &= ~hit
    body = masks.get("skin", np.ones_like(rest))
    where["none (inside the body)"] = {"all_ml": _ml(rest & body, voxel_ml), "masses_ml": _ml(rest & body & masses, voxel_ml)}
    where["outside the body"] = {"all_ml": _ml(rest & ~body, voxel_ml), "masses_ml": _ml(rest & ~body & masses, voxel_ml)}
    return {
        "kidney_dice": round(dice(fg, kidney), 4),
        "label1_dice": round(dice(labels == 1, kidney), 4),
        "kidney_ml": _ml(fg, voxel_ml), "truth_kidney_ml": _ml(kidney, voxel_ml),
        "tumour_ml": _ml(labels == 2, voxel_ml), "cyst_ml": _ml(labels == 3, voxel_ml),
        "masses_ml": _ml(masses, voxel_ml),
        "outside_kidney_ml": _ml(outside, voxel_ml),
        "truth_left_ml": _ml(left, voxel_ml), "truth_right_ml": _ml(right, voxel_ml),
        "left_recall": round(float((fg & left).sum() / max(1, left.sum())), 4),
        "right_recall": round(float((fg & right).sum() / max(1, right.sum())), 4),
        "left_in_region": region_recall(roi, left), "right_in_region": region_recall(roi, right),
        "outside_by_structure": where,
    }


def score_sample(labels: np.ndarray, voxel_ml: float) -> dict:
    """The DICOM sample has no labels: everything labelled tumour or cyst is false."""
    return {"kidney_ml": _ml(labels > 0, voxel_ml), "parenchyma_ml": _ml(labels == 1, voxel_ml),
            "tumour_ml": _ml(labels == 2, voxel_ml), "cyst_ml": _ml(labels == 3, voxel_ml),
            "masses_ml": _ml(labels >= 2, voxel_ml)}


# ------------------------------------------------------------------------- running
def run_infer(scan_path: Path, model, precision: str, backend: str, workdir: Path, overlay=None) -> dict:
    """``kidedge infer`` on one scan (the library call behind the CLI): the canonical labels
    read back from the written NIfTI, the volumes JSON and the run's profile entry."""
    from kidedge.io import load_scan
    from kidedge.runtime.command import infer_command

    out = workdir / f"{scan_path.name}_{precision}_seg.nii.gz"
    prof = workdir / f"{scan_path.name}_{precision}_profile.json"
    infer_command([str(scan_path)], output=str(out), model=model, backend=backend, precision=precision,
                  profile=str(prof), overlay=None if overlay is None else str(overlay))
    volumes = json.loads(out.with_name(out.name[:-len(".nii.gz")] + ".volumes.json").read_text())
    labels = np.asarray(load_scan(out).array, dtype=np.uint8)
    return {"labels": labels, "volumes": volumes, "profile": json.loads(prof.read_text())["scans"][0]}


def raw_labels(segmenter, scan) -> np.ndarray:
    """The network's canonical labels before any post-processing (the runtime's pipeline)."""
    import inspect

    if "postprocess" in inspect.signature(segmenter.segment).parameters:
        return np.asarray(segmenter.segment(scan, postprocess=False).labels.to_dense(), dtype=np.uint8)
    from kidedge.runtime.profiling import (
        Profiler,  # the runtime before Segmenter.segment -> Segmentation
    )

    labels, _gating, _box = segmenter.segment(scan, Profiler())
    return np.asarray(labels, dtype=np.uint8)


def postprocess_variants(raw: np.ndarray, scan) -> dict:
    """``none``, ``legacy`` and ``review`` post-processing of the same raw labels, each as
    ``(labels, volumes, warnings)``."""
    from kidedge.body_landmarks import estimate_body_landmarks
    from kidedge.postprocess import class_volumes_ml, postprocess_labels, review_segmentation

    aff = scan.canonical_affine
    out = {}
    for name, labels in (("none", raw), ("legacy", postprocess_labels(raw, scan.spacing))):
        out[name] = (labels, class_volumes_ml(labels, scan.spacing, affine=aff), [])
    marks = estimate_body_landmarks(scan.array, aff, slope=scan.slope, intercept=scan.intercept)
    reviewed = review_segmentation(raw, scan.spacing, aff, landmarks=marks)
    out["review"] = (reviewed.labels, reviewed.volumes, reviewed.warnings)
    return out


def _sides(volumes: dict) -> dict:
    return {s: round(volumes["sides"][s]["kidney_ml"], 2) for s in ("left", "right")}


def validate_precision(package, precision: str, backend: str, masks, scans: dict, workdir: Path, overlay) -> dict:
    """Both real scans with one precision: the runtime's numbers and the post-processing variants.

    Args:
        package: a loaded :class:`kidedge.package.ModelPackage`.
        masks: :func:`read_ircadb`'s masks (None without ircadb-01).
        scans: ``{path: Scan}`` of the scans present (ircadb-01's PATIENT_DICOM, the sample).
        workdir: a temporary folder for ``kidedge infer``'s outputs.
        overlay: where the sample's overlay PNG goes (None: none).
    """
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    result = {}
    choice = select_backend(package, backend, precision)
    with Segmenter(package, choice) as segmenter:
        for key, path in (("ircadb-01", IRCADB / "PATIENT_DICOM"), ("ct-dicom-sample", SAMPLE)):
            if path not in scans:
                continue
            scan = scans[path]
            voxel_ml = float(np.prod(scan.spacing)) / 1000.0
            run = run_infer(path, str(package.source), precision, backend, workdir,
                            overlay=overlay if key == "ct-dicom-sample" else None)
            if run["labels"].shape != scan.shape:
                raise KidedgeError(f"{path.name}: output {run['labels'].shape} != canonical scan {scan.shape}")

            def score(lab, roi=None, vml=voxel_ml, key=key):
                return score_ircadb(lab, masks, vml, roi) if key == "ircadb-01" else score_sample(lab, vml)

            raw = raw_labels(segmenter, scan)
            variants = {}
            for name, (labels, volumes, warnings) in postprocess_variants(raw, scan).items():
                variants[name] = {**score(labels), "sides_ml": _sides(volumes), "warnings": warnings,
                                  "equals_runtime_output": bool(np.array_equal(labels, run["labels"]))}
            prof = run["profile"]
            result[key] = {
                "runtime": {**score(run["labels"], (prof.get("gating") or {}).get("roi")), "sides_ml": _sides(run["volumes"]["volumes"]),
                            "warnings": run["volumes"].get("warnings", []),
                            "backend": prof.get("backend"), "gating": prof.get("gating"),
                            "wall_s": (prof.get("profile") or {}).get("wall_s")},
                "postprocess_variants": variants,
            }
            print(f"{precision} {key}: " + json.dumps({k: v for k, v in result[key]["runtime"].items()
                                                      if k not in ("outside_by_structure", "gating")}), flush=True)
    return result


def evaluate_phantoms(package_path, phantoms, split, part, precisions, backend) -> dict:
    """The package-evaluation scores (kidedge's KiTS metrics, through the runtime) of a
    phantom set's held-out part, and per precision the mean scores of the ``legacy`` and
    ``review`` post-processing of the same raw labels (so a rule that removed true tumours
    would show here)."""
    from kidedge.bench.package_eval import _select_cases, evaluate_package
    from kidedge.io import load_scan
    from kidedge.metrics import kits_scores
    from kidedge.package import ModelPackage
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    ev = evaluate_package(package_path, phantoms, split, part, tuple(precisions), backend=backend, progress=False)
    package = ModelPackage.load(package_path)
    keys = ("kidney_dice", "masses_dice", "tumour_dice")
    compared = {}
    for precision in precisions:
        scores: dict[str, list] = {"legacy": [], "review": []}
        with Segmenter(package, select_backend(package, backend, precision)) as segmenter:
            for case in _select_cases(phantoms, split, part):
                scan = load_scan(case.image)
                truth = np.asarray(case.load_label()[0])
                variants = postprocess_variants(raw_labels(segmenter, scan), scan)
                for name in scores:
                    s = kits_scores(variants[name][0], truth, scan.spacing)
                    scores[name].append([s[k] for k in keys])
                scan.release()
        compared[precision] = {name: dict(zip(keys, np.mean(v, axis=0).round(4).tolist(), strict=True))
                               for name, v in scores.items()}
    return {"cases": len(ev["cases"]), "part": part, "split": None if split is None else Path(split).name,
            "by_precision": {p: r["mean"] for p, r in ev["by_precision"].items()},
            "postprocess_variants": compared}


# ------------------------------------------------------------------------- targets
def check_targets(runs: dict, phantoms: dict | None) -> list[dict]:
    """issue 11's targets, each with the measured value and met / not met (None: not measured)."""
    rows = []

    def add(what, precision, value, ok):
        rows.append({"target": what, "precision": precision, "value": value, "met": ok})

    for p, r in runs.items():
        irc, smp = r.get("ircadb-01", {}).get("runtime"), r.get("ct-dicom-sample", {}).get("runtime")
        if irc:
            add(f"ircadb-01 kidney Dice >= {TARGETS['ircadb_kidney_dice_min']}", p, irc["kidney_dice"],
                irc["kidney_dice"] >= TARGETS["ircadb_kidney_dice_min"])
            add(f"ircadb-01 tumour + cyst < {TARGETS['ircadb_masses_ml_max']} mL", p, irc["masses_ml"],
                irc["masses_ml"] < TARGETS["ircadb_masses_ml_max"])
        if smp:
            add(f"DICOM sample tumour + cyst < {TARGETS['sample_masses_ml_max']} mL", p, smp["masses_ml"],
                smp["masses_ml"] < TARGETS["sample_masses_ml_max"])
        ph = (phantoms or {}).get("by_precision", {}).get(p)
        if ph:
            add(f"phantom kidney Dice >= {TARGETS['phantom_kidney_dice_min']}", p, round(ph["kidney_dice"], 4),
                ph["kidney_dice"] >= TARGETS["phantom_kidney_dice_min"])
            add(f"phantom tumour Dice >= {TARGETS['phantom_tumour_dice_min']}", p, round(ph["tumour_dice"], 4),
                ph["tumour_dice"] >= TARGETS["phantom_tumour_dice_min"])
    if "int8" in runs and "fp32" in runs:
        diffs = {}
        for key in ("ircadb-01",):
            a, b = runs["int8"].get(key, {}).get("runtime"), runs["fp32"].get(key, {}).get("runtime")
            if a and b:
                diffs["ircadb-01 kidney Dice"] = abs(a["kidney_dice"] - b["kidney_dice"])
        ph = (phantoms or {}).get("by_precision", {})
        if "int8" in ph and "fp32" in ph:
            for k in ("kidney_dice", "tumour_dice"):
                diffs[f"phantom {k.replace('_', ' ')}"] = abs(ph["int8"][k] - ph["fp32"][k])
        for what, d in diffs.items():
            add(f"int8 within {TARGETS['int8_vs_fp32_max']} of fp32: {what}", "int8 vs fp32", round(d, 4),
                d <= TARGETS["int8_vs_fp32_max"])
    return rows


def package_identity(package) -> dict:
    """Name and a short fingerprint of the package's model files (sha256 of their hashes)."""
    manifest = json.loads((Path(package.root) / "manifest.json").read_text())
    shas = sorted(json.dumps(stage.get("files", {}), sort_keys=True) for stage in manifest.get("stages", []))
    return {"name": manifest.get("name"), "fingerprint": hashlib.sha256("".join(shas).encode()).hexdigest()[:12],
            "path": "built-in (kidedge/models/default)" if package.root.resolve() == _default_root() else package.root.name}


def _default_root() -> Path:
    from kidedge.package import default_package_path

    return default_package_path().resolve()
