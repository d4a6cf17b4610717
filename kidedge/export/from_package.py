"""Export from a model package instead of a training run.

A package keeps each stage's PyTorch weights (``<stage>/model.pt``) and what export read
from the run (architecture, preprocessing, output, ROI, training metrics, the data folder
and split). That is enough to export again: quantise the shipped model for another CPU
(``--int8-cpu-weight-bits 7`` for AVX2 CPUs without VNNI), with other calibration or float
layers, or add fp16 and TensorRT plans, without the training run, which is not shipped.

The run it stands for is rebuilt from the manifest (:func:`run_from_package`); the weights
are read only after their sha256 matches the manifest. 3D packages are not re-exported: the
manifest keeps their sliding window, not the recipe's sampling that export reads.
"""

from __future__ import annotations

from pathlib import Path

from kidedge.errors import KidedgeError

#: run.json keys of a stage that the manifest keeps as they were.
STAGE_KEYS = ("name", "role", "arch", "model_kwargs", "preprocess", "output", "roi", "metrics")


def is_package(path: Path) -> bool:
    """A package folder (``manifest.json``, no ``run.json``) or a zipped package."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    return (path / "manifest.json").is_file() and not (path / "run.json").is_file()


def run_from_package(path: Path) -> tuple[dict, Path]:
    """The training run a package was exported from, as ``(run.json dict, folder)``: the
    folder holds the checkpoints the run's stages name (the package's own ``model.pt``).

    Raises:
        KidedgeError: not a package, a 3D package, a stage without PyTorch weights, or
            weights whose hash does not match the manifest.
    """
    from kidedge.package import ModelPackage

    package = ModelPackage.load(path)
    manifest = package.manifest.to_dict()
    if manifest.get("dimensionality") != "2d":
        raise KidedgeError(f"{path}: re-exporting a {manifest.get('dimensionality')} package is not supported; "
                           "export its training run")
    stages = []
    for raw in manifest["stages"]:
        if "torch" not in raw.get("files", {}):
            raise KidedgeError(f"{path}: stage {raw['name']!r} has no PyTorch weights (model.pt); "
                               "export needs them: export the training run instead")
        weights = package.file_path(raw["name"], "torch")  # sha256 checked against the manifest
        stage = {k: raw[k] for k in STAGE_KEYS if k in raw}
        stage["output"] = {k: v for k, v in raw["output"].items() if k != "name"}  # export adds the name
        stage["checkpoint"] = weights.relative_to(package.root).as_posix()
        stages.append(stage)
    provenance = manifest.get("provenance") or {}
    run = {"kidedge_run": 1, "recipe": provenance.get("recipe") or manifest["name"],
           "dimensionality": manifest["dimensionality"], "classes": manifest["classes"], "stages": stages,
           "data": provenance.get("data"), "split": provenance.get("split"),
           "metrics": provenance.get("training_metrics") or {},
           "exported_from_package": {"name": manifest["name"], "created": provenance.get("created"),
                                     "run_dir": provenance.get("run_dir")}}
    return run, package.root
