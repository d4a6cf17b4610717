"""Per-branch int8 scales for a convolution over a concatenation (U-Net skip connections).

int8 quantises a tensor with one scale. A U-Net decoder block convolves
``Concat(upsampled, skip)``, and the two branches can differ manyfold in range (in the
pilot run's SqueezeNet U-Net localiser, 3x to 18x; its last block concatenates the
upsampled features with the input image in [0, 1]), so the concatenation's single scale
leaves the small branch few int8 levels. Keeping that convolution float does not help: the
Concat, Resize and ReLU around it are quantised all the same.

The rewrite ``Conv(Concat(a, b), W) = Conv(a, W_a) + Conv(b, W_b)`` (``W`` split along its
input channels, the bias kept once) is exact in float, and after it each branch is a Conv
input of its own with its own scale. Both consumers handle it in int8: TensorRT fuses the
second convolution with the addition (a residual add), ONNX Runtime runs two QLinearConv
and a QLinearAdd. Only concatenations whose branch ranges differ by more than
:data:`MIN_RANGE_RATIO` are split; a SqueezeNet fire module's two expand branches, of
similar range, stay one convolution.

Measured on the pilot run's four held-out phantom cases (benchmarks/results/int8_fidelity.md):
the localiser's int8-trt kidney Dice against fp32 went from 0.971 to 0.982 (every case
better), int8-cpu from 0.984 to 0.986; the segmenter (3 splits) did not change (0.970,
0.988). The int8 latency cost of the extra Conv + Add was not measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Split a Concat -> Conv when its largest branch range is more than this many times its smallest.
MIN_RANGE_RATIO = 2.0


def _channels(graph) -> dict[str, int | None]:
    out = {}
    for vi in (*graph.value_info, *graph.input, *graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2:
            out[vi.name] = dims[1].dim_value if dims[1].HasField("dim_value") else None
    return out


def split_concat_convs(src: Path, dst: Path, ranges: dict[str, tuple[float, float]],
                       min_ratio: float = MIN_RANGE_RATIO) -> list[dict]:
    """Write ``src`` to ``dst`` with every qualifying ``Conv(Concat(...))`` split per branch.

    Args:
        src: fp32 ONNX after ORT pre-processing (shapes inferred: branch channel counts are
            read from its value_info).
        dst: where to write the rewritten model (may equal ``src``).
        ranges: tensor name -> calibrated ``(low, high)``; a branch's range is
            ``max(|low|, |high|)``.
        min_ratio: split when the largest branch range exceeds the smallest this many times.

    Returns:
        One record per split convolution: ``{"conv", "branches", "range_ratio"}``.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    channels = _channels(graph)
    concat_of = {n.output[0]: n for n in graph.node if n.op_type == "Concat"}
    done, nodes = [], []
    for node in graph.node:
        plan = _plan(node, concat_of, inits, channels, ranges, min_ratio)
        if plan is None:
            nodes.append(node)
            continue
        cat, chans, ratio = plan
        weight = numpy_helper.to_array(inits[node.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        parts, start = [], 0
        for k, (branch, c) in enumerate(zip(cat.input, chans, strict=True)):
            wname = f"{node.input[1]}_branch{k}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, start:start + c]), wname))
            bias = [node.input[2]] if k == 0 and len(node.input) > 2 and node.input[2] else []
            out = f"{node.output[0]}_branch{k}"
            nodes.append(helper.make_node("Conv", [branch, wname, *bias], [out], name=f"{node.name}_branch{k}", **attrs))
            parts.append(out)
            start += c
        total = parts[0]
        for k, part in enumerate(parts[1:], 1):
            out = node.output[0] if k == len(parts) - 1 else f"{node.output[0]}_sum{k}"
            nodes.append(helper.make_node("Add", [total, part], [out], name=f"{node.name}_add{k}"))
            total = out
        done.append({"conv": node.name, "branches": list(cat.input), "range_ratio": round(ratio, 2)})
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    # a Concat whose only consumers were split convolutions is gone; so are their whole weights
    nodes = [n for n in nodes if not (n.op_type == "Concat" and n.output[0] not in used)]
    used = {i for n in nodes for i in n.input}
    keep_inits = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return done


def _plan(node, concat_of, inits, channels, ranges, min_ratio):
    """``(concat, branch channels, range ratio)`` when ``node`` is a splittable Conv, else None."""
    if node.op_type != "Conv" or node.input[0] not in concat_of or node.input[1] not in inits:
        return None
    cat = concat_of[node.input[0]]
    attrs = {a.name: a for a in node.attribute}
    axis = next((a.i for a in cat.attribute if a.name == "axis"), None)
    if axis != 1 or ("group" in attrs and attrs["group"].i != 1) or len(cat.input) < 2:
        return None
    chans = [channels.get(i) for i in cat.input]
    if any(c is None or c <= 0 for c in chans) or sum(chans) != inits[node.input[1]].dims[1]:
        return None
    # ORT's ranges are scalars or 1-element arrays depending on the calibration method
    spans = [max(float(np.abs(np.asarray(v, dtype=np.float64)).max()) for v in ranges[i]) if i in ranges else None
             for i in cat.input]
    if any(s is None for s in spans) or min(spans) <= 0:
        return None
    ratio = max(spans) / min(spans)
    return (cat, chans, ratio) if ratio > min_ratio else None


def split_for_int8(prepared: Path, reader, method: str, work: Path) -> tuple[Path, list[dict], Path]:
    """Calibrate ``prepared`` once for its tensor ranges and split its qualifying
    ``Conv(Concat)`` (see :func:`split_concat_convs`).

    Returns:
        ``(model to quantise, split records, calibration cache for it)``: the unchanged
        model and the ranges just computed when nothing qualified; otherwise the split model
        and a cache path not yet written (the split model has new tensors, so
        :func:`kidedge.export.quantize.quantize_int8` calibrates it again).
    """
    from onnxruntime.quantization.calibrate import load_tensors_data

    from kidedge.export.quantize import quantize_int8

    ranges_cache = Path(work) / "ranges.json"
    # the cheapest way to ORT's ranges with the export's own method: a throw-away int8 model
    quantize_int8(prepared, Path(work) / "ranges-probe.onnx", reader, "int8-trt", method,
                  calibration_cache=ranges_cache)
    ranges = {k: v.range_value for k, v in load_tensors_data(ranges_cache).data.items()}
    done = split_concat_convs(prepared, Path(work) / "split.onnx", ranges)
    if not done:
        return Path(prepared), [], ranges_cache
    return Path(work) / "split.onnx", done, Path(work) / "calibration-split.json"
