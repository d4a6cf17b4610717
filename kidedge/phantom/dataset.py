"""``kidedge phantom``: write a KiTS-layout folder of synthetic CT cases.

Procedural mode draws realistic scan geometry per case (512x512, 0.6-1.0 mm pixels,
0.5-5 mm slices, 60-600 slices, biased to the short end so a set is quick to make).
From-labels mode cycles through the cases of a real label dataset (any layout
``kidedge.io.discover_cases`` knows): output case ``i`` takes source case ``i mod N``,
with its exact label map, spacing, scan size and affine, and a seed of its own.

Every case folder is built under a hidden temporary name and renamed into place when
complete, so an interrupted run never leaves a half-written case; existing case folders
are never overwritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.phantom.generate import canonical_affine, make_phantom

# Slice thickness (mm) and its probability: KiTS19 is mostly 0.5-5 mm, 3 and 5 common.
_SLICE_MM = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_SLICE_P = (0.06, 0.12, 0.06, 0.08, 0.12, 0.16, 0.2, 0.2)


def case_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of output case ``index`` of a set made with ``seed``."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x6B1D])


def procedural_geometry(rng: np.random.Generator):
    """(shape, spacing) of one procedural case: 512x512, realistic pixel and slice sizes."""
    pixel = float(np.round(rng.uniform(0.6, 1.0), 4))
    slice_mm = float(rng.choice(_SLICE_MM, p=_SLICE_P))
    # Cover the kidneys and some of what is around them; thin slices mean many slices.
    extent = rng.uniform(170, 380)
    n = int(np.clip(round(extent / slice_mm), 60, 600))
    if slice_mm < 1.5:
        n = int(np.clip(n, 60, int(rng.uniform(160, 300))))
    return (n, 512, 512), (slice_mm, pixel, pixel)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _label_sources(from_labels):
    from kidedge.io import discover_cases

    root = Path(from_labels)
    if not root.is_dir():
        raise KidedgeError(f"{root}: --from-labels must be a folder of label maps")
    cases = [c for c in discover_cases(root, flat_as="label") if c.label is not None]
    if not cases:
        raise KidedgeError(f"{root}: no label maps found (KiTS, Decathlon or a flat folder of .nii.gz)")
    return cases


def write_phantom_dataset(out_dir, cases: int = 3, from_labels=None, seed: int = 0,
                          montage: bool = True) -> list[Path]:
    """Write ``cases`` phantom cases as ``OUT_DIR/case_XXXXX/{imaging,segmentation}.nii.gz``.

    Args:
        out_dir: output folder (created; existing case folders are never overwritten).
        cases: number of cases.
        from_labels: optional folder of real label maps; case ``i`` uses source ``i mod N``.
        seed: the set's seed; case ``i`` gets its own seed derived from (seed, i).
        montage: also write ``OUT_DIR/montage.png`` (axial slices with label contours).

    Returns:
        the case folders written, in order.

    Raises:
        KidedgeError: bad arguments, unreadable label maps, or case folders that exist.
    """
    from tqdm import tqdm

    if int(cases) < 1:
        raise KidedgeError(f"phantom: --cases must be >= 1, got {cases}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KidedgeError(f"{out}: exists and is not a folder")
    names = [f"case_{i:05d}" for i in range(int(cases))]
    clash = [n for n in names if (out / n).exists()]
    if clash:
        raise KidedgeError(f"{out / clash[0]}: already exists; refusing to overwrite phantom cases (choose an empty OUT_DIR)")
    sources = _label_sources(from_labels) if from_labels is not None else None
    out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    shown = []
    for i, name in enumerate(tqdm(names, desc="phantoms", unit="case")):
        rng_seed = case_seed(seed, i)
        if sources is not None:
            src = sources[i % len(sources)]
            labels, scan = src.load_label()
            spacing = tuple(float(v) for v in scan.spacing)
            affine = np.asarray(scan.canonical_affine, np.float64)
            ph = make_phantom(rng_seed, spacing=spacing, labels=np.ascontiguousarray(labels))
            source = src.case_id
        else:
            shape, spacing = procedural_geometry(np.random.default_rng(case_seed(seed, i).spawn(1)[0]))
            ph = make_phantom(rng_seed, shape=shape, spacing=spacing)
            affine = canonical_affine(spacing)
            source = None
        tmp = out / f".{name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            _save_nifti(ph.hu, affine, tmp / "imaging.nii.gz")
            _save_nifti(ph.labels, affine, tmp / "segmentation.nii.gz")
            os.replace(tmp, out / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(out / name)
        if montage:
            from kidedge.phantom.montage import pick_slices

            shown.append((name, source, ph.style.phase, pick_slices(ph)))
    if montage and shown:
        from kidedge.phantom.montage import write_montage

        write_montage(shown, out / "montage.png")
    return written
