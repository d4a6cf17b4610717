"""Phantom generation speed: a 512 x 512 x 200 case should take seconds, not minutes.

Measures, in one process and one run:

- anatomical training cases (``kidedge phantom --training-set``, when ../shared/data is
  present): the first ``--anatomical`` cases of the seed-0 set, each generated and written
  (ISA-L gzip) by :func:`kidedge.phantom.training_set.make_case`; CPU seconds include
  reading the body and KiTS label maps (a worker reuses a body for consecutive cases);
  size in MB of the two files;

and :func:`kidedge.phantom.make_phantom` for

- procedural cases of 512 x 512 x 200 (0.78 mm pixels, 2 mm slices), three seeds;
- from-labels cases on real KiTS19 label maps from ../shared/data/kits19-labels (when
  present): the three cases whose slice count is nearest 200;

and, separately, writing one case as the KiTS layout (gzip NIfTI of imaging and labels),
which is often the slower half. Times are wall seconds (median of the cases) and the
process's CPU seconds; peak RSS is the process high-water mark at the end.

The machine is shared: the load average is recorded at the start and end.

Usage: python benchmarks/bench_phantom.py [--out benchmarks/results] [--anatomical N]
Writes phantom.json and phantom.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.environment import machine_label  # noqa: E402
from kidedge.io import load_label_map  # noqa: E402
from kidedge.phantom import make_phantom  # noqa: E402
from kidedge.phantom.dataset import _save_nifti  # noqa: E402

LABELS = ROOT.parent / "shared" / "data" / "kits19-labels"


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _nearest_cases(n_slices: int, k: int):
    import nibabel as nib

    files = sorted(LABELS.glob("case_*/segmentation.nii.gz"))
    return sorted(files, key=lambda p: (abs(nib.load(p).shape[0] - n_slices), p.name))[:k]


def _anatomical(n: int) -> list[dict]:
    from kidedge.phantom.anatomy import find_body_files
    from kidedge.phantom.training_set import default_folders, kidney_files, make_case, plan_cases

    jobs, _ = plan_cases(find_body_files(default_folders("bodies")),
                         kidney_files(default_folders("kidneys")), 400, seed=0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in sorted(jobs[:n], key=lambda j: (j["body"], j["case"])):
            rec = make_case(job, Path(tmp))
            out.append({"case": rec["case"], "body": rec["body"], "kidneys": rec["kidneys"] or "own",
                        "phase": rec["appearance"]["phase"], "slices": rec["grid"]["shape"][0],
                        "slice_mm": rec["grid"]["spacing"][0], "cpu_s": rec["cpu_s"], "mb": rec["mb"]})
            print(out[-1], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--anatomical", type=int, default=8)
    args = ap.parse_args()
    load_start = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    anat = _anatomical(args.anatomical) if LABELS.is_dir() and args.anatomical > 0 else []
    rows = []
    for seed in (1, 2, 3):
        ph, wall, cpu = _timed(lambda s=seed: make_phantom(s, shape=(200, 512, 512), spacing=(2.0, 0.78125, 0.78125)))
        rows.append({"mode": "procedural", "case": f"seed {seed}", "shape": list(ph.hu.shape), "wall_s": wall, "cpu_s": cpu})
        print(rows[-1], flush=True)
    if LABELS.is_dir():
        for path in _nearest_cases(200, 3):
            labels, scan = load_label_map(path)
            labels = np.ascontiguousarray(labels)
            ph, wall, cpu = _timed(lambda lab=labels, sp=scan.spacing: make_phantom(0, spacing=tuple(float(v) for v in sp), labels=lab))
            assert np.array_equal(ph.labels, labels)
            rows.append({"mode": "from-labels", "case": path.parent.name, "shape": list(ph.hu.shape),
                         "wall_s": wall, "cpu_s": cpu})
            print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, write_s, write_cpu = _timed(lambda: (_save_nifti(ph.hu, ph.affine, Path(tmp) / "imaging.nii.gz"),
                                                _save_nifti(ph.labels, ph.affine, Path(tmp) / "segmentation.nii.gz")))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_end = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    summary = {}
    for mode in ("procedural", "from-labels"):
        w = [r["wall_s"] for r in rows if r["mode"] == mode]
        if w:
            summary[mode] = {"median_wall_s": statistics.median(w), "max_wall_s": max(w), "cases": len(w)}
    result = {"machine": machine_label(), "python": platform.python_version(), "rows": rows, "summary": summary,
              "write_one_case_s": write_s, "write_one_case_cpu_s": write_cpu, "write_shape": list(ph.hu.shape),
              "peak_rss_mb": peak_mb, "anatomical": anat, "loadavg_start": load_start,
              "loadavg_end": load_end}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phantom.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Phantom generation speed", "", f"Machine: {result['machine']}, shared with other "
             f"jobs (load average {' '.join(load_start)} at the start, {' '.join(load_end)} at the "
             "end). Command: `python benchmarks/bench_phantom.py`.", "",
             "The CPU seconds are the cost of a case (generation is single-threaded numpy/scipy); "
             "wall seconds include waiting for the shared CPU.", ""]
    if anat:
        cpu = [a["cpu_s"] for a in anat]
        mb = [a["mb"] for a in anat]
        lines += ["## Anatomical training cases (`kidedge phantom OUT --training-set`)", "",
                  "| case | body | kidneys | phase | slices x mm | CPU s (read, make, write) | MB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {a['case']} | {a['body']} | {a['kidneys']} | {a['phase']} | "
                  f"{a['slices']} x {a['slice_mm']} | {a['cpu_s']:.2f} | {a['mb']:.1f} |" for a in anat]
        lines += ["", f"Median {statistics.median(cpu):.1f} CPU s per case (max {max(cpu):.1f}), "
                  f"median {statistics.median(mb):.1f} MB (max {max(mb):.1f}) over {len(anat)} cases.", ""]
    lines += ["## Procedural phantoms (`make_phantom`)", "",
              "| mode | case | shape (slices, rows, cols) | wall s | CPU s |", "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['case']} | {tuple(r['shape'])} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |" for r in rows]
    lines += ["", f"Writing the last case as KiTS layout (gzip NIfTI, imaging + labels, shape "
              f"{tuple(result['write_shape'])}): {write_s:.2f} s. Peak RSS of the process: {peak_mb:.0f} MB.", ""]
    for mode, s in summary.items():
        lines.append(f"- {mode}: median {s['median_wall_s']:.2f} s per case, worst {s['max_wall_s']:.2f} s "
                     f"({s['cases']} cases).")
    (out / "phantom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
