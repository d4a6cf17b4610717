"""Validate a model package on real CT: ircadb-01 (expert kidney masks) and the DICOM sample.

Real CT the model never saw, run through exactly what ``kidedge infer`` runs (the runtime's
streaming cascade, its post-processing, the written NIfTI and volumes JSON):

1. ``../shared/data/ircadb-01``: patient 1 of 3D-IRCADb-01, a portal-venous abdominal CT
   with expert masks of both (normal) kidneys and of the organs around them. Reported:
   KiTS "kidney" Dice (labels 1-3 against left + right kidney masks), Dice of label 1
   alone, mL labelled tumour and cyst (all false: the kidneys are normal), mL labelled
   outside the kidney masks and which masked structure it falls in, per-side volumes.
2. ``../shared/data/ct-dicom-sample``: 20 upper-abdomen slices, no labels: mL tumour and
   cyst (all false), mL kidney, and an overlay PNG from the runtime's overlay writer.
3. Optionally the held-out split of a phantom training set (``--phantoms DIR --split
   FILE``), scored by the package-evaluation code with kidedge's KiTS metrics.

The library side (reading ircadb-01's DICOM masks from their zip, running, scoring, the
targets) is :mod:`kidedge.bench.real_ct`; this script adds the command line and the
Markdown report. Beside the runtime's numbers, the raw network labels (before post-processing) of the same
scans are post-processed three ways, to measure what post-processing does: ``none``,
``legacy`` (:func:`kidedge.postprocess.postprocess_labels`: the runtime's rule before
``review``) and ``review`` (:func:`kidedge.postprocess.review_segmentation` with body
landmarks measured in the scan). Only numbers are written for ircadb-01 (its licence
forbids sharing adapted material), never an image. From the repository root:

    nice -n 10 .venv/bin/python benchmarks/validate_real_ct.py [--model PKG]
        [--precision int8 fp32] [--phantoms DIR --split RUN/split.json --part test]

Writes ``real_ct.json`` and ``real_ct.md`` under ``--out`` (benchmarks/results), and the
sample's overlay to ``--overlay`` (docs/images/real_ct_sample_overlay.png, first
precision). ``--previous FILE`` (default ``real_ct_previous.json`` beside the results,
when present) adds an earlier package's headline rows to the md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.bench.real_ct import (  # noqa: E402
    IRCADB,
    SAMPLE,
    SHARED,
    check_targets,
    evaluate_phantoms,
    package_identity,
    read_ircadb,
    validate_precision,
)
from kidedge.errors import KidedgeError  # noqa: E402


def _f(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _headline_rows(result: dict, label: str) -> list[str]:
    rows = []
    for p, r in result["runs"].items():
        irc = r.get("ircadb-01", {}).get("runtime", {})
        smp = r.get("ct-dicom-sample", {}).get("runtime", {})
        rows.append(f"| {label} | {result['package']['name']} `{result['package']['fingerprint']}` | {p} "
                    f"| {_f(irc.get('kidney_dice'))} | {_f(irc.get('label1_dice'))} | {_f(irc.get('masses_ml'), 1)} "
                    f"| {_f(irc.get('outside_kidney_ml'), 1)} | {_f(smp.get('masses_ml'), 1)} | {_f(smp.get('kidney_ml'), 1)} |")
    return rows


def format_markdown(result: dict, previous: dict | None = None) -> str:
    m = result["machine"]
    lines = [
        "# Real-CT validation",
        "",
        f"Package **{result['package']['name']}** ({result['package']['path']}, model files fingerprint "
        f"`{result['package']['fingerprint']}`), backend {result['backend']}, precisions "
        f"{', '.join(result['precisions'])}; {result['date']}. Machine: {m['cpu']['model']} "
        f"({m['cpu']['usable_cores']} usable cores), shared with other jobs: load average "
        f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end (times are not the point here).",
        "",
        "Every number comes from `kidedge infer`'s own output (the written label map read back), except the "
        "post-processing comparison, which re-post-processes the same raw network labels. ircadb-01: patient 1 "
        "of 3D-IRCADb-01 (portal venous, normal kidneys: every tumour or cyst voxel is false); numbers only, no "
        "image (its licence). ct-dicom-sample: 20 upper-abdomen slices, no labels (tumour and cyst are false).",
    ]
    if result.get("note"):
        lines += ["", result["note"]]
    lines += ["", "## Headline", "",
              "| model | package | precision | ircadb kidney Dice | ircadb label-1 Dice | ircadb tumour+cyst mL "
              "| ircadb labelled outside kidneys mL | sample tumour+cyst mL | sample kidney mL |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += _headline_rows(result, "this run")
    if previous and previous.get("package", {}).get("fingerprint") != result["package"]["fingerprint"]:
        lines += _headline_rows(previous, f"previous ({previous.get('date', '?')})")
    lines += ["", "## Targets (issue 11)", "", "| target | precision | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['precision']} | {_f(t['value'], 4)} | {'met' if t['met'] else '**not met**'} |")
    if not result.get("phantoms"):
        lines.append("| phantom held-out targets | - | not measured in this run (no --phantoms) | - |")

    lines += ["", "## ircadb-01 in detail", "",
              "| precision | kidney Dice | label-1 Dice | kidney mL (truth) | tumour mL | cyst mL | left mL (truth) "
              "| right mL (truth) | left / right recall | left / right inside the stage-2 region |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p, r in result["runs"].items():
        i = r.get("ircadb-01", {}).get("runtime")
        if i:
            lines.append(f"| {p} | {i['kidney_dice']:.3f} | {i['label1_dice']:.3f} | {i['kidney_ml']:.1f} "
                         f"({i['truth_kidney_ml']:.1f}) | {i['tumour_ml']:.1f} | {i['cyst_ml']:.1f} "
                         f"| {i['sides_ml']['left']:.1f} ({i['truth_left_ml']:.1f}) | {i['sides_ml']['right']:.1f} "
                         f"({i['truth_right_ml']:.1f}) | {i['left_recall']:.2f} / {i['right_recall']:.2f} "
                         f"| {_f(i.get('left_in_region'), 2)} / {_f(i.get('right_in_region'), 2)} |")
    lines += ["", "Inside the stage-2 region: the share of each truth kidney inside the box the localiser "
              "gave the segmenter (an upper bound of its recall): below 1, stage 1 loses Dice; at 1, the "
              "segmenter does.", ""]
    lines += ["", "Where the voxels labelled outside the kidney masks lie (mL, all labels / tumour+cyst; first "
              "matching expert mask, vessels first):", ""]
    runs_with = [(p, r["ircadb-01"]["runtime"]) for p, r in result["runs"].items() if "ircadb-01" in r]
    if runs_with:
        names = list(runs_with[0][1]["outside_by_structure"])
        lines += ["| structure | " + " | ".join(p for p, _ in runs_with) + " |", "|---|" + "---|" * len(runs_with)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(
                f"{i['outside_by_structure'][n]['all_ml']:.1f} / {i['outside_by_structure'][n]['masses_ml']:.1f}"
                for _, i in runs_with) + " |")

    lines += ["", "## Post-processing compared (same raw labels)", "",
              "`none`: the network's labels; `legacy`: the two largest components and masses touching kidney (the "
              "runtime's rule before `review`); `review`: `kidedge.postprocess.review_segmentation` with body "
              "landmarks (see its docstring). `= runtime` marks the variant identical to `kidedge infer`'s output.", "",
              "| precision | variant | ircadb kidney Dice | ircadb tumour+cyst mL | ircadb outside kidneys mL "
              "| sample tumour+cyst mL | sample kidney mL | warnings (ircadb; sample) |", "|---|---|---|---|---|---|---|---|"]
    for p, r in result["runs"].items():
        iv = r.get("ircadb-01", {}).get("postprocess_variants", {})
        sv = r.get("ct-dicom-sample", {}).get("postprocess_variants", {})
        for v in ("none", "legacy", "review"):
            i, s = iv.get(v, {}), sv.get(v, {})
            same = " (= runtime)" if i.get("equals_runtime_output") and s.get("equals_runtime_output", True) else ""
            warn = "; ".join(i.get("warnings", [])) + " | " + "; ".join(s.get("warnings", [])) if v == "review" else "-"
            lines.append(f"| {p} | {v}{same} | {_f(i.get('kidney_dice'))} | {_f(i.get('masses_ml'), 1)} "
                         f"| {_f(i.get('outside_kidney_ml'), 1)} | {_f(s.get('masses_ml'), 1)} | {_f(s.get('kidney_ml'), 1)} "
                         f"| {warn.strip(' |') or '-'} |")

    ph = result.get("phantoms")
    if ph:
        lines += ["", f"## Phantoms: {ph['cases']} held-out cases ({ph['part']} part of {ph['split']})", "",
                  "| precision | kidney Dice | masses Dice | tumour Dice | KiTS19 score |", "|---|---|---|---|---|"]
        for p, s in ph["by_precision"].items():
            lines.append(f"| {p} | {_f(s.get('kidney_dice'))} | {_f(s.get('masses_dice'))} | {_f(s.get('tumour_dice'))} "
                         f"| {_f(s.get('kits19_score'))} |")
        lines += ["", "Post-processing compared on the same raw labels of these cases (mean Dice):", "",
                  "| precision | variant | kidney Dice | masses Dice | tumour Dice |", "|---|---|---|---|---|"]
        for p, variants in ph.get("postprocess_variants", {}).items():
            for v, s in variants.items():
                lines.append(f"| {p} | {v} | {_f(s['kidney_dice'])} | {_f(s['masses_dice'])} | {_f(s['tumour_dice'])} |")
    lines += ["", "Re-run on another package: `nice -n 10 .venv/bin/python benchmarks/validate_real_ct.py --model PKG "
              "[--phantoms DIR --split RUN/split.json]`.", ""]
    return "\n".join(lines)


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages (this machine is shared: say how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _shown_path(path: str) -> str:
    """A path as the report may show it: relative to the repository, else its name only
    (no machine path goes into committed results)."""
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else p.name


def main(argv=None) -> int:
    from kidedge.environment import cpu_description
    from kidedge.package import ModelPackage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model package (default: the built-in one)")
    ap.add_argument("--precision", nargs="+", default=["int8", "fp32"], choices=("int8", "fp32", "fp16"))
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--phantoms", help="a phantom training set (KiTS layout); scores its --part of --split")
    ap.add_argument("--split", help="the training run's split.json")
    ap.add_argument("--part", default="test", choices=("train", "val", "test"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--scans", nargs="+", default=["ircadb-01", "ct-dicom-sample"],
                    choices=("ircadb-01", "ct-dicom-sample"), help="which real scans (default both)")
    ap.add_argument("--overlay", default=str(ROOT / "docs" / "images" / "real_ct_sample_overlay.png"),
                    help="the DICOM sample's overlay PNG ('' for none)")
    ap.add_argument("--previous", default=None, help="an earlier real_ct.json to show beside (default: "
                    "real_ct_previous.json in --out when present)")
    ap.add_argument("--note", default="", help="a line for the report (e.g. what changed)")
    args = ap.parse_args(argv)
    try:
        package = ModelPackage.load(args.model)
        load_start = _loadavg()
        from kidedge.io import load_scan

        scans, masks = {}, None
        if "ircadb-01" in args.scans and (IRCADB / "PATIENT_DICOM").is_dir():
            scan, masks = read_ircadb(IRCADB)
            scans[IRCADB / "PATIENT_DICOM"] = scan
        if "ct-dicom-sample" in args.scans and SAMPLE.is_dir():
            scans[SAMPLE] = load_scan(SAMPLE)
        if not scans:
            raise KidedgeError(f"{SHARED}: neither ircadb-01 nor ct-dicom-sample is there")
        runs = {}
        with tempfile.TemporaryDirectory(prefix="kidedge_real_ct_") as tmp:
            for i, precision in enumerate(args.precision):
                overlay = Path(args.overlay) if args.overlay and i == 0 else None
                runs[precision] = validate_precision(package, precision, args.backend, masks, scans, Path(tmp), overlay)
        phantoms = None
        if args.phantoms:
            phantoms = evaluate_phantoms(package.source, args.phantoms, args.split, args.part, args.precision, args.backend)
        result = {
            "kidedge_real_ct": 1, "date": datetime.date.today().isoformat(), "package": package_identity(package),
            "backend": args.backend, "precisions": args.precision, "note": args.note,
            "machine": {"cpu": cpu_description(), "loadavg_start": load_start, "loadavg_end": _loadavg(),
                        "shared": True},
            "scans": {"ircadb-01": {"shape": list(scans[IRCADB / "PATIENT_DICOM"].shape),
                                    "spacing_mm": [round(s, 4) for s in scans[IRCADB / "PATIENT_DICOM"].spacing]}
                      if IRCADB / "PATIENT_DICOM" in scans else None,
                      "ct-dicom-sample": {"shape": list(scans[SAMPLE].shape),
                                          "spacing_mm": [round(s, 4) for s in scans[SAMPLE].spacing]}
                      if SAMPLE in scans else None},
            "runs": runs, "phantoms": phantoms, "targets": check_targets(runs, phantoms),
            "overlay": _shown_path(args.overlay) if args.overlay else None,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        prev_path = Path(args.previous) if args.previous else out / "real_ct_previous.json"
        previous = json.loads(prev_path.read_text()) if prev_path.is_file() else None
        from kidedge.io.writer import write_json_atomic

        write_json_atomic(out / "real_ct.json", result)
        (out / "real_ct.md").write_text(format_markdown(result, previous))
        print(f"wrote {out / 'real_ct.json'} and real_ct.md", flush=True)
    except KidedgeError as exc:
        print(f"validate_real_ct: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
