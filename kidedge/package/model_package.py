"""Loading a model package: its files, their hashes, zipped packages (no torch, no onnx).

A package is a directory (optionally zipped) holding ``manifest.json``
(:mod:`kidedge.package.manifest`) and model files. :class:`ModelPackage` opens one,
parses its manifest once (a one-line error for anything malformed) and hands out model
files only after checking their sha256. :func:`write_manifest` is export's side: it
records every listed file's hash and size, validates, and writes the manifest atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.io.json_files import read_json
from kidedge.io.writer import atomic_directory, write_json_atomic
from kidedge.package.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, Manifest
from kidedge.package.stage import PRECISIONS, FileEntry, Stage, safe_relative
from kidedge.preprocess import PreprocessSpec


def default_package_path() -> Path:
    """Where the package shipped inside kidedge lives (``kidedge/models/default``).

    The path is returned whether or not it exists; :meth:`ModelPackage.load` raises a
    one-line :class:`KidedgeError` when it is missing.
    """
    return Path(__file__).resolve().parents[1] / "models" / "default"


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


def validate_manifest(manifest: object, source: str = MANIFEST_NAME) -> dict:
    """Check a manifest dict (one-line :class:`KidedgeError` naming ``source``); returns it
    unchanged when valid."""
    Manifest.from_dict(manifest, source)
    return manifest


def _unhashed_entries(node: dict) -> Iterator[dict]:
    """Every dict with a "path" under ``node`` (files, TensorRT plans, their caches), in a
    manifest that export is still writing (entries have no sha256 yet)."""
    if isinstance(node.get("path"), str):
        yield node
    for value in node.values():
        if isinstance(value, dict):
            yield from _unhashed_entries(value)


def write_manifest(package_dir: str | os.PathLike, manifest: dict) -> dict:
    """Fill ``sha256`` and ``bytes`` of every listed file, validate, write manifest.json.

    Args:
        package_dir: the package directory; every entry's ``path`` is relative to it.
        manifest: the manifest as JSON; file entries need only ``path`` (they are updated
            in place).

    Returns:
        The completed manifest.
    """
    package_dir = Path(package_dir)
    where = str(package_dir / MANIFEST_NAME)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    roots = [st.get(k) for st in manifest.get("stages", []) if isinstance(st, dict) for k in ("files", "reference")]
    for entry in (e for root in roots + [manifest.get("files")] if isinstance(root, dict)
                  for e in _unhashed_entries(root)):
        f = package_dir / safe_relative(entry["path"], where)
        if not f.is_file():
            raise KidedgeError(f"{f}: listed in the manifest as a package file but missing")
        entry["sha256"] = sha256_file(f)
        entry["bytes"] = f.stat().st_size
    validate_manifest(manifest, where)
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
    with atomic_directory(target, keep_existing=True) as tmp:  # keep_existing: another process was first
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = zf.namelist()
                for n in names:
                    safe_relative(n.rstrip("/") or ".", str(zip_path))
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
    return target


class ModelPackage:
    """A loaded model package.

    Use :meth:`load`; then :attr:`manifest` (the typed :class:`Manifest`), :attr:`stages`,
    :meth:`stage`, and :meth:`file_path` (the hash-verified path of a model file).

    Args:
        root: the package directory (a zip is extracted by :meth:`load` first).
        manifest: the parsed manifest.
        source: what the user named (directory or zip), for error messages.
    """

    def __init__(self, root: Path, manifest: Manifest, source: Path | None = None) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.source = Path(source) if source is not None else self.root
        self._verified: dict[str, tuple[int, int, str]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ModelPackage:
        """Open a package directory or ``.zip`` (``None``: the shipped default package)."""
        source = Path(path) if path is not None else default_package_path()
        if not source.exists():
            if path is None:
                raise KidedgeError(f"{source}: no built-in model package is installed in this kidedge; "
                                   "pass --model PACKAGE (made by kidedge export)")
            raise KidedgeError(f"{source}: model package does not exist")
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise KidedgeError(f"{source}: not a model package (expected a directory or a .zip)")
            root = _extract_zip(source)
        else:
            root = source
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise KidedgeError(f"{source}: not a model package (no {MANIFEST_NAME})")
        return cls(root, Manifest.from_dict(read_json(mpath, "manifest"), str(mpath)), source)

    # -- structure -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Stages in run order (stage 1 localises, stage 2 segments)."""
        return self.manifest.stages

    @property
    def classes(self) -> dict[int, str]:
        return dict(self.manifest.classes)

    @property
    def is_cascade(self) -> bool:
        return self.manifest.is_cascade

    def stage(self, name: str | int) -> Stage:
        """A stage by name (or by index)."""
        return self.manifest.stage(name, str(self.source))

    def preprocess_spec(self, stage: str | int) -> PreprocessSpec:
        """The stage's :class:`PreprocessSpec` (validated at load)."""
        return self.stage(stage).preprocess

    def available_precisions(self, stage: str | int) -> list[str]:
        """Single-file precisions of a stage, in :data:`PRECISIONS` order (not TensorRT)."""
        return self.stage(stage).precisions

    def tensorrt_plans(self, stage: str | int) -> dict[str, FileEntry]:
        """TensorRT plan entries of a stage, by key (see :mod:`kidedge.package.plan_key`)."""
        return dict(self.stage(stage).plans)

    def _entry(self, stage: str | int, precision: str) -> FileEntry:
        s = self.stage(stage)
        if precision in PRECISIONS:
            if precision not in s.files:
                raise KidedgeError(f"{self.source}: stage {s.name!r} has no {precision} model (has {s.precisions})")
            return s.files[precision]
        if precision == "reference":
            if s.reference is None:
                raise KidedgeError(f"{self.source}: stage {s.name!r} has no reference data")
            return s.reference
        if precision in s.plans:
            return s.plans[precision]
        raise KidedgeError(f"{self.source}: unknown precision {precision!r} for stage {s.name!r} (one of {list(PRECISIONS)} or a TensorRT key)")

    # -- files and hashes ------------------------------------------------------------

    def file_path(self, stage: str | int, precision: str = "fp32") -> Path:
        """Path of a stage's model file after checking its sha256 against the manifest.

        Args:
            stage: stage name or index.
            precision: one of :data:`PRECISIONS`, ``"reference"``, or a TensorRT plan key.

        Raises:
            KidedgeError: unknown stage/precision, missing file, or a hash mismatch.
        """
        return self._checked(self._entry(stage, precision))

    def _checked(self, entry: FileEntry) -> Path:
        path = self.root / entry.path
        if not path.is_file():
            raise KidedgeError(f"{path}: model file listed in the package manifest is missing")
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns, entry.sha256)
        # Hashing once per (size, mtime) keeps repeated lookups cheap without trusting a
        # file that changed since it was checked.
        if self._verified.get(str(path)) != stamp:
            if entry.bytes is not None and st.st_size != entry.bytes:
                raise KidedgeError(f"{path}: size {st.st_size} bytes does not match the manifest ({entry.bytes}); the package is corrupt or was modified")
            if sha256_file(path) != entry.sha256:
                raise KidedgeError(f"{path}: sha256 does not match the manifest; the package is corrupt or was modified")
            self._verified[str(path)] = stamp
        return path

    def verify_hashes(self) -> dict[str, str]:
        """Check every listed file: ``{label: "ok" | "missing" | "mismatch"}``."""
        result = {}
        for label, entry in self.manifest.file_entries():
            path = self.root / entry.path
            if not path.is_file():
                result[label] = "missing"
            elif sha256_file(path) != entry.sha256:
                result[label] = "mismatch"
            else:
                result[label] = "ok"
        return result

    def __repr__(self) -> str:
        return f"ModelPackage({self.name!r}, stages={[s.name for s in self.stages]}, root={str(self.root)!r})"
