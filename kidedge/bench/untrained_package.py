"""A model package of a recipe's networks with untrained (random) weights, for benchmarking.

Latency and memory depend on the architecture, the input sizes and the engine, not on the
weight values, so an untrained package of the same recipe times the same work as a trained
one. Its segmentations are meaningless, and so is cascade gating (an untrained localiser
finds "kidney" nowhere or everywhere): reports made with one say so. The benchmark uses the
package shipped in kidedge when it exists; this is for tests and for machines without it.

The package is made the way every kidedge package is: a run directory (run.json + plain
state_dict checkpoints, the training-run contract) handed to
:func:`kidedge.export.package_writer.export_run`. torch is imported inside the function.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def export_untrained_package(out: str | Path, recipe: str = "kidedge_default", seed: int = 0,
                             int8: bool = True, model_overrides: dict | None = None,
                             preprocess_overrides: dict | None = None, only_stage: str | None = None,
                             quiet: bool = True, **export_kwargs) -> Path:
    """Export ``recipe``'s stages, randomly initialised, as a package at ``out``.

    Args:
        out: package directory to create (must not exist).
        recipe: a recipe name (``kidedge train --list``); 2D recipes only.
        seed: torch seed of the random weights.
        int8: also write the int8 models (calibrated on phantoms).
        model_overrides: ``model_kwargs`` replaced in every stage (e.g. smaller decoders
            for tiny test packages).
        preprocess_overrides: ``{stage name: {field: value}}`` changes to the preprocessing
            spec (e.g. a smaller localiser grid for tiny test scans).
        only_stage: keep just this stage (without its ROI): a single-stage package.
        quiet: no export progress lines.
        export_kwargs: passed on to ``export_run`` (``volume_shape``, ``calib_cases``, ...).

    Returns:
        The package path.
    """
    import torch

    from kidedge.export.package_writer import export_run
    from kidedge.train.models import build_model
    from kidedge.train.recipes import load_recipe

    r = load_recipe(recipe)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="kidedge-untrained-run-") as tmp:
        run_dir = Path(tmp)
        stages = []
        for st in r["stages"]:
            if only_stage is not None and st["name"] != only_stage:
                continue
            kwargs = dict(st.get("model_kwargs") or {})
            kwargs.update(model_overrides or {})
            spec = st["preprocess"].to_dict() if hasattr(st["preprocess"], "to_dict") else dict(st["preprocess"])
            spec.update((preprocess_overrides or {}).get(st["name"], {}))
            model = build_model(st["arch"], **kwargs).eval()
            (run_dir / st["name"]).mkdir()
            torch.save(model.state_dict(), run_dir / st["name"] / "best.pt")
            entry = {"name": st["name"], "role": st["role"], "arch": st["arch"], "model_kwargs": kwargs,
                     "preprocess": spec,
                     "output": {k: v for k, v in st["output"].items() if k in ("activation", "labels")},
                     "checkpoint": f"{st['name']}/best.pt", "metrics": {"note": "untrained (random weights)"}}
            if st.get("roi") and only_stage is None:
                entry["roi"] = {k: v for k, v in st["roi"].items() if k in ("source_stage", "labels", "margin_mm")}
            stages.append(entry)
        run = {"kidedge_run": 1, "recipe": r["name"], "dimensionality": r["dimensionality"],
               "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
               "stages": stages, "split": {}, "data": "none (untrained)", "metrics": {}}
        (run_dir / "run.json").write_text(json.dumps(run, indent=1))
        export_run(run_dir, out, int8=int8, name=f"{r['name']}-untrained", quiet=quiet, **export_kwargs)
    return Path(out)
