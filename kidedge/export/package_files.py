"""What export puts into a package besides the models: the training run it reads
(``run.json``, checked), the manifest's entry of each stage, the library versions, and the
finished package published (renamed into place, or zipped) through :mod:`kidedge.io.writer`.
"""

from __future__ import annotations

import os
import platform
import shutil
import zipfile
from pathlib import Path

import numpy as np

from kidedge import __version__
from kidedge.errors import KidedgeError
from kidedge.export.onnx_export import FP32_TOLERANCE, INPUT_NAME, OUTPUT_NAME
from kidedge.export.stage_inputs import stage_spec
from kidedge.io.json_files import read_json
from kidedge.io.writer import atomic_target, publish_directory

RUN_FORMAT = 1


def read_run(run_dir: Path) -> dict:
    """run.json of a training run, checked for what export needs (one-line errors)."""
    path = Path(run_dir) / "run.json"
    if not Path(run_dir).is_dir():
        raise KidedgeError(f"{run_dir}: run directory does not exist")
    if not path.is_file():
        raise KidedgeError(f"{path}: missing; is {run_dir} a kidedge training run?")
    run = read_json(path, "run.json")
    if not isinstance(run, dict) or run.get("kidedge_run") != RUN_FORMAT:
        raise KidedgeError(f"{path}: not a kidedge run (kidedge_run must be {RUN_FORMAT})")
    for key in ("dimensionality", "classes", "stages"):
        if key not in run:
            raise KidedgeError(f"{path}: missing {key!r}")
    if run["dimensionality"] not in ("2d", "3d"):
        raise KidedgeError(f"{path}: dimensionality must be 2d or 3d, got {run['dimensionality']!r}")
    if not isinstance(run["stages"], list) or not run["stages"]:
        raise KidedgeError(f"{path}: stages must be a non-empty list")
    for i, st in enumerate(run["stages"]):
        missing = [k for k in ("name", "role", "arch", "preprocess", "output", "checkpoint") if k not in st]
        if missing:
            raise KidedgeError(f"{path}: stage {st.get('name', i)!r} is missing {', '.join(missing)}")
        try:
            stage_spec(st)
        except (ValueError, TypeError) as exc:
            raise KidedgeError(f"{path}: stage {st['name']!r} has a bad preprocess spec: {exc}") from None
    return run


def library_versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    versions = {"kidedge": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    return versions


def manifest_stage(st: dict, spec, x: np.ndarray, dim: str, files: dict, parity: dict, fidelity: dict) -> dict:
    """A stage of the manifest: run.json's stage + input/output/files/reference."""
    keep = ("name", "role", "arch", "model_kwargs", "output", "roi", "metrics")
    stage = {k: st[k] for k in keep if k in st}
    stage["preprocess"] = spec.to_dict()
    stage["output"] = {"name": OUTPUT_NAME, **st["output"]}
    fixed = spec.in_plane == "size"
    stage["input"] = {"name": INPUT_NAME, "channels": int(x.shape[1]),
                      "height": int(x.shape[-2]) if fixed else None,
                      "width": int(x.shape[-1]) if fixed else None,
                      "dtype": "float32", "layout": "NCDHW" if dim == "3d" else "NCHW"}
    if dim == "3d":
        from kidedge.export.export3d import window_of

        # the patch is the one input shape (and TensorRT bucket) of a 3D stage
        d, h, w = (int(v) for v in x.shape[2:])
        stage["input"].update(depth=d, height=h, width=w, buckets=[[h, w]])
        stage["window"] = window_of(st).to_dict()
    stage["files"] = files
    stage["reference"] = {"path": f"{st['name']}/reference.npz", "max_abs_tolerance": FP32_TOLERANCE,
                          "compares": "fp32 ONNX (ONNX Runtime CPU) against PyTorch fp32 logits"}
    stage["parity"] = parity
    stage["fidelity"] = {p: {k: v for k, v in r.items() if k != "cases"} for p, r in fidelity.items()}
    return stage


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished package into place (or zip it to a temp name, then rename)."""
    if out.exists():
        raise KidedgeError(f"{out}: appeared while exporting; refusing to overwrite")
    # mkdtemp makes the folder private (0700); a package is an ordinary folder.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if out.suffix.lower() != ".zip":
        publish_directory(tmp, out)
        return
    try:
        with atomic_target(out) as ztmp, zipfile.ZipFile(ztmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp).as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
