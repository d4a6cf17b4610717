"""Rebuild one part of the anatomical phantom set at a fixed, thinner slice spacing.

`kidedge phantom --training-set` draws slice spacings of 2.5-5 mm (kidedge/phantom/
appearance.py SLICE_MM), so its validation and test phantoms say nothing about thin-slice
scans. This builds the same cases (same bodies, kidneys, contrast phase and appearance: the
same random draws, only the spacing replaced) at ``--slice-mm`` into a new folder, with the
set's own split.json, so anything chosen on the validation part can be checked on thin
slices too:

    python benchmarks/thin_slice_phantoms.py --part val --slice-mm 1.25 --out data/anatomy_v2_val_1.25mm
    kidedge evaluate --package PKG --data data/anatomy_v2_val_1.25mm \\
        --split data/anatomy_v2_val_1.25mm/split.json --part val

The set's settings (cases, seed, body and kidney folders) must be those of the original
set (defaults: 400 cases, seed 0, the shared label maps), so the planned cases match it.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.phantom import appearance, training_set  # noqa: E402


def _build(args) -> str:
    job, out, slice_mm = args
    # one spacing for every case: the draw still consumes the same random number
    appearance.SLICE_MM = (float(slice_mm),)
    appearance._SLICE_P = (1.0,)
    training_set.make_case(job, Path(out))
    return job["case"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--part", default="val", choices=("train", "val", "test"))
    ap.add_argument("--slice-mm", type=float, default=1.25)
    ap.add_argument("--cases", type=int, default=training_set.DEFAULT_CASES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="only every n-th case of the part (thin slices are big)")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from kidedge.phantom.anatomy import find_body_files

    bodies = find_body_files(training_set.default_folders("bodies"))
    kidneys = training_set.kidney_files(training_set.default_folders("kidneys"))
    jobs, split = training_set.plan_cases(bodies, kidneys, args.cases, args.seed)
    todo = [j for j in jobs if j["part"] == args.part][::max(1, args.every)]
    names = [j["case"] for j in todo]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [j for j in todo if not (out / j["case"] / "source.json").is_file()]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for _ in tqdm(pool.map(_build, [(j, str(out), args.slice_mm) for j in todo]), total=len(todo),
                      desc=f"{args.part} phantoms at {args.slice_mm:g} mm", unit="case"):
            pass
    (out / "split.json").write_text(json.dumps({"seed": args.seed, "slice_mm": args.slice_mm,
                                                args.part: names}, indent=1))
    print(f"wrote {len(names)} cases of part {args.part} at {args.slice_mm:g} mm to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
