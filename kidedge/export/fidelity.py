"""Fidelity of each exported precision, against fp32 and against the truth, on held-out cases.

Every precision segments the same held-out volumes through the stage's own preprocessing;
the label maps (at network resolution, read from the logits exactly as the runtime reads
them, :func:`kidedge.runtime.labels.logits_to_labels`) are compared by the KiTS
hierarchical Dice (kidney = labels 1-3, masses = 2-3, tumour = 2):

* with fp32's labels (``kidney_dice``, ...): what quantisation changes;
* with the truth on the same grid (:func:`kidedge.export.stage_inputs.slice_truth`), for
  every region the stage can output, beside fp32's own Dice against the truth: what the
  change costs. ``truth_loss`` = fp32's Dice minus this precision's (mean over cases).

The int8 gate (:func:`int8_gate`) is the issue's target on the latter: an int8 variant
ships only if, on every stage and region, it loses at most :data:`MAX_DICE_LOSS` of
Dice against the truth compared with fp32.

Which arithmetic is scored: ``int8-cpu`` runs in ONNX Runtime with full graph optimisation,
as the runtime runs it. ``int8-trt`` is for TensorRT, which cannot run here; it is scored
by ONNX Runtime with graph optimisation off (:func:`variant_session`): every
QuantizeLinear/DequantizeLinear runs as written and each Conv in float on the dequantised
int8 values, i.e. products summed exactly, as TensorRT's int32-accumulating int8 kernels
sum them. With optimisation on, ONNX Runtime instead turns the int8 activations into
uint8 + 128 and fuses part of the convolutions into its own u8s8 kernels, whose 16-bit
intermediate sums can saturate on x86 CPUs without VNNI (the reason ONNX Runtime's
documentation recommends 7-bit weights there): a CPU-dependent error TensorRT does not
have. On the pilot run's held-out phantoms the two scorings differed by at most 0.004
Dice (benchmarks/results/int8_fidelity.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kidedge.export.held_out import CTVolume
from kidedge.export.stage_inputs import block_input, slice_inputs, slice_truth
from kidedge.regions import KITS21_REGIONS

#: Slices preprocessed and run together (bounded memory on 512x512 volumes).
CHUNK = 16
#: The int8 gate: the most Dice against the truth (mean over held-out cases, per KiTS
#: region the stage outputs) an int8 variant may lose compared with fp32.
MAX_DICE_LOSS = 0.005
#: How each variant is run when scored (recorded in the export report).
SCORED_AS = {
    "int8-cpu": "ONNX Runtime CPU, full graph optimisation (as the runtime runs it)",
    "int8-trt": "TensorRT stand-in: ONNX Runtime CPU with graph optimisation off (Q/DQ as written, "
                "Conv in float on dequantised int8 values = TensorRT's exact int32 accumulation); "
                "TensorRT itself was not run",
}


def variant_session(path, variant: str, threads: int = 2):
    """ONNX Runtime session that scores ``variant`` the way its consumer computes it (see
    the module docstring): full optimisation, except the TensorRT stand-in for int8-trt."""
    from kidedge.export.onnx_export import ort_session

    return ort_session(path, threads, optimize=variant != "int8-trt")


def stage_regions(stage: dict) -> list[str]:
    """The KiTS regions a stage's labels can show (a localiser that paints only label 1,
    the kidney with its masses, is scored on ``kidney`` alone)."""
    labels = {int(v) for v in stage.get("output", {}).get("labels", [0, 1, 2, 3])}
    return [name for name, values in KITS21_REGIONS.items() if labels & set(values)]


def labels_from_logits(logits: np.ndarray, output: dict) -> np.ndarray:
    """uint8 labels ``(n, h, w)`` (3D logits ``(1, K, D, h, w)`` give ``(D, h, w)``)."""
    from kidedge.runtime.labels import logits_to_labels

    if logits.ndim == 5:
        logits = logits[0].transpose(1, 0, 2, 3)
    size = logits.shape[-2:]
    return logits_to_labels(np.ascontiguousarray(logits, np.float32), output, size, size)


def segment_volume(run: Callable[[np.ndarray], np.ndarray], volume: CTVolume, stage: dict,
                   dimensionality: str = "2d", depth: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels of a whole volume at network resolution, and the logits chunk by chunk.

    Args:
        run: maps a network input batch to logits (ORT session or torch model wrapper).
        depth: slices per 3D block (3D stages).
    """
    n = volume.array.shape[0]
    labels, logits = [], []
    step = depth if dimensionality == "3d" else CHUNK
    for start in range(0, n, step):
        stop = min(n, start + step)
        if dimensionality == "3d":
            s = max(0, min(start, n - depth))
            x = block_input(volume, stage, s, min(depth, n))
            z = run(x)
            lab = labels_from_logits(z, stage["output"])[start - s:stop - s]
        else:
            x = slice_inputs(volume, stage, range(start, stop))
            z = run(x)
            lab = labels_from_logits(z, stage["output"])
        labels.append(lab)
        logits.append(z)
    return np.concatenate(labels), logits


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """KiTS hierarchical Dice of ``pred`` against ``ref`` (both uint8 label maps)."""
    from kidedge.metrics import hierarchical_dice

    return {f"{name}_dice": float(d) for name, d in hierarchical_dice(pred, ref).items()}


def _truth_dice(pred: np.ndarray, truth: np.ndarray, regions: list[str]) -> dict[str, float]:
    from kidedge.metrics import hierarchical_dice

    d = hierarchical_dice(pred, truth)
    return {r: float(d[r]) for r in regions}


def fidelity_report(runners: dict[str, Callable[[np.ndarray], np.ndarray]], volumes: list[CTVolume],
                    stage: dict, dimensionality: str = "2d") -> dict:
    """Every precision against ``"fp32"`` and, where the volumes are labelled, against the truth.

    Args:
        runners: precision -> callable giving logits for an input batch; must hold "fp32".
        volumes: held-out volumes.
        stage: the stage dict.

    Returns:
        ``{precision: {...}}`` for every precision other than fp32, with the means over
        cases of ``kidney_dice``, ``masses_dice``, ``tumour_dice`` (against fp32),
        ``min_kidney_dice``, ``pixel_agreement``, ``max_abs_logit_diff``, ``cases``; and,
        for 2D stages on labelled volumes, ``vs_truth`` and ``fp32_vs_truth`` (region ->
        mean Dice against the truth) and ``truth_loss`` (region -> fp32's minus this one's).
    """
    if "fp32" not in runners:
        raise ValueError("fidelity needs the fp32 runner as reference")
    regions = stage_regions(stage)
    truths = [slice_truth(v, stage, range(v.array.shape[0])) if dimensionality == "2d" else None for v in volumes]
    scored = all(t is not None for t in truths) and bool(volumes)
    ref = [segment_volume(runners["fp32"], v, stage, dimensionality) for v in volumes]
    ref_truth = [_truth_dice(r[0], t, regions) for r, t in zip(ref, truths, strict=True)] if scored else []
    report = {}
    for precision, run in runners.items():
        if precision == "fp32":
            continue
        per_case, agree, max_diff = [], [], 0.0
        for i, (v, (ref_labels, ref_logits)) in enumerate(zip(volumes, ref, strict=True)):
            labels, logits = segment_volume(run, v, stage, dimensionality)
            case = {"case": v.source, **region_dice(labels, ref_labels)}
            if scored:
                case["vs_truth"] = _truth_dice(labels, truths[i], regions)
                case["fp32_vs_truth"] = ref_truth[i]
            per_case.append(case)
            agree.append(float((labels == ref_labels).mean()))
            for a, b in zip(ref_logits, logits, strict=True):
                max_diff = max(max_diff, float(np.abs(a - b).max()))
        entry = {
            **{k: float(np.mean([c[k] for c in per_case])) for k in ("kidney_dice", "masses_dice", "tumour_dice")},
            "min_kidney_dice": float(min(c["kidney_dice"] for c in per_case)),
            "pixel_agreement": float(np.mean(agree)),
            "max_abs_logit_diff": max_diff,
        }
        if scored:
            mine = {r: float(np.mean([c["vs_truth"][r] for c in per_case])) for r in regions}
            fp32 = {r: float(np.mean([c["fp32_vs_truth"][r] for c in per_case])) for r in regions}
            entry.update(vs_truth=mine, fp32_vs_truth=fp32, truth_loss={r: fp32[r] - mine[r] for r in regions})
        if precision in SCORED_AS:
            entry["scored_as"] = SCORED_AS[precision]
        report[precision] = {**entry, "cases": per_case}
    return report


def int8_gate(fidelity: dict[str, dict], variants, max_loss: float = MAX_DICE_LOSS,
              allow_loss: bool = False) -> dict:
    """Decide which int8 variants ship.

    A variant passes when, on every stage, every region's ``truth_loss`` is at most
    ``max_loss``. A stage scored without the truth (no labels, or a report without
    ``truth_loss``) is judged on the stricter ``1 - Dice against fp32`` instead.

    Args:
        fidelity: stage name -> :func:`fidelity_report` of that stage.
        variants: the int8 variants exported (e.g. ``("int8-cpu", "int8-trt")``).
        max_loss: the largest Dice loss allowed.
        allow_loss: ship a failing variant anyway (``--allow-int8-fidelity-loss``).

    Returns:
        The export report's ``int8_gate``: ``rule``, ``max_dice_loss``, ``allow_fidelity_loss``
        and per variant ``passed``, ``shipped``, ``decision``, ``failures`` and ``measured``
        (stage -> region -> ``{"loss", "against"}``).
    """
    out = {"rule": f"per stage and KiTS region, mean Dice against the truth on the held-out cases "
                   f"at most {max_loss} below fp32's (without the truth: Dice against fp32 at least "
                   f"{1 - max_loss:.3f})",
           "max_dice_loss": max_loss, "allow_fidelity_loss": bool(allow_loss), "variants": {}}
    for variant in variants:
        measured, failures = {}, []
        for sname, rep in fidelity.items():
            r = rep.get(variant)
            if r is None:
                continue
            if "truth_loss" in r:
                losses = {reg: (loss, "truth") for reg, loss in r["truth_loss"].items()}
            else:
                losses = {reg: (1.0 - r[f"{reg}_dice"], "fp32")
                          for reg in ("kidney", "masses", "tumour") if f"{reg}_dice" in r}
            measured[sname] = {reg: {"loss": round(loss, 6), "against": how} for reg, (loss, how) in losses.items()}
            failures += [f"{sname} {reg} loses {loss:.4f} Dice against the {how}"
                         for reg, (loss, how) in losses.items() if loss > max_loss]
        passed = not failures and bool(measured)
        if not measured:
            failures = ["not measured"]
        shipped = passed or bool(allow_loss)
        decision = ("shipped: within the gate" if passed else
                    "shipped despite failing the gate (--allow-int8-fidelity-loss)" if shipped else
                    "not shipped: failed the gate (--allow-int8-fidelity-loss ships it anyway)")
        out["variants"][variant] = {"passed": passed, "shipped": shipped, "decision": decision,
                                    "failures": failures, "measured": measured,
                                    "scored_as": SCORED_AS.get(variant, "")}
    return out


def drop_refused_variants(stages: list[dict], gate: dict, package_dir) -> list[str]:
    """Remove the files of every variant the gate did not ship from the manifest stages and
    from ``package_dir`` (TensorRT int8 plans are built from int8-trt and go with it).

    Returns:
        The variants removed.
    """
    from pathlib import Path

    refused = [v for v, g in gate["variants"].items() if not g["shipped"]]
    for st in stages:
        files = st.get("files", {})
        doomed = [files.pop(v) for v in refused if v in files]
        if "int8-trt" in refused and isinstance(files.get("tensorrt"), dict):
            plans = files["tensorrt"]
            for key in [k for k, e in plans.items() if e.get("precision") == "int8"]:
                entry = plans.pop(key)
                doomed += [entry, *([entry["timing_cache"]] if "timing_cache" in entry else [])]
        for entry in doomed:
            Path(package_dir, entry["path"]).unlink(missing_ok=True)
    return refused
