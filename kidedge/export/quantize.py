"""Static int8 post-training quantisation with ONNX Runtime, in two variants.

``int8-cpu``: for ONNX Runtime on CPUs: uint8 activations (asymmetric), int8 weights
per output channel. The format (QDQ or QOperator) is a parameter; which one ORT runs
faster on this project's U-Nets is measured by ``benchmarks/bench_export.py`` and
:data:`DEFAULT_CPU_FORMAT` follows that measurement (see benchmarks/results/export.md).
Weights use the full int8 range by default (:data:`DEFAULT_CPU_WEIGHT_BITS`). 7-bit
weights (ORT's ``reduce_range``) are for x86 CPUs with AVX2 but no VNNI, whose uint8 x
int8 kernel (vpmaddubsw) adds pairs of products in 16 bits and can saturate with
full-range weights (:func:`kidedge.environment.int8_pairs_saturate`); with VNNI, AMX or on
Arm the sums are 32-bit and the eighth bit is only precision. Measured on the built-in
model on this machine's AVX-512 VNNI CPU, the same speed either way, and int8 against fp32
kidney Dice on four bench scans -0.0006 to +0.0045 with 8 bits against -0.007 to -0.033
with 7 (benchmarks/results/int8_variants.md).

``int8-trt``: what TensorRT's explicit quantisation consumes: QDQ, int8 activations and
weights, both symmetric (zero point 0), weights per channel. TensorRT builds int8 kernels
where a Q/DQ pair says so and runs the rest in float.

Layers may stay float (``nodes_to_exclude``). The default rule keeps the first Conv (it
sees raw intensities, a distribution unlike any later activation) and the last Conv (the
head whose logits decide the labels) in float: two of ~50 convolutions. The choice is
recorded in the manifest with the per-variant agreement measured against fp32. TensorRT
honours the file; ONNX Runtime's CPU optimiser (``WeightBiasQuantization``, 1.32) quantises
the weights of a float Conv whose input and output are both quantised and runs it int8, so
on the CPU the built-in segmenter's first Conv runs int8 all the same (the head, whose output
is the graph's, stays float). Export lists such layers (``ort_cpu_runs_int8_anyway``).
Honouring them by disabling that optimiser was measured and not taken: 13% more segmenter
int8 time for masses agreement with fp32 of 0.948 against 0.944 on 10 validation phantoms;
keeping the 16 most sensitive of 36 convolutions float raised it only to 0.961, slower than
fp32 itself (benchmarks/results/int8_float_layers.md).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from kidedge.errors import KidedgeError

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
#: Percentile of |activation| kept by the "percentile" method (ORT's default is 99.999).
PERCENTILE = 99.999
CPU_FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
#: Chosen from benchmarks/results/export.json (int8-cpu QDQ vs QOperator latency).
DEFAULT_CPU_FORMAT = "QDQ"
VARIANTS = ("int8-cpu", "int8-trt")
#: int8-cpu weight bits: 8 (full range) or 7 (ORT's reduce_range, for AVX2 CPUs without VNNI).
CPU_WEIGHT_BITS = (8, 7)
DEFAULT_CPU_WEIGHT_BITS = 8


def prepare_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """ORT's recommended pre-processing: graph optimisation (BatchNorm folded into Conv,
    Identity removed) and symbolic shape inference, so every tensor gets a range."""
    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    # When its symbolic shape inference gives up, ORT saves the half-inferred model as
    # "sym_shape_infer_temp.onnx" plus a uuid-named ".data" file in the working directory
    # and never removes them: run it from a scratch directory so nothing leaks.
    with tempfile.TemporaryDirectory(prefix="kidedge-prep-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
        except Exception as exc:  # ORT raises plain Exceptions from its optimiser
            logging.getLogger(__name__).info("symbolic shape inference failed (%s); retrying without", exc)
            quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def conv_nodes(model_path: Path) -> list[str]:
    """Names of the Conv nodes in graph (topological) order."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def float_node_rule(model_path: Path) -> list[str]:
    """The default layers kept float: first and last Conv (see module docstring)."""
    convs = conv_nodes(model_path)
    if not convs:
        return []
    return sorted({convs[0], convs[-1]}, key=convs.index)


def variant_settings(variant: str, cpu_format: str = DEFAULT_CPU_FORMAT, reduce_range: bool = False) -> dict:
    """quantize_static arguments of a variant (also recorded in the manifest)."""
    if variant == "int8-cpu":
        if cpu_format not in CPU_FORMATS:
            raise KidedgeError(f"int8-cpu format must be one of {sorted(CPU_FORMATS)}, got {cpu_format!r}")
        return {"quant_format": cpu_format, "activation_type": "QUInt8", "weight_type": "QInt8",
                "per_channel": True, "reduce_range": bool(reduce_range),
                "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}
    if variant == "int8-trt":
        return {"quant_format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8",
                "per_channel": True, "reduce_range": False,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}}
    raise KidedgeError(f"unknown int8 variant {variant!r} (one of {VARIANTS})")


def quantize_int8(prepared_path: Path, out_path: Path, reader, variant: str, method: str = "percentile",
                  nodes_to_exclude: list[str] | None = None, cpu_format: str = DEFAULT_CPU_FORMAT,
                  reduce_range: bool = False, calibration_cache: Path | None = None) -> dict:
    """Quantise ``prepared_path`` (see :func:`prepare_for_quantization`) to ``out_path``.

    Args:
        prepared_path: fp32 ONNX after ORT pre-processing.
        out_path: int8 ONNX file to write.
        reader: an ``onnxruntime.quantization.CalibrationDataReader`` (rewound before use);
            may be None when ``calibration_cache`` already holds the ranges.
        variant: ``"int8-cpu"`` or ``"int8-trt"``.
        method: ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        nodes_to_exclude: node names kept in float.
        cpu_format: ``"QDQ"`` or ``"QOperator"`` (int8-cpu only).
        reduce_range: 7-bit weights (int8-cpu only; see the module docstring).
        calibration_cache: JSON file of calibrated tensor ranges; written on first use and
            reused by the other variant (the ranges do not depend on the variant; the
            symmetric/asymmetric choice is applied when scales are computed).

    Returns:
        The settings used, for the manifest.
    """
    if method not in CALIBRATION_METHODS:
        raise KidedgeError(f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}")
    s = variant_settings(variant, cpu_format, reduce_range)
    extra = dict(s["extra_options"])
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    if reader is not None:
        reader.rewind()
    tmp = None
    if method == "entropy" and not (calibration_cache and Path(calibration_cache).is_file()):
        # quantize_static cannot pass histogram sizes to ORT's entropy calibrator, whose
        # defaults (128 bins, 128 quantised bins) leave the KL search a single candidate,
        # the full range: "entropy" would silently be min-max. The ranges are computed
        # here with TensorRT's classic sizes and handed over as a calibration cache.
        if calibration_cache is None:
            tmp = tempfile.TemporaryDirectory(prefix="kidedge-entropy-")
            calibration_cache = Path(tmp.name) / "calibration.json"
        entropy_ranges(prepared_path, reader, Path(calibration_cache))
        reader = None
    try:
        _quantize_static(prepared_path, out_path, reader, s, method, nodes_to_exclude, extra, calibration_cache)
    finally:
        if tmp is not None:
            tmp.cleanup()
    onnx.checker.check_model(str(out_path))
    return {**s, "calibration_method": method,
            **({"percentile": PERCENTILE} if method == "percentile" else {}),
            **({"entropy_bins": ENTROPY_BINS} if method == "entropy" else {}),
            "float_nodes": list(nodes_to_exclude or [])}


#: Histogram bins and quantised bins of the entropy (KL) calibration, as TensorRT's.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


def entropy_ranges(prepared_path: Path, reader, cache_path: Path) -> Path:
    """Entropy-calibrated tensor ranges of ``prepared_path`` written as an ORT calibration
    cache (``save_tensors_data``) that ``quantize_static`` then reads."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="kidedge-calib-") as work:
        calibrator = create_calibrator(Path(prepared_path), None,
                                       augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options=dict(ENTROPY_BINS))
        reader.rewind()
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache_path)
    return cache_path


def _quantize_static(prepared_path, out_path, reader, s, method, nodes_to_exclude, extra, calibration_cache):
    quantize_static(
        str(prepared_path), str(out_path), reader,
        quant_format=CPU_FORMATS[s["quant_format"]],
        per_channel=s["per_channel"], reduce_range=s["reduce_range"],
        activation_type=getattr(QuantType, s["activation_type"]),
        weight_type=getattr(QuantType, s["weight_type"]),
        nodes_to_exclude=list(nodes_to_exclude or []),
        calibrate_method=CALIBRATION_METHODS[method],
        extra_options=extra,
        calibration_cache_path=str(calibration_cache) if calibration_cache else None,
    )
