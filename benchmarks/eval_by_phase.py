"""Held-out phantom scores split by contrast phase (and appearance mode), per precision.

A scanner's phase decides what a kidney looks like: bright cortex on a corticomedullary scan,
no enhancement at all on a non-contrast one. The mean over a held-out set hides a model that
works on one phase and not another, which is what users of non-contrast scans need to know.
This groups the per-case Dice of ``kidedge evaluate --package ... --out FILE`` (one or more
files, e.g. the validation and test parts) by the phase each phantom was drawn with (its
``source.json``, written by ``kidedge phantom --training-set``). Phantom data, not real CT.

    kidedge evaluate --package kidedge/models/default --data data/anatomy_v2 \\
        --split data/anatomy_v2/split.json --part test --precision int8 --precision fp32 --out test.json
    .venv/bin/python benchmarks/eval_by_phase.py test.json --data data/anatomy_v2

Writes benchmarks/results/phantom_phases.md and .json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("noncontrast", "corticomedullary", "nephrographic", "portal_venous", "excretory")
METRICS = ("kidney_dice", "tumour_dice")


def _appearance(data: Path, case: str) -> dict:
    path = data / case / "source.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; --data must be the phantom set the evaluation scored")
    return json.loads(path.read_text()).get("appearance", {})


def group(evaluations: list[dict], data: Path) -> dict:
    """``{precision: {group: {"cases": n, metric: mean, ...}}}`` by phase and by mode."""
    out: dict = {}
    looks: dict[str, dict] = {}  # each case's source.json read once, not once per precision
    for ev in evaluations:
        for precision, res in ev["by_precision"].items():
            rows = out.setdefault(precision, {})
            for case, scores in res["per_case"].items():
                if case not in looks:
                    looks[case] = _appearance(data, case)
                look = looks[case]
                for key in (look.get("phase", "unknown"), f"mode: {look.get('mode', 'unknown')}", "all"):
                    g = rows.setdefault(key, {"cases": [], **{m: [] for m in METRICS}})
                    g["cases"].append(case)
                    for m in METRICS:
                        g[m].append(scores[m])
    return {p: {k: {"cases": len(v["cases"]), **{m: float(np.mean(v[m])) for m in METRICS},
                    **{f"{m}_min": float(np.min(v[m])) for m in METRICS}}
                for k, v in rows.items()} for p, rows in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluations", nargs="+", help="kidedge evaluate --package ... --out FILE results")
    ap.add_argument("--data", required=True, help="the phantom set they scored (with source.json per case)")
    ap.add_argument("--out", default=str(RESULTS / "phantom_phases"))
    args = ap.parse_args()
    evaluations = [json.loads(Path(f).read_text()) for f in args.evaluations]
    data = Path(args.data)
    table = group(evaluations, data)
    meta = [{"package": e.get("package"), "split": e.get("split"), "part": e.get("part"),
             "cases": len(e.get("cases", []))} for e in evaluations]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"evaluations": meta, "by_precision": table}, indent=1) + "\n")
    lines = ["# Held-out phantoms by contrast phase", "",
             "Per-case Dice of `kidedge evaluate --package` (runtime with gating and the post-processing review, "
             "ONNX Runtime CPU), grouped by the phase and appearance mode each phantom was drawn with. "
             "Phantom data, not real CT. Sets: "
             + "; ".join(f"{m['package']} on part `{m['part']}` of `{m['split']}` ({m['cases']} cases)" for m in meta)
             + ". Tumour Dice is 1 on a case with no tumour when none is labelled, 0 when some is.", "",
             f"    .venv/bin/python benchmarks/eval_by_phase.py {' '.join(args.evaluations)}"
             f" --data {args.data}", ""]
    groups = [g for g in (*PHASES, "mode: physiological", "mode: widened", "mode: random", "all")
              if any(g in t for t in table.values())]
    groups += sorted({g for t in table.values() for g in t} - set(groups))
    precisions = list(table)
    lines.append("| group | cases | " + " | ".join(f"{p} kidney (min) | {p} tumour" for p in precisions) + " |")
    lines.append("|---|---|" + "---|---|" * len(precisions))
    for g in groups:
        first = next(t[g] for t in table.values() if g in t)
        cells = []
        for p in precisions:
            r = table[p].get(g)
            cells.append("-" if r is None else f"{r['kidney_dice']:.3f} ({r['kidney_dice_min']:.3f}) | {r['tumour_dice']:.3f}")
        lines.append(f"| {g} | {first['cases']} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
