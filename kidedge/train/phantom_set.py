"""A phantom training set cut to what 2D training needs, from real KiTS label maps.

Full-length phantoms of KiTS19 geometry are 100-600 slices of 512x512 (hundreds of MB of
gzip each, since scanner noise does not compress); a 2D cascade learns from the slices
around the kidneys plus enough slices above and below them to learn what is *not* kidney.
This module builds, for each source label map, a phantom of the kidney slab grown by
``margin_mm`` above and below, with thin-slice scans thinned to at least ``min_slice_mm``
between slices (every k-th slice kept; the geometry, affine and labels stay exact for the
slices kept). The phantom body is built around those real labels by
:func:`kidedge.phantom.make_phantom`, so the segmentation equals the kept source slices.

Used to train the built-in default model (see README, "The built-in model").
"""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError


def kidney_slab(labels: np.ndarray, spacing_z: float, margin_mm: float, min_slice_mm: float):
    """Slice indices to keep: the kidney z-range grown by ``margin_mm``, every k-th slice."""
    z = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(1))
    if z.size == 0:
        lo, hi = 0, labels.shape[0] - 1
    else:
        grow = int(math.ceil(margin_mm / spacing_z))
        lo, hi = max(0, z[0] - grow), min(labels.shape[0] - 1, z[-1] + grow)
    step = max(1, int(round(min_slice_mm / spacing_z)))
    return np.arange(lo, hi + 1, step), step


def _make_case(job):
    from kidedge.io import load_label_map
    from kidedge.phantom import make_phantom
    from kidedge.phantom.dataset import _save_nifti

    label_path, out_case, seed, margin_mm, min_slice_mm = job
    labels, scan = load_label_map(label_path)
    sz, sr, sc = (float(v) for v in scan.spacing)
    keep, step = kidney_slab(labels, sz, margin_mm, min_slice_mm)
    cut = np.ascontiguousarray(labels[keep])
    spacing = (sz * step, sr, sc)
    affine = np.array(scan.canonical_affine, np.float64)
    # Slice 0 of the cut sits at source slice keep[0]; its axis grows by `step`.
    affine[:3, 3] = affine[:3, :3] @ np.array([keep[0], 0, 0]) + affine[:3, 3]
    affine[:3, 0] *= step
    ph = make_phantom(np.random.SeedSequence([seed, 7919]), spacing=spacing, labels=cut)
    tmp = out_case.parent / f".{out_case.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_nifti(ph.hu, affine, tmp / "imaging.nii.gz")
    _save_nifti(ph.labels, affine, tmp / "segmentation.nii.gz")
    os.replace(tmp, out_case)
    return out_case.name, int(cut.shape[0])


def write_training_phantoms(labels_dir, out_dir, cases: int | None = None, seed: int = 0,
                            margin_mm: float = 60.0, min_slice_mm: float = 2.5,
                            workers: int = 2) -> list[Path]:
    """Write a KiTS-layout phantom training set from the label maps under ``labels_dir``.

    Args:
        labels_dir: any layout :func:`kidedge.io.discover_cases` reads, with label maps.
        out_dir: output folder; ``case_XXXXX`` keeps the source's case id.
        cases: use the first ``cases`` sources of a seeded shuffle (all when None).
        seed: shuffle and phantom seed.
        margin_mm: slices kept above and below the kidneys.
        min_slice_mm: thinner scans are thinned to about this slice distance.
        workers: parallel processes.
    """
    from tqdm import tqdm

    from kidedge.io import discover_cases

    sources = [c for c in discover_cases(labels_dir, flat_as="label") if c.label is not None]
    if not sources:
        raise KidedgeError(f"{labels_dir}: no label maps found")
    order = np.random.default_rng(seed).permutation(len(sources))
    chosen = [sources[i] for i in order[: cases or len(sources)]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c.label, out / c.case_id, seed * 100003 + i, margin_mm, min_slice_mm)
            for i, c in enumerate(chosen) if not (out / c.case_id).exists()]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in tqdm(pool.map(_make_case, jobs), total=len(jobs), desc="training phantoms", unit="case"):
            pass
    return [out / c.case_id for c in chosen]


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("labels_dir")
    p.add_argument("out_dir")
    p.add_argument("--cases", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin-mm", type=float, default=60.0)
    p.add_argument("--min-slice-mm", type=float, default=2.5)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    write_training_phantoms(a.labels_dir, a.out_dir, a.cases, a.seed, a.margin_mm, a.min_slice_mm, a.workers)
