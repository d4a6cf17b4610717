"""int8 of a 3D stage: what ONNX Runtime runs in float anyway, and the layers kept float so
that int8 stays within the Dice target of fp32.

1. Tried, not assumed: ONNX Runtime's CPU provider (1.32) quantises Conv3d (``QLinearConv``
   runs 3D kernels) but has no int8 kernel for ``ConvTranspose`` (3D or 2D). The quantiser
   still puts Q/DQ around it and the provider then dequantises its weights and runs it in
   float. Leaving it out of quantisation does not give exact float weights: ORT's optimiser
   quantises the weight of an op whose input and output are quantised. So that fallback
   happens per layer inside ONNX Runtime; :func:`ort_cpu_float_layers` finds those layers by
   building the CPU session and reading its optimised graph, and the manifest lists them.
   The TensorRT variant keeps them quantised (TensorRT has int8 deconvolution; not checked
   here, no GPU).
2. Fidelity: the int8 model segments a few calibration volumes through the runtime's
   sliding window beside fp32 (:func:`dice_gap`). When it loses more than
   :data:`FIDELITY_TARGET` of Dice on any KiTS region, the Conv layers whose outputs lose
   most to quantisation (lowest signal-to-quantisation-noise ratio of their activations on
   calibration windows, :func:`sensitive_convs`) are kept float, 2, then 4, 8, 16 of them,
   until the target is met or the rounds run out; the manifest records which, and the gap
   before and after. The layers are chosen on calibration (train split) cases; the
   package's fidelity report then measures the result on the held-out cases. The same
   ONNX Runtime optimiser quantises a float Conv whose input and output are quantised (it
   fuses it into a ``QLinearConv``), so a layer kept float in the file may still run int8
   on the CPU provider; the gap is measured as ONNX Runtime runs it, and the record lists
   such layers (``ort_cpu_runs_int8_anyway``). TensorRT honours the file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

#: Compute ops whose int8 execution matters for speed (the ones a fallback is looked for).
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: The largest Dice int8 may lose against fp32 on a KiTS region (issue 14's target).
FIDELITY_TARGET = 0.005
#: How many of the most sensitive Conv layers to keep float, round by round.
FALLBACK_ROUNDS = (2, 4, 8, 16)
#: Calibration volumes the layer choice is judged on.
SELECTION_CASES = 2


def ort_cpu_float_layers(model_path: Path) -> dict[str, str]:
    """Layers of a quantised model that ONNX Runtime's CPU provider runs in float.

    Builds the CPU session with full graph optimisation, saves the optimised graph, and
    returns ``{node name: op type}`` of the compute ops (:data:`COMPUTE_OPS`) still there as
    float ops with a dequantised weight: the provider had no int8 kernel to fuse them into
    (for the 3D models, every ``ConvTranspose``).
    """
    graph = _ort_cpu_graph(model_path)
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return {node.name: node.op_type for node in graph.node
            if node.op_type in COMPUTE_OPS and len(node.input) > 1
            and made_by.get(node.input[1]) == "DequantizeLinear"}


def ort_cpu_int8_layers(model_path: Path, names: list[str]) -> list[str]:
    """Which of ``names`` (nodes left float in the quantised model) ONNX Runtime's CPU
    provider still runs as int8: its optimiser (``WeightBiasQuantization``, 1.32) quantises
    the weights of a float Conv whose input and output are quantised and fuses it into a
    ``QLinearConv`` (named after the node)."""
    fused = [n.name for n in _ort_cpu_graph(model_path).node if n.op_type == "QLinearConv"]
    return [name for name in names if any(f == name or f.startswith(name + "_token") for f in fused)]


def _ort_cpu_graph(model_path: Path):
    """The graph ONNX Runtime's CPU provider runs (full optimisation), as ONNX."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kidedge-ortopt-") as work:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath).graph


def dice_gap(run, reference: list[np.ndarray], grids: list[np.ndarray], stage) -> float:
    """The largest loss of Dice (mean over ``grids``, per KiTS region) of ``run``'s labels
    against ``reference`` labels, both through the runtime's sliding window."""
    from kidedge.export.export3d import segment_grid
    from kidedge.export.fidelity import region_dice

    scores = [region_dice(segment_grid(run, x, stage)[0], ref) for x, ref in zip(grids, reference, strict=True)]
    return float(1.0 - min(np.mean([s[k] for s in scores]) for k in scores[0]))


def sensitive_convs(prepared: Path, int8_path: Path, inputs: np.ndarray) -> list[tuple[str, float]]:
    """Quantised Conv layers, most sensitive first: ``(node name, SQNR dB)`` of each layer's
    output activation (after a fused ReLU) before and after its Q/DQ, on ``inputs`` (ORT's
    qdq_loss_debug). Layers whose output is not quantised are not ranked."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from kidedge.export.calibration import SliceCalibrationReader

    with tempfile.TemporaryDirectory(prefix="kidedge-qdqdebug-") as work:
        augmented = Path(work) / "augmented.onnx"
        modify_model_output_intermediate_tensors(int8_path, augmented)
        acts = collect_activations(str(augmented), SliceCalibrationReader(inputs))
    matched = create_activation_matching(acts)
    graph = onnx.load(str(int8_path)).graph
    relu_fused = _relu_fused_tensors(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranked = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        # a Conv's quantised output is its own, or that of the activation fused after it
        t = node.output[0]
        while t not in matched and len(consumers.get(t, [])) == 1 and consumers[t][0].op_type in ("Relu", "Clip"):
            t = consumers[t][0].output[0]
        if t in matched:
            m = matched[t]
            # With the ReLU folded into the Q/DQ pair, the tensor before Q is the Conv's raw
            # output: what the pair should reproduce is its ReLU, and the negatives it clamps
            # are that ReLU, not quantisation noise (counting them ranked layers by how much
            # of their output is negative, not by their int8 error).
            pre = [np.maximum(a, 0) for a in m["pre_qdq"]] if t in relu_fused else m["pre_qdq"]
            ranked.append((node.name, float(compute_signal_to_quantization_noice_ratio(pre, m["post_qdq"]))))
    return sorted(ranked, key=lambda item: item[1])


def _relu_fused_tensors(graph) -> set[str]:
    """Tensors whose QuantizeLinear cannot represent a value below 0 (its zero point is the
    lowest code): ONNX Runtime's quantiser folded a ReLU into the pair."""
    from onnx import numpy_helper

    init = {i.name: i for i in graph.initializer}
    fused = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in init:
            continue
        zero_point = numpy_helper.to_array(init[node.input[2]])
        lowest = np.iinfo(zero_point.dtype).min if np.issubdtype(zero_point.dtype, np.integer) else None
        if lowest is not None and zero_point.size == 1 and int(zero_point.reshape(-1)[0]) == lowest:
            fused.add(node.input[0])
    return fused


def quantize_cpu(prepared: Path, out_path: Path, reader, method: str, exclude: list[str], cpu_format: str,
                 calibration_cache: Path | None, fidelity: tuple | None = None, reduce_range: bool = False) -> dict:
    """``int8-cpu`` of a 3D stage (see the module docstring).

    Args:
        prepared, out_path, reader, method, exclude, cpu_format, calibration_cache: as
            :func:`kidedge.export.quantize.quantize_int8`; so is ``reduce_range``.
        fidelity: ``(fp32_path, volumes, run_stage, inputs)``: the fp32 model, calibration
            volumes and windows to judge and choose float layers on; None skips that.

    Returns:
        The quantisation record: quantize_int8's settings, ``ort_cpu_float_fallback`` and
        ``fidelity_fallback`` (``kept_float``: the layers also to keep float in int8-trt).
    """
    from kidedge.export.quantize import quantize_int8

    def quantize(nodes: list[str]) -> dict:
        return quantize_int8(prepared, out_path, reader, "int8-cpu", method, nodes, cpu_format=cpu_format,
                             calibration_cache=calibration_cache, reduce_range=reduce_range)

    settings = quantize(list(exclude))
    record = {"target": FIDELITY_TARGET, "kept_float": [], "judged_on": "not judged"}
    if fidelity is not None:
        record = _keep_float_for_fidelity(quantize, prepared, out_path, exclude, fidelity, record)
        settings = record.pop("settings") or settings
    fallback = ort_cpu_float_layers(out_path)
    settings["ort_cpu_float_fallback"] = {
        "layers": dict(sorted(fallback.items())),
        "reason": "ONNX Runtime's CPU provider has no int8 kernel for these ops: it dequantises their int8 "
                  "weights and runs them in float. Leaving them out of quantisation does not give exact "
                  "float weights: ORT's optimiser quantises the weight of any op whose input is quantised.",
    }
    settings["fidelity_fallback"] = record
    return settings


def _keep_float_for_fidelity(quantize, prepared, out_path, exclude, fidelity, record) -> dict:
    from kidedge.export.export3d import grid_volume, segment_grid, stage_box, stage_view
    from kidedge.export.onnx_export import ort_session, run_onnx

    fp32_path, volumes, run_stage, inputs = fidelity
    stage = stage_view(run_stage)
    grids = [grid_volume(v, stage, stage_box(v, run_stage))[0] for v in list(volumes)[:SELECTION_CASES]]

    def runner(path):
        session = ort_session(path, 2)
        return lambda x: run_onnx(session, x)

    reference = [segment_grid(runner(fp32_path), x, stage)[0] for x in grids]
    gap = dice_gap(runner(out_path), reference, grids, stage)
    record.update(judged_on=f"{len(grids)} calibration case(s) through the sliding window", gap_before=round(gap, 6),
                  settings=None)
    if gap <= FIDELITY_TARGET:
        record.update(gap_after=record["gap_before"], met=True)
        return record
    sqnr = [(name, db) for name, db in sensitive_convs(prepared, out_path, inputs[:2]) if name not in exclude]
    record["ranking_sqnr_db"] = {name: round(db, 2) for name, db in sqnr[:FALLBACK_ROUNDS[-1]]}
    ranking = [name for name, _ in sqnr]
    for k in FALLBACK_ROUNDS:
        kept = ranking[:k]
        record["settings"] = quantize([*exclude, *kept])
        gap = dice_gap(runner(out_path), reference, grids, stage)
        record.update(kept_float=kept, gap_after=round(gap, 6))
        if gap <= FIDELITY_TARGET or k >= len(ranking):
            break
    record["met"] = gap <= FIDELITY_TARGET
    # what the gap was measured with: the layers ONNX Runtime re-quantised anyway
    record["ort_cpu_runs_int8_anyway"] = ort_cpu_int8_layers(out_path, record["kept_float"])
    return record
