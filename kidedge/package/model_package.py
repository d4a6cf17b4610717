"""The model package: export's output and the runtime's only input (DESIGN.md, "The model
package").

A package is a directory (optionally zipped) holding ``manifest.json`` and model files.
This module reads, validates and hashes packages; it never imports torch or onnx, so the
lean runtime (and a Jetson with only the base install) can use it.

Manifest schema (``format_version`` 1)::

    {
      "format": "kidedge.package", "format_version": 1,
      "name": str, "architecture": str, "dimensionality": "2d" | "3d",
      "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
      "input_layout": "NCHW" | "NCDHW",
      "stages": [
        {"name": str, "role": "localise" | "segment", "arch": str, "model_kwargs": {...},
         "preprocess": PreprocessSpec.to_dict(),
         "input": {"name": "image", "channels": int, "height": int|null, "width": int|null,
                   "depth": int|null (3d only)},
         "output": {"name": "logits", "activation": "softmax"|"sigmoid", "labels": [...]},
         "roi": {"source_stage": str, "labels": [...], "margin_mm": float}   (cascade stage 2),
         "files": {"fp32": FILE, "fp16": FILE, "int8-cpu": FILE, "int8-trt": FILE,
                   "torch": FILE, "tensorrt": {KEY: FILE + {"timing_cache": FILE, ...}}},
         "reference": FILE (npz with "input" and "logits" of the fp32 model, for --verify),
         "parity": {...}, "metrics": {...}}
      ],
      "provenance": {"recipe", "data", "training_metrics", "library_versions", "created"},
      "export_report": {"sizes", "parity", "fidelity", "quantisation"}
    }

with ``FILE = {"path": relative path, "sha256": hex, "bytes": int, ...}``. TensorRT plan
keys are ``trt{version}-{gpu_name_slug}-sm{cc}-{precision}-{onnx_sha[:12]}`` (see
:func:`tensorrt_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from kidedge.errors import KidedgeError
from kidedge.preprocess import PreprocessSpec

FORMAT = "kidedge.package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Precisions a stage may carry as single files (TensorRT plans live under "tensorrt").
PRECISIONS = ("fp32", "fp16", "int8-cpu", "int8-trt", "torch")
ROLES = ("localise", "segment")
DIMENSIONALITIES = ("2d", "3d")
ACTIVATIONS = ("softmax", "sigmoid")
REQUIRED_KEYS = ("format", "format_version", "name", "architecture", "dimensionality", "classes", "stages")
STAGE_KEYS = ("name", "role", "preprocess", "input", "output", "files")


def default_package_path() -> Path:
    """Where the package shipped inside kidedge lives (``kidedge/models/default``).

    The path is returned whether or not it exists; :meth:`ModelPackage.load` raises a
    one-line :class:`KidedgeError` when it is missing.
    """
    return Path(__file__).resolve().parent / "models" / "default"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (plans and ONNX files can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def slugify(text: str) -> str:
    """Lower-case ``[a-z0-9]`` words joined by ``_`` (GPU names in TensorRT plan keys)."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"


def tensorrt_key(trt_version: str, gpu_name: str, compute_capability: tuple[int, int] | str,
                 precision: str, onnx_sha256: str) -> str:
    """Key of a TensorRT plan in a stage's ``files["tensorrt"]``.

    A plan only runs on the TensorRT version and GPU architecture it was built for, so the
    key names both, plus the precision and the ONNX file it came from.

    Args:
        trt_version: e.g. ``"10.3.0"``.
        gpu_name: e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"Orin"``.
        compute_capability: ``(major, minor)`` or ``"90"``.
        precision: ``"fp16"``, ``"int8"`` (explicit QDQ) or ``"fp32"``.
        onnx_sha256: sha256 of the ONNX file the plan was built from.
    """
    if isinstance(compute_capability, (tuple, list)):
        cc = f"{int(compute_capability[0])}{int(compute_capability[1])}"
    else:
        cc = str(compute_capability).replace(".", "")
    return f"trt{trt_version}-{slugify(gpu_name)}-sm{cc}-{precision}-{onnx_sha256[:12]}"


# ---------------------------------------------------------------------------------------
# file entries
# ---------------------------------------------------------------------------------------


def _entries_in(node: dict, label: str) -> Iterator[tuple[str, dict]]:
    """Every dict with a "path" under ``node`` (files, nested TensorRT plans, their caches)."""
    if "path" in node and isinstance(node["path"], str):
        yield label, node
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _entries_in(value, f"{label}/{key}" if label else str(key))


def iter_file_entries(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(label, entry) of every file the manifest lists; label is ``stage/precision[/...]``."""
    for stage in manifest.get("stages", []):
        name = stage.get("name", "?")
        yield from _entries_in(stage.get("files", {}), name)
        if isinstance(stage.get("reference"), dict):
            yield from _entries_in(stage["reference"], f"{name}/reference")
    if isinstance(manifest.get("files"), dict):
        yield from _entries_in(manifest["files"], "package")


def _safe_relative(rel: str, where: str) -> PurePosixPath:
    """A manifest path must stay inside the package (no absolute paths, no '..')."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel.strip() == "" or "\\" in rel:
        raise KidedgeError(f"{where}: file path {rel!r} in the manifest leaves the package")
    return p


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def validate_manifest(manifest: object, source: str = MANIFEST_NAME) -> dict:
    """Check the manifest's structure; one-line :class:`KidedgeError` naming ``source``.

    Returns the manifest unchanged when valid.
    """
    if not isinstance(manifest, dict):
        raise KidedgeError(f"{source}: manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise KidedgeError(f"{source}: not a kidedge model package (format is {manifest.get('format')!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise KidedgeError(f"{source}: manifest is missing {', '.join(missing)}")
    version = manifest["format_version"]
    if version != FORMAT_VERSION:
        raise KidedgeError(f"{source}: unknown format_version {version!r} (this kidedge reads {FORMAT_VERSION})")
    if manifest["dimensionality"] not in DIMENSIONALITIES:
        raise KidedgeError(f"{source}: dimensionality must be one of {DIMENSIONALITIES}, got {manifest['dimensionality']!r}")
    if not isinstance(manifest["classes"], dict) or not manifest["classes"]:
        raise KidedgeError(f"{source}: classes must be a non-empty object of label -> name")
    stages = manifest["stages"]
    if not isinstance(stages, list) or not stages:
        raise KidedgeError(f"{source}: stages must be a non-empty list")
    names = set()
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise KidedgeError(f"{source}: stage {i} is not an object")
        missing = [k for k in STAGE_KEYS if k not in stage]
        if missing:
            raise KidedgeError(f"{source}: stage {stage.get('name', i)!r} is missing {', '.join(missing)}")
        name = stage["name"]
        if not isinstance(name, str) or not name or name in names:
            raise KidedgeError(f"{source}: stage {i} has an empty or duplicate name {name!r}")
        names.add(name)
        if stage["role"] not in ROLES:
            raise KidedgeError(f"{source}: stage {name!r} role must be one of {ROLES}, got {stage['role']!r}")
        try:
            PreprocessSpec.from_dict(stage["preprocess"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise KidedgeError(f"{source}: stage {name!r} has a bad preprocessing spec: {exc}") from None
        inp, out = stage["input"], stage["output"]
        if not isinstance(inp, dict) or not isinstance(inp.get("channels"), int) or "name" not in inp:
            raise KidedgeError(f"{source}: stage {name!r} input needs name and integer channels")
        if not isinstance(out, dict) or out.get("activation") not in ACTIVATIONS or not isinstance(out.get("labels"), list):
            raise KidedgeError(f"{source}: stage {name!r} output needs activation in {ACTIVATIONS} and a labels list")
        if not isinstance(stage["files"], dict):
            raise KidedgeError(f"{source}: stage {name!r} files must be an object")
        unknown = set(stage["files"]) - set(PRECISIONS) - {"tensorrt"}
        if unknown:
            raise KidedgeError(f"{source}: stage {name!r} has unknown precisions {sorted(unknown)}")
    for stage in stages:
        roi = stage.get("roi")
        if roi is not None:
            if not isinstance(roi, dict) or roi.get("source_stage") not in names or roi.get("source_stage") == stage["name"]:
                raise KidedgeError(f"{source}: stage {stage['name']!r} roi must name another stage as source_stage")
    for label, entry in iter_file_entries(manifest):
        _safe_relative(entry["path"], source)
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise KidedgeError(f"{source}: file {label} ({entry['path']}) has no sha256")
    return manifest


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write JSON to a temporary name beside ``path``, then rename (never a partial file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(package_dir: str | os.PathLike, manifest: dict) -> dict:
    """Fill ``sha256`` and ``bytes`` of every listed file, validate, write manifest.json.

    Args:
        package_dir: the package directory; every entry's ``path`` is relative to it.
        manifest: the manifest; file entries need only ``path`` (they are updated in place).

    Returns:
        The completed manifest.
    """
    package_dir = Path(package_dir)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    for label, entry in iter_file_entries(manifest):
        rel = _safe_relative(entry["path"], str(package_dir / MANIFEST_NAME))
        f = package_dir / rel
        if not f.is_file():
            raise KidedgeError(f"{f}: listed in the manifest as {label} but missing")
        entry["sha256"] = sha256_file(f)
        entry["bytes"] = f.stat().st_size
    validate_manifest(manifest, str(package_dir / MANIFEST_NAME))
    write_json_atomic(package_dir / MANIFEST_NAME, manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------


def _cache_root() -> Path:
    env = os.environ.get("KIDEDGE_CACHE_DIR")
    if env:
        return Path(env) / "packages"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kidedge" / "packages"


def _extract_zip(zip_path: Path) -> Path:
    """Extract a zipped package once into a cache dir keyed by the zip's sha256."""
    digest = sha256_file(zip_path)
    root = _cache_root()
    target = root / digest
    if (target / MANIFEST_NAME).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=root))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = zf.namelist()
                for n in names:
                    _safe_relative(n.rstrip("/") or ".", str(zip_path))
                # A zip made of the package folder itself has one top-level directory.
                prefix = ""
                if MANIFEST_NAME not in names:
                    tops = {n.split("/", 1)[0] for n in names}
                    if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST_NAME}" in names:
                        prefix = next(iter(tops)) + "/"
                    else:
                        raise KidedgeError(f"{zip_path}: zip has no {MANIFEST_NAME}")
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.startswith(prefix):
                        continue
                    dest = tmp / info.filename[len(prefix):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise KidedgeError(f"{zip_path}: not a readable zip ({exc})") from None
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process extracted the same zip first; use theirs.
            if not (target / MANIFEST_NAME).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class ModelPackage:
    """A loaded model package.

    Use :meth:`load`; then :attr:`manifest` (the dict), :attr:`stages`, :meth:`file_path`
    (hash-verified path of a model file), :meth:`preprocess_spec`.

    Args:
        root: the package directory (a zip is extracted by :meth:`load` first).
        manifest: the validated manifest.
        source: what the user named (directory or zip), for error messages.
    """

    def __init__(self, root: Path, manifest: dict, source: Path | None = None) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.source = Path(source) if source is not None else self.root
        self._verified: dict[str, tuple[int, int, str]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ModelPackage:
        """Open a package directory or ``.zip`` (``None``: the shipped default package)."""
        source = Path(path) if path is not None else default_package_path()
        if not source.exists():
            which = "the built-in model package" if path is None else "model package"
            raise KidedgeError(f"{source}: {which} does not exist")
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise KidedgeError(f"{source}: not a model package (expected a directory or a .zip)")
            root = _extract_zip(source)
        else:
            root = source
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise KidedgeError(f"{source}: not a model package (no {MANIFEST_NAME})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KidedgeError(f"{mpath}: manifest is not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        validate_manifest(manifest, str(mpath))
        return cls(root, manifest, source)

    # -- structure -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def stages(self) -> list[dict]:
        """Stage dicts in run order (stage 1 localises, stage 2 segments)."""
        return self.manifest["stages"]

    @property
    def classes(self) -> dict[int, str]:
        return {int(k): v for k, v in self.manifest["classes"].items()}

    @property
    def is_cascade(self) -> bool:
        return len(self.stages) > 1

    def stage(self, name: str | int) -> dict:
        """A stage by name (or by index)."""
        if isinstance(name, int):
            try:
                return self.stages[name]
            except IndexError:
                raise KidedgeError(f"{self.source}: package has no stage {name}") from None
        for s in self.stages:
            if s["name"] == name:
                return s
        raise KidedgeError(f"{self.source}: package has no stage {name!r} (has {[s['name'] for s in self.stages]})")

    def preprocess_spec(self, stage: str | int) -> PreprocessSpec:
        """The stage's :class:`PreprocessSpec` (validated at load)."""
        return PreprocessSpec.from_dict(self.stage(stage)["preprocess"])

    def available_precisions(self, stage: str | int) -> list[str]:
        """Single-file precisions of a stage, in :data:`PRECISIONS` order (not TensorRT)."""
        files = self.stage(stage)["files"]
        return [p for p in PRECISIONS if p in files]

    def tensorrt_plans(self, stage: str | int) -> dict[str, dict]:
        """TensorRT plan entries of a stage, by key (see :func:`tensorrt_key`)."""
        return dict(self.stage(stage)["files"].get("tensorrt", {}))

    def _entry(self, stage: str | int, precision: str) -> dict:
        s = self.stage(stage)
        files = s["files"]
        if precision in PRECISIONS:
            if precision not in files:
                raise KidedgeError(f"{self.source}: stage {s['name']!r} has no {precision} model (has {self.available_precisions(stage)})")
            return files[precision]
        if precision == "reference":
            if "reference" not in s:
                raise KidedgeError(f"{self.source}: stage {s['name']!r} has no reference data")
            return s["reference"]
        plans = files.get("tensorrt", {})
        if precision in plans:
            return plans[precision]
        raise KidedgeError(f"{self.source}: unknown precision {precision!r} for stage {s['name']!r} (one of {list(PRECISIONS)} or a TensorRT key)")

    # -- files and hashes ------------------------------------------------------------

    def file_path(self, stage: str | int, precision: str = "fp32") -> Path:
        """Path of a stage's model file after checking its sha256 against the manifest.

        Args:
            stage: stage name or index.
            precision: one of :data:`PRECISIONS`, ``"reference"``, or a TensorRT plan key.

        Raises:
            KidedgeError: unknown stage/precision, missing file, or a hash mismatch.
        """
        entry = self._entry(stage, precision)
        return self._checked(entry)

    def _checked(self, entry: dict) -> Path:
        path = self.root / _safe_relative(entry["path"], str(self.source))
        if not path.is_file():
            raise KidedgeError(f"{path}: model file listed in the package manifest is missing")
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns, entry["sha256"])
        # Hashing once per (size, mtime) keeps repeated lookups cheap without trusting a
        # file that changed since it was checked.
        if self._verified.get(str(path)) != stamp:
            if "bytes" in entry and st.st_size != entry["bytes"]:
                raise KidedgeError(f"{path}: size {st.st_size} bytes does not match the manifest ({entry['bytes']}); the package is corrupt or was modified")
            if sha256_file(path) != entry["sha256"]:
                raise KidedgeError(f"{path}: sha256 does not match the manifest; the package is corrupt or was modified")
            self._verified[str(path)] = stamp
        return path

    def verify_hashes(self) -> dict[str, str]:
        """Check every listed file: ``{label: "ok" | "missing" | "mismatch"}``."""
        result = {}
        for label, entry in iter_file_entries(self.manifest):
            path = self.root / _safe_relative(entry["path"], str(self.source))
            if not path.is_file():
                result[label] = "missing"
            elif sha256_file(path) != entry["sha256"]:
                result[label] = "mismatch"
            else:
                result[label] = "ok"
        return result

    def __repr__(self) -> str:
        return f"ModelPackage({self.name!r}, stages={[s['name'] for s in self.stages]}, root={str(self.root)!r})"
