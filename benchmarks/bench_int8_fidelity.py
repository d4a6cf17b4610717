"""int8 fidelity of a trained 2D run on its held-out split: against fp32 and against the truth.

For every stage of the run, the stage is exported to fp32 ONNX, calibrated once as
``kidedge export --int8`` calibrates it (percentile, the run's ``train`` cases, first and
last Conv float), and quantised to int8-cpu and int8-trt, each:

* as ``kidedge export`` writes it, and
* with every ``Conv(Concat(...))`` whose branch ranges differ more than 2x split into one
  Conv per branch (kidedge.export.concat_split; re-calibrated after the split),

int8-trt scored two ways: by the TensorRT stand-in (ONNX Runtime, graph optimisation off:
:func:`kidedge.export.fidelity.variant_session`) and by ONNX Runtime with full
optimisation (how export scored it before the gate). Every variant segments the run's
``test`` cases through :func:`kidedge.export.fidelity.fidelity_report`, which gives the
Dice against fp32 and against the truth; the int8 gate (:func:`int8_gate`) is applied to
each.

    nice -n 10 .venv/bin/python benchmarks/bench_int8_fidelity.py --run runs/pilot_v1

Writes benchmarks/results/int8_fidelity.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def _case(source: str) -> str:
    """``case_00012[10:58]`` for a case file's path (no machine paths in the results)."""
    path, _, rows = source.partition("[")
    return Path(path).parent.name + (f"[{rows}" if rows else "")


def measure_stage(run_dir: Path, st: dict, held, calib, work: Path, threads: int) -> dict:
    from onnxruntime.quantization.calibrate import load_tensors_data

    from kidedge.export.calibration import SliceCalibrationReader, calibration_inputs
    from kidedge.export.concat_split import split_concat_convs
    from kidedge.export.fidelity import fidelity_report, variant_session
    from kidedge.export.onnx_export import export_onnx, load_stage_model, ort_session, run_onnx
    from kidedge.export.quantize import float_node_rule, prepare_for_quantization, quantize_int8
    from kidedge.export.stage_inputs import slice_inputs

    model = load_stage_model(run_dir, st)
    x = slice_inputs(held[0], st, range(2))
    fp32 = work / "fp32.onnx"
    export_onnx(model, fp32, x[:1], "2d", dynamic_hw=True)
    prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
    cin, _ = calibration_inputs(calib, st, "2d", 8)
    reader = SliceCalibrationReader(cin)
    t0 = time.perf_counter()
    paths = {}
    for variant in ("int8-cpu", "int8-trt"):
        paths[(variant, "as exported")] = work / f"{variant}.onnx"
        quantize_int8(prepared, paths[(variant, "as exported")], reader, variant, "percentile",
                      float_node_rule(prepared), calibration_cache=work / "cal.json")
    ranges = {k: v.range_value for k, v in load_tensors_data(work / "cal.json").data.items()}
    splits = split_concat_convs(prepared, work / "split.onnx", ranges)
    if splits:
        for variant in ("int8-cpu", "int8-trt"):
            paths[(variant, "concat split")] = work / f"{variant}-split.onnx"
            quantize_int8(work / "split.onnx", paths[(variant, "concat split")], reader, variant, "percentile",
                          float_node_rule(work / "split.onnx"), calibration_cache=work / "cal-split.json")
        # the rewrite is exact in float: check it on the held-out inputs
        float_diff = float(abs(run_onnx(ort_session(work / "split.onnx", threads), x)
                               - run_onnx(ort_session(prepared, threads), x)).max())
    quant_s = time.perf_counter() - t0

    def runner(session):
        return lambda batch: run_onnx(session, batch)

    runners = {"fp32": runner(ort_session(fp32, threads))}
    for (variant, tag), path in paths.items():
        runners[f"{variant} | {tag} | {'TensorRT stand-in' if variant == 'int8-trt' else 'ORT'}"] = \
            runner(variant_session(path, variant, threads))
        if variant == "int8-trt":
            runners[f"{variant} | {tag} | ORT full optimisation"] = runner(ort_session(path, threads))
    t0 = time.perf_counter()
    rep = fidelity_report(runners, held, st, "2d")
    for entry in rep.values():
        for case in entry["cases"]:
            case["case"] = _case(case["case"])
    return {"splits": splits, **({"split_float_max_abs_diff": float_diff} if splits else {}),
            "quantise_s": round(quant_s, 1), "score_s": round(time.perf_counter() - t0, 1), "report": rep}


def markdown(r: dict) -> str:
    """The results as a table per stage (means over the held-out cases)."""
    lines = [
        "# int8 fidelity against fp32 and against the truth (issue 16 item 5)", "",
        f"Run `{r['run']}` (2D kidedge_default cascade, anatomical phantoms `{r['data']}`), its held-out "
        f"`test` cases cut to at most {r['max_slices']} slices around the kidneys: "
        f"{', '.join(r['held_out'])}. Calibration: {r['calibration']}. Phantom data, not real CT.", "",
        "    nice -n 10 .venv/bin/python benchmarks/bench_int8_fidelity.py --run runs/pilot_v1", "",
        f"Shared 2-core machine (a training job running): load average {r['load_average_start']} at the start, "
        f"{r['load_average_end']} at the end; {r['wall_s']:.0f} s wall.", "",
        "Rows: the variant, how its ONNX file was made (`as exported`: the export before this change; "
        "`concat split`: kidedge.export.concat_split, now part of export) and how it was run (`TensorRT "
        "stand-in`: ONNX Runtime with graph optimisation off, how export now scores int8-trt; `ORT full "
        "optimisation`: how export scored it before). Dice at network resolution, KiTS hierarchical "
        "regions, mean over cases; `loss` = fp32's Dice against the truth minus the variant's (the gate: "
        "at most 0.005).", ""]
    for name, st in r["stages"].items():
        regions = list(next(iter(st["report"].values()))["truth_loss"])
        fp32 = next(iter(st["report"].values()))["fp32_vs_truth"]
        split = ", ".join(f"{d['conv']} ({d['range_ratio']}x)" for d in st["splits"]) or "none"
        lines += [f"## {name}", "", "fp32 against the truth: "
                  + ", ".join(f"{g} {fp32[g]:.4f}" for g in regions) + f". Split convolutions (branch range "
                  f"ratio): {split}; split model vs unsplit in float: max |logit diff| "
                  f"{st.get('split_float_max_abs_diff', 0):.1e}."
                  + "".join(f" fp32 finds little {g} (Dice {fp32[g]:.3f} < 0.1): its rows say little."
                            for g in regions if fp32[g] < 0.1), "",
                  "| variant | file | run as | " + " | ".join(f"{g} vs fp32" for g in regions) + " | "
                  + " | ".join(f"{g} vs truth | {g} loss" for g in regions) + " | gate |",
                  "|---" * (4 + 3 * len(regions)) + "|"]
        for key, e in st["report"].items():
            variant, made, how = key.split(" | ")
            ok = r["gate"][key]["passed"]
            lines.append(f"| {variant} | {made} | {how} | " + " | ".join(f"{e[f'{g}_dice']:.4f}" for g in regions)
                         + " | " + " | ".join(f"{e['vs_truth'][g]:.4f} | {e['truth_loss'][g]:+.4f}" for g in regions)
                         + f" | {'pass' if ok else 'FAIL'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/pilot_v1")
    ap.add_argument("--cases", type=int, default=4, help="held-out (test) cases")
    ap.add_argument("--calib-cases", type=int, default=4)
    ap.add_argument("--max-slices", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "int8_fidelity"))
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.md_only:
        out.with_suffix(".md").write_text(markdown(json.loads(out.with_suffix(".json").read_text())))
        return 0

    import torch

    from kidedge.export.fidelity import int8_gate
    from kidedge.export.held_out import run_split_volumes
    from kidedge.export.package_files import read_run

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    run = read_run(run_dir)
    load_start = _loadavg()
    t_start = time.perf_counter()
    held = run_split_volumes(run, "test", args.cases, args.max_slices)
    calib = run_split_volumes(run, "train", args.calib_cases, max(args.max_slices, 64))
    if not held or not calib:
        raise SystemExit(f"{run_dir}: the run's dataset or split is not on this machine")
    stages = {}
    with tempfile.TemporaryDirectory(prefix="kidedge-int8-fid-") as tmp:
        for st in run["stages"]:
            work = Path(tmp) / st["name"]
            work.mkdir()
            print(f"stage {st['name']} ...", flush=True)
            stages[st["name"]] = measure_stage(run_dir, st, held, calib, work, args.threads)
    variants = sorted({k for s in stages.values() for k in s["report"]})
    gates = {v: int8_gate({n: s["report"] for n, s in stages.items()}, (v,))["variants"][v] for v in variants}
    result = {
        "run": run_dir.name, "data": Path(run["data"]).name, "held_out": [_case(v.source) for v in held],
        "calibration": "percentile, 8 slices from each of the run's first train cases", "max_slices": args.max_slices,
        "load_average_start": load_start, "load_average_end": _loadavg(),
        "wall_s": round(time.perf_counter() - t_start, 1), "stages": stages, "gate": gates,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({v: {"passed": g["passed"], "failures": g["failures"]} for v, g in gates.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
