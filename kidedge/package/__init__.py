"""The model package: export's output and the runtime's only input
(docs/architecture.md, "The model package").

Never imports torch or onnx, so the lean runtime (and a Jetson with only the base
install) can use it. Modules:

    manifest       the typed manifest, :class:`Manifest` (frozen, validated once by
                   ``from_dict``), and the JSON layout
    stage          its parts: :class:`Stage`, :class:`StageInput`, :class:`StageOutput`,
                   :class:`Roi`, :class:`FileEntry`
    plan_key       :class:`PlanKey`, :func:`tensorrt_key`: TensorRT plan keys, formatted
                   and parsed in one place
    model_package  :class:`ModelPackage` (load a directory or zip, hash-checked files),
                   :func:`write_manifest`, :func:`default_package_path`, :func:`sha256_file`
"""

from kidedge.package.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, Manifest
from kidedge.package.model_package import (
    ModelPackage,
    default_package_path,
    sha256_file,
    validate_manifest,
    write_manifest,
)
from kidedge.package.plan_key import PlanKey, slugify, tensorrt_key
from kidedge.package.stage import PRECISIONS, ROLES, FileEntry, Roi, Stage, StageInput, StageOutput

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PRECISIONS",
    "ROLES",
    "FileEntry",
    "Manifest",
    "ModelPackage",
    "PlanKey",
    "Roi",
    "Stage",
    "StageInput",
    "StageOutput",
    "default_package_path",
    "sha256_file",
    "slugify",
    "tensorrt_key",
    "validate_manifest",
    "write_manifest",
]
