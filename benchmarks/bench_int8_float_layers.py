"""Which int8 layers cost the segmenter its agreement with fp32, and what keeping them float buys.

The built-in segmenter's int8 labels agree with fp32's on kidney (Dice ~0.99) but less on
tumour + cyst (~0.94-0.95), and on the bench scans that moves its masses Dice against the
truth by up to 0.01 either way. This measures whether mixed precision closes it: the
segment stage of a package, quantised as export does (the package's calibration cases,
concat split, percentile), with its most sensitive convolutions kept float. Layers are ranked
on calibration inputs by the signal-to-quantisation-noise ratio of their output's Q/DQ pair
(:func:`kidedge.export.int8_3d.sensitive_convs`), and scored on held-out phantoms at network
resolution against fp32 (:func:`kidedge.export.fidelity.fidelity_report`). The rows quantised
here get no bias correction (:mod:`kidedge.export.bias_correction`); the "as shipped" row is
the package's own file, with whatever its export applied (the committed results were measured
before the built-in package had the correction).

ONNX Runtime's CPU optimiser (``WeightBiasQuantization``) quantises a float Conv whose input
and output are quantised, so a layer left float in the file may run int8. Rows are run two
ways: as the runtime runs a package (full optimisation), and with that optimiser disabled,
which is what honouring the float layers on the CPU would take. Speed: the segmenter alone on
one batch of 8 slices (192 x 256, a typical kidney box at 1.25 mm), median of alternating
runs, 2 threads.

    nice -n 5 .venv/bin/python benchmarks/bench_int8_float_layers.py --package kidedge/models/default

Needs the package's training data folder (for the built-in model, ``data/anatomy_v2`` from
``kidedge phantom data/anatomy_v2 --training-set --cases 400 --seed 0``). Writes
benchmarks/results/int8_float_layers.json and .md. Phantom data, not real CT.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FUSING_OPTIMISER = "WeightBiasQuantization"
BATCH_SHAPE = (8, 1, 192, 256)


class _Runner:
    """Logits of an ONNX file on ONNX Runtime's CPU provider, optionally without an optimiser."""

    def __init__(self, path: Path, disabled=(), threads: int = 2):
        from kidedge.export.onnx_export import ort_session

        self.session = ort_session(path, threads, disabled_optimizers=list(disabled))
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _speed(runners: dict, repeats: int) -> dict:
    x = np.random.default_rng(0).random(BATCH_SHAPE, dtype=np.float32)
    times = {k: [] for k in runners}
    for r in runners.values():
        r(x)
    for _ in range(repeats):
        for k, r in runners.items():  # alternating: host noise falls on all alike
            t0 = time.perf_counter()
            r(x)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="kidedge/models/default")
    ap.add_argument("--stage", default="segment")
    ap.add_argument("--part", default="val", help="part of the package's split to score on")
    ap.add_argument("--every", type=int, default=4, help="score on every n-th case of that part")
    ap.add_argument("--kept", default="4,8,16", help="numbers of most sensitive convs kept float")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "int8_float_layers"))
    args = ap.parse_args()

    from kidedge.export.calibration import SliceCalibrationReader, calibration_inputs
    from kidedge.export.concat_split import split_for_int8
    from kidedge.export.fidelity import fidelity_report
    from kidedge.export.from_package import run_from_package
    from kidedge.export.held_out import run_split_volumes
    from kidedge.export.int8_3d import ort_cpu_int8_layers, sensitive_convs
    from kidedge.export.quantize import float_node_rule, prepare_for_quantization, quantize_int8
    from kidedge.package import ModelPackage

    package = ModelPackage.load(args.package)
    run, root = run_from_package(Path(args.package))
    stage = next(s for s in run["stages"] if s["name"] == args.stage)
    q = package.manifest.export_report["quantisation"][args.stage]
    method = q["calibration"]["method"]
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    calib = run_split_volumes(run, "train", q["calibration"]["cases"], 64)
    held = run_split_volumes({**run, "split": {args.part: run["split"][args.part][:: args.every]}}, args.part, 1000, 48)
    if not calib or not held:
        raise SystemExit(f"the package's data folder {run['data']!r} is not here (see the module docstring)")
    inputs, _ = calibration_inputs(calib, stage, "2d", q["calibration"]["inputs"] // len(calib), 16)
    reader = SliceCalibrationReader(inputs)
    fp32 = package.file_path(args.stage, "fp32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kidedge-floatlayers-") as work:
        work = Path(work)
        prepared = prepare_for_quantization(fp32, work / "prepared.onnx")
        prepared, _, cache = split_for_int8(prepared, reader, method, work)
        rule = float_node_rule(prepared)
        first = work / "rule.onnx"
        quantize_int8(prepared, first, reader, "int8-cpu", method, rule, calibration_cache=cache)
        ranking = [(n, db) for n, db in sensitive_convs(prepared, first, inputs[::8]) if n not in rule]
        names = [n for n, _ in ranking]
        configs = [("as shipped", package.file_path(args.stage, "int8-cpu"), q["int8-cpu"]["float_nodes"])]
        configs.append(("first and last float (export's rule, re-quantised here)", first, rule))
        for k in (int(v) for v in args.kept.split(",") if v):
            path = work / f"k{k}.onnx"
            quantize_int8(prepared, path, reader, "int8-cpu", method, rule + names[:k], calibration_cache=cache)
            configs.append((f"+ {k} most sensitive convs float", path, rule + names[:k]))
        decoder = [n for n in names if n.startswith("/decoder")]
        path = work / "decoder.onnx"
        quantize_int8(prepared, path, reader, "int8-cpu", method, rule + decoder, calibration_cache=cache)
        configs.append((f"+ every decoder conv float ({len(decoder)})", path, rule + decoder))

        reference = _Runner(fp32)
        speed_runners = {"fp32": reference}
        for label, path, kept in configs:
            for how, disabled in (("full optimisation", ()), (f"{FUSING_OPTIMISER} off", (FUSING_OPTIMISER,))):
                if label == "as shipped" and disabled:
                    continue
                runner = _Runner(path, disabled)
                rep = fidelity_report({"fp32": reference, "int8": runner}, held, stage, "2d")["int8"]
                int8_anyway = ort_cpu_int8_layers(path, kept) if not disabled else []
                row = {"config": label, "run_as": how, "float_convs_in_file": len(kept),
                       "float_convs_run": len(kept) - len(int8_anyway),
                       "kidney_vs_fp32": rep["kidney_dice"], "masses_vs_fp32": rep["masses_dice"],
                       "truth_loss": rep["truth_loss"], "key": f"{label} / {how}"}
                rows.append(row)
                speed_runners[row["key"]] = runner
                print(json.dumps({k: v for k, v in row.items() if k != "key"}), flush=True)
        seconds = _speed(speed_runners, args.repeats)
    for row in rows:
        row["seconds_per_batch"] = seconds[row.pop("key")]
    result = {"package": package.name, "stage": args.stage, "calibration": method,
              "held_out": [v.source for v in held], "fp32_seconds_per_batch": seconds["fp32"],
              "batch_shape": list(BATCH_SHAPE), "ranking_sqnr_db": {n: round(db, 2) for n, db in ranking[:16]},
              "rows": rows, "started": started.isoformat(timespec="seconds"),
              "wall_s": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(result, args))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


def _markdown(r: dict, args) -> str:
    from kidedge.environment import machine_label

    held = ", ".join(s.split("/")[-2] + s.split("imaging.nii.gz")[-1] for s in r["held_out"])
    lines = [
        "# int8 segmenter: layers kept float against agreement with fp32",
        "",
        f"Package `{r['package']}`, stage `{r['stage']}`, calibration `{r['calibration']}` on the package's "
        f"training cases (as export calibrates); measured {r['started']} on {machine_label()} in {r['wall_s']} s. "
        "Phantom data, not real CT.",
        "",
        f"    nice -n 5 .venv/bin/python benchmarks/bench_int8_float_layers.py --package {args.package}",
        "",
        f"Scored on every {args.every}th case of the split's `{args.part}` part, cut to 48 slices around the "
        f"kidneys, at network resolution ({held}). Dice of int8's labels against fp32's (KiTS hierarchical "
        "regions); truth loss: fp32's Dice against the truth minus int8's. Seconds: the segmenter alone, "
        f"one batch {tuple(r['batch_shape'])}, median of {args.repeats} alternating runs, 2 threads "
        f"(fp32: {r['fp32_seconds_per_batch']:.4f} s). 'float convs run': the ones ONNX Runtime leaves float "
        "(its WeightBiasQuantization optimiser runs a float Conv with quantised input and output as int8).",
        "",
        "| layers kept float | run as | float convs in file / run | kidney vs fp32 | masses vs fp32 | truth loss kidney / masses | s per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        tl = row["truth_loss"]
        lines.append(f"| {row['config']} | {row['run_as']} | {row['float_convs_in_file']} / {row['float_convs_run']} | "
                     f"{row['kidney_vs_fp32']:.4f} | {row['masses_vs_fp32']:.4f} | {tl['kidney']:+.4f} / "
                     f"{tl['masses']:+.4f} | {row['seconds_per_batch']:.4f} |")
    lines += ["", "Most sensitive convolutions (SQNR of their output's Q/DQ pair on calibration inputs, dB): "
              + ", ".join(f"`{n}` {db}" for n, db in r["ranking_sqnr_db"].items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
