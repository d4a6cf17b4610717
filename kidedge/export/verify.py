"""``kidedge export --verify PACKAGE``: re-check a package's hashes and its fp32 parity.

1. Every file the manifest lists must exist with its recorded sha256.
2. Every stage's fp32 ONNX is run in ONNX Runtime (CPU) on the stored reference input and
   must reproduce the stored PyTorch logits within the stored tolerance.
3. Every other ONNX precision must load and produce logits of the reference shape.

Needs only numpy and onnxruntime (no torch): a deployment machine can verify what it got.
"""

from __future__ import annotations

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.package import ModelPackage

ONNX_PRECISIONS = ("fp32", "fp16", "int8-cpu", "int8-trt")


def verify_package(path, threads: int = 2, quiet: bool = False) -> int:
    """Verify the package at ``path`` (directory or .zip).

    Returns:
        0 when everything checks out.

    Raises:
        KidedgeError: the first problem found, one line (a missing or modified file, a
            parity failure, a model that does not load).
    """
    import onnxruntime as ort

    say = (lambda msg: None) if quiet else (lambda msg: print(f"kidedge verify: {msg}", flush=True))
    pkg = ModelPackage.load(path)
    hashes = pkg.verify_hashes()
    bad = {label: status for label, status in hashes.items() if status != "ok"}
    if bad:
        label, status = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        what = "is missing" if status == "missing" else "does not match its sha256"
        raise KidedgeError(f"{pkg.source}: file {label} {what}{more}")
    say(f"{len(hashes)} files match their sha256")

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    for stage in pkg.stages:
        name = stage.name
        if stage.reference is None:
            raise KidedgeError(f"{pkg.source}: stage {name!r} has no reference data to verify parity")
        with np.load(pkg.file_path(name, "reference")) as ref:
            x, expected = ref["input"], ref["logits"]
        tol = stage.reference_tolerance
        inp, outp = stage.input.name, stage.output.name
        for precision in ONNX_PRECISIONS:
            if precision not in stage.files:
                continue
            model = pkg.file_path(name, precision)
            try:
                sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
                got = sess.run([outp], {inp: x.astype(np.float32)})[0]
            except Exception as exc:  # ORT's own exception types
                raise KidedgeError(f"{model}: does not run in ONNX Runtime: {str(exc).splitlines()[0][:200]}") from None
            if got.shape != expected.shape:
                raise KidedgeError(f"{model}: logits shape {got.shape} differs from the reference {expected.shape}")
            if precision == "fp32":
                diff = float(np.abs(got - expected).max())
                if not np.isfinite(diff) or diff > tol:
                    raise KidedgeError(f"{model}: fp32 logits differ from the stored reference by {diff:.3g} (tolerance {tol:g})")
                say(f"stage {name}: fp32 parity max |diff| {diff:.2e} <= {tol:g}")
            else:
                agree = float((got.argmax(1) == expected.argmax(1)).mean())
                say(f"stage {name}: {precision} runs; argmax agreement with reference {agree:.4f}")
    say(f"{pkg.source}: OK")
    return 0
