"""kidedge's own runtime as a benchmark variant: exactly what ``kidedge infer`` runs per scan.

Set-up loads the package and activates one backend per stage
(:class:`kidedge.runtime.engine.Segmenter`, as ``kidedge infer`` does once per process);
the timed scan is :func:`kidedge.runtime.command.segment_job`: streaming read, then
:meth:`Segmenter.segment` (preprocess, infer gated or not, post-process, volumes), then
the atomic write of the label map and its volumes JSON.
The runtime's own profile of the run supplies the per-stage breakdown.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

#: The package file keys the benchmark can ask for, by variant precision.
PRECISION_KEYS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-cpu", "int8-cpu": "int8-cpu",
                  "int8-trt": "int8-trt"}


class KidedgeRunner:
    """One kidedge variant, set up in a benchmark child process.

    Args:
        spec: ``model`` (package), ``image``, ``out``, ``backend`` (onnxruntime | torch |
            tensorrt), ``precision`` (fp32 | fp16 | int8-cpu | int8-trt), ``gate`` (bool),
            optional ``batch`` and ``threads``. ``int8-trt`` on onnxruntime runs the
            TensorRT-flavoured QDQ int8 model on onnxruntime's CPU provider (what it costs
            where TensorRT is absent).
    """

    def __init__(self, spec: dict) -> None:
        from kidedge.package import ModelPackage
        from kidedge.runtime.backends.registry import select_backend
        from kidedge.runtime.engine import Segmenter

        self.spec = spec
        package = ModelPackage.load(spec["model"])
        precision = spec.get("precision", "fp32")
        key = PRECISION_KEYS.get(precision, precision)
        user_precision = "int8" if key.startswith("int8") else key
        if spec["backend"] == "torch":
            user_precision = "fp32" if key == "fp32" else user_precision
        choice = select_backend(package, spec["backend"], user_precision)
        if spec["backend"] == "onnxruntime" and choice.files and any(v != key for v in choice.files.values()):
            # The registry picks int8-cpu for int8 on a CPU; the bench also runs the other file
            # (in the stages that have it: a float localiser stays as the registry chose).
            choice = dataclasses.replace(choice, precision=key, files={
                s: key if key in package.stage(s).files else f for s, f in choice.files.items()})
        self._stack = contextlib.ExitStack()
        self.segmenter = self._stack.enter_context(
            Segmenter(package, choice, batch=spec.get("batch"), threads=spec.get("threads")))

    def run(self) -> dict:
        from kidedge.runtime.command import segment_job
        from kidedge.runtime.inputs import ScanJob

        out = Path(self.spec["out"])
        job = ScanJob(scan=Path(self.spec["image"]), name=out.name, output=out)
        report = segment_job(job, self.segmenter, gate=bool(self.spec.get("gate", True)))
        profile = report["profile"]
        return {"stages": dict(profile.get("stages_s", {})), "profile": profile,
                "gating": report.get("gating"), "engine": report.get("backend")}

    def close(self) -> None:
        """Release the engines (after the timed scan: teardown is not the user's wait)."""
        self._stack.close()
