"""3D cascade benchmark: paper 002's cascade in kidedge's runtime, beside the 2D default,
against the papers' way of running a 3D model (issue 14).

Two steps, each once:

    .venv/bin/python benchmarks/bench_3d.py make-package   # phantoms -> train -> export
    .venv/bin/python benchmarks/bench_3d.py run            # the rows, in one run

``make-package`` builds the small trained 3D package the benchmark runs: kidedge's
anatomical training phantoms (:func:`kidedge.phantom.training_set.write_training_set`: real
body label maps with real KiTS19 kidneys from ``../shared/data/kits19-labels``, the benchmark
scans' own cases left out), the ``msrn3d_kits19`` recipe (paper 002: a coarse localiser,
then the multi-scale residual network inside each kidney's box) trained briefly on the CPU
with the overrides in :data:`OVERRIDES` (narrower networks, coarser grids and smaller
patches than the paper's, so that training and the benchmark fit a shared 2-core machine),
and an int8 export (``kidedge export --int8``). An interrupted ``make-package`` resumes.

``run`` measures, per benchmark scan (phantoms on KiTS19 label geometry of about 60, 250 and
600 slices, :func:`kidedge.bench.scans.make_bench_scans`), each variant in a fresh process
(:func:`kidedge.bench.measure.measure`): the read floor; the 2D built-in package (int8,
gated); the 3D package in kidedge's runtime (fp32 and int8, gated); and the papers' way for
3D (:class:`kidedge.bench.papers3d.PapersWay3D`: the whole scan as float in memory, PyTorch
eager, MONAI's ``sliding_window_inference``) doing the same work as kidedge fp32 (same
windows, same boxes, same labels up to ties: ``tests/bench/test_papers3d.py``). Results:
``benchmarks/results/bench_3d.json`` and ``.md``, with issue 14's targets (peak RSS of the
3D cascade on the ~600-slice scan, int8 Dice against fp32's) judged from the same run.

``--papers-max-slices N`` runs the papers' way only on scans of up to N slices (its whole
float volume and torch eager windows cost the most CPU; the results say where it did not
run). A row whose localiser found no kidney ran stage 1 only; it is marked as such and
never counts for a target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The recipe (paper 002) and what the benchmark package changes in it, and why: the
#: paper's widths are not given (recipe: 8 and 16); its 128x128x80 patches at 1 mm and 30
#: epochs would take days of this CPU (a window of 32x96x96 through base-4 MSRN costs about
#: 1 CPU s; at nice 10 beside the team's training job a process gets 10-20% of a core), and
#: SGD (lr 0.01) had not moved the localiser's validation Dice from 0 after the few epochs
#: affordable here, so Adam stands in. The localiser looks at 8 mm pixels (its 16x64x64 patch
#: covers a whole 512 mm slice, so each of its z-rows is one window) with most training
#: patches on a kidney; the segmenter works at 2 mm in-plane on 32x64x64 patches. So the
#: package is paper 002's cascade and network at a reduced size, trained for minutes.
RECIPE = "msrn3d_kits19"
OVERRIDES = [
    "model.base=4", "train.optimizer=adam", "train.lr=0.002", "train.schedule=none",
    "localise.preprocess.spacing_mm=8.0", "localise.sampling.patch=[16, 64, 64]",
    "localise.sampling.kidney_fraction=0.8",
    "segment.preprocess.spacing_mm=2.0", "segment.sampling.patch=[32, 64, 64]",
    "localise.train.epochs=2", "localise.sampling.samples_per_epoch=32",
    "segment.train.epochs=1", "segment.sampling.samples_per_epoch=12",
]
TRAIN_CASES = 12
SEED = 3
#: Issue 14's targets: peak RSS of the 3D cascade on a ~600-slice scan (MB of 1e6 bytes, as
#: kidedge.bench.measure reports), and int8 Dice against the truth within this of fp32's.
RSS_TARGET_MB = 1500.0
RSS_TARGET_MIN_SLICES = 500
INT8_DICE_TOLERANCE = 0.005
FP32, INT8, PAPERS = "3D kidedge fp32 gated", "3D kidedge int8 gated", "3D papers' way (torch eager + MONAI)"


def work_dir(args) -> Path:
    return Path(args.work_dir or os.environ.get("KIDEDGE_BENCH_CACHE", Path.home() / ".cache" / "kidedge" / "bench"))


def labels_root(args) -> Path:
    return Path(args.labels or ROOT.parent / "shared" / "data" / "kits19-labels")


def make_package(args) -> Path:
    """Phantoms (bench cases excluded) -> a briefly trained msrn3d_kits19 -> package."""
    import torch

    from kidedge.bench.scans import FULL_TARGETS, choose_cases, label_cases
    from kidedge.export.package_writer import export_run
    from kidedge.phantom.training_set import write_training_set
    from kidedge.train.loop import train_recipe

    torch.set_num_threads(2)
    work = work_dir(args) / "bench3d"
    pkg = work / "package"
    if pkg.exists():
        print(f"{pkg} exists; remove it to rebuild")
        return pkg
    root = labels_root(args)
    cases = label_cases(root)
    bench = {c for c, _, _ in choose_cases(cases, FULL_TARGETS)}
    # the label maps the benchmark scans are built on never train the model
    pool = work / "train_labels"
    if not pool.exists():
        pool.mkdir(parents=True)
        for case_id, path, _ in cases:
            if case_id not in bench:
                (pool / case_id).mkdir()
                (pool / case_id / "segmentation.nii.gz").symlink_to(path)
    data = work / "train_set"
    # kidedge's anatomical phantoms (real body maps, real KiTS kidneys transplanted), with
    # their grouped train/val/test split
    write_training_set(data, kidneys=[pool], cases=TRAIN_CASES, workers=1, seed=SEED, montage=False)
    run = work / "run"
    done = (run / "run.json").exists() and "train_seconds" in json.loads((run / "run.json").read_text())
    if not done:
        # an interrupted make-package continues where it stopped (each stage's resume.pt)
        train_recipe(RECIPE, data, run, device="cpu", resume=run.exists(),
                     overrides=[*OVERRIDES, f"split.file={data / 'split.json'}"])
    # int8 is benchmarked, fp16 is not (no GPU here). A tiny-trained network may miss the
    # export's int8 gate (0.005 Dice): the package then still carries int8, its gap recorded
    # in the export report, and the benchmark measures the gap on its own scans. One
    # held-out and two calibration cases keep the export's sliding-window passes affordable.
    export_run(run, pkg, fp16=False, int8=True, calib_method="percentile", name="bench3d-msrn3d_kits19",
               held_out_cases=1, calib_cases=2, allow_int8_fidelity_loss=True)
    return pkg


def _load_dense(path) -> tuple:
    """Canonical labels of a written label map (and its spacing), for scoring."""
    import numpy as np

    from kidedge.io import load_scan

    scan = load_scan(path)
    return np.asarray(scan.array), scan.spacing


def _dice(pred, truth) -> dict:
    from kidedge.metrics import dice

    return {"kidney": round(float(dice(pred > 0, truth > 0)), 4),
            "tumour": round(float(dice(pred == 2, truth == 2)), 4)}


def _variants(pkg: Path) -> list[dict]:
    """What runs on every scan (name, then the measure spec without image/out)."""
    from kidedge.package import default_package_path

    threads = 2  # the machine's two cores, for every variant alike
    return [
        {"name": "read floor", "kind": "floor"},
        {"name": "2D default int8 gated", "kind": "kidedge", "model": str(default_package_path()),
         "backend": "onnxruntime", "precision": "int8", "gate": True, "threads": threads},
        {"name": FP32, "kind": "kidedge", "model": str(pkg), "backend": "onnxruntime",
         "precision": "fp32", "gate": True, "threads": threads},
        {"name": INT8, "kind": "kidedge", "model": str(pkg), "backend": "onnxruntime",
         "precision": "int8", "gate": True, "threads": threads},
        {"name": PAPERS, "kind": "papers3d", "model": str(pkg), "threads": threads},
    ]


def _package_facts(pkg: Path, built_here: bool) -> dict:
    from kidedge.package import ModelPackage

    p = ModelPackage.load(pkg)
    run_metrics = (p.manifest.provenance.get("training_metrics") or {})
    facts = {"name": p.name, "recipe": p.manifest.provenance.get("recipe"),
             "overrides": OVERRIDES if built_here else ["(a package given with --package)"],
             "held_out_test": (run_metrics.get("test") or {}).get("mean"), "stages": {}}
    for st in p.stages:
        facts["stages"][st.name] = {
            "window": dict(st.extra.get("window", {})), "arch": st.arch, "model_kwargs": dict(st.model_kwargs),
            "fidelity": {k: {m: v[m] for m in ("kidney_dice", "masses_dice", "tumour_dice", "pixel_agreement")}
                         for k, v in (st.fidelity or {}).items()},
            "int8_cpu_float_fallback": sorted(p.manifest.export_report["quantisation"][st.name]["int8-cpu"]
                                              .get("ort_cpu_float_fallback", {}).get("layers", {}))}
    return facts


def run(args) -> int:
    """Measure every variant on every benchmark scan; write the JSON and Markdown results."""

    from kidedge.bench.measure import measure
    from kidedge.bench.scans import FULL_TARGETS, make_bench_scans

    work = work_dir(args)
    pkg = Path(args.package) if args.package else work / "bench3d" / "package"
    if not pkg.exists():
        raise SystemExit(f"{pkg}: missing; run 'make-package' first")
    targets = [int(t) for t in args.targets.split(",")] if args.targets else list(FULL_TARGETS)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    if args.synthetic_rows:  # small synthetic scans: a dry run of this script
        scans = make_bench_scans(work / "scans", targets=targets, synthetic_shape=(args.synthetic_rows,) * 2)
    else:
        scans = make_bench_scans(work / "scans", labels_root=labels_root(args), targets=targets)
    outdir = work / "bench3d" / "outputs"
    outdir.mkdir(parents=True, exist_ok=True)
    rows, done = [], []
    for scan in scans:
        truth, _ = _load_dense(scan.truth)
        labels = {}
        for v in _variants(pkg):
            if v["kind"] == "papers3d" and args.papers_max_slices and scan.slices > args.papers_max_slices:
                rows.append({"scan": scan.name, "slices": scan.slices, "variant": v["name"], "ok": False,
                             "error": f"not run (--papers-max-slices {args.papers_max_slices}: CPU time)"})
                continue
            out = outdir / f"{scan.name}-{_slug(v['name'])}.nii.gz"
            spec = {k: val for k, val in v.items() if k != "name"} | {"image": str(scan.image), "out": str(out)}
            print(f"{scan.name}: {v['name']} ...", flush=True)
            res = measure(spec, timeout_s=args.timeout)
            row = {"scan": scan.name, "slices": scan.slices, "variant": v["name"], "ok": res.get("ok", False)}
            if not row["ok"]:
                row["error"] = _no_paths(str(res.get("error")), work)
            else:
                row.update({k: round(res[k], 3) for k in ("scan_s", "scan_cpu_s", "setup_s", "scan_peak_rss_mb",
                                                           "peak_rss_mb") if res.get(k) is not None})
                row["stages_s"] = {k: round(x, 3) for k, x in (res.get("stages") or {}).items()}
                if res.get("gating"):
                    row["gating"] = res["gating"]
                    g = res["gating"]
                    if ("windows_stage2" in g and g.get("enabled") and not g["windows_stage2"]) or \
                            (v["kind"] == "papers3d" and not g.get("regions")):
                        # a cascade whose localiser found nothing did stage 1 only: not a 3D
                        # cascade's cost, so its row must not pass for one
                        row["note"] = "stage 1 found no kidney: stage 2 did not run"
                if v["kind"] != "floor" and out.exists():
                    labels[v["name"]] = _load_dense(out)[0]
                    row["dice_vs_truth"] = _dice(labels[v["name"]], truth)
                    # an empty label map agrees with any other empty one: say how much was labelled
                    row["labelled_voxels"] = {"kidney": int((labels[v["name"]] > 0).sum()),
                                              "tumour": int((labels[v["name"]] == 2).sum())}
            rows.append(row)
            print(f"   {json.dumps({k: row.get(k) for k in ('scan_s', 'scan_peak_rss_mb', 'dice_vs_truth', 'error')})}",
                  flush=True)
        fp32, int8, papers = (labels.get(n) for n in (FP32, INT8, PAPERS))
        extra = {"scan": scan.name, "slices": scan.slices, "variant": "(agreement)"}
        if fp32 is not None and int8 is not None:
            extra["int8_vs_fp32_dice"] = _dice(int8, fp32)
        if fp32 is not None and papers is not None:
            extra["fp32_vs_papers_dice"] = _dice(fp32, papers)
            extra["fp32_vs_papers_voxel_agreement"] = round(float((fp32 == papers).mean()), 6)
        rows.append(extra)
        for f in outdir.glob(f"{scan.name}-*"):
            f.unlink()
        done.append(scan)
        # written after every scan: a run cut short still leaves what it measured, marked
        _write_results(args, pkg, rows, done, scans, load_start)
    results = _write_results(args, pkg, rows, done, scans, load_start)
    print(_markdown(results))
    return 0


def _write_results(args, pkg: Path, rows: list[dict], done: list, scans: list, load_start: list) -> dict:
    """bench_3d.json and .md from the rows so far (``complete`` says whether every scan ran)."""
    import datetime
    import platform

    from kidedge.environment import cpu_description
    from kidedge.io.writer import write_json_atomic, write_text_atomic

    load_end = Path("/proc/loadavg").read_text().split()[:3]
    results = {
        "benchmark": "bench_3d", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": len(done) == len(scans), "scans_not_run": [s.name for s in scans if s not in done],
        "machine": {"cpu": cpu_description(), "platform": platform.platform(), "gpu": None,
                    "note": "shared machine (other engineers' jobs and a training run); no GPU was lent"},
        "load_average": {"start": load_start, "end": load_end},
        "package": _package_facts(pkg, not args.package), "scans": [s.to_dict() for s in done], "rows": rows,
    }
    results["summary"] = _summary(rows, done)
    results["targets"] = _targets(rows, scans)
    out = Path(args.out or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    for s in results["scans"]:  # no machine paths in committed results
        s["image"], s["truth"] = Path(s["image"]).name, Path(s["truth"]).name
    write_json_atomic(out / "bench_3d.json", results)
    write_text_atomic(out / "bench_3d.md", _markdown(results))
    return results


def _summary(rows: list[dict], scans) -> dict:
    def get(scan, variant, key):
        r = next((r for r in rows if r["scan"] == scan and r["variant"] == variant and r.get("ok")), None)
        return None if r is None else r.get(key)

    out = {}
    for s in scans:
        k32, k8 = get(s.name, FP32, "scan_s"), get(s.name, INT8, "scan_s")
        pap, d2, fl = (get(s.name, PAPERS, "scan_s"),
                       get(s.name, "2D default int8 gated", "scan_s"), get(s.name, "read floor", "scan_s"))
        ratio = lambda a, b: round(a / b, 2) if a and b else None  # noqa: E731
        out[s.name] = {"papers_over_kidedge_fp32": ratio(pap, k32), "papers_over_kidedge_int8": ratio(pap, k8),
                       "kidedge3d_int8_over_2d_default": ratio(k8, d2), "kidedge3d_int8_over_floor": ratio(k8, fl),
                       "cpu_papers_over_kidedge_fp32": ratio(get(s.name, PAPERS, "scan_cpu_s"),
                                                             get(s.name, FP32, "scan_cpu_s")),
                       "peak_rss_mb_3d_int8": get(s.name, INT8, "scan_peak_rss_mb"),
                       "peak_rss_mb_3d_fp32": get(s.name, FP32, "scan_peak_rss_mb"),
                       "peak_rss_mb_papers": get(s.name, PAPERS, "scan_peak_rss_mb")}
    return out


def _targets(rows: list[dict], scans) -> dict:
    """Issue 14's two targets, from this run's rows: met, not met, or not measured (and why)."""
    def row(scan, variant):
        return next((r for r in rows if r["scan"] == scan and r["variant"] == variant and r.get("ok")), None)

    out = {}
    long_scans = [s for s in scans if s.slices >= RSS_TARGET_MIN_SLICES]
    rss = {}
    for s in long_scans:
        for v in (FP32, INT8):
            r = row(s.name, v)
            if r is not None:
                rss[f"{s.name} {v}"] = {"peak_rss_mb": r.get("scan_peak_rss_mb"), "stage2_ran": "note" not in r}
    ran = [x for x in rss.values() if x["stage2_ran"]]
    out["peak_rss_3d"] = {
        "target": f"<= {RSS_TARGET_MB:.0f} MB on a scan of >= {RSS_TARGET_MIN_SLICES} slices", "rows": rss,
        "met": (all(x["peak_rss_mb"] <= RSS_TARGET_MB for x in ran) if ran else None),
        "why_not_measured": None if ran else ("no scan that long" if not long_scans else
                                              "the 3D rows on it did not run" if not rss else
                                              "no 3D row on it ran stage 2")}
    diffs = {}
    for s in scans:
        a, b = row(s.name, FP32), row(s.name, INT8)
        if a and b and "note" not in a and "note" not in b and a.get("dice_vs_truth") and b.get("dice_vs_truth") \
                and (a.get("labelled_voxels") or {}).get("kidney"):
            diffs[s.name] = {k: round(b["dice_vs_truth"][k] - a["dice_vs_truth"][k], 4) for k in a["dice_vs_truth"]}
    out["int8_dice_vs_fp32"] = {
        "target": f"int8 Dice against the phantom's truth within {INT8_DICE_TOLERANCE} of fp32's (kidney, tumour)",
        "int8_minus_fp32": diffs,
        "met": (all(abs(d) <= INT8_DICE_TOLERANCE for x in diffs.values() for d in x.values()) if diffs else None),
        "why_not_measured": None if diffs else "fp32 labelled no kidney voxel on any scan (or the rows did not run)"}
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _no_paths(text: str, work: Path) -> str:
    """An error line for the committed results: the bench cache's and home's paths cut."""
    for base in (str(work), str(Path.home())):
        text = text.replace(base + os.sep, "").replace(base, "~")
    return text


def _markdown(r: dict) -> str:
    lines = ["# 3D cascade benchmark (paper 002's msrn3d cascade, issue 14)", "",
             f"Machine: {r['machine']['cpu']['model']}, {r['machine']['cpu']['usable_cores']} usable cores, no GPU; "
             f"{r['machine']['note']}. Load average (1, 5, 15 min) at start {' '.join(r['load_average']['start'])}, "
             f"at end {' '.join(r['load_average']['end'])}: absolute times stretch with the load; compare ratios "
             "within a scan. Each variant ran once, in a fresh process; peak RSS is the scan's own high-water mark."
             + ("" if r.get("complete", True) else f" **Run cut short: scans not run: {', '.join(r['scans_not_run'])}.**"),
             "", f"Package: `{r['package']['name']}` (recipe `{r['package']['recipe']}` with "
             f"{', '.join('`' + o + '`' for o in r['package']['overrides'])}): trained for minutes on this CPU, "
             "on anatomical phantoms, so its labels are far from the paper's; the rows measure the runtime's cost "
             f"and the agreement of its variants, not paper 002's accuracy. Held-out test phantoms (whole cascade): "
             f"{json.dumps(r['package']['held_out_test'])}.", "",
             "| scan | variant | s/scan | CPU s | peak RSS MB | kidney Dice | tumour Dice | voxels labelled kidney / "
             "tumour | stage-2 windows |", "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["variant"] == "(agreement)":
            continue
        if not row.get("ok"):
            lines.append(f"| {row['scan']} | {row['variant']} | failed: {row.get('error')} | | | | | | |")
            continue
        d = row.get("dice_vs_truth", {})
        g = row.get("gating") or {}
        windows = g.get("windows_stage2", "")
        if row.get("note"):
            windows = f"{windows} ({row['note']})"
        lines.append(f"| {row['scan']} | {row['variant']} | {row.get('scan_s', '')} | {row.get('scan_cpu_s', '')} | "
                     f"{row.get('scan_peak_rss_mb', '')} | {d.get('kidney', '')} | {d.get('tumour', '')} | "
                     + (f"{lv['kidney']} / {lv['tumour']}" if (lv := row.get("labelled_voxels")) else "")
                     + f" | {windows} |")
    lines += ["", "| scan | papers' way / kidedge fp32 (same work) | same, CPU s | papers' way / kidedge int8 | "
              "kidedge 3D int8 / 2D default | kidedge 3D int8 / read floor | peak RSS MB 3D int8 / fp32 / papers' way |",
              "|---|---|---|---|---|---|---|"]
    for name, s in r["summary"].items():
        lines.append(f"| {name} | {s['papers_over_kidedge_fp32']} | {s['cpu_papers_over_kidedge_fp32']} | "
                     f"{s['papers_over_kidedge_int8']} | "
                     f"{s['kidedge3d_int8_over_2d_default']} | {s['kidedge3d_int8_over_floor']} | "
                     f"{s['peak_rss_mb_3d_int8']} / {s['peak_rss_mb_3d_fp32']} / {s['peak_rss_mb_papers']} |")
    lines += ["", "Agreement (Dice of kidney, tumour between label maps of the same scan):", ""]
    for row in r["rows"]:
        if row["variant"] == "(agreement)":
            lines.append(f"- {row['scan']}: int8 vs fp32 {row.get('int8_vs_fp32_dice')}; kidedge fp32 vs the "
                         f"papers' way {row.get('fp32_vs_papers_dice')} (voxels equal: "
                         f"{row.get('fp32_vs_papers_voxel_agreement')})")
    met = {True: "met", False: "**not met**", None: "not measured"}
    t = r["targets"]
    rss, q = t["peak_rss_3d"], t["int8_dice_vs_fp32"]
    lines += ["", "Targets (issue 14):", "",
              f"- peak RSS {rss['target']}: {met[rss['met']]}"
              + (f" ({rss['why_not_measured']})" if rss["why_not_measured"] else "")
              + "".join(f"; {k}: {v['peak_rss_mb']} MB" + ("" if v["stage2_ran"] else " (stage 2 did not run)")
                        for k, v in rss["rows"].items()),
              f"- {q['target']}: {met[q['met']]}"
              + (f" ({q['why_not_measured']})" if q.get("why_not_measured") else "")
              + f"; int8 - fp32: {json.dumps(q['int8_minus_fp32'])} (a tiny-trained "
              "package: how int8 moves its labels, not what it does to a trained one)"]
    lines += ["", "Export fidelity of the package (int8/fp16 against fp32, held-out test phantoms, through the "
              "runtime's sliding window):", ""]
    for name, st in r["package"]["stages"].items():
        lines.append(f"- {name}: {json.dumps(st['fidelity'])}; ONNX Runtime CPU runs in float: "
                     f"{st['int8_cpu_float_fallback']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("make-package", "run"))
    ap.add_argument("--labels", help="KiTS19 label maps (default ../shared/data/kits19-labels)")
    ap.add_argument("--work-dir", help="cache for scans, package and outputs (default ~/.cache/kidedge/bench)")
    ap.add_argument("--targets", help="slice counts, comma-separated (default 60,250,600)")
    ap.add_argument("--out", help="results folder (default benchmarks/results)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per variant run")
    ap.add_argument("--package", help="the 3D package to run (default: the one make-package built)")
    ap.add_argument("--synthetic-rows", type=int, help="synthetic scans of this many rows and columns (dry run)")
    ap.add_argument("--papers-max-slices", type=int, help="run the papers' way only on scans up to this long")
    args = ap.parse_args()
    if args.step == "make-package":
        print(make_package(args))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
