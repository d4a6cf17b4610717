"""Peak memory of reading a 512 x 512 x 600 int16 CT NIfTI with kidedge.io, both layouts.

Each measurement runs in a fresh Python process: its peak RSS during the work (the
kernel's VmHWM, reset just before) minus its RSS right after importing numpy, nibabel and
kidedge.io (an idle interpreter ready to read). The raw array is 600 * 512 * 512 * 2 bytes
= 300 MiB; the target for whole-volume reads is <= 1.3x that, slab streaming far below.

Layouts (NIfTI stores the FIRST array axis fastest):
- "kits19": shape (600, 512, 512), axis codes (I, P, L), as KiTS19 ships its files: the
  slice axis varies fastest, so no slice is contiguous and the volume is read whole.
- "slice-last": shape (512, 512, 600), RAS (x, y, z) as dcm2niix writes: each slice is one
  contiguous block, so slabs can be streamed.
- "kits19-float32": the KiTS19 layout saved as float32 (as many tools write CT): read
  whole and held as int16, since every value is a whole number of HU.

Every scenario also checksums every voxel it read, and the checksums must agree (all
scenarios read the same volume), so no scenario can skip work.

Usage: python benchmarks/bench_io_memory.py [--slices 600] [--out benchmarks/results]
Writes io_memory.json and io_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = {
    # name: (file, description)
    "kits19-gz/load_scan-whole": ("kits19.nii.gz", "load_scan(path).array, KiTS19 layout .nii.gz"),
    "kits19-gz/SlabReader": ("kits19.nii.gz", "SlabReader(scan, 16, context=2) over a KiTS19-layout .nii.gz (strategy 'whole')"),
    "slicelast-gz/load_scan-whole": ("slicelast.nii.gz", "load_scan(path).array, slice-last .nii.gz"),
    "slicelast-gz/SlabReader-ascending": ("slicelast.nii.gz", "SlabReader(scan, 16, context=2), canonical order (strategy 'gzip-indexed')"),
    "slicelast-gz/SlabReader-file-order": ("slicelast.nii.gz", "SlabReader(scan, 16, context=2, order='file') (strategy 'gzip-stream')"),
    "slicelast-nii/SlabReader-ascending": ("slicelast.nii", "SlabReader(scan, 16, context=2) over an uncompressed .nii (strategy 'pread')"),
    "slicelast-nii/load_scan-whole": ("slicelast.nii", "load_scan(path).array, uncompressed .nii"),
    "kits19-float32-gz/load_scan-whole": ("kits19_float32.nii.gz", "load_scan(path).array of the same volume saved as float32 (held as int16: lossless)"),
    "kits19-gz/nibabel-asanyarray": ("kits19.nii.gz", "reference: np.asanyarray(nib.load(path).dataobj) (nibabel's own gzip read)"),
    "kits19-gz/nibabel-get_fdata": ("kits19.nii.gz", "reference: nib.load(path).get_fdata() (float64, what many pipelines do)"),
}


def _child(scenario: str, path: str) -> None:
    import nibabel as nib
    import numpy as np

    from kidedge.io import SlabReader, load_scan

    # ru_maxrss survives execve (it would report the parent's peak), so the kernel's
    # high-water mark is reset instead (clear_refs 5, Linux >= 4.0) and read from
    # /proc/self/status.
    def status_mib(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no {key} in /proc/self/status")

    Path("/proc/self/clear_refs").write_text("5")
    baseline = status_mib("VmRSS")

    def rss_mib() -> float:
        return status_mib("VmHWM")

    t0 = time.perf_counter()
    checksum = 0
    strategy = None
    action = scenario.split("/")[1]
    if action == "load_scan-whole":
        scan = load_scan(path)
        a = scan.array
        checksum = int(a.sum(dtype=np.int64))
        strategy = "whole"
    elif action.startswith("SlabReader"):
        order = "file" if action.endswith("file-order") else "ascending"
        reader = SlabReader(load_scan(path), slab_size=16, context=2, order=order)
        strategy = reader.strategy
        for slab in reader:
            checksum += int(slab.core.sum(dtype=np.int64))
    elif action == "nibabel-asanyarray":
        checksum = int(np.asanyarray(nib.load(path).dataobj).sum(dtype=np.int64))
    elif action == "nibabel-get_fdata":
        checksum = int(nib.load(path).get_fdata().sum())
    seconds = time.perf_counter() - t0
    peak = rss_mib()
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "extra_mib": peak - baseline,
                      "seconds": seconds, "checksum": checksum, "strategy": strategy}))


def _machine() -> dict:
    from kidedge.environment import cpu_description

    cpu = cpu_description()["model"]
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    import nibabel
    import numpy

    return {"cpu": cpu, "logical_cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)),
            "memory_gib": mem_gib, "python": platform.python_version(), "numpy": numpy.__version__,
            "nibabel": nibabel.__version__, "platform": platform.platform()}


def _make_files(folder: Path, n_slices: int) -> dict:
    import nibabel as nib
    import numpy as np

    # a CT-like volume: air, an elliptic body of soft tissue with noise, a bright spine;
    # compressible like a real CT (noise keeps zlib honest)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) / 190.0) ** 2 + ((xx - 256) / 240.0) ** 2 <= 1.0
    spine = ((yy - 380) / 25.0) ** 2 + ((xx - 256) / 25.0) ** 2 <= 1.0
    base = np.where(body, 40, -1000).astype(np.int16)
    base[spine] = 700
    kits = np.empty((n_slices, 512, 512), dtype=np.int16)  # (slice, row, col) canonical
    for k in range(n_slices):
        kits[k] = base + rng.integers(-20, 21, size=(512, 512), dtype=np.int16) * body
    s = 2.0
    kits_affine = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-s, 0, 0, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(kits, kits_affine), str(folder / "kits19.nii.gz"))
    as_float = nib.Nifti1Image(kits, kits_affine)
    as_float.set_data_dtype(np.float32)  # converted while writing: no float copy here
    nib.save(as_float, str(folder / "kits19_float32.nii.gz"))
    del as_float
    # the same anatomy as a RAS (x, y, z) file: x = reversed column, y = reversed row,
    # z = reversed slice
    ras = np.ascontiguousarray(kits.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    del kits
    ras = np.asfortranarray(ras)
    ras_affine = np.diag([0.8, 0.8, s, 1.0])
    img = nib.Nifti1Image(ras, ras_affine)
    nib.save(img, str(folder / "slicelast.nii.gz"))
    nib.save(img, str(folder / "slicelast.nii"))
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0

    raw_mib = args.slices * 512 * 512 * 2 / 2**20
    results = []
    with tempfile.TemporaryDirectory(prefix="kidedge-io-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sizes = _make_files(tmp, args.slices)
        print(f"made test files in {time.perf_counter() - t0:.1f} s: {sizes}", flush=True)
        for name, (fname, desc) in SCENARIOS.items():
            proc = subprocess.run([sys.executable, __file__, "--child", name, str(tmp / fname)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(scenario=name, description=desc, ratio_to_raw=r["extra_mib"] / raw_mib)
            results.append(r)
            print(f"{name:40s} +{r['extra_mib']:8.1f} MiB  {r['ratio_to_raw']:.3f}x raw  {r['seconds']:6.2f} s  {r['strategy']}", flush=True)

    checksums = {r["checksum"] for r in results if "get_fdata" not in r["scenario"]}
    if len(checksums) != 1:
        raise SystemExit(f"scenarios read different data: {checksums}")
    whole = [r for r in results if r["scenario"].endswith("load_scan-whole") or r["strategy"] == "whole"]
    target = 1.3
    summary = {
        "raw_array_mib": raw_mib,
        "target_whole_volume_ratio": target,
        "whole_volume_max_ratio": max(r["ratio_to_raw"] for r in whole),
        "whole_volume_within_target": all(r["ratio_to_raw"] <= target for r in whole),
        "streaming_max_mib": max(r["extra_mib"] for r in results if r["strategy"] not in (None, "whole")),
    }
    report = {"benchmark": "io_memory", "shape_canonical": [args.slices, 512, 512], "dtype": "int16",
              "file_bytes": sizes, "machine": _machine(), "summary": summary, "results": results,
              "method": "fresh subprocess per scenario; peak RSS reset (/proc/self/clear_refs 5) after "
                        "importing numpy, nibabel and kidedge.io; extra = VmHWM after the read minus "
                        "VmRSS before it"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "io_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        "# kidedge.io: peak memory of reading a CT volume",
        "",
        f"Volume: {args.slices} x 512 x 512 int16 = {raw_mib:.0f} MiB raw. Machine: {m['cpu']}, "
        f"{m['logical_cores']} logical cores ({m['affinity_cores']} usable), {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}, numpy {m['numpy']}, nibabel {m['nibabel']}.",
        "",
        "Each row is a fresh process; *extra* is its peak RSS above an idle interpreter with numpy, "
        "nibabel and kidedge.io imported. Target for whole-volume reads: <= 1.3x raw.",
        "",
        "| scenario | strategy | extra peak RSS (MiB) | x raw | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['scenario']} | {r['strategy'] or '-'} | {r['extra_mib']:.1f} | "
                     f"{r['ratio_to_raw']:.3f} | {r['seconds']:.2f} |")
    lines += [
        "",
        f"Whole-volume reads: at most {summary['whole_volume_max_ratio']:.3f}x raw "
        f"({'within' if summary['whole_volume_within_target'] else 'NOT within'} the 1.3x target). "
        f"Slab streaming: at most {summary['streaming_max_mib']:.1f} MiB.",
        "",
        "KiTS19's own layout (slice axis fastest in the file) cannot be streamed: every slab "
        "needs bytes from the whole file, so the volume is decompressed once, in int16.",
        "Times are single runs on a shared machine (noisy); the memory figures are the point.",
        "",
        "Scenario details:",
        "",
    ]
    lines += [f"- `{r['scenario']}`: {r['description']}" for r in results]
    (args.out / "io_memory.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'io_memory.json'} and io_memory.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
