"""Copy one part of a phantom set with every scan rotated in-plane (the patient rolled or
turned on the table, a kidney turned on its axis).

The anatomical phantoms keep the pose of their source label maps: the kidneys lie the way
they lay in those patients, and the network may learn that pose as a cue. On the real
ircadb-01 scan the built-in segmenter missed a band of its right kidney that it found once
the slice was turned by 20-40 degrees. This measures that weakness on phantoms instead of
on one real scan: the same cases, each scan and its labels turned about the slice axis by
``+deg`` or ``-deg`` (alternating, in case order), into a new KiTS-layout folder with its
own split.json:

    python benchmarks/rotated_phantoms.py --part val --deg 30 --out data/anatomy_v2_val_rot30
    kidedge evaluate --package PKG --data data/anatomy_v2_val_rot30 \\
        --split data/anatomy_v2_val_rot30/split.json --part val

The CT is interpolated linearly, the labels by nearest neighbour; corners the turn brings
in get the scan's lowest value (its padding outside the field of view). The affine is kept,
so the turn is in the image, as a rolled patient would be.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def in_plane_axes(affine: np.ndarray) -> tuple[int, int]:
    """The two array axes that are not the head-foot axis, from the affine's axis codes."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    plane = tuple(i for i, c in enumerate(codes) if c not in ("S", "I"))
    if len(plane) != 2:
        raise ValueError(f"no single head-foot axis in axis codes {codes}")
    return plane


def rotate_case(src: Path, dst: Path, deg: float) -> None:
    """Write ``src``'s imaging and segmentation turned by ``deg`` in-plane to ``dst``."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(src / "imaging.nii.gz"))
    seg = nib.load(str(src / "segmentation.nii.gz"))
    axes = in_plane_axes(img.affine)
    ct = np.asanyarray(img.dataobj)
    lab = np.asanyarray(seg.dataobj)
    ct_r = ndimage.rotate(ct.astype(np.float32), deg, axes=axes, reshape=False, order=1, cval=float(ct.min()))
    lab_r = ndimage.rotate(lab, deg, axes=axes, reshape=False, order=0, cval=0)
    dst.mkdir(parents=True, exist_ok=True)
    out_ct = nib.Nifti1Image(np.round(ct_r).astype(ct.dtype), img.affine, img.header)
    out_lab = nib.Nifti1Image(lab_r.astype(lab.dtype), seg.affine, seg.header)
    nib.save(out_lab, str(dst / "segmentation.nii.gz"))
    nib.save(out_ct, str(dst / "imaging.nii.gz"))
    source = json.loads((src / "source.json").read_text()) if (src / "source.json").is_file() else {}
    source["rotated_in_plane_deg"] = deg
    (dst / "source.json").write_text(json.dumps(source, indent=1))


def _job(args) -> str:
    src, dst, deg = args
    rotate_case(Path(src), Path(dst), deg)
    return Path(src).name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/anatomy_v2", help="the phantom set (KiTS layout, with split.json)")
    ap.add_argument("--split", default=None, help="split file (default: DATA/split.json)")
    ap.add_argument("--part", default="val", choices=("train", "val", "test"))
    ap.add_argument("--deg", type=float, default=30.0, help="turn each case by +deg or -deg, alternating")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    data = Path(args.data)
    split = json.loads(Path(args.split or data / "split.json").read_text())
    names = list(split[args.part])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(data / n), str(out / n), args.deg if i % 2 == 0 else -args.deg) for i, n in enumerate(names)]
    jobs = [j for j in jobs if not (Path(j[1]) / "source.json").is_file()]
    desc = f"{args.part} phantoms turned {args.deg:g} deg"
    if args.workers <= 1:  # in this process (no pickling of the job function)
        for job in tqdm(jobs, desc=desc, unit="case"):
            _job(job)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for _ in tqdm(pool.map(_job, jobs), total=len(jobs), desc=desc, unit="case"):
                pass
    (out / "split.json").write_text(json.dumps({"rotated_in_plane_deg": args.deg, args.part: names}, indent=1))
    print(f"wrote {len(names)} cases of part {args.part}, turned +-{args.deg:g} deg, to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
