"""int8 calibration settings compared end to end (results: benchmarks/results/calibration_choice.md).

Each setting is a full export of the same training run followed by ``kidedge evaluate
--package`` of int8 and fp32 on a held-out part, through the runtime (gating and
post-processing): the mean per-case Dice against the truth, int8 minus fp32, is what an
int8 user loses. Choose on the run's validation part (``--split`` with that part as
``test``), never on the part the model is reported on.

    nice -n 10 .venv/bin/python benchmarks/bench_calibration.py --run runs/v4 \\
        --data data/anatomy_v2 --split runs/v4/split_val_every4.json [SETTING ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

#: name -> export_run keywords.
SETTINGS = {
    "percentile_4x8": dict(calib_cases=4, slices_per_case=8, calib_method="percentile"),
    "percentile_16x16": dict(calib_cases=16, slices_per_case=16, calib_method="percentile"),
    "entropy_16x16": dict(calib_cases=16, slices_per_case=16, calib_method="entropy"),
    "minmax_16x16": dict(calib_cases=16, slices_per_case=16, calib_method="minmax"),
}
REGIONS = ("kidney_dice", "tumour_dice")


def compare(run: str, data: str, split: str, part: str, names) -> list[dict]:
    """One row per setting: export seconds, int8 - fp32 Dice per region, fp32's Dice, the gate."""
    from kidedge.bench.package_eval import evaluate_package
    from kidedge.export.package_writer import export_run

    rows = []
    with tempfile.TemporaryDirectory(prefix="kidedge_calib_") as tmp:
        for name in names:
            out = Path(tmp) / name
            t0 = time.perf_counter()
            # the gate's refusal would remove the variant this comparison measures
            export_run(run, out, int8=True, quiet=True, allow_int8_fidelity_loss=True, **SETTINGS[name])
            seconds = time.perf_counter() - t0
            ev = evaluate_package(out, data, split, part, ("int8", "fp32"), backend="onnxruntime", progress=False)
            m8, m32 = ev["by_precision"]["int8"]["mean"], ev["by_precision"]["fp32"]["mean"]
            gate = json.loads((out / "manifest.json").read_text())["export_report"]["int8_gate"]["variants"]
            rows.append({"setting": name, **SETTINGS[name], "export_s": round(seconds, 1),
                         "int8_minus_fp32": {k: round(m8[k] - m32[k], 4) for k in REGIONS},
                         "fp32": {k: round(m32[k], 4) for k in REGIONS},
                         "gate_passed": {v: g["passed"] for v, g in gate.items()}, "cases": ev["cases"]})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a kidedge train run directory")
    ap.add_argument("--data", required=True, help="the run's dataset")
    ap.add_argument("--split", required=True, help="a split.json whose --part holds the cases to score")
    ap.add_argument("--part", default="test")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("settings", nargs="*", help=f"which of {', '.join(SETTINGS)} (default: all)")
    args = ap.parse_args()
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    rows = compare(args.run, args.data, args.split, args.part, args.settings or list(SETTINGS))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
