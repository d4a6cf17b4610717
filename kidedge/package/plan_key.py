"""The key of a TensorRT plan in a package: written and read here, and nowhere else.

A serialized TensorRT engine only runs on the TensorRT version and GPU architecture it
was built for, so a stage's ``files["tensorrt"]`` keeps its plans under a key that names
both, plus the precision and the ONNX file the plan came from::

    trt{version}-{gpu_name_slug}-sm{cc}-{precision}-{onnx_sha256[:12]}
    e.g. trt10.3.0-nvidia_orin-sm87-fp16-1a2b3c4d5e6f

Export formats keys with :func:`tensorrt_key` (or ``str(PlanKey.build(...))``); the
manifest parses every key once on load (:meth:`PlanKey.parse`), and the runtime asks a
parsed key whether it runs here (:meth:`PlanKey.runs_on`).
"""

from __future__ import annotations

import dataclasses
import re

_KEY = re.compile(r"^trt(?P<trt_version>[0-9.]+)-(?P<gpu>[a-z0-9_]+)-sm(?P<sm>[0-9]+)-"
                  r"(?P<precision>[a-z0-9]+)-(?P<onnx_sha12>[0-9a-f]{12})$")


_DLA = re.compile(r"dla([0-9]+)$")


def slugify(text: str) -> str:
    """Lower-case ``[a-z0-9]`` words joined by ``_`` (GPU names in TensorRT plan keys)."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"


def _patch_version(version: str) -> str:
    """major.minor.patch: a plan built by TensorRT 10.3.0 runs on 10.3.0.26."""
    return ".".join(str(version).split(".")[:3])


@dataclasses.dataclass(frozen=True)
class PlanKey:
    """A parsed TensorRT plan key.

    Attributes:
        trt_version: TensorRT version that built the plan, e.g. ``"10.3.0"``.
        gpu: the GPU name as a slug, e.g. ``"nvidia_orin"``.
        sm: compute capability without the dot, e.g. ``"87"``.
        precision: ``"fp16"``, ``"int8"``, ``"fp32"``, or a DLA label such as ``"fp16dla0"``.
        onnx_sha12: first 12 hex digits of the sha256 of the ONNX file it was built from.
    """

    trt_version: str
    gpu: str
    sm: str
    precision: str
    onnx_sha12: str

    @classmethod
    def build(cls, trt_version: str, gpu_name: str, compute_capability: tuple[int, int] | str,
              precision: str, onnx_sha256: str) -> PlanKey:
        """The key of a plan built now.

        Args:
            trt_version: e.g. ``"10.3.0"``.
            gpu_name: e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"Orin"``.
            compute_capability: ``(major, minor)`` or ``"90"`` / ``"9.0"``.
            precision: ``"fp16"``, ``"int8"`` (explicit QDQ), ``"fp32"`` or a DLA label.
            onnx_sha256: sha256 of the ONNX file the plan was built from.
        """
        if isinstance(compute_capability, (tuple, list)):
            sm = f"{int(compute_capability[0])}{int(compute_capability[1])}"
        else:
            sm = str(compute_capability).replace(".", "")
        return cls(str(trt_version), slugify(gpu_name), sm, str(precision), str(onnx_sha256)[:12])

    @classmethod
    def parse(cls, key: str) -> PlanKey | None:
        """The parts of ``key``, or None when it is not a plan key."""
        m = _KEY.match(str(key))
        return None if m is None else cls(**m.groupdict())

    def __str__(self) -> str:
        return f"trt{self.trt_version}-{self.gpu}-sm{self.sm}-{self.precision}-{self.onnx_sha12}"

    @staticmethod
    def precision_label(precision: str, dla_core: int | None = None) -> str:
        """The precision part of a key: ``fp16``, or ``fp16dla0`` for a plan built for DLA
        core 0 (a DLA plan must never be taken for the GPU plan of the same precision)."""
        return str(precision) if dla_core is None else f"{precision}dla{int(dla_core)}"

    @property
    def dla_core(self) -> int | None:
        """The DLA core a plan was built for (``fp16dla0`` -> 0); None for a GPU plan."""
        m = _DLA.search(self.precision)
        return int(m[1]) if m else None

    @property
    def base_precision(self) -> str:
        """The precision without the DLA core: ``fp16`` for ``fp16dla0``."""
        return _DLA.sub("", self.precision)

    def runs_on(self, trt_version: str | None, gpu_name: str | None) -> bool:
        """Whether the plan can run with this TensorRT (same major.minor.patch) and GPU."""
        if not trt_version or not gpu_name:
            return False
        return _patch_version(self.trt_version) == _patch_version(trt_version) and self.gpu == slugify(gpu_name)


def tensorrt_key(trt_version: str, gpu_name: str, compute_capability: tuple[int, int] | str,
                 precision: str, onnx_sha256: str) -> str:
    """Key text of a TensorRT plan in a stage's ``files["tensorrt"]`` (see :class:`PlanKey`)."""
    return str(PlanKey.build(trt_version, gpu_name, compute_capability, precision, onnx_sha256))
