"""Reading a .nii.gz: nibabel (the bench's read floor) against kidedge's reader with zlib,
with ISA-L (the optional ``isal`` package) and with rapidgzip's parallel inflate (the
optional ``rapidgzip`` package; both ``kidedge[fast-io]``), same file, one run.

Each variant reads the whole voxel array (native dtype, fully decompressed, CRC checked)
``--repeats`` times, interleaved (the machine is shared); medians are compared. Decompressing
is the floor of every kidedge run on a .nii.gz, so this is what a faster inflate buys.

    python benchmarks/bench_inflate.py --image SCAN.nii.gz [--repeats 5]

Writes benchmarks/results/inflate.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _nibabel(path: str) -> None:
    import nibabel as nib

    nib.load(path).dataobj.get_unscaled()


def _kidedge(path: str) -> None:
    from kidedge.io import load_scan

    scan = load_scan(path)
    scan.native  # noqa: B018 - the whole-volume read is what is timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    from kidedge.environment import describe, machine_label
    from kidedge.io.gzip_stream import inflate_engine

    variants = {"nibabel (bench floor)": (_nibabel, None), "kidedge reader, zlib": (_kidedge, "zlib"),
                "kidedge reader, isal": (_kidedge, "isal"),
                f"kidedge reader, rapidgzip ({os.cpu_count()} threads)": (_kidedge, "auto")}
    if inflate_engine(parallel=True) != "rapidgzip":
        print("isal and rapidgzip are needed, and 2+ cores: pip install 'kidedge[fast-io]'", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        names = list(variants)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order
        for name in names:
            fn, engine = variants[name]
            if engine:
                os.environ["KIDEDGE_INFLATE"] = engine
            t = time.perf_counter()
            fn(args.image)
            runs[name].append(time.perf_counter() - t)
    load_end = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor = med["nibabel (bench floor)"]
    size_mb = Path(args.image).stat().st_size / 1e6
    scan_name = f"{Path(args.image).parent.name}/{Path(args.image).name}"
    result = {"image": scan_name, "file_mb": round(size_mb, 1), "repeats": args.repeats,
              "seconds": runs, "median_s": med, "machine": describe(), "label": machine_label(),
              "loadavg_1min": [load_start, load_end]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inflate.json").write_text(json.dumps(result, indent=1))
    lines = ["# Reading a .nii.gz: nibabel vs kidedge's reader with zlib, ISA-L and rapidgzip", "",
             f"Scan `{scan_name}` ({size_mb:.0f} MB compressed), whole voxel array read "
             f"{args.repeats} times per variant, interleaved; median seconds. Machine `{machine_label()}`, "
             f"shared: load average (1 min) {load_start:.1f} at start, {load_end:.1f} at end.", "",
             "| reader | median s | x nibabel |", "| --- | ---: | ---: |"]
    for name in variants:
        lines.append(f"| {name} | {med[name]:.2f} | {med[name] / floor:.2f}x |")
    lines += ["", "Command: `python benchmarks/bench_inflate.py --image SCAN.nii.gz --repeats "
              f"{args.repeats}` (kidedge[fast-io] installed)."]
    (args.out / "inflate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
