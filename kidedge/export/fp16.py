"""fp32 ONNX -> fp16 ONNX for GPUs.

Weights and activations become float16; the graph input ``image`` and output ``logits``
stay float32 (``keep_io_types=True``: Cast nodes at the edges), because the runtime feeds
float32 from kidedge.preprocess whatever the precision. Uses onnxconverter-common's
``convert_float_to_float16`` (the ``[export]`` extra).

fp16 is meant for GPUs (TensorRT, CUDA EP). ONNX Runtime's CPU provider lacks fp16
kernels for most ops and inserts casts around them, so fp16 on CPU runs (the tests check
it) but is no faster than fp32 there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx

from kidedge.errors import KidedgeError


def convert_fp16(src: Path, dst: Path) -> dict:
    """Write the fp16 version of ``src`` to ``dst``.

    Args:
        src: fp32 ONNX file.
        dst: fp16 ONNX file to write.

    Returns:
        ``{"converter", "keep_io_types", "op_block_list"}`` for the export report.
    """
    try:
        from onnxconverter_common import __version__ as occ_version
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        raise KidedgeError("fp16 export needs onnxconverter-common: pip install 'kidedge[export]'") from None
    model = onnx.load(str(src))
    with warnings.catch_warnings():
        # One warning per weight below fp16's smallest normal value (truncated to 1e-7).
        warnings.simplefilter("ignore", UserWarning)
        fp16 = convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))
    return {"converter": f"onnxconverter-common {occ_version} convert_float_to_float16",
            "keep_io_types": True, "io_dtype": "float32"}
