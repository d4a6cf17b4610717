"""Scans per minute of ``kidedge batch`` against worker count, on this machine.

The same phantom scans (``kidedge phantom``: 512 x 512, 150-180 slices each) go through:
- ``kidedge infer FOLDER`` (one process, one scan at a time, the engine on every core):
  the reference without Ray;
- ``kidedge batch FOLDER --workers N`` for each N (a private local Ray of N CPUs; each
  worker one model load and one engine thread, scans read and written by separate tasks).
Each run is a fresh process with a fresh output folder (nothing is skipped as finished),
and every batch output is checked to hold the same labels as the reference's (equal
work). Reported per run: wall time and scans/min including Ray's start, the steady rate
(scans/min between the first and the last scan finished, Ray's start and the first scan's
model load excluded), and per scan the read / segment / write seconds of the summary CSV.

From the per-scan figures the report reasons what a cluster adds (nothing here measures a
cluster: this machine has 2 cores and no other node): workers = the cluster's cores, each
scan's segmenting is one worker's, reading and writing overlap it, and storage must feed
the compressed scans.

The machine is shared with other engineers and jobs: the load average is recorded at the
start and end of every run, and the numbers are this run's, on this machine, that day.

Usage:
    python benchmarks/bench_batch.py [--scans 6] [--workers 1 2] [--data DIR] [--out benchmarks/results]
Writes batch.json and batch.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np

KIDEDGE = [sys.executable, "-m", "kidedge.cli"]


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def timed_run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall time, exit code, and when each scan's output line arrived (kidedge
    infer prints its output's path as each scan is written)."""
    t0, marks, epoch0 = time.perf_counter(), [], time.time()
    load0 = loadavg()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if line.rstrip().endswith("_seg.nii.gz"):
                marks.append(time.perf_counter() - t0)
        code = proc.wait()
    # the command as run, with this machine's paths as names (results name no machine path)
    shown = ["kidedge", *cmd[3:]]
    shown = [Path(c).name if c.startswith("/") else c for c in shown]
    return {"cmd": " ".join(shown),
            "exit_code": code, "wall_s": time.perf_counter() - t0, "done_at_s": marks, "started_epoch": epoch0,
            "loadavg_start": load0, "loadavg_end": loadavg()}


def steady_rate(run: dict) -> None:
    """Scans/min between the first and the last scan finished (start-up excluded)."""
    marks = run["done_at_s"]
    run["steady_scans_per_min"] = (60.0 * (len(marks) - 1) / (marks[-1] - marks[0])
                                   if len(marks) > 1 and marks[-1] > marks[0] else None)
    run["first_scan_done_s"] = marks[0] if marks else None


def summary_rows(out: Path) -> list[dict]:
    with open(out / "batch_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def per_scan(rows: list[dict]) -> dict:
    keys = ("read_s", "segment_s", "write_s", "seconds")
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}


def cluster_estimate(segment_s: float, read_s: float, write_s: float, scan_mb: float) -> list[dict]:
    """Scans/min a CPU cluster would reach, counting every stage's seconds as CPU seconds
    of one core (reading is gzip inflate, writing deflate: CPU-bound like segmenting), so a
    core finishes one scan per read + segment + write seconds; and the storage bandwidth
    that rate needs (compressed scans in; label maps out are ~1% of that, ignored)."""
    per_scan = segment_s + read_s + write_s
    out = []
    for nodes, cores in ((1, 16), (4, 16), (16, 16)):
        per_min = nodes * cores * 60.0 / per_scan
        out.append({"nodes": nodes, "cores_per_node": cores, "cpu_s_per_scan": round(per_scan, 2),
                    "scans_per_min": round(per_min, 1),
                    "storage_mb_per_s": round(per_min * scan_mb / 60.0, 1)})
    return out


def run_infer(data: Path, out: Path, log: Path, n: int) -> dict:
    r = timed_run([*KIDEDGE, "infer", str(data), "-o", str(out)], log)
    assert r["exit_code"] == 0, log.read_text()
    r["scans_per_min"] = 60.0 * n / r["wall_s"]
    steady_rate(r)
    return r


def run_batch(data: Path, out: Path, log: Path, workers: int, reference: dict, n: int) -> dict:
    r = timed_run([*KIDEDGE, "batch", str(data), "-o", str(out), "--workers", str(workers)], log)
    rows = summary_rows(out)
    assert r["exit_code"] == 0 and all(row["status"] == "done" for row in rows), log.read_text()
    for row in rows:  # equal work: the labels kidedge infer wrote
        np.testing.assert_array_equal(labels_of(Path(row["output"])), reference[Path(row["output"]).name])
    # when each scan left the pipeline, stamped by the write stage itself (the driver
    # receives results in bursts, so its progress lines do not time scans)
    r["done_at_s"] = sorted(datetime.fromisoformat(row["finished"]).timestamp() - r["started_epoch"]
                            for row in rows)
    r["scans_per_min"] = 60.0 * n / r["wall_s"]
    steady_rate(r)
    r["per_scan_mean_s"] = per_scan(rows)
    return r


def mean_of(rounds: list[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each in the reverse order of the last")
    ap.add_argument("--data", type=Path, help="existing phantom folder (default: made with kidedge phantom)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--rewrite-report", action="store_true", help="only rewrite batch.md from batch.json")
    args = ap.parse_args()
    from kidedge.environment import cpu_description

    if args.rewrite_report:
        result = json.loads((args.out / "batch.json").read_text())
        (args.out / "batch.md").write_text(report(result, args.workers))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="kidedge_bench_batch_"))
    try:
        data = args.data
        if data is None:
            data = tmp / "data"
            subprocess.run([*KIDEDGE, "phantom", str(data), "--cases", str(args.scans), "--no-montage"],
                           check=True, stdout=subprocess.DEVNULL)
        scans = sorted(data.glob("case_*/imaging.nii.gz"))
        n = len(scans)
        shapes = [list(nib.load(str(s)).shape) for s in scans]
        scan_mb = float(np.mean([s.stat().st_size for s in scans])) / 1e6
        names = ["infer"] + [f"batch_w{w}" for w in args.workers]
        runs: dict[str, list[dict]] = {name: [] for name in names}
        reference = None
        for k in range(args.rounds):  # alternate the order so drifting load favours no run
            for name in (names if k % 2 == 0 else names[::-1]):
                out, log = tmp / f"{name}_{k}", tmp / f"{name}_{k}.log"
                if name == "infer":
                    runs[name].append(run_infer(data, out, log, n))
                    reference = reference or {p.name: labels_of(p) for p in out.glob("*_seg.nii.gz")}
                    continue
                if reference is None:  # the reverse order's first batch run needs a reference
                    runs["infer"].append(run_infer(data, tmp / "ref", tmp / "ref.log", n))
                    reference = {p.name: labels_of(p) for p in (tmp / "ref").glob("*_seg.nii.gz")}
                runs[name].append(run_batch(data, out, log, int(name.split("_w")[1]), reference, n))
                shutil.rmtree(out, ignore_errors=True)
        summary = {name: {key: mean_of(rounds, key) for key in
                          ("wall_s", "scans_per_min", "steady_scans_per_min", "first_scan_done_s")}
                   for name, rounds in runs.items()}
        for name in names[1:]:
            summary[name]["per_scan_mean_s"] = {
                key: float(np.mean([r["per_scan_mean_s"][key] for r in runs[name]]))
                for key in runs[name][0]["per_scan_mean_s"]}
        base = summary[names[1]]["per_scan_mean_s"]
        result = {
            "benchmark": "kidedge batch scans per minute against workers",
            "machine": {"cpu": cpu_description(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "shared": "yes: other engineers' jobs and a CPU training job ran meanwhile (see loadavg)",
                        "nice": os.nice(0)},
            "scans": {"count": n, "kind": "kidedge phantom (synthetic CT), KiTS layout, .nii.gz",
                      "shapes": shapes, "mean_compressed_mb": round(scan_mb, 1)},
            "rounds": args.rounds,
            "runs": runs,
            "summary": summary,
            "cluster_estimate": cluster_estimate(base["segment_s"], base["read_s"], base["write_s"], scan_mb),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "batch.md").write_text(report(result, args.workers))
        print((args.out / "batch.md").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(res: dict, workers: list[int]) -> str:
    runs, summary = res["runs"], res["summary"]
    lines = [
        "# kidedge batch: scans per minute against workers",
        "",
        f"Machine: {res['machine']['cpu'].get('model', '?')}, {res['machine']['cpu_count']} logical CPUs, no GPU; "
        "**shared** with other engineers' jobs and a CPU training job while this ran (load averages below: "
        f"above 2 the 2 cores were oversubscribed); run at nice {res['machine']['nice']}.",
        f"Scans: {res['scans']['count']} {res['scans']['kind']}, shapes {res['scans']['shapes']}, "
        f"{res['scans']['mean_compressed_mb']} MB each on average. Built-in model, int8 ONNX Runtime, gated "
        f"cascade. {res['rounds']} rounds, each in the reverse order of the one before; every batch output "
        "checked equal to kidedge infer's.",
        "",
        "| run | wall s | scans/min (incl. start) | steady scans/min | first scan done s | load avg (1 min) start -> end |",
        "|---|---|---|---|---|---|",
    ]
    for name, rounds in runs.items():
        label = ("kidedge infer (no Ray; one scan at a time, engine on all cores)" if name == "infer"
                 else f"kidedge batch --workers {name.split('_w')[1]} (1 engine thread each)")
        sm = summary[name]

        def each(key, digits=1, rounds=rounds, sm=sm):
            vals = " / ".join(_fmt(r.get(key), digits) for r in rounds)
            return f"{_fmt(sm[key], digits)} ({vals})" if len(rounds) > 1 else _fmt(sm[key], digits)

        loads = "; ".join(f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}" for r in rounds)
        lines.append(f"| {label} | {each('wall_s')} | {each('scans_per_min', 2)} | {each('steady_scans_per_min', 2)} "
                     f"| {each('first_scan_done_s')} | {loads} |")
    lines += ["", "Means, with each round's value in brackets. Steady: scans/min between the first and the last "
              "scan finished (Ray's start and the workers' model loads excluded).", "",
              "Per scan (means of the summary CSVs; stages of different scans overlap):", "",
              "| run | read s | segment s | write s |", "|---|---|---|---|"]
    for w in workers:
        p = summary[f"batch_w{w}"]["per_scan_mean_s"]
        lines.append(f"| batch, {w} worker(s) | {p['read_s']:.2f} | {p['segment_s']:.2f} | {p['write_s']:.2f} |")
    rates = {w: summary[f"batch_w{w}"]["steady_scans_per_min"] for w in workers}
    if len(workers) > 1 and all(rates.values()):
        w0, w1 = workers[0], workers[-1]
        ratio = rates[w1] / rates[w0]
        lines += ["", f"Scaling measured here: {w0} -> {w1} workers gives {ratio:.2f}x the steady rate "
                  f"({ratio / (w1 / w0):.0%} of linear) on {res['machine']['cpu_count']} shared cores."]
    inf = summary["infer"]
    last = summary[f"batch_w{workers[-1]}"]
    if inf["first_scan_done_s"] and last["first_scan_done_s"] and inf["steady_scans_per_min"] and last["steady_scans_per_min"]:
        lines += ["", "Reading these numbers:",
                  f"- Start-up: the first scan is out after {last['first_scan_done_s']:.0f} s with Ray against "
                  f"{inf['first_scan_done_s']:.0f} s without: Ray's start, each worker's start (a process that "
                  "imports the runtime and loads the model) and the first scan's whole read, all once per run, "
                  "and slow here because the machine was oversubscribed. On a handful of scans `kidedge infer` "
                  "is the faster command; `kidedge batch` is for archives and clusters.",
                  f"- Steady: {workers[-1]} workers finish {last['steady_scans_per_min']:.2f} scans/min against "
                  f"`kidedge infer`'s {inf['steady_scans_per_min']:.2f} on the same cores "
                  f"({last['steady_scans_per_min'] / inf['steady_scans_per_min']:.2f}x): whole scans in parallel "
                  "keep the cores busier than one scan's threads; on an oversubscribed machine part of it may also "
                  "be a larger share of the CPU (more runnable processes), which an idle machine would not give.",
                  "- The read stage decompresses a whole scan into Ray's object store (the streaming runtime "
                  "overlaps that with inference inside one scan instead); its seconds are the pipeline's price for "
                  "moving scans between machines."]
    lines += ["", "What a cluster would add (reasoned from the 1-worker per-scan figures, not measured): every "
              "stage's seconds counted as one core's CPU seconds (inflating the scan and deflating the label map "
              "are CPU work like segmenting; these seconds were measured under the load above, so they are an "
              "upper bound on an idle core's), one core per scan at a time, linear in cores; Ray's start "
              "(tens of seconds, once per run) and per-scan scheduling (milliseconds) vanish at archive scale. "
              "What then limits is shared storage, feeding the compressed scans:", "",
              "| nodes x cores | CPU s per scan | scans/min | storage read MB/s |", "|---|---|---|---|"]
    for c in res["cluster_estimate"]:
        lines.append(f"| {c['nodes']} x {c['cores_per_node']} | {c['cpu_s_per_scan']} | {c['scans_per_min']} | "
                     f"{c['storage_mb_per_s']} |")
    lines += ["", "GPU nodes would shorten the segment stage (not measured: no GPU here) and leave reading and "
              "writing, CPU work, as the larger share: such a cluster wants CPU workers for those stages beside "
              "each GPU worker, which the pipeline's separate stages allow."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
